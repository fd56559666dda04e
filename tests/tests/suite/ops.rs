//! Operations (#15): health, per-namespace statistics and histograms, the `metrics` facade,
//! tracing spans, the startup advisor, warming, key reports, the slow-operation log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{
    health::HealthMode, stats::NamespaceStats, warm::WarmCancel, Cache, HealthStatus,
};
use tests::{backends, memory_cache, redis_cache, RedisServer};

use super::foundation::cache_at;

// ---- a capturing tracing subscriber ---------------------------------------------------------

/// A span or an event as the subscriber saw it: name (or message), level, fields.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Captured {
    spans: Mutex<Vec<(u64, Seen)>>,
    events: Mutex<Vec<Seen>>,
}

/// What the spans and events of this thread go to while a [`Capture`] is alive.
#[derive(Clone, Default)]
struct Capture(Arc<Captured>);

thread_local! {
    static SINK: std::cell::RefCell<Option<Arc<Captured>>> = const { std::cell::RefCell::new(None) };
}

/// A minimal `Subscriber`, installed once for the whole test process, handing each span (with
/// the fields recorded later) and event to the capture of the thread it happens on. One global
/// subscriber rather than one scoped per test: callsite interest is then always "yes", where
/// scoped subscribers coming and going on other threads race with the interest cache.
struct Router;

static SPAN_IDS: AtomicU64 = AtomicU64::new(1);

fn sink() -> Option<Arc<Captured>> {
    SINK.with(|s| s.borrow().clone())
}

struct Visitor<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Router {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let id = SPAN_IDS.fetch_add(1, Ordering::Relaxed);
        if let Some(sink) = sink() {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Visitor(&mut fields));
            sink.spans.lock().expect("capture lock").push((
                id,
                Seen {
                    name: attrs.metadata().name().to_owned(),
                    level: *attrs.metadata().level(),
                    fields,
                },
            ));
        }
        tracing::span::Id::from_u64(id)
    }
    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        if let Some(sink) = sink() {
            let mut spans = sink.spans.lock().expect("capture lock");
            if let Some((_, s)) = spans.iter_mut().find(|(id, _)| *id == span.into_u64()) {
                values.record(&mut Visitor(&mut s.fields));
            }
        }
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if let Some(sink) = sink() {
            let mut fields = BTreeMap::new();
            event.record(&mut Visitor(&mut fields));
            sink.events.lock().expect("capture lock").push(Seen {
                name: fields.get("message").cloned().unwrap_or_default(),
                level: *event.metadata().level(),
                fields,
            });
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Captures this thread's spans and events until dropped.
struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        SINK.with(|s| *s.borrow_mut() = None);
    }
}

impl Capture {
    fn start(&self) -> CaptureGuard {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            // Fails only if another subscriber is global already; then this one is not the
            // router and the captures stay empty, which the tests' assertions show.
            let _ = tracing::subscriber::set_global_default(Router);
        });
        SINK.with(|s| *s.borrow_mut() = Some(self.0.clone()));
        CaptureGuard
    }
}

impl Capture {
    fn spans(&self) -> Vec<Seen> {
        let spans = self.0.spans.lock().expect("capture lock");
        spans.iter().map(|(_, s)| s.clone()).collect()
    }
    fn events(&self) -> Vec<Seen> {
        self.0.events.lock().expect("capture lock").clone()
    }
    fn warnings_containing(&self, text: &str) -> Vec<Seen> {
        self.events()
            .into_iter()
            .filter(|e| e.level == tracing::Level::WARN && e.name.contains(text))
            .collect()
    }
}

// ---- health ---------------------------------------------------------------------------------

