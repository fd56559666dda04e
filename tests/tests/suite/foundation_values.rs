//! Values: another type, garbage or truncated bytes are misses (counted), never panics;
//! large values are compressed; raw bytes are stored as bytes.

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_core::{Lookup, Source};
use serde::{Deserialize, Serialize};

use super::Raw;

const MB: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
}

fn order() -> Order {
    Order {
        id: 17,
        customer: "ann".into(),
        lines: vec![("apple".into(), 3), ("pear".into(), 1)],
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Renamed {
    identifier: u64,
}

#[tokio::test]
async fn a_value_read_as_another_type_is_a_miss() {
    for (b, cache) in tests::backends().await {
        cache.set("order", &order(), None).await.expect(b);
        cache.set("number", &42u64, None).await.expect(b);
        cache.set("text", &"forty-two", None).await.expect(b);
        cache.set("bytes", &vec![1u8, 2, 3], None).await.expect(b);

        assert_eq!(cache.get::<u64>("order").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<String>("order").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<Renamed>("order").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<Vec<u8>>("order").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<Order>("number").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<bool>("number").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<u8>("text").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<String>("bytes").await.expect(b), None, "{b}");
        assert_eq!(cache.get::<Order>("bytes").await.expect(b), None, "{b}");
        assert_eq!(
            cache.lookup::<u64>("order").await.expect(b),
            Lookup::Miss,
            "{b}"
        );
        assert_eq!(
            cache.mget::<u64>(&["order", "number"]).await.expect(b),
            vec![None, Some(42)],
            "{b}"
        );
        let s = cache.stats();
        assert_eq!(s.decode_errors, 11, "{b}: {s:?}");
        assert_eq!(s.misses, 11, "{b}: {s:?}");

        // The value is still there for its own type.
        assert_eq!(
            cache.get::<Order>("order").await.expect(b),
            Some(order()),
            "{b}"
        );
    }
}

#[tokio::test]
async fn get_or_set_with_another_type_recomputes() {
    for (b, cache) in tests::backends().await {
        let calls = AtomicUsize::new(0);
        let o: Order = cache
            .get_or_set("k", None, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                order()
            })
            .await;
        assert_eq!(o, order(), "{b}");
        let n: u64 = cache
            .get_or_set("k", None, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                7
            })
            .await;
        assert_eq!(n, 7, "{b}: computed, the stored Order is not a u64");
        let again: u64 = cache
            .get_or_set("k", None, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                8
            })
            .await;
        assert_eq!(again, 7, "{b}: the u64 replaced it");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{b}");
        assert_eq!(cache.get::<Order>("k").await.expect(b), None, "{b}");

        // A value written by `set` and read by `get_or_set` as a struct of the same shape.
        cache.set("o", &order(), None).await.expect(b);
        let o: Order = cache
            .get_or_set("o", None, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                order()
            })
            .await;
        assert_eq!(o, order(), "{b}");
        // ... and as another type: computed, not a panic.
        let r: Renamed = cache
            .get_or_set("o", None, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Renamed { identifier: 1 }
            })
            .await;
        assert_eq!(r, Renamed { identifier: 1 }, "{b}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{b}");
    }
}

/// Bytes nobody would write: not an envelope, a broken envelope, a future format version,
/// an encrypted flag without a key, a compressed flag over bad data, a tag list that runs
/// past the end.
fn garbage() -> Vec<Vec<u8>> {
    let mut header = vec![0xC7u8, 1, 0, 0];
    header.extend_from_slice(&[0; 36]);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut h = header.clone();
        f(&mut h);
        h
    };
    vec![
        Vec::new(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"hello".to_vec(),
        b"{\"id\":17}".to_vec(),
        b"[1,2,3]".to_vec(),
        b"12a".to_vec(),
        b"-".to_vec(),
        vec![0xC7],
        vec![0xC7; 41],
        with(&|h| h.extend_from_slice(b"{not json")),
        with(&|h| {
            h[1] = 2;
            h.extend_from_slice(b"1")
        }),
        with(&|h| {
            h[2] = 2;
            h.extend_from_slice(b"1")
        }),
        with(&|h| {
            h[2] = 1;
            h.extend_from_slice(&[0x10, 0, 0, 0, 0xff, 0xff, 0xff])
        }),
        with(&|h| {
            h[2] = 1;
            h.extend_from_slice(&[0x10, 0])
        }),
        with(&|h| {
            h[3] = 3;
            h.extend_from_slice(&[0xff, 0xff, b'a'])
        }),
        with(&|h| {
            h[3] = 1;
            h.extend_from_slice(&[2, 0, 0xff, 0xfe, 1, 2, 3, 4, 5, 6, 7, 8])
        }),
        (0..=255u8).cycle().take(5000).collect(),
    ]
}

