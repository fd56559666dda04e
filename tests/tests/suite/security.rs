//! Encryption of values at rest (round trip, wrong key, tampering, truncation, rotation, per
//! namespace) on both backends, and secrets kept out of every `Debug`, `Display` and log line.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{cached, Cache, CacheBuilder, EncryptionKey, Error};
use serde::{Deserialize, Serialize};

use crate::foundation::Raw;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    user: String,
    token: String,
}

const SECRET_VALUE: &str = "value-secret-7f3a9c";

fn session() -> Session {
    Session {
        user: "ann".into(),
        token: SECRET_VALUE.into(),
    }
}

fn key(n: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([n; 32])
}

fn b64(n: u8) -> String {
    // The base64 of [n; 32], without a base64 crate in the tests: 32 bytes are 10 groups of
    // three plus two bytes.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = [n; 32];
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out.push('=');
    out
}

/// Both backends, built by `configure` (the same namespace for both cases of a backend is
/// not needed: each test works inside one root).
fn encrypted_backends(k: EncryptionKey) -> Vec<(&'static str, Cache)> {
    crate::foundation::backends_with(move |b| b.encryption_key(k.clone()))
}

#[tokio::test]
async fn encrypted_values_round_trip_and_are_not_readable_in_redis() {
    let mut raw = Raw::shared().await;
    for (b, cache) in encrypted_backends(key(1)) {
        assert!(cache.is_encrypted(), "{b}");
        cache.set("s", &session(), None).await.expect(b);
        cache
            .set("n", &42u64, Duration::from_secs(60))
            .await
            .expect(b);
        cache.set("bytes", &vec![1u8, 2, 3], None).await.expect(b);
        let big = SECRET_VALUE.repeat(1000); // compressed, then encrypted
        cache.set("big", &big, None).await.expect(b);
        cache
            .set_tagged("tagged", &session(), None, &["org:1"])
            .await
            .expect(b);
        cache
            .mset(&[("m1", 1u8), ("m2", 2u8)], None)
            .await
            .expect(b);
        assert_eq!(
            cache.get::<Session>("s").await.expect(b),
            Some(session()),
            "{b}"
        );
        assert_eq!(cache.get::<u64>("n").await.expect(b), Some(42), "{b}");
        assert_eq!(
            cache.get::<Vec<u8>>("bytes").await.expect(b),
            Some(vec![1, 2, 3]),
            "{b}"
        );
        assert_eq!(
            cache.get::<String>("big").await.expect(b),
            Some(big.clone()),
            "{b}"
        );
        assert_eq!(
            cache.get::<Session>("tagged").await.expect(b),
            Some(session()),
            "{b}"
        );
        assert_eq!(
            cache.mget::<u8>(&["m1", "m2", "absent"]).await.expect(b),
            vec![Some(1), Some(2), None],
            "{b}"
        );
        // Tags keep working: their versions stay readable metadata.
        cache.invalidate_tag("org:1").await.expect(b);
        assert_eq!(cache.get::<Session>("tagged").await.expect(b), None, "{b}");
        // get_or_set stores encrypted values and reads them back.
        let v: Session = cache
            .get_or_set("computed", None, || async { session() })
            .await;
        assert_eq!(v, session());
        let again: Session = cache
            .get_or_set("computed", None, || async { unreachable!("a hit") })
            .await;
        assert_eq!(again, session(), "{b}");
        let s = cache.stats();
        assert_eq!((s.decode_errors, s.backend_errors), (0, 0), "{b}: {s:?}");
        if b == "redis" {
            for k in ["s", "big", "computed"] {
                let stored = raw
                    .get(&cache.full_key(k).expect("key"))
                    .await
                    .expect("stored");
                assert_eq!(stored[2] & 2, 2, "the encrypted flag");
                assert!(
                    !stored
                        .windows(SECRET_VALUE.len())
                        .any(|w| w == SECRET_VALUE.as_bytes()),
                    "{k}: plaintext in redis"
                );
                assert!(!stored.windows(3).any(|w| w == b"ann"), "{k}");
            }
        }
    }
}

#[cached(cache = cache, skip = [cache], key = "user:<id>", ttl = "1h")]
async fn load_session(cache: &Cache, id: u64) -> Session {
    let _ = id;
    session()
}

