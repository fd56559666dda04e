//! The L1 kept coherent by client tracking (cache-core's engine/local.rs): how soon a change
//! made elsewhere is visible on an instance with the L1, and what the L1 costs writes now
//! that they publish nothing. Measured with `measure` and `Round` like every other row; the
//! L1 hit row itself is `ours L1 hit c=64` in workloads.rs, with a bar here.

use cache_core::{Cache, Lookup, Source};

use crate::measure::{delay_round, measure, poll_until, Round};
use crate::workloads::{Bar, Ctx, Expect, Target, User, Workload, TTL};

/// Keys the write rows cycle through.
const WRITE_KEYS: u64 = 10_000;
/// Ids of the visibility rows: their own, above the populated and the miss ids.
const VISIBILITY_IDS: u64 = 1 << 40;

#[rustfmt::skip]
pub fn workloads() -> Vec<Workload> {
    use Expect::Unchecked;
    let w = |name, reference, run| Workload { name, reference, expect: Unchecked, run };
    vec![
        w("raw SET c=64", None, |cx| Box::pin(raw_write(cx, "SET"))),
        w("ours set c=64", Some("raw SET c=64"), |cx| Box::pin(ours_set(cx, &cx.ours))),
        w("ours set, L1 on, c=64", Some("ours set c=64"), |cx| Box::pin(ours_set(cx, &cx.l1))),
        w("raw DEL c=64", None, |cx| Box::pin(raw_write(cx, "DEL"))),
        w("raw SET PX GET of a tombstone c=64", None, |cx| Box::pin(raw_write(cx, "SET PX GET"))),
        w("ours delete c=64", Some("raw DEL c=64"), |cx| Box::pin(ours_delete(cx, &cx.ours))),
        w("ours delete, L1 on, c=64", Some("ours delete c=64"), |cx| Box::pin(ours_delete(cx, &cx.l1))),
        w("L1 sees a write by an instance without L1", None, |cx| Box::pin(visibility(cx, Writer::WithoutL1))),
        w("L1 sees a SET by a plain client", None, |cx| Box::pin(visibility(cx, Writer::PlainClient))),
    ]
}

/// The bars for these rows (the visibility rows' p99 bar, 5 ms, is read off their
/// p99 column: `Bar` compares throughput and p50 only).
pub fn targets() -> Vec<Target> {
    let t = |ours, reference, bar| Target {
        ours,
        reference,
        bar,
    };
    vec![
        t(
            "ours set, L1 on, c=64",
            "raw SET c=64",
            Bar::OpsAtLeast(0.95),
        ),
        // The delete's bar is against the command a delete must send, sent raw: one
        // `SET key <tombstone> PX <hold> GET`. The tombstone is what lets an invalidation win
        // over a computation already running (ARCHITECTURE.md §4, the first guarantee); a raw
        // `DEL` of keys that hold nothing leaves no such mark, so it is a reference row (its
        // ratio is printed beside `ours delete c=64`), not a bar.
        t(
            "ours delete, L1 on, c=64",
            "raw SET PX GET of a tombstone c=64",
            Bar::OpsAtLeast(0.95),
        ),
        t(
            "ours delete c=64",
            "raw SET PX GET of a tombstone c=64",
            Bar::OpsAtLeast(0.95),
        ),
        t(
            "ours set, L1 on, c=64",
            "ours set c=64",
            Bar::OpsAtLeast(0.95),
        ),
        t(
            "ours delete, L1 on, c=64",
            "ours delete c=64",
            Bar::OpsAtLeast(0.95),
        ),
        t(
            "ours L1 hit c=64",
            "moka Arc get c=64",
            Bar::OpsAbove(2_000_000.0),
        ),
    ]
}

fn key(cx: &Ctx, what: &str, id: u64) -> String {
    format!("{}:raw:{what}:{id}", cx.run)
}

/// On the raw connection: `SET PX` of a user's JSON; `DEL` (of keys that hold nothing: the
/// row deletes the same keys again and again); or `SET PX GET` of 44 bytes for a minute, the
/// command `ours delete` sends (its tombstone, held for `invalidation_hold`).
async fn raw_write(cx: &'static Ctx, command: &'static str) -> Round {
    measure(&cx.plan, 64, move |i| async move {
        let mut conn = cx.raw.clone();
        let (name, what) = match command {
            "SET PX GET" => ("SET", "tombstone"),
            other => (other, other),
        };
        let mut cmd = redis::cmd(name);
        cmd.arg(key(cx, what, i % WRITE_KEYS));
        match command {
            "SET" => {
                let json = serde_json::to_vec(&User::load(i % WRITE_KEYS)).expect("encode");
                cmd.arg(json).arg("PX").arg(TTL.as_millis() as u64);
            }
            "SET PX GET" => {
                cmd.arg([0u8; 44].as_slice())
                    .arg("PX")
                    .arg(60_000)
                    .arg("GET");
            }
            _ => {}
        }
        let _: redis::Value = cmd.query_async(&mut conn).await.expect("raw write");
    })
    .await
}

async fn ours_set(cx: &'static Ctx, cache: &'static Cache) -> Round {
    measure(&cx.plan, 64, move |i| async move {
        let id = i % WRITE_KEYS;
        cache
            .set(&format!("nset:{id}"), &User::load(id), TTL)
            .await
            .expect("set");
    })
    .await
}

async fn ours_delete(cx: &'static Ctx, cache: &'static Cache) -> Round {
    measure(&cx.plan, 64, move |i| async move {
        cache
            .delete(&format!("ndel:{}", i % WRITE_KEYS))
            .await
            .expect("delete");
    })
    .await
}

#[derive(Clone, Copy)]
enum Writer {
    /// `set` through `Ctx::ours`, which has no L1.
    WithoutL1,
    /// `SET` of the new envelope's bytes on the raw connection.
    PlainClient,
}

/// From a write elsewhere returning to the L1 of `Ctx::l1` no longer serving the old value:
/// per operation, the key is read into the L1, written by `writer`, and the L1 polled until
/// it misses. p50/p99 are of that delay; ops/s counts whole cycles.
async fn visibility(cx: &'static Ctx, writer: Writer) -> Round {
    let reader = &cx.l1;
    delay_round(&cx.plan, |i| async move {
        let id = VISIBILITY_IDS + (i % 64);
        let name = format!("nvis:{id}");
        let in_l1 = || async {
            matches!(
                reader.lookup::<User>(&name).await.expect("lookup"),
                Lookup::Hit {
                    source: Source::Local,
                    ..
                }
            )
        };
        cx.ours.set(&name, &User::load(id), TTL).await.expect("set");
        // Read until the L1 holds it: the push about the write above (by another instance)
        // may still drop the first copy read.
        poll_until("the L1 never held the key", in_l1).await;
        match writer {
            Writer::WithoutL1 => cx.ours.set(&name, &User::load(id), TTL).await.expect("set"),
            Writer::PlainClient => {
                let full = cx.ours.full_key(&name).expect("key");
                let mut conn = cx.raw.clone();
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(&full)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                let _: () = redis::cmd("SET")
                    .arg(&full)
                    .arg(bytes)
                    .query_async(&mut conn)
                    .await
                    .expect("SET");
            }
        }
        poll_until("the invalidation never arrived", || async {
            !in_l1().await
        })
        .await
    })
    .await
}