#[tokio::test]
async fn health_on_redis_reports_the_server_the_pool_and_the_counters() {
    let cache = redis_cache();
    cache.set("k", &1u8, None).await.expect("cache operation");
    cache.get::<u8>("k").await.expect("cache operation");
    let h = cache.health().await;
    assert_eq!(h.status, HealthStatus::Ok, "{h:?}");
    assert_eq!(h.mode, HealthMode::Redis);
    assert_eq!(h.http_status(), 200);
    assert!(h.ping_ms.is_some_and(|ms| ms > 0.0), "{h:?}");
    let redis = h.redis.as_ref().expect("INFO figures");
    assert!(redis.version.as_deref().is_some_and(|v| v.contains('.')));
    assert!(redis.used_memory.is_some_and(|m| m > 0));
    assert!(redis.maxmemory.is_some());
    assert!(redis.maxmemory_policy.is_some());
    assert!(redis.connected_clients.is_some_and(|c| c >= 1));
    let pool = h.pool.expect("pool figures");
    assert_eq!(pool.size, 1);
    assert!(
        pool.connections >= 1 && pool.idle <= pool.connections,
        "{pool:?}"
    );
    assert_eq!((h.stats.hits, h.stats.writes), (1, 1));
    assert_eq!(h.hit_ratio, 1.0);
    // shown with --nocapture: the README's example
    println!("{}", serde_json::to_string_pretty(&h).expect("serializes"));
    assert!(h.memory.is_none());
}

#[tokio::test]
async fn health_on_memory_reports_the_embedded_store() {
    let cache = memory_cache();
    cache.set("k", &"v", None).await.expect("cache operation");
    let h = cache.health().await;
    assert_eq!((h.status, h.mode), (HealthStatus::Ok, HealthMode::Memory));
    let m = h.memory.expect("memory figures");
    assert_eq!(m.entries, 1);
    assert!(m.used_bytes > 0 && m.capacity_bytes >= m.used_bytes);
    assert!(h.redis.is_none() && h.pool.is_none() && h.ping_ms.is_none());
}

#[tokio::test]
async fn health_on_a_down_redis_is_a_down_report_within_its_timeout() {
    let mut server = RedisServer::start();
    let cache = cache_at(&server.url(), Duration::from_millis(300));
    cache.set("k", &1u8, None).await.expect("cache operation");
    server.kill();
    let started = Instant::now();
    let h = cache.health().await;
    let took = started.elapsed();
    assert_eq!(h.status, HealthStatus::Down, "{h:?}");
    assert_eq!(h.http_status(), 503);
    assert!(h.error.is_some() && h.ping_ms.is_none() && h.redis.is_none());
    println!("{}", serde_json::to_string_pretty(&h).expect("serializes"));
    // the bound is connect + 2 x command timeout (300 ms + 2 s); generous for a loaded host
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let bounded = Instant::now();
    let h = cache.health_within(Duration::from_millis(200)).await;
    assert_eq!(h.status, HealthStatus::Down);
    assert!(bounded.elapsed() < Duration::from_secs(5));
    let json = serde_json::to_value(&h).expect("serializes");
    assert_eq!(json["status"], "down");
}

