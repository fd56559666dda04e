//! Single-flight: the computations running in this process, per full key, which concurrent
//! misses of the key join instead of computing again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::base::codec;
use crate::pipeline::Pipeline;

/// What the reader of a key found before computing: flights join only readers that found
/// the same thing, so that a computation that started before an invalidation never answers
/// a caller that read after it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Seen {
    /// The read failed.
    Unread,
    /// These bytes (`None`: nothing).
    Read(Option<Bytes>),
}

#[derive(Debug, Clone)]
pub(super) enum Landing {
    Running,
    /// The encoded value, the [`LANDINGS`] count it landed as, and when.
    Value(Bytes, u64, Instant),
    Failed,
}

/// Values landed by flights in this process, counted: a caller reads it (one load, the only
/// thing a hit pays for single-flight) before its read of the backend, so that a flight it
/// finds landed is known to have landed after that read began (its value is then what the
/// read would have found, had it come a moment later), and not before (a later call, which
/// must not be answered by an old flight: the entry may have expired since, or never been
/// stored).
pub(super) static LANDINGS: AtomicU64 = AtomicU64::new(0);

/// The [`LANDINGS`] count before a read.
pub(super) fn landings() -> u64 {
    LANDINGS.load(Ordering::SeqCst)
}

pub(super) struct Flight {
    pub(super) seen: Seen,
    pub(super) tx: watch::Sender<Landing>,
}

/// The computations running in this process, per full key, and those landed a moment ago
/// (for callers whose read raced the landing).
#[derive(Default)]
pub(super) struct Flights {
    pub(super) by_key: Mutex<HashMap<String, Arc<Flight>>>,
    /// The map's size that triggers the next sweep of landed flights: at least
    /// `SWEEP_ABOVE`, and twice what the last sweep left, so each sweep is paid for by as
    /// many joins as it visits entries (a sweep on every join made a miss O(flights landed in
    /// the last second): 4x slower at 5k misses a second).
    pub(super) sweep_at: std::sync::atomic::AtomicUsize,
    /// Bytes of the values landed since landed flights were last all let go: an upper bound
    /// on what lingering holds (sweeps and replaced flights free some without counting).
    pub(super) landed_bytes: std::sync::atomic::AtomicUsize,
}

/// Landed flights are kept this long for callers whose read began before the landing but
/// who join after it (the moment between a caller's read and its join); swept after.
pub(super) const LINGER: Duration = Duration::from_secs(1);
/// Landed flights are swept when the map grows past this.
pub(super) const SWEEP_ABOVE: usize = 256;
/// At most about this many bytes of landed values are kept for [`LINGER`]: past it, every
/// landed flight is let go at once. Lingering serves only a caller whose read raced a landing
/// by a moment; one that finds its flight gone computes (or reads) again, so this bounds
/// memory, not correctness. Without it, a burst of misses kept a second's worth of values
/// beside the store's budget (20,000 values of 8 KiB through a 16 MiB fallback store grew
/// the process by ~3x the budget; with 1 MiB, by 2.1x, the buffers they pinned included;
/// tests/tests/memory_budget.rs).
pub(super) const LINGER_BYTES: usize = 256 << 10;

pub(super) enum Joined {
    Lead(Leader),
    Wait(watch::Receiver<Landing>),
    Landed(Bytes),
}

impl Flights {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the flight of `key` if it started from what this caller's read found (`seen`,
    /// a read begun at [`landings`] count `epoch`): waits for it while it runs, takes its
    /// value if it landed after that read began; else leads a new one.
    pub(super) fn join(self: &Arc<Self>, key: &str, seen: &Seen, epoch: u64) -> Joined {
        let mut map = self.lock();
        if let Some(flight) = map.get(key).filter(|f| f.seen == *seen) {
            match &*flight.tx.borrow() {
                Landing::Running => return Joined::Wait(flight.tx.subscribe()),
                Landing::Value(bytes, landed, _) if epoch < *landed => {
                    return Joined::Landed(bytes.clone());
                }
                _ => {}
            }
        }
        if map.len()
            >= self
                .sweep_at
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(SWEEP_ABOVE)
        {
            map.retain(|_, f| match &*f.tx.borrow() {
                Landing::Running => true,
                Landing::Value(_, _, at) => at.elapsed() < LINGER,
                Landing::Failed => false,
            });
            self.sweep_at.store(
                map.len().saturating_mul(2),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let flight = Arc::new(Flight {
            seen: seen.clone(),
            tx: watch::Sender::new(Landing::Running),
        });
        map.insert(key.to_owned(), flight.clone());
        Joined::Lead(Leader {
            flights: self.clone(),
            key: key.to_owned(),
            flight,
            landed: false,
        })
    }
}

/// The caller computing a flight. Dropped without landing (its caller was cancelled, or
/// the computation panicked), it lands as failed, so waiters never hang: one of them takes
/// over.
pub(super) struct Leader {
    pub(super) flights: Arc<Flights>,
    pub(super) key: String,
    pub(super) flight: Arc<Flight>,
    pub(super) landed: bool,
}

impl Leader {
    pub(super) fn land(mut self, value: Option<Bytes>) {
        self.finish(match value {
            Some(bytes) => Landing::Value(
                bytes,
                LANDINGS.fetch_add(1, Ordering::SeqCst) + 1,
                Instant::now(),
            ),
            None => Landing::Failed,
        });
    }

    pub(super) fn finish(&mut self, landing: Landing) {
        if self.landed {
            return;
        }
        self.landed = true;
        let landed_len = match &landing {
            Landing::Value(bytes, ..) => Some(bytes.len()),
            _ => None,
        };
        {
            let mut map = self.flights.lock();
            let over_budget = landed_len.is_some_and(|len| {
                self.flights.landed_bytes.fetch_add(len, Ordering::Relaxed) + len > LINGER_BYTES
            });
            if over_budget {
                // This flight's waiters hold its receiver: they get the landing all the same.
                map.retain(|_, f| matches!(*f.tx.borrow(), Landing::Running));
                self.flights.landed_bytes.store(0, Ordering::Relaxed);
            } else if landed_len.is_none()
                && map
                    .get(&self.key)
                    .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
            // Sent under the lock, so a caller joining now sees the landing.
            self.flight.tx.send_replace(landing);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.finish(Landing::Failed);
    }
}

pub(super) enum Waited {
    Value(Bytes),
    Failed,
    TimedOut,
}

pub(super) async fn wait(mut rx: watch::Receiver<Landing>, bound: Option<Duration>) -> Waited {
    let landed = async {
        match rx.wait_for(|l| !matches!(l, Landing::Running)).await {
            Ok(landing) => match &*landing {
                Landing::Value(bytes, ..) => Waited::Value(bytes.clone()),
                _ => Waited::Failed,
            },
            Err(_) => Waited::Failed,
        }
    };
    match bound {
        None => landed.await,
        Some(bound) => tokio::time::timeout(bound, landed)
            .await
            .unwrap_or(Waited::TimedOut),
    }
}

/// A value handed over by the caller that computed it (decrypted if the handle encrypts).
pub(super) fn decode_shared<S: DeserializeOwned + 'static>(
    cache: &Pipeline,
    full: &str,
    bytes: &[u8],
) -> Option<S> {
    let env = codec::parse(bytes).ok()?;
    cache
        .open_value::<S>(full, bytes, &env, codec::fingerprint::<S>())
        .ok()
}