#[tokio::test]
async fn cached_functions_work_on_an_encrypted_cache() {
    let mut raw = Raw::shared().await;
    for (b, cache) in encrypted_backends(key(2)) {
        assert_eq!(load_session(&cache, 1).await, session(), "{b}");
        assert_eq!(load_session(&cache, 1).await, session(), "{b}");
        let s = cache.stats();
        assert_eq!((s.computes, s.hits), (1, 1), "{b}: {s:?}");
        if b == "redis" {
            let stored = raw
                .get(&cache.full_key("user:1").expect("key"))
                .await
                .expect("stored");
            assert!(!stored
                .windows(SECRET_VALUE.len())
                .any(|w| w == SECRET_VALUE.as_bytes()));
        }
    }
}

#[tokio::test]
async fn another_key_or_no_key_reads_a_miss() {
    for (b, cache) in tests::backends().await {
        let writer = cache.with_encryption(key(3));
        writer.set("s", &session(), None).await.expect(b);
        let other = cache.with_encryption(key(4));
        assert_eq!(
            other.get::<Session>("s").await.expect(b),
            None,
            "{b}: another key"
        );
        assert_eq!(
            cache.get::<Session>("s").await.expect(b),
            None,
            "{b}: no key"
        );
        assert_eq!(cache.stats().decode_errors, 2, "{b}: both counted");
        // get_or_set through another key computes (and then stores under its own key).
        let v: Session = other.get_or_set("s", None, || async { session() }).await;
        assert_eq!(v, session(), "{b}");
        // An encrypted handle does not read plain values (anyone with access to Redis could
        // have written them).
        cache.set("plain", &session(), None).await.expect(b);
        assert_eq!(writer.get::<Session>("plain").await.expect(b), None, "{b}");
        // Counters are not encrypted (Redis adds to them): they still read.
        writer.incr("visits", 2).await.expect(b);
        assert_eq!(writer.get::<i64>("visits").await.expect(b), Some(2), "{b}");
    }
}

#[tokio::test]
async fn tampered_truncated_or_moved_ciphertexts_are_misses() {
    let cache = tests::redis_cache().with_encryption(key(5));
    let mut raw = Raw::shared().await;
    cache.set("s", &session(), None).await.expect("set");
    let full = cache.full_key("s").expect("key");
    let stored = raw.get(&full).await.expect("stored");
    let mut misses = 0;
    // Every byte flipped, in the header, the tag list, the nonce, the ciphertext, the tag.
    for i in 0..stored.len() {
        let mut damaged = stored.clone();
        damaged[i] ^= 0x01;
        raw.set(&full, &damaged).await;
        assert_eq!(
            cache.get::<Session>("s").await.expect("get"),
            None,
            "byte {i}"
        );
        misses += 1;
    }
    // Every cut.
    for n in [0, 1, 10, 44, 48, 60, stored.len() - 17, stored.len() - 1] {
        raw.set(&full, &stored[..n]).await;
        assert_eq!(
            cache.get::<Session>("s").await.expect("get"),
            None,
            "cut at {n}"
        );
        misses += 1;
    }
    // Moved under another key: bound to its key, it does not open there.
    let other = cache.full_key("other").expect("key");
    raw.set(&other, &stored).await;
    assert_eq!(cache.get::<Session>("other").await.expect("get"), None);
    misses += 1;
    // Put back, it reads again.
    raw.set(&full, &stored).await;
    assert_eq!(
        cache.get::<Session>("s").await.expect("get"),
        Some(session())
    );
    let s = cache.stats();
    assert_eq!(s.misses, misses, "{s:?}");
    assert!(s.decode_errors >= misses - 1, "{s:?}"); // the empty value is no value at all
}