/// Every path of a JSON value: `a`, `a.b`, ... (arrays by their first element, `[]`).
fn paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(first) = items.first() {
                paths(first, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn health_json_shape_is_pinned() {
    let h = redis_cache().health().await;
    let json = serde_json::to_value(&h).expect("serializes");
    let mut got = BTreeSet::new();
    paths(&json, "", &mut got);
    let expected: BTreeSet<String> = [
        "status",
        "mode",
        "namespace",
        "ping_ms",
        "checked_in_ms",
        "error",
        "redis",
        "redis.version",
        "redis.used_memory",
        "redis.maxmemory",
        "redis.maxmemory_policy",
        "redis.connected_clients",
        "pool",
        "pool.size",
        "pool.connections",
        "pool.idle",
        "memory",
        "breaker",
        "breaker.state",
        "breaker.since_change_ms",
        "topology",
        "nodes",
        "sentinel",
        "warnings",
        "stats",
        "stats.hits",
        "stats.misses",
        "stats.writes",
        "stats.decode_errors",
        "stats.backend_errors",
        "stats.encode_errors",
        "stats.computes",
        "stats.superseded",
        "hit_ratio",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    // New counters (L1, stale serves, ...) may join `stats`; nothing else may change unnoticed.
    // The nodes (cluster, Sentinel) and the Sentinel view are pinned by `health.rs`.
    let per_topology = |p: &str| p.starts_with("nodes[].") || p.starts_with("sentinel.");
    assert!(
        extra
            .iter()
            .all(|p| p.starts_with("stats.") || per_topology(p))
            && missing.is_empty(),
        "extra {extra:?}, missing {missing:?}\n{json:#}"
    );
    assert!(json["ping_ms"].is_number() && json["stats"]["hits"].is_u64());
    assert!(json["memory"].is_null() && json["warnings"].is_array());
}

// ---- per-namespace statistics -----------------------------------------------------------------

fn sum(all: &[NamespaceStats], f: impl Fn(&NamespaceStats) -> u64) -> u64 {
    all.iter().map(f).sum()
}

#[tokio::test]
async fn namespace_counters_add_up_to_the_whole() {
    for (backend, cache) in backends().await {
        let a = cache.namespace("a");
        let b = cache.namespace("b").tenant(7u32);
        for (i, h) in [&cache, &a, &b].into_iter().enumerate() {
            h.set("k", &(i as u32), None)
                .await
                .expect("cache operation");
            h.get::<u32>("k").await.expect("cache operation");
            h.get::<u32>("absent").await.expect("cache operation");
            h.get::<String>("k").await.expect("cache operation"); // undecodable
            let _: u32 = h.get_or_set("c", None, || async { 1 }).await;
            let _: u32 = h.get_or_set("c", None, || async { 2 }).await;
            h.mset(&[("m1", 1u8), ("m2", 2)], None)
                .await
                .expect("cache operation");
        }
        a.set("bad", &BTreeMap::from([((1, 2), 3)]), None)
            .await
            .expect_err("not encodable"); // not encodable: an error of `a`
        let whole = cache.stats();
        let all = cache.namespace_stats();
        let names: Vec<_> = all.iter().map(|s| s.namespace.as_str()).collect();
        let root = cache.key_prefix().trim_end_matches(':').to_owned();
        assert_eq!(
            names,
            [root.clone(), format!("{root}:a"), format!("{root}:b")],
            "{backend}"
        );
        assert_eq!(sum(&all, |s| s.hits), whole.hits, "{backend}");
        assert_eq!(sum(&all, |s| s.misses.total()), whole.misses, "{backend}");
        assert_eq!(sum(&all, |s| s.writes), whole.writes, "{backend}");
        assert_eq!(sum(&all, |s| s.computes), whole.computes, "{backend}");
        assert_eq!(
            sum(&all, |s| s.errors),
            whole.backend_errors + whole.encode_errors,
            "{backend}"
        );
        assert_eq!(sum(&all, |s| s.misses.undecodable), whole.decode_errors);
        for s in &all {
            assert_eq!(
                (s.hits, s.misses.total(), s.computes),
                (2, 3, 1),
                "{backend} {s:?}"
            );
            assert_eq!(s.writes, 4, "{backend} {s:?}");
        }
        assert_eq!(all[1].errors, 1, "{backend}");
        assert_eq!(
            b.scope_stats().namespace,
            format!("{root}:b"),
            "tenants never name a scope"
        );
    }
}

#[tokio::test]
async fn miss_reasons_are_told_apart() {
    for (backend, cache) in backends().await {
        cache.get::<u8>("never").await.expect("cache operation");
        cache
            .set("gone", &1u8, None)
            .await
            .expect("cache operation");
        cache.delete("gone").await.expect("cache operation");
        cache.get::<u8>("gone").await.expect("cache operation"); // a tombstone: absent
        cache
            .set_tagged("t", &1u8, None, &["org:1"])
            .await
            .expect("cache operation");
        cache
            .invalidate_tag("org:1")
            .await
            .expect("cache operation");
        cache.get::<u8>("t").await.expect("cache operation");
        cache.set("n", &1u8, None).await.expect("cache operation");
        cache
            .get::<Vec<String>>("n")
            .await
            .expect("cache operation");
        let m = cache.scope_stats().misses;
        assert_eq!(
            (m.absent, m.tag_invalidated, m.undecodable, m.expired),
            (2, 1, 1, 0),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn histograms_record_each_operation_once() {
    for (backend, cache) in backends().await {
        let ns = cache.namespace("h");
        for i in 0..5u32 {
            ns.set(&format!("k{i}"), &i, None)
                .await
                .expect("cache operation"); // 5 writes
        }
        for i in 0..7u32 {
            ns.get::<u32>(&format!("k{i}"))
                .await
                .expect("cache operation"); // 7 reads
        }
        ns.mget::<u32>(&["k1", "k2"])
            .await
            .expect("cache operation"); // 1 read
        for _ in 0..3 {
            let _: u32 = ns.get_or_set("c", None, || async { 9 }).await; // 3 reads, 1 compute + write
        }
        ns.delete("k1").await.expect("cache operation"); // 1 write
        let s = ns.scope_stats();
        assert_eq!(s.read_latency.count, 7 + 1 + 3, "{backend} {s:?}");
        assert_eq!(s.write_latency.count, 5 + 1 + 1, "{backend} {s:?}");
        assert_eq!(s.compute_latency.count, 1, "{backend} {s:?}");
        let r = s.read_latency;
        assert!(
            0.0 < r.p50_us && r.p50_us <= r.p90_us && r.p90_us <= r.p99_us && r.p99_us <= r.max_us
        );
        assert_eq!(
            cache.scope_stats().read_latency.count,
            0,
            "the root has its own"
        );
        // hits: 5 gets, 2 in the mget, 2 get_or_set; misses: 2 gets, the first get_or_set
        assert_eq!((s.hits, s.misses.absent), (9, 3), "{backend} {s:?}");
        assert_eq!(s.hit_ratio, 0.75, "{backend} {s:?}");
    }
}

// ---- metrics -----------------------------------------------------------------------------------

#[test]
fn metrics_names_labels_and_values_after_a_scripted_sequence() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;

    for backend in ["memory", "redis"] {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let cache = if backend == "redis" {
            redis_cache()
        } else {
            memory_cache()
        };
        let ns = cache.namespace("users");
        let label = format!("{}:users", cache.key_prefix().trim_end_matches(':'));
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                ns.set("secret-key-1", &"secret-value", None)
                    .await
                    .expect("cache operation");
                ns.get::<String>("secret-key-1")
                    .await
                    .expect("cache operation"); // hit
                ns.get::<String>("secret-key-2")
                    .await
                    .expect("cache operation"); // miss, absent
                let _: u32 = ns.get_or_set("secret-key-3", None, || async { 1 }).await; // miss + compute + write
                let _: u32 = ns.get_or_set("secret-key-3", None, || async { 2 }).await; // hit
                ns.set("bad", &BTreeMap::from([((1, 2), 3)]), None)
                    .await
                    .expect_err("not encodable");
            })
        });
        let mut counters = BTreeMap::new();
        let mut histograms = BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            for (k, v) in &labels {
                assert!(
                    !v.contains("secret"),
                    "{backend}: label {k}={v} carries a key or value"
                );
            }
            assert!(
                labels.iter().any(|(k, v)| k == "namespace" && *v == label),
                "{backend}: {} without its namespace: {labels:?}",
                key.name()
            );
            let rest: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k != "namespace")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let id = format!("{}{{{}}}", key.name(), rest.join(","));
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    counters.insert(id, n);
                }
                (MetricKind::Histogram, DebugValue::Histogram(samples)) => {
                    assert!(samples.iter().all(|s| s.0 >= 0.0 && s.0 < 60.0), "seconds");
                    histograms.insert(id, samples.len());
                }
                other => panic!("{backend}: unexpected {id}: {other:?}"),
            }
        }
        let expected_counters = BTreeMap::from([
            ("cache_hits_total{}".to_owned(), 2),
            ("cache_misses_total{reason=absent}".to_owned(), 2),
            ("cache_computes_total{}".to_owned(), 1),
            ("cache_writes_total{}".to_owned(), 2),
            ("cache_errors_total{}".to_owned(), 1),
        ]);
        assert_eq!(counters, expected_counters, "{backend}");
        let expected_histograms = BTreeMap::from([
            (
                "cache_operation_duration_seconds{operation=set,outcome=ok}".to_owned(),
                2,
            ),
            (
                "cache_operation_duration_seconds{operation=set,outcome=error}".to_owned(),
                1,
            ),
            (
                "cache_operation_duration_seconds{operation=get,outcome=hit}".to_owned(),
                1,
            ),
            (
                "cache_operation_duration_seconds{operation=get,outcome=miss}".to_owned(),
                1,
            ),
            (
                "cache_operation_duration_seconds{operation=get_or_compute,outcome=miss}"
                    .to_owned(),
                1,
            ),
            (
                "cache_operation_duration_seconds{operation=get_or_compute,outcome=hit}".to_owned(),
                1,
            ),
            ("cache_compute_duration_seconds{}".to_owned(), 1),
        ]);
        assert_eq!(histograms, expected_histograms, "{backend}");
    }
}

