//! `Cache-Control` as a shared cache reads it (RFC 9111 §5.2, RFC 5861), and what it makes
//! of a response: stored for how long, or why not.

use std::time::Duration;

use http::header::{AUTHORIZATION, CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};

/// The directives of one message's `Cache-Control` fields (every field line, comma
/// separated). Unknown directives are ignored, as RFC 9111 §5.2 asks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Directives {
    pub(super) no_store: bool,
    pub(super) no_cache: bool,
    pub(super) private: bool,
    pub(super) public: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub(super) must_revalidate: bool,
    pub(super) max_age: Option<u64>,
    pub(super) s_maxage: Option<u64>,
    pub(super) stale_while_revalidate: Option<u64>,
    pub(super) stale_if_error: Option<u64>,
}

impl Directives {
    pub(super) fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // A qualified `no-cache="field"` or `private="field"` is read as the
                    // unqualified directive: stricter, never wrong.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    // A duplicate or invalid argument counts as zero (RFC 9111 §4.2.1: treat
                    // an invalid freshness as stale).
                    "max-age" => d.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => d.s_maxage = Some(seconds().unwrap_or(0)),
                    "stale-while-revalidate" => d.stale_while_revalidate = seconds(),
                    "stale-if-error" => d.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        d
    }

    /// Whether a request asks the cache not to answer without the origin: `no-cache`, or
    /// `max-age=0`.
    pub(super) fn revalidates(&self) -> bool {
        self.no_cache || self.max_age == Some(0)
    }
}

/// The statuses RFC 9110 §15.1 lets a cache store with a heuristic lifetime, when the
/// response says nothing: only these get the layer's default TTL.
pub(super) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 404 | 405 | 410 | 414 | 501
    )
}

/// The statuses RFC 5861 §4 calls errors: never stored, and a stale response inside its
/// `stale-if-error` window is served instead.
pub(super) fn is_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// What the layer's options say when the response does not.
#[derive(Debug, Clone, Copy)]
pub(super) struct Defaults {
    pub(super) ttl: Option<Duration>,
    pub(super) max_ttl: Duration,
    pub(super) stale_while_revalidate: Option<Duration>,
    pub(super) stale_if_error: Option<Duration>,
}

/// Whether and how long a response is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Kept fresh for `ttl`, then served stale for `stale` more; `shareable` when it may
    /// answer a request with `Authorization` (`public` or `s-maxage`).
    Store {
        ttl: Duration,
        stale: Option<Duration>,
        shareable: bool,
    },
    /// Not stored, and why (the `detail` of `Cache-Status`).
    NotStored(&'static str),
}

/// RFC 9111 §3 for a shared cache: what to do with a response of `status` and `headers` to
/// a request that had `Authorization` or not.
pub(super) fn verdict(
    request_authorized: bool,
    status: StatusCode,
    headers: &HeaderMap,
    defaults: &Defaults,
) -> Verdict {
    if matches!(status.as_u16(), 206 | 304) || status.is_informational() {
        return Verdict::NotStored("status");
    }
    if headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|n| n.trim() == "*"))
    }) {
        return Verdict::NotStored("vary-star");
    }
    let cc = Directives::of(headers);
    if cc.no_store {
        return Verdict::NotStored("no-store");
    }
    if cc.private {
        return Verdict::NotStored("private");
    }
    // Stored only to be revalidated on every use: without revalidation of stored entries,
    // storing it would serve nothing.
    if cc.no_cache {
        return Verdict::NotStored("no-cache");
    }
    if headers.contains_key(SET_COOKIE) {
        return Verdict::NotStored("set-cookie");
    }
    let shareable = cc.public || cc.s_maxage.is_some();
    if request_authorized && !shareable {
        return Verdict::NotStored("authorization");
    }
    let ttl = match cc.s_maxage.or(cc.max_age) {
        Some(0) => return Verdict::NotStored("max-age=0"),
        Some(seconds) => Duration::from_secs(seconds),
        None if !heuristically_cacheable(status) => return Verdict::NotStored("status"),
        None => match defaults.ttl {
            Some(ttl) => ttl,
            None => return Verdict::NotStored("no-ttl"),
        },
    };
    let ttl = ttl.min(defaults.max_ttl);
    let stale = if cc.must_revalidate {
        None
    } else {
        let from_response = cc
            .stale_while_revalidate
            .max(cc.stale_if_error)
            .map(Duration::from_secs);
        from_response
            .or(defaults.stale_while_revalidate.max(defaults.stale_if_error))
            .filter(|d| !d.is_zero())
            .map(|d| d.min(defaults.max_ttl))
    };
    Verdict::Store {
        ttl,
        stale,
        shareable,
    }
}

/// Whether the request carries credentials a shared cache must respect.
pub(super) fn authorized(headers: &HeaderMap) -> bool {
    headers.contains_key(AUTHORIZATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header value"));
        }
        h
    }

    const DEFAULTS: Defaults = Defaults {
        ttl: Some(Duration::from_secs(60)),
        max_ttl: Duration::from_secs(3600),
        stale_while_revalidate: None,
        stale_if_error: None,
    };

    #[test]
    fn s_maxage_wins_over_max_age_and_is_capped() {
        let h = headers(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(
            verdict(false, StatusCode::OK, &h, &DEFAULTS),
            Verdict::Store {
                ttl: Duration::from_secs(20),
                stale: None,
                shareable: true
            }
        );
        let h = headers(&[("cache-control", "max-age=999999")]);
        assert!(matches!(
            verdict(false, StatusCode::OK, &h, &DEFAULTS),
            Verdict::Store { ttl, .. } if ttl == Duration::from_secs(3600)
        ));
    }

    #[test]
    fn directives_split_across_lines_and_quotes() {
        let h = headers(&[
            ("cache-control", "public"),
            ("cache-control", "max-age=\"30\", stale-while-revalidate=5"),
        ]);
        let d = Directives::of(&h);
        assert!(d.public);
        assert_eq!(d.max_age, Some(30));
        assert_eq!(d.stale_while_revalidate, Some(5));
    }

    #[test]
    fn the_default_ttl_is_for_heuristic_statuses_only() {
        let h = HeaderMap::new();
        assert!(matches!(
            verdict(false, StatusCode::NOT_FOUND, &h, &DEFAULTS),
            Verdict::Store { .. }
        ));
        assert_eq!(
            verdict(false, StatusCode::FOUND, &h, &DEFAULTS),
            Verdict::NotStored("status")
        );
    }
}
