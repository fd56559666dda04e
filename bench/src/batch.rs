//! Batch get-or-compute (issue 22): a batch of 100 cached ids against a raw `MGET` of the
//! same 100 keys plus decoding, and against 100 sequential `get_or_set` calls; a cold batch
//! of 100, whose load is called once per batch (counted, and checked, not timed apart).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::measure::{measure, Round};
use crate::workloads::{computes, Bar, Ctx, Expect, Target, User, Workload, KEYS, TTL};

/// Ids per batch.
const BATCH: u64 = 100;
/// Ids of the cold batches start here: far from the populated ones and from the other miss
/// workloads' (which start at 1e9).
const FIRST_COLD_ID: u64 = 4_000_000_000;

/// Calls of the cold batches' load, and the ids they were given.
static LOADS: AtomicU64 = AtomicU64::new(0);
static LOADED_IDS: AtomicU64 = AtomicU64::new(0);
static NEXT_COLD: AtomicU64 = AtomicU64::new(FIRST_COLD_ID);

const RAW: &str = "raw MGET 100 keys c=1";
const OURS: &str = "ours batch of 100 hits c=1";
const SEQUENTIAL: &str = "ours 100 sequential get_or_set hits c=1";
const COLD: &str = "ours cold batch of 100 c=1";

/// The rows, each after its reference.
#[rustfmt::skip]
pub fn workloads() -> Vec<Workload> {
    let w = |name, reference, expect, run| Workload { name, reference, expect, run };
    vec![
        w(RAW, None, Expect::Unchecked, |cx| Box::pin(raw_mget(cx))),
        w(OURS, Some(RAW), Expect::Hits, |cx| Box::pin(ours_batch(cx))),
        w(SEQUENTIAL, None, Expect::Hits, |cx| Box::pin(ours_sequential(cx))),
        w(COLD, None, Expect::Unchecked, |cx| Box::pin(ours_cold(cx))),
    ]
}

/// The bars: >= 0.9x the raw `MGET`; the ratio to the sequential calls is reported
/// (a batch is one round trip instead of 100: the bar only says it is large).
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            ours: OURS,
            reference: RAW,
            bar: Bar::OpsAtLeast(0.9),
        },
        Target {
            ours: OURS,
            reference: SEQUENTIAL,
            bar: Bar::OpsAtLeast(10.0),
        },
    ]
}

/// The `BATCH` consecutive populated ids of operation `i`.
fn window(i: u64) -> impl Iterator<Item = u64> {
    let first = (i * BATCH) % (KEYS - BATCH);
    first..first + BATCH
}

#[track_caller]
fn check(found: &HashMap<u64, User>, ids: impl Iterator<Item = u64>) {
    let mut n = 0;
    for id in ids {
        let user = found
            .get(&id)
            .unwrap_or_else(|| panic!("user {id} missing from the batch"));
        assert_eq!(user.id, id, "user {id}");
        n += 1;
    }
    assert_eq!(found.len(), n, "the batch answered other ids");
}

/// Raw redis-rs: one `MGET` of the 100 keys, then `serde_json` decoding of each.
async fn raw_mget(cx: &'static Ctx) -> Round {
    measure(&cx.plan, 1, move |i| async move {
        let mut cmd = redis::cmd("MGET");
        for id in window(i) {
            cmd.arg(format!("{}:raw:user:{id}", cx.run));
        }
        let values: Vec<Vec<u8>> = cmd
            .query_async(&mut cx.raw.clone())
            .await
            .unwrap_or_else(|e| panic!("raw MGET: {e}"));
        let found: HashMap<u64, User> = window(i)
            .zip(values)
            .map(|(id, bytes)| {
                let user =
                    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("raw decode: {e}"));
                (id, user)
            })
            .collect();
        check(&found, window(i));
    })
    .await
}

/// `get_or_set_many` of the 100 ids, all cached (`ours::user` wrote them under `user:<id>`).
async fn ours_batch(cx: &'static Ctx) -> Round {
    measure(&cx.plan, 1, move |i| async move {
        let found: HashMap<u64, User> = cx
            .ours
            .get_or_set_many(
                window(i),
                |id: &u64| format!("user:{id}"),
                TTL,
                |missing: Vec<u64>| async move {
                    missing.into_iter().map(|id| (id, User::load(id))).collect()
                },
            )
            .await;
        check(&found, window(i));
    })
    .await
}

/// The same 100 ids as 100 `get_or_set` calls, one after the other.
async fn ours_sequential(cx: &'static Ctx) -> Round {
    measure(&cx.plan, 1, move |i| async move {
        let mut found = HashMap::with_capacity(BATCH as usize);
        for id in window(i) {
            let user: User = cx
                .ours
                .get_or_set(&format!("user:{id}"), TTL, || async move { User::load(id) })
                .await;
            found.insert(id, user);
        }
        check(&found, window(i));
    })
    .await
}

/// A batch of 100 ids never seen: one read, one load of the 100, one pipelined write. Checked:
/// every batch called its load once, with all 100 ids.
async fn ours_cold(cx: &'static Ctx) -> Round {
    let (loads, loaded, computed) = (
        LOADS.load(Ordering::Relaxed),
        LOADED_IDS.load(Ordering::Relaxed),
        computes(),
    );
    let round = measure(&cx.plan, 1, move |_| async move {
        let first = NEXT_COLD.fetch_add(BATCH, Ordering::Relaxed);
        let found: HashMap<u64, User> = cx
            .ours
            .get_or_set_many(
                first..first + BATCH,
                |id: &u64| format!("cold:{id}"),
                TTL,
                |missing: Vec<u64>| async move {
                    LOADS.fetch_add(1, Ordering::Relaxed);
                    LOADED_IDS.fetch_add(missing.len() as u64, Ordering::Relaxed);
                    missing.into_iter().map(|id| (id, User::load(id))).collect()
                },
            )
            .await;
        check(&found, first..first + BATCH);
    })
    .await;
    let (loads, loaded) = (
        LOADS.load(Ordering::Relaxed) - loads,
        LOADED_IDS.load(Ordering::Relaxed) - loaded,
    );
    assert_eq!(loads, round.ops_with_warmup, "{COLD}: one load per batch");
    assert_eq!(
        loaded,
        round.ops_with_warmup * BATCH,
        "{COLD}: each load got the 100 ids"
    );
    assert_eq!(
        computes() - computed,
        loaded,
        "{COLD}: nothing else computed"
    );
    println!(
        "\n{COLD}: {} batches, {loads} load calls, {loaded} ids loaded",
        round.ops_with_warmup
    );
    round
}