#[test]
fn health_sets_gauges() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let cache = redis_cache();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let h = cache.health().await;
            assert_eq!(h.status, HealthStatus::Ok);
        })
    });
    let gauges: BTreeMap<String, f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            DebugValue::Gauge(g) => Some((k.key().name().to_owned(), g.0)),
            _ => None,
        })
        .collect();
    assert_eq!(gauges.get("cache_up"), Some(&1.0));
    assert!(gauges
        .get("cache_ping_seconds")
        .is_some_and(|s| *s > 0.0 && *s < 5.0));
    assert!(gauges
        .get("cache_redis_used_memory_bytes")
        .is_some_and(|b| *b > 0.0));
    assert!(gauges
        .get("cache_pool_connections")
        .is_some_and(|c| *c >= 1.0));
}

// ---- tracing ------------------------------------------------------------------------------------

#[tokio::test]
async fn spans_carry_the_documented_fields_and_never_the_value() {
    for (backend, cache) in backends().await {
        let capture = Capture::default();
        let _guard = capture.start();
        let ns = cache.namespace("spans");
        ns.set("key-of-ann", &"VALUE-OF-ANN", None)
            .await
            .expect("cache operation");
        ns.get::<String>("key-of-ann")
            .await
            .expect("cache operation");
        ns.get::<String>("key-of-bob")
            .await
            .expect("cache operation");
        let _: String = ns
            .get_or_set("key-of-eve", None, || async { "VALUE-OF-EVE".to_owned() })
            .await;
        let _: String = ns
            .get_or_set("key-of-eve", None, || async { unreachable!() })
            .await;
        drop(_guard);
        let label = format!("{}:spans", cache.key_prefix().trim_end_matches(':'));
        let spans = capture.spans();
        let source = backend.to_owned();
        fn fields(s: &Seen) -> (&str, Option<&str>, Option<&str>, Option<&str>) {
            (
                s.name.as_str(),
                s.fields.get("operation").map(String::as_str),
                s.fields.get("outcome").map(String::as_str),
                s.fields.get("source").map(String::as_str),
            )
        }
        let got: Vec<_> = spans.iter().map(fields).collect();
        let expected = [
            ("cache", Some("set"), Some("ok"), None),
            ("cache", Some("get"), Some("hit"), Some(source.as_str())),
            ("cache", Some("get"), Some("miss"), None),
            (
                "cached",
                Some("get_or_compute"),
                Some("miss"),
                Some("compute"),
            ),
            ("cache", Some("set"), Some("ok"), None),
            (
                "cached",
                Some("get_or_compute"),
                Some("hit"),
                Some(source.as_str()),
            ),
        ];
        assert_eq!(got, expected, "{backend}");
        for s in &spans {
            assert_eq!(s.level, tracing::Level::DEBUG, "{backend}: {s:?}");
            assert_eq!(s.fields.get("namespace"), Some(&label), "{backend}: {s:?}");
            let all = format!("{s:?}");
            assert!(
                !all.contains("VALUE-OF") && !all.contains("key-of"),
                "{backend}: {s:?}"
            );
        }
        for e in capture.events() {
            let all = format!("{e:?}");
            assert!(!all.contains("VALUE-OF"), "{backend}: {e:?}");
            if e.level <= tracing::Level::INFO {
                assert!(!all.contains("key-of"), "{backend}: {e:?}");
            }
        }
    }
}