#[tokio::test]
async fn garbage_bytes_under_a_key_are_a_miss_on_redis() {
    let cache = tests::redis_cache();
    let mut raw = Raw::shared().await;
    let garbage = garbage();
    for (i, bytes) in garbage.iter().enumerate() {
        let key = format!("g{i}");
        raw.set(&cache.full_key(&key).expect("key"), bytes).await;
        assert_eq!(
            cache.get::<Order>(&key).await.expect("get"),
            None,
            "garbage #{i} as Order"
        );
        assert_eq!(
            cache.get::<Vec<u8>>(&key).await.expect("get"),
            None,
            "garbage #{i} as Vec<u8>"
        );
        assert_eq!(
            cache.lookup::<String>(&key).await.expect("lookup"),
            Lookup::Miss,
            "garbage #{i} as String"
        );
    }
    let s = cache.stats();
    let n = garbage.len() as u64 * 3;
    assert_eq!(
        (s.decode_errors, s.misses, s.hits),
        (n, n, 0),
        "every garbage read is a counted decode error: {s:?}"
    );

    // get_or_set over garbage computes and replaces it.
    let o: Order = cache.get_or_set("g1", None, || async { order() }).await;
    assert_eq!(o, order());
    assert_eq!(cache.get::<Order>("g1").await.expect("get"), Some(order()));
    // mget reports it in its slot.
    assert_eq!(
        cache.mget::<Order>(&["g1", "g2"]).await.expect("mget"),
        vec![Some(order()), None]
    );
    // A plain integer written by someone else reads as a number (as counters do).
    raw.set(&cache.full_key("plain").expect("key"), b"-12")
        .await;
    assert_eq!(cache.get::<i64>("plain").await.expect("get"), Some(-12));
}

#[tokio::test]
async fn truncated_envelopes_are_a_miss_on_redis() {
    let cache = tests::redis_cache();
    let mut raw = Raw::shared().await;
    let full = cache.full_key("o").expect("key");
    cache
        .set_tagged("o", &order(), None, &["t"])
        .await
        .expect("set");
    let whole = raw.get(&full).await.expect("stored");
    let before = cache.stats();
    for n in 0..whole.len() {
        raw.set(&full, &whole[..n]).await;
        assert_eq!(
            cache.get::<Order>("o").await.expect("get"),
            None,
            "{n} of {} bytes",
            whole.len()
        );
    }
    let after = cache.stats();
    assert_eq!(after.hits, before.hits, "no truncation reads as a value");
    assert_eq!(after.misses - before.misses, whole.len() as u64);
    assert_eq!(
        after.decode_errors - before.decode_errors,
        whole.len() as u64,
        "each counted: {after:?}"
    );

    // A compressed value, truncated.
    let big: Vec<String> = (0..20_000).map(|i| format!("line {i}")).collect();
    cache.set("big", &big, None).await.expect("set");
    let full = cache.full_key("big").expect("key");
    let whole = raw.get(&full).await.expect("stored");
    for n in [41, 44, 45, 100, whole.len() / 2, whole.len() - 1] {
        raw.set(&full, &whole[..n]).await;
        assert_eq!(
            cache.get::<Vec<String>>("big").await.expect("get"),
            None,
            "{n} of {} compressed bytes",
            whole.len()
        );
    }
    raw.set(&full, &whole).await;
    assert_eq!(
        cache.get::<Vec<String>>("big").await.expect("get"),
        Some(big)
    );
}

/// A compressed payload whose size prefix claims gigabytes is a miss. (The LZ4 decoder
/// allocates the claimed size up front: on a machine that cannot map 4 GiB this aborts.)
#[tokio::test]
async fn a_compressed_payload_claiming_gigabytes_is_a_miss_on_redis() {
    let cache = tests::redis_cache();
    let mut raw = Raw::shared().await;
    let mut bytes = vec![0xC7u8, 1, 1, 0];
    bytes.extend_from_slice(&[0; 36]);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x10, b'x']);
    raw.set(&cache.full_key("huge").expect("key"), &bytes).await;
    assert_eq!(cache.get::<String>("huge").await.expect("get"), None);
    assert_eq!(cache.stats().decode_errors, 1);
}

