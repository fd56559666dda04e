//! Keys: scopes (namespaces, tenants) isolated from each other, adversarial key parts,
//! direct-API key checks, long keys, and the injectivity of rendering (property test).

use std::collections::HashSet;
use std::time::Duration;

use cache_core::{key, key::KeyBuf, Cache, Error, KeyTtl, Source};
use proptest::prelude::*;

use super::Raw;

const MB: usize = 1 << 20;

/// Characters that must never appear raw inside a rendered part.
fn structural(c: char) -> bool {
    matches!(c, ':' | '*' | '?' | '[' | ']' | '\\' | '{' | '}')
        || c.is_whitespace()
        || c.is_control()
}

fn assert_clean(rendered: &str, context: &str) {
    if let Some(c) = rendered.chars().find(|&c| structural(c)) {
        panic!(
            "{context}: `{}` holds {c:?}",
            rendered.escape_debug().take(200).collect::<String>()
        );
    }
}

fn short(s: &str) -> String {
    let shown: String = s.escape_debug().take(40).collect();
    if s.len() > 40 {
        format!("{shown}... ({} bytes)", s.len())
    } else {
        shown
    }
}

// ---- scopes ---------------------------------------------------------------------------------

#[tokio::test]
async fn namespaces_and_tenants_are_isolated() {
    for (b, root) in tests::backends().await {
        let handles: Vec<(&str, Cache)> = vec![
            ("root", root.clone()),
            ("ns a", root.namespace("a")),
            ("ns b", root.namespace("b")),
            ("tenant t1", root.tenant("t1")),
            ("tenant t2", root.tenant("t2")),
            ("t1 / ns a", root.tenant("t1").namespace("a")),
            ("ns a / t1", root.namespace("a").tenant("t1")),
            ("tenant 7", root.tenant(7u64)),
        ];
        for (name, cache) in &handles {
            cache
                .set("k", &format!("value of {name}"), None)
                .await
                .expect(b);
        }
        let mut full_keys = HashSet::new();
        for (name, cache) in &handles {
            assert_eq!(
                cache.get::<String>("k").await.expect(b),
                Some(format!("value of {name}")),
                "{b}: {name} reads its own value"
            );
            let full = cache.full_key("k").expect(b);
            assert!(full.starts_with(cache.key_prefix()), "{b}: {name}: {full}");
            assert!(
                full_keys.insert(full.clone()),
                "{b}: {name}: full key {full} shared"
            );
        }
        // Sibling scopes are not prefixes of one another (handles 1..=4 and 7).
        let siblings: Vec<&(&str, Cache)> = handles[1..5].iter().chain(&handles[7..]).collect();
        for (i, (n1, c1)) in siblings.iter().map(|h| (h.0, &h.1)).enumerate() {
            for (n2, c2) in siblings.iter().skip(i + 1).map(|h| (h.0, &h.1)) {
                let (p1, p2) = (c1.key_prefix(), c2.key_prefix());
                assert!(
                    !p1.starts_with(p2) && !p2.starts_with(p1),
                    "{b}: {n1} `{p1}` and {n2} `{p2}` overlap"
                );
            }
        }
        // Deleting in one scope leaves the others.
        assert!(handles[1].1.delete("k").await.expect(b), "{b}");
        for (name, cache) in handles.iter().filter(|(n, _)| *n != "ns a") {
            assert!(cache.exists("k").await.expect(b), "{b}: {name}");
        }

        if root.backend() == Source::Redis {
            let mut raw = Raw::shared().await;
            // Scopes with no child scope in this test: exactly their own key.
            for (name, cache) in [&handles[2], &handles[4], &handles[7]] {
                let expected = vec![cache.full_key("k").expect(b)];
                assert_eq!(
                    raw.keys_under(cache.key_prefix()).await,
                    expected,
                    "{name}: only its own key lives under its prefix"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_namespace_can_override_the_default_ttl() {
    let ten_minutes = Duration::from_secs(600);
    for (b, root) in tests::backends().await {
        let screening = root.namespace("screening").with_default_ttl(ten_minutes);
        assert_eq!(screening.default_ttl(), Some(ten_minutes), "{b}");
        assert_eq!(
            root.default_ttl(),
            Some(Duration::from_secs(3600)),
            "{b}: the root keeps its own"
        );
        assert_eq!(
            root.namespace("other").default_ttl(),
            root.default_ttl(),
            "{b}: a namespace inherits by default"
        );
        assert_eq!(
            screening.tenant("t").default_ttl(),
            Some(ten_minutes),
            "{b}: scopes below inherit the override"
        );

        screening.set("k", &1u8, None).await.expect(b);
        root.set("k", &1u8, None).await.expect(b);
        match screening.ttl("k").await.expect(b) {
            KeyTtl::Expires(d) => assert!(
                d > ten_minutes - Duration::from_secs(5) && d <= ten_minutes,
                "{b}: {d:?}"
            ),
            other => panic!("{b}: {other:?}"),
        }
        match root.ttl("k").await.expect(b) {
            KeyTtl::Expires(d) => assert!(d > ten_minutes * 5, "{b}: {d:?}"),
            other => panic!("{b}: {other:?}"),
        }
        screening
            .set("explicit", &1u8, Duration::from_secs(5))
            .await
            .expect(b);
        assert!(
            matches!(screening.ttl("explicit").await.expect(b), KeyTtl::Expires(d) if d <= Duration::from_secs(5)),
            "{b}: an explicit TTL wins over the namespace's default"
        );
        if root.backend() == Source::Redis {
            let pttl = Raw::shared()
                .await
                .pttl(&screening.full_key("k").expect(b))
                .await;
            assert!((595_000..=600_000).contains(&pttl), "redis PTTL {pttl}");
        }

        // A short default TTL expires.
        let brief = root
            .namespace("brief")
            .with_default_ttl(Duration::from_millis(80));
        brief.set("k", &1u8, None).await.expect(b);
        eventually!(
            format!("{b}: an 80 ms namespace default expires"),
            brief.get::<u8>("k").await.expect(b).is_none()
        );
        assert_eq!(root.get::<u8>("k").await.expect(b), Some(1), "{b}");
    }
}

#[tokio::test]
async fn hostile_tenant_ids_cannot_reach_other_tenants() {
    for (b, root) in tests::backends().await {
        let victim = root.tenant("t1");
        victim.set("secret", &"t1's", None).await.expect(b);
        victim.set("x:secret", &"t1's", None).await.expect(b);
        victim
            .set_tagged("tagged", &"t1's", None, &["org"])
            .await
            .expect(b);

        for id in [
            "t1:", "t1:x", ":t1", "t1*", "*", "t?", "[t]1", "{t1}", "t1\n", "t1 ", "", "@t1",
            "t1:@t1", "t1\\", "%74%31", "~",
        ] {
            let evil = root.tenant(id);
            let ctx = format!("{b}: tenant {:?}", id);
            let prefix = evil.key_prefix();
            let (ns, rest) = prefix.split_once(':').expect("prefix has a namespace");
            assert_eq!(ns, root.key_prefix().trim_end_matches(':'), "{ctx}");
            let tenant_part = rest.strip_suffix(':').expect("prefix ends in `:`");
            assert_clean(tenant_part, &ctx);
            assert!(
                !prefix.starts_with(victim.key_prefix())
                    && !victim.key_prefix().starts_with(prefix),
                "{ctx}: `{prefix}` overlaps `{}`",
                victim.key_prefix()
            );
            for k in ["secret", "x:secret", "tagged"] {
                assert_ne!(
                    evil.full_key(k).expect(b),
                    victim.full_key(k).expect(b),
                    "{ctx}"
                );
                assert_eq!(evil.get::<String>(k).await.expect(b), None, "{ctx}: {k}");
                assert!(!evil.delete(k).await.expect(b), "{ctx}: {k}");
            }
            evil.invalidate_tag("org").await.expect(b);
            evil.set("secret", &"evil", None).await.expect(b);
        }
        for k in ["secret", "x:secret", "tagged"] {
            assert_eq!(
                victim.get::<String>(k).await.expect(b).as_deref(),
                Some("t1's"),
                "{b}: t1's {k} untouched"
            );
        }
        if root.backend() == Source::Redis {
            let mut raw = Raw::shared().await;
            let under_victim = raw.keys_under(victim.key_prefix()).await;
            assert!(
                under_victim
                    .iter()
                    .all(|k| k.strip_prefix(victim.key_prefix()).is_some()),
                "{under_victim:?}"
            );
            let mut expected: Vec<String> = ["secret", "x:secret", "tagged"]
                .iter()
                .map(|k| victim.full_key(k).expect(b))
                .collect();
            expected.sort();
            let values: Vec<String> = under_victim
                .into_iter()
                .filter(|k| !k.contains('~'))
                .collect();
            assert_eq!(values, expected, "only t1's own values under its prefix");
        }
    }
}

// ---- key parts ------------------------------------------------------------------------------

fn adversarial_parts() -> Vec<String> {
    let mut parts: Vec<String> = [
        ":",
        "*",
        "?",
        "[a]",
        "{x}",
        "\n",
        " ",
        "",
        "a:b",
        "a*b?c",
        "\\",
        "%",
        "%3A",
        "~",
        "#",
        "@t1",
        ",",
        "(",
        ")",
        "1(a)",
        "\t\r\0\u{7f}\u{1b}",
        "\u{a0}",
        "\u{2028}",
        "\u{3000}",
        "émoji✓",
        "日本語のキー",
        "Ωmega",
        "🦀",
        "x y",
        "user:{42}:*",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    parts.push("x".repeat(MB));
    parts.push(":".repeat(MB));
    parts.push("é".repeat(MB / 2));
    parts.push(format!("{}!", "x".repeat(MB - 1)));
    parts
}

#[tokio::test]
async fn adversarial_key_parts_are_escaped_and_round_trip() {
    let parts = adversarial_parts();
    let mut rendered = Vec::new();
    for part in &parts {
        let ctx = format!("part {}", short(part));
        let key = key!("p", part, "end");
        let segments: Vec<&str> = key.split(':').collect();
        assert_eq!(
            segments.len(),
            3,
            "{ctx}: the part added a level: {}",
            short(&key)
        );
        assert_eq!((segments[0], segments[2]), ("p", "end"), "{ctx}");
        let escaped = segments[1];
        assert_clean(escaped, &ctx);
        if part.len() >= MB {
            assert!(
                escaped.len() == 33
                    && escaped.starts_with('#')
                    && escaped[1..].bytes().all(|c| c.is_ascii_hexdigit()),
                "{ctx}: a long part becomes a short digest, got {}",
                short(escaped)
            );
        }
        // The same through KeyBuf.
        let mut buf = KeyBuf::new();
        buf.literal("p:");
        buf.part(part.as_str());
        buf.literal(":end");
        assert_eq!(buf.as_str(), key, "{ctx}");
        rendered.push(key);
    }
    let distinct: HashSet<&String> = rendered.iter().collect();
    assert_eq!(
        distinct.len(),
        parts.len(),
        "different parts gave the same key"
    );

    for (b, cache) in tests::backends().await {
        for (i, key) in rendered.iter().enumerate() {
            cache.set(key, &i, None).await.expect(b);
        }
        let mut raw = if cache.backend() == Source::Redis {
            Some(Raw::shared().await)
        } else {
            None
        };
        for (i, (key, part)) in rendered.iter().zip(&parts).enumerate() {
            assert_eq!(
                cache.get::<usize>(key).await.expect(b),
                Some(i),
                "{b}: part {}",
                short(part)
            );
            let full = cache.full_key(key).expect(b);
            assert!(full.len() < 200, "{b}: {}", short(&full));
            for level in full.split(':') {
                assert_clean(level, &format!("{b}: full key of part {}", short(part)));
            }
            if let Some(raw) = raw.as_mut() {
                assert!(
                    raw.get(&full).await.is_some(),
                    "redis holds {}",
                    short(&full)
                );
            }
        }
        assert_eq!(
            cache
                .delete_many(&rendered.iter().map(String::as_str).collect::<Vec<_>>())
                .await
                .expect(b),
            rendered.len() as u64,
            "{b}"
        );
    }
}

#[test]
fn non_string_parts_render_distinctly() {
    let keys = [
        key!("k", 42u64),
        key!("k", -42i64),
        key!("k", "42x"),
        key!("k", true),
        key!("k", None::<&str>),
        key!("k", Some("~")),
        key!("k", Vec::<String>::new()),
        key!("k", vec![String::new()]),
        key!("k", vec!["a", "b"]),
        key!("k", vec!["a,b"]),
        key!("k", ("a", "b")),
        key!("k", ("a,b", "")),
        key!("k", 'c'),
        key!("k", &&"ref"),
        key!("k", std::sync::Arc::new("arc".to_owned())),
        key!("k", uuid::Uuid::nil()),
    ];
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    for k in &keys {
        let (_, part) = k.split_once(':').expect("two levels");
        assert_clean(part, k);
    }
}

// ---- direct-API keys ------------------------------------------------------------------------

fn is_invalid_key<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::InvalidKey { .. }))
}

#[tokio::test]
async fn invalid_direct_keys_are_typed_errors() {
    let long_bad = format!("{}\n", "k".repeat(MB));
    let bad_keys = [
        "",
        " ",
        "\n",
        "a b",
        "a\nb",
        "\t",
        "\r",
        "\0",
        "a\u{7f}",
        "\u{a0}",
        "~",
        "~tag:x",
        long_bad.as_str(),
    ];
    for (b, cache) in tests::backends().await {
        for bad in bad_keys {
            let ctx = format!("{b}: key {}", short(bad));
            let d = Duration::from_secs(1);
            assert!(is_invalid_key(cache.get::<u8>(bad).await), "{ctx}: get");
            assert!(is_invalid_key(cache.lookup::<u8>(bad).await), "{ctx}");
            assert!(is_invalid_key(cache.set(bad, &1u8, None).await), "{ctx}");
            assert!(
                is_invalid_key(cache.set_tagged("ok", &1u8, None, &[bad]).await),
                "{ctx}: as a tag"
            );
            assert!(is_invalid_key(cache.invalidate_tag(bad).await), "{ctx}");
            assert!(is_invalid_key(cache.delete(bad).await), "{ctx}");
            assert!(
                is_invalid_key(cache.delete_many(&["ok", bad]).await),
                "{ctx}"
            );
            assert!(is_invalid_key(cache.exists(bad).await), "{ctx}");
            assert!(is_invalid_key(cache.ttl(bad).await), "{ctx}");
            assert!(is_invalid_key(cache.expire(bad, d).await), "{ctx}");
            assert!(is_invalid_key(cache.touch(bad).await), "{ctx}");
            assert!(is_invalid_key(cache.incr(bad, 1).await), "{ctx}");
            assert!(is_invalid_key(cache.mget::<u8>(&[bad]).await), "{ctx}");
            assert!(
                is_invalid_key(cache.mset(&[(bad, 1u8)], None).await),
                "{ctx}"
            );
            assert!(is_invalid_key(cache.full_key(bad)), "{ctx}");
            let err = cache.get::<u8>(bad).await.expect_err(b);
            assert!(!err.is_unavailable(), "{ctx}");
            let message = err.to_string();
            assert!(
                message.len() < 1024,
                "{ctx}: the message quotes a shortened key, got {} bytes",
                message.len()
            );
            let v: u8 = cache.get_or_set(bad, None, || async { 5 }).await;
            assert_eq!(v, 5, "{ctx}: get_or_set computes without the cache");
            let v: Result<u8, ()> = cache.try_get_or_set(bad, None, || async { Ok(6) }).await;
            assert_eq!(v, Ok(6), "{ctx}");
        }
        assert!(!cache.exists("ok").await.expect(b), "{b}: nothing written");
        assert_eq!(cache.stats().writes, 0, "{b}");
    }
}

#[tokio::test]
async fn direct_keys_may_use_levels_globs_and_braces() {
    for (b, cache) in tests::backends().await {
        for (i, key) in ["user:42", "a*b?[c]", "{tag}:x", "100%", "é:✓", "#x", "a~b"]
            .iter()
            .enumerate()
        {
            cache.set(key, &i, None).await.expect(b);
            assert_eq!(
                cache.get::<usize>(key).await.expect(b),
                Some(i),
                "{b}: {key}"
            );
            assert_eq!(
                cache.full_key(key).expect(b),
                format!("{}{key}", cache.key_prefix()),
                "{b}"
            );
        }
    }
}

#[tokio::test]
async fn a_one_megabyte_direct_key_is_hashed() {
    // (Hashing a megabyte is slow in a debug build: the 1 MB key does the round trip, keys
    // just over the limit check the rest.)
    let huge = "k".repeat(MB);
    let long = "k".repeat(cache_core::key::MAX_KEY_LEN + 1);
    let other = format!("{}j", "k".repeat(cache_core::key::MAX_KEY_LEN));
    let tagged = format!("{{user7}}:{long}");
    for (b, root) in tests::backends().await {
        let full = root.full_key(&huge).expect(b);
        assert!(full.len() < 200, "{b}: {}", short(&full));
        assert!(full.starts_with(root.key_prefix()), "{b}: {full}");
        root.set(&huge, &"huge", None).await.expect(b);
        assert_eq!(
            root.get::<String>(&huge).await.expect(b).as_deref(),
            Some("huge"),
            "{b}"
        );
        if root.backend() == Source::Redis {
            assert!(Raw::shared().await.get(&full).await.is_some());
        }
        assert!(root.delete(&huge).await.expect(b), "{b}");

        for cache in [root.clone(), root.tenant("t1")] {
            let full = cache.full_key(&long).expect(b);
            assert!(full.len() < 200, "{b}: {}", short(&full));
            assert!(full.starts_with(cache.key_prefix()), "{b}: {full}");
            assert_ne!(full, cache.full_key(&other).expect(b), "{b}");
            let full_tagged = cache.full_key(&tagged).expect(b);
            assert!(
                full_tagged.starts_with(&format!("{}~h:{{user7}}", cache.key_prefix())),
                "{b}: keeps the hash tag: {full_tagged}"
            );
            cache.set(&long, &"long", None).await.expect(b);
            cache.set(&other, &"other", None).await.expect(b);
            assert_eq!(
                cache
                    .mget::<String>(&[long.as_str(), other.as_str(), huge.as_str()])
                    .await
                    .expect(b),
                vec![Some("long".to_owned()), Some("other".to_owned()), None],
                "{b}"
            );
        }
        assert_eq!(
            root.tenant("t1").get::<String>(&huge).await.expect(b),
            None,
            "{b}"
        );
    }
}

/// A hashed long key is stored as `prefix~h:#<digest>`; that form is reserved (`~`), so no
/// short direct key can name the same entry.
#[tokio::test]
async fn a_hashed_key_does_not_collide_with_a_short_key() {
    let long = "k".repeat(cache_core::key::MAX_KEY_LEN + 1);
    for (b, cache) in tests::backends().await {
        let full = cache.full_key(&long).expect(b);
        let digest_form = full
            .strip_prefix(cache.key_prefix())
            .expect("under the prefix")
            .to_owned();
        cache.set(&long, &"long", None).await.expect(b);
        assert!(
            matches!(
                cache.get::<String>(&digest_form).await,
                Err(Error::InvalidKey { .. })
            ),
            "{b}: `{digest_form}` must not be usable as a direct key"
        );
        let without_marker = digest_form.trim_start_matches("~h:");
        assert_eq!(
            cache.get::<String>(without_marker).await.expect(b),
            None,
            "{b}: `{without_marker}` reads the long key's value"
        );
        assert_ne!(cache.full_key(without_marker).expect(b), full, "{b}");
    }
}

// ---- injectivity ----------------------------------------------------------------------------

/// Strings drawn mostly from characters that matter to the rendering (separators, markers,
/// escapes), and sometimes long enough to be digested.
fn part_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[ab:,~()%#*?{}\\[\\] \n@0-9]{0,6}",
        2 => ".{0,4}",
        1 => "[ab,]{120,140}",
    ]
}

type Args = (String, u64, Option<Option<String>>, Vec<String>);

fn args_strategy() -> impl Strategy<Value = Args> {
    (
        part_strategy(),
        prop_oneof![0..4u64, any::<u64>()],
        proptest::option::of(proptest::option::of(part_strategy())),
        proptest::collection::vec(part_strategy(), 0..4),
    )
}

fn key_of(a: &Args) -> String {
    key!("f", a.0, a.1, a.2, a.3)
}

fn tuple_key_of(a: &Args) -> String {
    let mut k = KeyBuf::new();
    k.literal("f:");
    k.part(a);
    k.into_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn different_argument_tuples_give_different_keys(a in args_strategy(), b in args_strategy()) {
        prop_assert_eq!(key_of(&a), key_of(&a.clone()));
        prop_assume!(a != b);
        prop_assert_ne!(key_of(&a), key_of(&b));
        prop_assert_ne!(tuple_key_of(&a), tuple_key_of(&b));
        for key in [key_of(&a), tuple_key_of(&a)] {
            prop_assert!(!key.chars().any(|c| matches!(c, '*' | '?' | '[' | ']' | '\\' | '{' | '}') || c.is_whitespace() || c.is_control()), "{:?}", key);
        }
        prop_assert_eq!(key_of(&a).matches(':').count(), 4);
    }

    #[test]
    fn near_identical_tuples_give_different_keys(a in args_strategy(), i in 0usize..4, extra in "[a:,~]{1,2}") {
        // b differs from a in one component only, by a few structural characters.
        let mut b = a.clone();
        match i {
            0 => b.0.push_str(&extra),
            1 => b.1 = b.1.wrapping_add(1),
            // None -> Some(None) -> Some(Some("")) -> None: the nested option's near misses.
            2 => b.2 = match b.2.take() {
                None => Some(None),
                Some(None) => Some(Some(String::new())),
                Some(Some(s)) if s.is_empty() => None,
                Some(Some(s)) => Some(Some(format!("{s}{extra}"))),
            },
            _ => b.3.push(extra.clone()),
        }
        prop_assert_ne!(key_of(&a), key_of(&b));
        prop_assert_ne!(tuple_key_of(&a), tuple_key_of(&b));
    }
}