// ---- slow operations -----------------------------------------------------------------------------

#[tokio::test]
async fn slow_operations_are_logged_with_namespace_and_operation_throttled() {
    let cache = Cache::builder()
        .in_memory()
        .namespace(tests::unique_namespace().as_str())
        .slow_op_threshold(Duration::from_nanos(1))
        .build()
        .expect("a cache");
    let capture = Capture::default();
    let _guard = capture.start();
    for _ in 0..20 {
        cache
            .namespace("slow")
            .get::<u8>("k")
            .await
            .expect("cache operation");
    }
    drop(_guard);
    let slow = capture.warnings_containing("slow cache operation");
    // one a second at most: the 20 reads take far less than the ~3 s it would need for more
    assert!((1..=3).contains(&slow.len()), "{slow:?}");
    let first = &slow[0];
    assert_eq!(
        first.fields.get("operation").map(String::as_str),
        Some("get")
    );
    assert!(first.fields["namespace"].ends_with(":slow"));
    assert!(first.fields.contains_key("elapsed_ms"));
}

// ---- advisor --------------------------------------------------------------------------------------

async fn advisor_warnings(server: &RedisServer) -> (Vec<Seen>, Vec<String>) {
    let cache = cache_at(&server.url(), Duration::from_secs(2));
    let capture = Capture::default();
    let guard = capture.start();
    cache.set("k", &1u8, None).await.expect("cache operation");
    for _ in 0..3 {
        cache.get::<u8>("k").await.expect("cache operation");
    }
    drop(guard);
    let health = cache.health().await;
    (
        capture.warnings_containing("cache advisor"),
        health.warnings,
    )
}