/// The envelope records no payload length or checksum: a raw-bytes or numeric payload cut
/// short still parses, and reads as a different value instead of a miss.
#[tokio::test]
async fn truncated_payloads_that_still_parse_are_a_miss() {
    let cache = tests::redis_cache();
    let mut raw = Raw::shared().await;
    let bytes: Vec<u8> = (0..100).collect();
    cache.set("bytes", &bytes, None).await.expect("set");
    cache.set("number", &123_456u64, None).await.expect("set");
    for (key, cut) in [("bytes", 10), ("number", 3)] {
        let full = cache.full_key(key).expect("key");
        let whole = raw.get(&full).await.expect("stored");
        raw.set(&full, &whole[..whole.len() - cut]).await;
    }
    assert_eq!(
        cache.get::<Vec<u8>>("bytes").await.expect("get"),
        None,
        "90 of 100 bytes read back as the value"
    );
    assert_eq!(
        cache.get::<u64>("number").await.expect("get"),
        None,
        "123456 cut to 123 read back as the value"
    );
}

#[tokio::test]
async fn large_values_round_trip_compressed() {
    let text: String = "the quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(MB)
        .collect();
    // Incompressible: xorshift bytes.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..MB)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    for (b, cache) in tests::backends().await {
        cache.set("text", &text, None).await.expect(b);
        cache.set("noise", &noise, None).await.expect(b);
        assert!(
            cache.get::<String>("text").await.expect(b) == Some(text.clone()),
            "{b}: 1 MB of text round-trips"
        );
        assert!(
            cache.get::<Vec<u8>>("noise").await.expect(b) == Some(noise.clone()),
            "{b}: 1 MB of noise round-trips"
        );
        if cache.backend() == Source::Redis {
            let mut raw = Raw::shared().await;
            let stored = raw.strlen(&cache.full_key("text").expect(b)).await;
            assert!(
                stored < MB / 20,
                "1 MB of repetitive text stored in {stored} bytes: not compressed"
            );
            let stored = raw.strlen(&cache.full_key("noise").expect(b)).await;
            assert!(
                (MB..MB + 1024).contains(&stored),
                "incompressible bytes stored as they are (plus a header): {stored}"
            );
        }
    }
}

#[tokio::test]
async fn raw_bytes_are_stored_as_bytes() {
    let bytes: Vec<u8> = (0..=255).collect();
    let shared = bytes::Bytes::from_static(b"\x00\xff\x7b\x5b bytes, not JSON \xc7");
    for (b, cache) in tests::backends().await {
        cache.set("vec", &bytes, None).await.expect(b);
        cache.set("bytes", &shared, None).await.expect(b);
        cache.set("empty", &Vec::<u8>::new(), None).await.expect(b);
        assert_eq!(
            cache.get::<Vec<u8>>("vec").await.expect(b),
            Some(bytes.clone()),
            "{b}"
        );
        assert_eq!(
            cache.get::<bytes::Bytes>("bytes").await.expect(b),
            Some(shared.clone()),
            "{b}"
        );
        assert_eq!(
            cache.get::<bytes::Bytes>("vec").await.expect(b).as_deref(),
            Some(&bytes[..]),
            "{b}: raw bytes read as either raw type"
        );
        assert_eq!(
            cache.get::<Vec<u8>>("empty").await.expect(b),
            Some(Vec::new()),
            "{b}"
        );
        assert_eq!(
            cache.get::<Vec<u32>>("vec").await.expect(b),
            None,
            "{b}: raw bytes are not a JSON array"
        );
        assert_eq!(
            cache.mget::<Vec<u8>>(&["vec", "missing"]).await.expect(b),
            vec![Some(bytes.clone()), None],
            "{b}"
        );
        if cache.backend() == Source::Redis {
            let mut raw = Raw::shared().await;
            let stored = raw
                .get(&cache.full_key("vec").expect(b))
                .await
                .expect("stored");
            assert!(stored.ends_with(&bytes), "the exact bytes end the value");
            assert!(
                stored.len() < bytes.len() + 64,
                "a header, then the bytes: {} bytes",
                stored.len()
            );
            assert!(!stored.windows(4).any(|w| w == b"0,1,"), "not a JSON array");
            let stored = raw
                .get(&cache.full_key("bytes").expect(b))
                .await
                .expect("stored");
            assert!(stored.ends_with(&shared));
        }
    }
}
