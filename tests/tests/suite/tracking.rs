//! The L1 kept coherent by Redis's client tracking: any change of a key by anyone (a writer
//! without the L1, a plain client, expiry, eviction, `FLUSHDB`) reaches every L1, and the L1
//! follows failovers and reshards. On the topology `CACHE_TEST_TOPOLOGY` selects, or on
//! deployments of their own where a test breaks them. Waits are bounded polls.

use std::time::{Duration, Instant};

use cache_core::{Cache, Lookup, Source};

const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it holds, or panics after the deadline.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn source(c: &Cache, key: &str) -> Option<(u32, Source)> {
    match c.lookup::<u32>(key).await {
        Ok(Lookup::Hit { value, source, .. }) => Some((value, source)),
        _ => None,
    }
}

/// Reads `key` until it comes from the L1 with `value`.
async fn held(c: &Cache, key: &str, value: u32) {
    eventually(&format!("{key} = {value} served from the L1"), || async {
        source(c, key).await == Some((value, Source::Local))
    })
    .await;
}

/// `b` on the L1 (a local TTL far beyond the deadline: only tracking can invalidate within
/// it), `quiet` without, sharing a namespace on the builder's deployment.
async fn reader_and_quiet_writer(builder: impl Fn() -> cache_core::CacheBuilder) -> (Cache, Cache) {
    let ns = tests::unique_namespace();
    let b = builder()
        .namespace(ns.as_str())
        .local_cache(10_000)
        .local_ttl(Duration::from_secs(600))
        .build()
        .expect("build");
    let quiet = builder().namespace(ns.as_str()).build().expect("build");
    eventually("tracking on", || async { b.local_cache_serving() }).await;
    (b, quiet)
}

/// `CLIENT KILL`s every client with tracking on at the server on `port`; how many.
fn kill_tracking_clients(port: u16) -> usize {
    let ids: Vec<String> = tests::tracking_clients(port)
        .into_iter()
        .map(|c| c.id)
        .collect();
    tests::kill_clients(port, &ids) as usize
}

/// Kills b's tracking connections on the servers at `ports`: a gap, after which b serves
/// again and sees `quiet`'s next write to `k`.
async fn survives_killed_tracking(b: &Cache, quiet: &Cache, ports: Vec<u16>, next: u32) {
    let flushes = b.stats().local_flushes;
    let killed: usize = ports.into_iter().map(kill_tracking_clients).sum();
    assert!(killed >= 1);
    eventually("the killed tracking connection is a gap", || async {
        b.stats().local_flushes > flushes
    })
    .await;
    eventually("tracking on again", || async { b.local_cache_serving() }).await;
    held(b, "k", next - 1).await;
    quiet.set("k", &next, None).await.expect("set");
    held(b, "k", next).await;
}