#[tokio::test]
async fn advisor_warns_once_about_no_memory_limit_and_noeviction() {
    let server = RedisServer::start();
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let config_set = |k: &'static str, v: &'static str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg(k).arg(v);
        cmd
    };
    // no limit (the server's default)
    let _: () = config_set("maxmemory", "0")
        .query_async(&mut con)
        .await
        .expect("CONFIG SET");
    let (logged, health) = advisor_warnings(&server).await;
    assert_eq!(logged.len(), 1, "once, on the first connection: {logged:?}");
    assert!(
        logged[0].name.contains("no memory limit")
            && logged[0].name.contains("CONFIG SET maxmemory")
    );
    assert_eq!(health.len(), 1, "{health:?}");

    // a limit, and noeviction
    let _: () = config_set("maxmemory", "100mb")
        .query_async(&mut con)
        .await
        .expect("CONFIG SET");
    let _: () = config_set("maxmemory-policy", "noeviction")
        .query_async(&mut con)
        .await
        .expect("CONFIG SET");
    let (logged, health) = advisor_warnings(&server).await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].name.contains("noeviction") && logged[0].name.contains("allkeys-lru"));
    assert!(health[0].contains("noeviction"));

    // a limit and an evicting policy: nothing to say
    let _: () = config_set("maxmemory-policy", "allkeys-lru")
        .query_async(&mut con)
        .await
        .expect("CONFIG SET");
    let (logged, health) = advisor_warnings(&server).await;
    assert!(
        logged.is_empty() && health.is_empty(),
        "{logged:?} {health:?}"
    );
}

// ---- warming --------------------------------------------------------------------------------------