#[tokio::test]
async fn rotation_reads_values_written_under_an_old_key() {
    // Handles on one root, on both backends.
    for (b, cache) in tests::backends().await {
        let old = cache.with_encryption(key(6));
        old.set("s", &session(), None).await.expect(b);
        let rotated = cache
            .with_encryption(key(7))
            .with_old_encryption_keys([key(6)]);
        assert_eq!(
            rotated.get::<Session>("s").await.expect(b),
            Some(session()),
            "{b}"
        );
        rotated.set("new", &session(), None).await.expect(b);
        assert_eq!(
            old.get::<Session>("new").await.expect(b),
            None,
            "{b}: written with the new key"
        );
        let new_only = cache.with_encryption(key(7));
        assert_eq!(
            new_only.get::<Session>("s").await.expect(b),
            None,
            "{b}: old key dropped"
        );
    }
    // Two processes' configurations, from the environment, on one Redis namespace.
    let namespace = tests::unique_namespace();
    let url = tests::redis_url();
    let env = |vars: Vec<(&'static str, String)>| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    };
    let before = CacheBuilder::from_lookup(env(vec![
        ("REDIS_URL", url.clone()),
        ("CACHE_NAMESPACE", namespace.clone()),
        ("CACHE_ENCRYPTION_KEY", b64(8)),
    ]))
    .expect("configures")
    .build()
    .expect("builds");
    before.set("s", &session(), None).await.expect("set");
    let after = CacheBuilder::from_lookup(env(vec![
        ("REDIS_URL", url.clone()),
        ("CACHE_NAMESPACE", namespace.clone()),
        ("CACHE_ENCRYPTION_KEY", b64(9)),
        (
            "CACHE_ENCRYPTION_OLD_KEYS",
            format!("{}, {}", b64(10), b64(8)),
        ),
    ]))
    .expect("configures")
    .build()
    .expect("builds");
    assert_eq!(
        after.get::<Session>("s").await.expect("get"),
        Some(session())
    );
    let builder = Cache::builder()
        .url(url)
        .namespace(namespace)
        .encryption_key(key(9))
        .build()
        .expect("builds");
    assert_eq!(
        builder.get::<Session>("s").await.expect("get"),
        None,
        "no old key listed"
    );
}

#[tokio::test]
async fn one_namespace_encrypted_beside_one_in_clear() {
    let mut raw = Raw::shared().await;
    for (b, cache) in tests::backends().await {
        let pii = cache.namespace("pii").with_encryption(key(11));
        let public = cache.namespace("public");
        pii.set("email", &SECRET_VALUE, None).await.expect(b);
        public.set("motd", &"hello", None).await.expect(b);
        assert!(pii.is_encrypted() && !public.is_encrypted(), "{b}");
        // Scopes made from an encrypted handle encrypt.
        assert!(pii.tenant("acme").is_encrypted(), "{b}");
        assert!(
            pii.with_default_ttl(Duration::from_secs(5)).is_encrypted(),
            "{b}"
        );
        assert_eq!(
            pii.get::<String>("email").await.expect(b).as_deref(),
            Some(SECRET_VALUE),
            "{b}"
        );
        assert_eq!(
            public.get::<String>("motd").await.expect(b).as_deref(),
            Some("hello"),
            "{b}"
        );
        // The namespace without its key reads nothing.
        assert_eq!(
            cache
                .namespace("pii")
                .get::<String>("email")
                .await
                .expect(b),
            None,
            "{b}"
        );
        if b == "redis" {
            let clear = raw
                .get(&public.full_key("motd").expect("key"))
                .await
                .expect("stored");
            assert_eq!(clear[2] & 2, 0, "not encrypted");
            assert!(clear.windows(5).any(|w| w == b"hello"));
            let sealed = raw
                .get(&pii.full_key("email").expect("key"))
                .await
                .expect("stored");
            assert_eq!(sealed[2] & 2, 2, "encrypted");
        }
    }
    // An encrypted root with a namespace in clear.
    let root = Cache::builder()
        .encryption_key(key(12))
        .build()
        .expect("builds");
    let open = root.namespace("public").without_encryption();
    open.set("k", &1u8, None).await.expect("set");
    assert_eq!(open.get::<u8>("k").await.expect("get"), Some(1));
    assert_eq!(
        root.namespace("public").get::<u8>("k").await.expect("get"),
        None
    );
}

#[tokio::test]
async fn bad_keys_in_the_environment_are_config_errors_that_do_not_repeat_them() {
    let short = "c2VjcmV0LWtleS1ieXRlcw=="; // 18 bytes
    for (var, value) in [
        ("CACHE_ENCRYPTION_KEY", short.to_owned()),
        ("CACHE_ENCRYPTION_KEY", "not base64 at all!".to_owned()),
        ("CACHE_ENCRYPTION_OLD_KEYS", format!("{},{short}", b64(1))),
    ] {
        let v = value.clone();
        let err = CacheBuilder::from_lookup(move |name| (name == var).then(|| v.clone()))
            .expect_err("refused");
        match &err {
            Error::Config { setting, .. } => assert_eq!(*setting, var),
            other => panic!("{other:?}"),
        }
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(short) && !shown.contains("not base64 at all"),
            "{shown}"
        );
        assert!(!shown.contains(&b64(1)[..12]), "{shown}");
    }
}

// ---- secrets in Debug, Display and logs -------------------------------------------------------

const PASSWORD: &str = "pw-secret-91be27";
const URL_PASSWORD: &str = "url-secret-5d0c44";

/// Everything written to it, shared with the subscriber's writers.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// A map serde_json cannot write (its keys are not strings), holding a secret.
fn unencodable() -> std::collections::HashMap<(u8, u8), String> {
    [((1, 2), SECRET_VALUE.to_owned())].into_iter().collect()
}

