//! The keys of stored responses: every part escaped through [`KeyBuf::part`], like every
//! other key part, so that no path, query or header value can spell another key (or another
//! scope's: the scope's prefix is added after, by the engine).

use http::{HeaderMap, Method, Uri};

use crate::base::key::KeyBuf;

/// `http:<method>:<path>:<query>`, the query's parameters sorted (`?b=2&a=1` and
/// `?a=1&b=2` are one resource to a cache keyed this way).
pub(super) fn primary(method: &Method, uri: &Uri) -> KeyBuf {
    let query = uri.query().unwrap_or("");
    let mut key = KeyBuf::new();
    key.literal("http:");
    key.part(method.as_str());
    key.literal(":");
    key.part(uri.path());
    key.literal(":");
    if query.contains('&') {
        let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_unstable();
        key.part(&params.join("&"));
    } else {
        // No parameter or one: already in order, and nothing to join.
        key.part(query);
    }
    key
}

/// The primary key, then the value of each request header the response's `Vary` names
/// (`names` lower case and sorted): one stored response per combination.
pub(super) fn variant(mut key: KeyBuf, names: &[String], headers: &HeaderMap) -> KeyBuf {
    key.literal(":vary");
    for name in names {
        let values: Vec<&[u8]> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let joined = values.join(&b", "[..]);
        key.literal(":");
        key.part(name.as_str());
        key.literal("=");
        key.part(String::from_utf8_lossy(&joined).as_ref());
    }
    key
}

/// The header names a response's `Vary` fields list, lower case, sorted, without
/// duplicates.
pub(super) fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> String {
        primary(&Method::GET, &uri.parse().expect("uri")).into_string()
    }

    #[test]
    fn query_parameters_are_sorted() {
        assert_eq!(key("/a?b=2&a=1"), key("/a?a=1&b=2"));
        assert_ne!(key("/a?a=1"), key("/a?a=2"));
        assert_eq!(key("/a?a=1&"), key("/a?a=1"));
        assert_eq!(key("/a?"), key("/a"));
    }

    #[test]
    fn a_path_cannot_spell_another_key() {
        // Unescaped, `/a:x` with no query and `/a` with query `x`... would meet.
        assert_ne!(key("/a:GET:/b"), key("/a"));
        assert_ne!(key("/a%3A?x"), key("/a:?x"));
        assert!(!key("/x:y*").contains("x:y"));
    }
}