#[tokio::test]
async fn warming_reports_progress_up_to_the_total_and_stores_every_value() {
    for (backend, cache) in backends().await {
        let keys: Vec<String> = (0..500).map(|i| format!("w:{i}")).collect();
        let mut seen = Vec::new();
        let summary = cache
            .warm(
                keys,
                |key: String| async move { Ok::<_, String>(key.len()) },
            )
            .concurrency(32)
            .on_progress(|p| seen.push((p.done, p.total, p.errors)))
            .run()
            .await;
        assert_eq!(
            (summary.total, summary.loaded, summary.errors),
            (500, 500, 0),
            "{backend}"
        );
        assert!(!summary.cancelled && summary.skipped == 0);
        assert_eq!(seen.len(), 500);
        assert_eq!(seen.last(), Some(&(500, 500, 0)), "{backend}");
        assert!(
            seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "done counts up by one"
        );
        assert_eq!(
            cache.get::<usize>("w:123").await.expect("cache operation"),
            Some(5),
            "{backend}"
        );
        assert_eq!(cache.stats().writes, 500);
    }
}

#[tokio::test]
async fn warming_counts_failures_and_goes_on() {
    for (backend, cache) in backends().await {
        let keys: Vec<String> = (0..100).map(|i| format!("f:{i}")).collect();
        let summary = cache
            .warm(keys, |key: String| async move {
                let n: u32 = key[2..].parse().expect("a number");
                if n % 10 == 3 {
                    Err(format!("row {n} missing"))
                } else {
                    Ok(n)
                }
            })
            .concurrency(4)
            .run()
            .await;
        assert_eq!((summary.loaded, summary.errors), (90, 10), "{backend}");
        assert_eq!(summary.first_errors.len(), 10);
        assert!(
            summary
                .first_errors
                .iter()
                .any(|e| e == "f:13: row 13 missing"),
            "{summary:?}"
        );
        assert_eq!(
            cache.get::<u32>("f:99").await.expect("cache operation"),
            Some(99),
            "after the failures"
        );
        assert_eq!(
            cache.get::<u32>("f:13").await.expect("cache operation"),
            None
        );
    }
}

#[tokio::test]
async fn warming_cancellation_stops_new_loads() {
    for (backend, cache) in backends().await {
        let cancel = WarmCancel::new();
        let started = AtomicU64::new(0);
        let keys: Vec<String> = (0..1000).map(|i| format!("c:{i}")).collect();
        let summary = cache
            .warm(keys, |_key: String| {
                let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 20 {
                    cancel.cancel();
                }
                async move { Ok::<_, String>(n) }
            })
            .concurrency(4)
            .cancel_on(cancel.clone())
            .run()
            .await;
        let started = started.load(Ordering::SeqCst);
        assert!(summary.cancelled, "{backend}");
        assert_eq!(
            started, 20,
            "{backend}: no load starts after the cancellation"
        );
        assert_eq!(
            summary.loaded + summary.errors,
            20,
            "{backend}: those running finish"
        );
        assert_eq!(summary.skipped, 980, "{backend}");
    }
}

// ---- key report -----------------------------------------------------------------------------------

#[tokio::test]
async fn key_report_counts_and_sizes_keys_by_group() {
    for (backend, cache) in backends().await {
        let users: Vec<(String, String)> = (0..300)
            .map(|i| (format!("user:{i}"), "x".repeat(200)))
            .collect();
        let refs: Vec<(&str, String)> =
            users.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        cache.mset(&refs, None).await.expect("cache operation");
        cache
            .mset(&[("order:1", 1u8), ("order:2", 2)], None)
            .await
            .expect("cache operation");
        cache
            .set_tagged("tagged", &1u8, None, &["org:1"])
            .await
            .expect("cache operation");
        let mut pages = Vec::new();
        let report = cache
            .key_report()
            .on_progress(|n| pages.push(n))
            .run()
            .await
            .expect("key report");
        assert!(report.complete, "{backend}");
        assert_eq!(report.scanned, 300 + 2 + 1 + 1, "{backend}: {report:?}");
        assert_eq!(pages.last(), Some(&report.scanned));
        let group = |name: &str| {
            report
                .groups
                .iter()
                .find(|g| g.name == name)
                .cloned()
                .expect("the group")
        };
        assert_eq!(group("user").keys, 300);
        assert_eq!(group("order").keys, 2);
        assert_eq!(group("~tag").keys, 1);
        assert_eq!(group("").keys, 1, "keys with no `:` group under \"\"");
        assert_eq!(report.groups[0].name, "user", "largest first: {report:?}");
        let u = group("user");
        assert!(
            u.sampled >= 16 && u.estimated_bytes >= 300 * 200,
            "{backend}: {u:?}"
        );
        let bounded = cache
            .key_report()
            .max_keys(50)
            .run()
            .await
            .expect("key report");
        assert!(
            !bounded.complete && bounded.scanned == 50,
            "{backend}: {bounded:?}"
        );
    }
}