#[test]
fn no_secret_in_any_debug_display_or_log_line() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut shown: Vec<String> = Vec::new();
    let mut show = |what: &str, text: String| shown.push(format!("{what}: {text}"));

    // A server of its own, with a password.
    // (The harness pings without a password: set it once the server is up.)
    let mut server = tests::RedisServer::start();
    let port = server.port();
    {
        let mut con = server.client().get_connection().expect("connects");
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(PASSWORD)
            .query::<()>(&mut con)
            .expect("sets a password");
    }
    let k = EncryptionKey::from_bytes([42; 32]);
    let key_b64 = b64(42);
    let old_b64 = b64(43);

    // Builders and caches configured every way a secret can come in.
    let env = {
        let key_b64 = key_b64.clone();
        let old_b64 = old_b64.clone();
        move |name: &str| match name {
            "REDIS_HOST" => Some("127.0.0.1".to_owned()),
            "REDIS_PORT" => Some(port.to_string()),
            "REDIS_PASSWORD" => Some(PASSWORD.to_owned()),
            "CACHE_ENCRYPTION_KEY" => Some(key_b64.clone()),
            "CACHE_ENCRYPTION_OLD_KEYS" => Some(old_b64.clone()),
            "CACHE_NAMESPACE" => Some(tests::unique_namespace()),
            _ => None,
        }
    };
    let from_env = CacheBuilder::from_lookup(env).expect("configures");
    show("env builder", format!("{from_env:?}"));
    let url = format!("redis://default:{PASSWORD}@127.0.0.1:{port}/0");
    let in_url = Cache::builder()
        .url(url.clone())
        .namespace(tests::unique_namespace())
        .encryption_key(k.clone())
        .old_encryption_keys([EncryptionKey::from_bytes([43; 32])])
        .command_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(500));
    show("url builder", format!("{in_url:?}"));
    let by_method = Cache::builder()
        .url(format!("redis://u:{URL_PASSWORD}@127.0.0.1:{port}"))
        .password(PASSWORD)
        .encryption_key(k.clone());
    show("password builder", format!("{by_method:?}"));
    show(
        "unix url",
        format!(
            "{:?}",
            Cache::builder().url(format!("redis+unix:///tmp/x.sock?pass={PASSWORD}"))
        ),
    );

    // Cluster and Sentinel node lists with passwords.
    let cluster = Cache::builder().cluster_nodes([
        format!("redis://u:{PASSWORD}@127.0.0.1:1"),
        format!("redis://:{PASSWORD}@127.0.0.1:2"),
    ]);
    let sentinel = Cache::builder()
        .sentinel([format!("redis://u:{PASSWORD}@127.0.0.1:3")], "mymaster")
        .password(PASSWORD);
    for builder in [cluster, sentinel] {
        show("topology builder", format!("{builder:?}"));
        match builder.build() {
            Ok(cache) => show("topology cache", format!("{cache:?}")),
            Err(e) => show("topology error", format!("{e} {e:?}")),
        }
    }

    rt.block_on(async {
        let caches = [
            from_env.build().expect("builds"),
            in_url.clone().build().expect("builds"),
            by_method.clone().build().expect("builds"),
            Cache::builder()
                .encryption_key(k.clone())
                .build()
                .expect("builds"),
        ];
        for cache in &caches {
            show("cache", format!("{cache:?}"));
            show(
                "scoped",
                format!("{:?}", cache.namespace("pii").tenant("acme")),
            );
            show(
                "with key",
                format!("{:?}", cache.with_encryption(k.clone())),
            );
        }
        let cache = &caches[1];
        // Values go in and come out; a value read as another type is logged as a miss.
        cache.set("s", &session(), None).await.expect("set");
        show("lookup", format!("{:?}", cache.lookup::<u8>("s").await));
        show("stats", format!("{:?}", cache.stats()));
        let plain = cache.without_encryption();
        plain.set("p", &session(), None).await.expect("set");
        show("plain as u8", format!("{:?}", plain.get::<u8>("p").await));
        show(
            "plain as Session",
            format!("{:?}", plain.get::<Vec<u32>>("p").await),
        );

        // Every error that can be provoked, as Display and Debug.
        let mut errors: Vec<Error> = Vec::new();
        errors.push(
            cache
                .set("e", &unencodable(), None)
                .await
                .expect_err("encode"),
        );
        let small = in_url.clone().max_value_size(64).build().expect("builds");
        errors.push(
            small
                .set("big", &SECRET_VALUE.repeat(10), None)
                .await
                .expect_err("too large"),
        );
        errors.push(
            cache
                .set("z", &1u8, Duration::ZERO)
                .await
                .expect_err("zero ttl"),
        );
        errors.push(cache.get::<u8>("has space").await.expect_err("invalid key"));
        errors.push(cache.incr("s", 1).await.expect_err("wrong kind"));
        for bad in [
            Cache::builder()
                .url(format!("http://u:{PASSWORD}@h:1"))
                .build(),
            Cache::builder()
                .url(format!("redis://u:{PASSWORD}@[::1"))
                .build(),
            Cache::builder()
                .url(format!("redis://u:{PASSWORD}@h:notaport"))
                .build(),
            Cache::builder()
                .url(format!("rediss://u:{PASSWORD}@h:1"))
                .tls(false)
                .pool_size(0)
                .build(),
            Cache::builder()
                .url(format!("redis://u:{PASSWORD}@h:1"))
                .namespace("a b")
                .build(),
        ] {
            if let Err(e) = bad {
                errors.push(e);
            }
        }
        let wrong = Cache::builder()
            .url(format!("redis://default:{URL_PASSWORD}@127.0.0.1:{port}"))
            .namespace(tests::unique_namespace())
            .build()
            .expect("builds");
        errors.push(wrong.get::<u8>("k").await.expect_err("wrong password"));
        // A full server: a command error.
        let mut admin = Raw::on(&redis::Client::open(url.as_str()).expect("client")).await;
        admin
            .query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1"))
            .await;
        admin
            .query::<()>(
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory-policy")
                    .arg("noeviction"),
            )
            .await;
        errors.push(
            cache
                .set("oom", &session(), None)
                .await
                .expect_err("out of memory"),
        );
        admin
            .query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0"))
            .await;
        // A frozen server: a timeout; then a dead one: a connection error.
        server.freeze();
        errors.push(cache.get::<u8>("s").await.expect_err("timeout"));
        let v: Session = cache
            .get_or_set("fallback", None, || async { session() })
            .await;
        assert_eq!(v, session());
        server.thaw();
        server.kill();
        let fresh = in_url.clone().build().expect("builds");
        errors.push(fresh.get::<u8>("s").await.expect_err("connection"));
        let v: Session = fresh
            .get_or_set("fallback", None, || async { session() })
            .await;
        assert_eq!(v, session());
        errors.push(Error::Encrypt {
            reason: "the operating system's random number generator failed",
        });

        let kinds: Vec<&str> = errors
            .iter()
            .map(|e| match e {
                Error::Connection { .. } => "connection",
                Error::Timeout { .. } => "timeout",
                Error::Command { .. } => "command",
                Error::Encode { .. } => "encode",
                Error::InvalidKey { .. } => "invalid key",
                Error::Config { .. } => "config",
                Error::WrongKind { .. } => "wrong kind",
                Error::InvalidDuration { .. } => "invalid duration",
                Error::TooLarge { .. } => "too large",
                Error::Encrypt { .. } => "encrypt",
                _ => "other",
            })
            .collect();
        for expected in [
            "connection",
            "timeout",
            "command",
            "encode",
            "invalid key",
            "config",
            "wrong kind",
            "invalid duration",
            "too large",
            "encrypt",
        ] {
            assert!(
                kinds.contains(&expected),
                "no {expected} error provoked: {kinds:?}"
            );
        }
        for e in &errors {
            show(
                "error",
                format!(
                    "{e} / {e:?} / {:?}",
                    std::error::Error::source(e).map(|s| s.to_string())
                ),
            );
        }
    });

    let logs = logs.text();
    assert!(logs.contains("cache"), "the cache logged something: {logs}");
    let secrets = [
        PASSWORD.to_owned(),
        URL_PASSWORD.to_owned(),
        key_b64.trim_end_matches('=').to_owned(),
        old_b64.trim_end_matches('=').to_owned(),
        SECRET_VALUE.to_owned(),
        format!("{:?}", [42u8; 32]),
        "42, 42, 42, 42".to_owned(),
    ];
    for text in shown.iter().chain(std::iter::once(&logs)) {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "`{secret}` shown in: {text}"
            );
        }
    }
}

#[tokio::test]
async fn concurrent_misses_of_an_encrypted_key_compute_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for (b, cache) in encrypted_backends(key(13)) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, calls, mut gate) = (cache.clone(), calls.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_set("shared", None, || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            session()
                        })
                        .await
                })
            })
            .collect();
        // Let the callers pile up behind the first computation, then let it finish.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        release.send(true).expect("gate");
        for t in tasks {
            assert_eq!(t.await.expect("task"), session(), "{b}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{b}: the waiters decrypted the leader's value"
        );
        assert_eq!(
            cache.get::<Session>("shared").await.expect(b),
            Some(session()),
            "{b}"
        );
    }
}