fn first_pass_only() -> bool {
    tests::topology() == tests::Topology::Single
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_without_l1_plain_clients_and_expiry_invalidate_the_l1() {
    let (b, quiet) = reader_and_quiet_writer(tests::redis_builder).await;
    // A writer without the L1.
    quiet.set("k", &1u32, None).await.expect("set");
    held(&b, "k", 1).await;
    quiet.set("k", &2u32, None).await.expect("set");
    held(&b, "k", 2).await;
    quiet.delete("k").await.expect("delete");
    eventually("the delete reaches b", || async {
        source(&b, "k").await.is_none()
    })
    .await;

    // A tag bumped by a writer without the L1.
    quiet
        .set_tagged("t", &3u32, None, &["org"])
        .await
        .expect("set");
    held(&b, "t", 3).await;
    quiet.invalidate_tag("org").await.expect("bump");
    eventually("the bump reaches b", || async {
        source(&b, "t").await.is_none()
    })
    .await;

    // A plain client: SET (of what another key holds) and DEL.
    let mut raw = tests::raw_connection().await;
    quiet.set("a", &4u32, None).await.expect("set");
    quiet.set("p", &5u32, None).await.expect("set");
    held(&b, "p", 5).await;
    let (a, p) = (b.full_key("a").expect("key"), b.full_key("p").expect("key"));
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(&a)
        .query_async(&mut raw)
        .await
        .expect("GET");
    let _: () = redis::cmd("SET")
        .arg(&p)
        .arg(bytes)
        .query_async(&mut raw)
        .await
        .expect("SET");
    held(&b, "p", 4).await;
    let _: u64 = redis::cmd("DEL")
        .arg(&p)
        .query_async(&mut raw)
        .await
        .expect("DEL");
    eventually("a plain DEL reaches b", || async {
        source(&b, "p").await.is_none()
    })
    .await;

    // Expiry: the key's envelope has no TTL (so the L1 would keep it for its 600 s); Redis
    // expires it after `px` and reports it. On a loaded machine b may not have read it back
    // before it expired: then again with a longer lifetime.
    quiet.set("e", &6u32, None).await.expect("set");
    held(&b, "e", 6).await;
    let e = b.full_key("e").expect("key");
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(&e)
        .query_async(&mut raw)
        .await
        .expect("GET");
    let mut px = 200u64;
    loop {
        let _: () = redis::cmd("SET")
            .arg(&e)
            .arg(&bytes)
            .arg("PX")
            .arg(px)
            .query_async(&mut raw)
            .await
            .expect("SET PX");
        let started = Instant::now();
        let in_l1 = loop {
            match source(&b, "e").await {
                Some((6, Source::Local)) => break true,
                None => break false,
                _ => {}
            }
            assert!(
                started.elapsed() < DEADLINE,
                "b neither read e back nor saw it expire"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if in_l1 {
            break;
        }
        assert!(px < 20_000, "b never held e before it expired");
        px *= 4;
    }
    // Redis deletes an expired key when it is next touched or when its active expiry cycle
    // samples it; the sampling is random, slow on a large keyspace of volatile keys (the shared
    // cluster's, after the rest of the suite), so a plain client's EXISTS touches it. Either
    // way the deletion is reported to the trackers.
    let started = Instant::now();
    loop {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&e)
            .query_async(&mut raw)
            .await
            .expect("EXISTS");
        if exists == 0 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "e never expired in redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("the expiry reaches b", || async {
        source(&b, "e").await.is_none()
    })
    .await;
    assert!(b.stats().local_invalidations >= 8, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_maxmemory_and_flushdb_invalidate_the_l1() {
    // A server of its own: small maxmemory, allkeys-lru, and a FLUSHDB at the end.
    let server = tests::RedisServer::builder()
        .arg("--maxmemory")
        .arg("4mb")
        .arg("--maxmemory-policy")
        .arg("allkeys-lru")
        .start();
    let url = server.url();
    let (b, quiet) = reader_and_quiet_writer(|| Cache::builder().url(url.as_str())).await;
    quiet.set("victim", &1u32, None).await.expect("set");
    held(&b, "victim", 1).await;
    // b reads it from its L1 only: Redis sees the key as the least recently used.
    let full = b.full_key("victim").expect("key");
    let mut raw = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let filler = vec![b'x'; 64 * 1024];
    let mut written = 0u32;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&full)
            .query_async(&mut raw)
            .await
            .expect("EXISTS");
        if !exists {
            break;
        }
        assert!(written < 1000, "the victim was never evicted");
        let _: () = redis::cmd("SET")
            .arg(format!("filler:{written}"))
            .arg(&filler)
            .query_async(&mut raw)
            .await
            .expect("SET");
        written += 1;
    }
    eventually("the eviction reaches b", || async {
        source(&b, "victim").await.is_none()
    })
    .await;

    // FLUSHDB: a null invalidation, which empties the L1.
    quiet.set("f", &2u32, None).await.expect("set");
    held(&b, "f", 2).await;
    let flushes = b.stats().local_flushes;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut raw)
        .await
        .expect("FLUSHDB");
    eventually("the flush reaches b", || async {
        source(&b, "f").await.is_none()
    })
    .await;
    assert!(b.stats().local_flushes > flushes, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l1_survives_a_killed_tracking_connection_and_follows_a_sentinel_failover() {
    if !first_pass_only() {
        return;
    }
    let setup = tests::SentinelSetup::start();
    let urls = setup.sentinel_urls();
    let (b, quiet) = reader_and_quiet_writer(|| {
        Cache::builder()
            .sentinel(urls.clone(), tests::SENTINEL_MASTER)
            .connect_timeout(Duration::from_millis(500))
            .command_timeout(Duration::from_millis(500))
    })
    .await;
    quiet.set("k", &1u32, None).await.expect("set");
    held(&b, "k", 1).await;
    let primary = setup.current_primary_port().expect("a primary");
    survives_killed_tracking(&b, &quiet, vec![primary], 2).await;
    let flushes = b.stats().local_flushes;
    let setup = tokio::task::spawn_blocking(move || {
        setup.failover(DEADLINE).expect("sentinel failover");
        setup
    })
    .await
    .expect("joined");
    // A gap: b empties its L1, then tracks the new primary.
    eventually("b notices the failover", || async {
        b.stats().local_flushes > flushes
    })
    .await;
    eventually("tracking on the new primary", || async {
        b.local_cache_serving()
    })
    .await;
    eventually("the writer reaches the new primary", || async {
        quiet.set("k", &3u32, None).await.is_ok()
    })
    .await;
    held(&b, "k", 3).await;
    quiet.set("k", &4u32, None).await.expect("set");
    held(&b, "k", 4).await;
    drop(setup);
}

fn cluster_builder(cluster: &tests::RedisCluster) -> cache_core::CacheBuilder {
    Cache::builder()
        .cluster_nodes(cluster.urls())
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l1_survives_killed_tracking_connections_and_follows_a_cluster_failover() {
    if !first_pass_only() {
        return;
    }
    let mut cluster = tests::RedisCluster::start();
    let (b, quiet) = reader_and_quiet_writer(|| cluster_builder(&cluster)).await;
    quiet.set("k", &1u32, None).await.expect("set");
    held(&b, "k", 1).await;
    let ports = cluster.nodes().iter().map(|n| n.port()).collect();
    survives_killed_tracking(&b, &quiet, ports, 2).await;
    let full = b.full_key("k").expect("key");
    let primary = cluster.primary_for(&full).expect("a primary serves k");
    let flushes = b.stats().local_flushes;
    cluster.node_mut(primary).kill();
    eventually("b notices the failover", || async {
        b.stats().local_flushes > flushes
    })
    .await;
    let cluster = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + DEADLINE;
        while cluster.primary_for(&full).is_none_or(|p| p == primary) {
            assert!(Instant::now() < deadline, "no replica took over");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    })
    .await
    .expect("joined");
    eventually("tracking on the new primaries", || async {
        b.local_cache_serving()
    })
    .await;
    eventually("the writer reaches the new primary", || async {
        quiet.set("k", &3u32, None).await.is_ok()
    })
    .await;
    held(&b, "k", 3).await;
    quiet.set("k", &4u32, None).await.expect("set");
    held(&b, "k", 4).await;
    drop(cluster);
}

/// Moves `key`'s slot from the node at `from` to the node at `to` (ports), with its keys:
/// what `redis-cli --cluster reshard` does for one slot.
fn move_slot(key: &str, from: u16, to: u16) {
    let con = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection())
            .expect("connect")
    };
    let (mut src, mut dst) = (con(from), con(to));
    let id = |c: &mut redis::Connection| -> String {
        redis::cmd("CLUSTER").arg("MYID").query(c).expect("MYID")
    };
    let (src_id, dst_id) = (id(&mut src), id(&mut dst));
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut src)
        .expect("KEYSLOT");
    let setslot = |c: &mut redis::Connection, how: &str, node: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(how)
            .arg(node)
            .query(c)
            .expect("SETSLOT");
    };
    setslot(&mut dst, "IMPORTING", &src_id);
    setslot(&mut src, "MIGRATING", &dst_id);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut src)
            .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut src)
            .expect("MIGRATE");
    }
    setslot(&mut dst, "NODE", &dst_id);
    setslot(&mut src, "NODE", &dst_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l1_follows_a_reshard() {
    if !first_pass_only() {
        return;
    }
    let cluster = tests::RedisCluster::start();
    let (b, quiet) = reader_and_quiet_writer(|| cluster_builder(&cluster)).await;
    quiet.set("k", &1u32, None).await.expect("set");
    held(&b, "k", 1).await;
    let full = b.full_key("k").expect("key");
    let from = cluster.primary_for(&full).expect("a primary serves k");
    let to = cluster
        .primaries()
        .into_iter()
        .find(|&p| p != from)
        .expect("another primary");
    let (from_port, to_port) = (cluster.nodes()[from].port(), cluster.nodes()[to].port());
    let moved = full.clone();
    tokio::task::spawn_blocking(move || move_slot(&moved, from_port, to_port))
        .await
        .expect("joined");
    // The key left its old node, which reported it: b reads it again, from the new node.
    eventually("b drops the migrated key", || async {
        source(&b, "k").await == Some((1, Source::Redis))
    })
    .await;
    held(&b, "k", 1).await;
    // Its new node reports the next write.
    eventually("the writer reaches the new node", || async {
        quiet.set("k", &2u32, None).await.is_ok()
    })
    .await;
    held(&b, "k", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_just_written_is_not_lost_to_its_own_invalidation_arriving_late() {
    let (b, _quiet) = reader_and_quiet_writer(tests::redis_builder).await;
    for i in 0..50u32 {
        b.set_tagged("own", &i, None, &["own-tag"])
            .await
            .expect("set");
        // Redis's push about this write was applied before `set` returned: the value read
        // next stays in the L1 and the read after it is an L1 hit, at once.
        assert_eq!(
            source(&b, "own").await,
            Some((i, Source::Redis)),
            "round {i}"
        );
        assert_eq!(
            source(&b, "own").await,
            Some((i, Source::Local)),
            "round {i}"
        );
        if i % 10 == 9 {
            b.invalidate_tag("own-tag").await.expect("bump");
            assert_eq!(source(&b, "own").await, None, "round {i}");
        }
    }
}