#[tokio::test]
async fn key_report_stays_inside_the_handle() {
    let cache = tests::redis_cache_at(&tests::redis_url());
    cache
        .set("outside", &1u8, None)
        .await
        .expect("cache operation");
    let inner = cache.namespace("in[side]*");
    inner.set("a:1", &1u8, None).await.expect("cache operation");
    let report = inner.key_report().run().await.expect("key report");
    assert_eq!(report.scanned, 1, "{report:?}");
    assert_eq!(report.groups[0].name, "a");
}

#[tokio::test]
async fn expired_misses_and_stale_serves_are_counted_per_namespace() {
    for (backend, cache) in backends().await {
        let ns = cache.namespace("stale");
        let options = cache_core::ComputeOptions::new()
            .ttl(Duration::from_millis(50))
            .stale(Duration::from_secs(60));
        let _: u32 = ns.get_or_set_with("s", &options, || async { 1 }).await;
        // past its TTL, inside its stale window: a plain read misses it as expired
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns.get::<u32>("s").await.expect("cache operation").is_some() {
            assert!(Instant::now() < deadline, "{backend}: never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ns.scope_stats().misses.expired >= 1, "{backend}");
        // a failing refresh serves the stale value
        let r: Result<u32, String> = ns
            .try_get_or_set_with("s", &options, || async { Err("source down".to_owned()) })
            .await;
        assert_eq!(r, Ok(1), "{backend}");
        let s = ns.scope_stats();
        assert_eq!(s.stale_serves, 1, "{backend}: {s:?}");
        assert_eq!(
            cache.stats().stale_served,
            1,
            "{backend}: the whole counts it too"
        );
    }
}

#[tokio::test]
async fn health_with_the_breaker_open_is_down_in_fallback_mode() {
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("a free loopback port");
        l.local_addr().expect("its address").port()
    };
    let cache = Cache::builder()
        .url(format!("redis://127.0.0.1:{port}/"))
        .namespace(tests::unique_namespace())
        .connect_timeout(Duration::from_millis(300))
        .breaker(3, Duration::from_secs(60))
        .build()
        .expect("a cache");
    let h = cache.health_within(Duration::from_secs(2)).await;
    assert_eq!(
        h.breaker.as_ref().map(|b| b.state.as_str()),
        Some("closed"),
        "{h:?}"
    );
    for _ in 0..10 {
        if cache.stats().breaker_opened > 0 {
            break;
        }
        let _ = cache.get::<u8>("k").await;
    }
    assert!(cache.stats().breaker_opened > 0, "the breaker opens");
    let h = cache.health().await;
    assert_eq!(
        (h.status, h.mode),
        (HealthStatus::Down, HealthMode::Fallback),
        "{h:?}"
    );
    let b = h.breaker.as_ref().expect("breaker figures");
    assert_eq!(b.state, "open");
    assert!(b.since_change_ms < 60_000, "{b:?}");
    let json = serde_json::to_value(&h).expect("serializes");
    assert_eq!(
        (json["mode"].as_str(), json["breaker"]["state"].as_str()),
        (Some("fallback"), Some("open"))
    );
}
