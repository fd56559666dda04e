//! What this process knows of its scopes' generations (clear.rs): a [`Cell`] per generation
//! key in use, trusted while the tracking of the generation keys is on and nothing was heard
//! since it was learned. Written to by whichever feed tracks the generation keys (clear.rs's
//! own, or the L1's, whose prefix covers them: local.rs), read by every read (clear.rs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::store::Backend;
use crate::store::breaker::GENERATION_MARK;
use crate::store::redis::Tracking;

/// True for a scope's generation key. The cache's own keys are marked by their first `~` (no
/// root, escaped scope name or tenant id holds one): `~clear:` for a generation key, `~tag:`
/// for a tag's version key (whose tag may hold `~clear:` further on).
pub(crate) fn is_generation_key(key: &str) -> bool {
    key.find('~')
        .is_some_and(|i| key[i..].starts_with(GENERATION_MARK))
}

/// The scopes' generations known in this process (one per cache root). Every read loads
/// `heard` and `live`: aligned to its own cache lines, away from counters every operation
/// writes (the root's statistics beside it in `Shared`), which would make each load a miss
/// on another core's write.
#[repr(align(128))]
pub(crate) struct Generations {
    /// Moved by every change of a generation key tracking reports, by every gap, and when
    /// tracking comes on: a generation learned before is no longer known.
    heard: AtomicU64,
    /// Tracking of the generation keys is on (always, on the memory backend: no other
    /// process shares its store).
    live: AtomicBool,
    /// `strict_clear`: nothing is known, every read fetches.
    strict: bool,
    feed_started: AtomicBool,
    /// The tracking connections while tracking is on, for a barrier (`sync_generations`).
    tracking: RwLock<Option<Arc<Tracking>>>,
    /// Wakes those waiting for tracking to come on.
    came_on: tokio::sync::Notify,
    cells: Mutex<Cells>,
}

#[derive(Default)]
struct Cells {
    by_key: HashMap<String, Weak<Cell>>,
    /// The size at which the map is next purged of cells no handle holds (tenants come and
    /// go: without it, one entry per tenant ever seen).
    purge_at: usize,
}

/// One scope's generation as known here. Read by every read of the scope: on cache lines of
/// its own (the allocations made beside it, such as the namespace's statistics, are written
/// by every operation).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Cell {
    /// The largest generation learned.
    value: AtomicU64,
    /// The `heard` count it was learned at (0: never).
    learned_at: AtomicU64,
}

impl Cell {
    /// A generation this process moved the scope to itself (a clear that returned): its reads
    /// miss what the scope held from now on.
    pub(crate) fn moved_here(&self, generation: u64) {
        self.value.fetch_max(generation, Ordering::SeqCst);
    }
}

impl Generations {
    pub(crate) fn new(backend: &Backend, strict: bool) -> Generations {
        Generations {
            heard: AtomicU64::new(1),
            live: AtomicBool::new(matches!(backend, Backend::Memory(_))),
            strict,
            feed_started: AtomicBool::new(false),
            tracking: RwLock::new(None),
            came_on: tokio::sync::Notify::new(),
            cells: Mutex::new(Cells::default()),
        }
    }

    /// The cell of `key`, shared with every handle that has it.
    pub(crate) fn cell(&self, key: &str) -> Arc<Cell> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = cells.by_key.get(key).and_then(Weak::upgrade) {
            return cell;
        }
        if cells.by_key.len() >= cells.purge_at {
            cells.by_key.retain(|_, cell| cell.strong_count() > 0);
            cells.purge_at = (cells.by_key.len() * 2).max(64);
        }
        let cell = Arc::new(Cell::default());
        cells.by_key.insert(key.to_owned(), Arc::downgrade(&cell));
        cell
    }

    pub(crate) fn strict(&self) -> bool {
        self.strict
    }

    /// What `heard` is now: taken before a read whose generations may be learned.
    pub(crate) fn heard(&self) -> u64 {
        self.heard.load(Ordering::SeqCst)
    }

    /// `cell`'s generation, if known.
    pub(crate) fn known(&self, cell: &Cell) -> Option<u64> {
        if self.strict || !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let heard = self.heard.load(Ordering::SeqCst);
        (cell.learned_at.load(Ordering::SeqCst) == heard).then(|| cell.value.load(Ordering::SeqCst))
    }

    /// `value`, read from the backend by a read that began when `heard` was `at`: known from
    /// now on, unless something was heard since (or tracking is off).
    pub(crate) fn learn(&self, cell: &Cell, at: u64, value: u64) {
        if self.strict || !self.live.load(Ordering::SeqCst) || self.heard() != at {
            return;
        }
        cell.value.fetch_max(value, Ordering::SeqCst);
        cell.learned_at.store(at, Ordering::SeqCst);
    }

    /// Something changed, or may have: nothing known stays known.
    pub(crate) fn forget_all(&self) {
        self.heard.fetch_add(1, Ordering::SeqCst);
    }

    /// A key tracking reported changed (`None`: everything, `FLUSHDB`).
    pub(crate) fn heard_of(&self, key: Option<&str>) {
        if key.is_none_or(is_generation_key) {
            self.forget_all();
        }
    }

    /// Tracking of the generation keys is on, through `tracking`.
    pub(crate) fn tracking_on(&self, tracking: &Arc<Tracking>) {
        if let Ok(mut slot) = self.tracking.write() {
            *slot = Some(tracking.clone());
        }
        // Whatever was learned before tracking came on may have changed unheard of.
        self.forget_all();
        self.live.store(true, Ordering::SeqCst);
        self.came_on.notify_waiters();
    }

    /// Tracking is lost: what changes meanwhile is not heard of.
    pub(crate) fn tracking_lost(&self) {
        self.live.store(false, Ordering::SeqCst);
        if let Ok(mut slot) = self.tracking.write() {
            *slot = None;
        }
        self.forget_all();
    }

    /// Waits, at most `limit`, for tracking to be on; its connections, if it is.
    pub(crate) async fn tracking_within(&self, limit: Duration) -> Option<Arc<Tracking>> {
        let on = async {
            loop {
                let came_on = self.came_on.notified();
                tokio::pin!(came_on);
                came_on.as_mut().enable();
                if self.live.load(Ordering::SeqCst) {
                    return;
                }
                came_on.await;
            }
        };
        tokio::time::timeout(limit, on).await.ok()?;
        self.tracking.read().ok().and_then(|t| t.clone())
    }

    /// True once: the caller starts the feed (and calls
    /// [`feed_not_started`](Self::feed_not_started) if it cannot).
    pub(crate) fn claim_feed(&self) -> bool {
        !self.strict
            && !self.feed_started.load(Ordering::Relaxed)
            && !self.feed_started.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn feed_not_started(&self) {
        self.feed_started.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_redis() -> Generations {
        // As on Redis: nothing known before tracking is on.
        let g = Generations::new(
            &Backend::Memory(crate::store::memory::MemoryBackend::new(1 << 20)),
            false,
        );
        g.live.store(false, Ordering::SeqCst);
        g
    }

    #[test]
    fn a_generation_is_known_from_a_read_begun_while_tracking_was_on_and_nothing_heard_since() {
        let g = on_redis();
        let cell = g.cell("ns:~clear:");
        let at = g.heard();
        g.learn(&cell, at, 5);
        assert_eq!(g.known(&cell), None, "tracking off: not learned");

        let tracking = Arc::new(Tracking::none());
        g.tracking_on(&tracking);
        let before_on = at;
        g.learn(&cell, before_on, 5);
        assert_eq!(g.known(&cell), None, "read before tracking came on");
        let at = g.heard();
        g.learn(&cell, at, 5);
        assert_eq!(g.known(&cell), Some(5));
        assert!(
            Arc::ptr_eq(&cell, &g.cell("ns:~clear:")),
            "one cell per key"
        );

        g.heard_of(Some("ns:a:~tag:x~clear:"));
        assert_eq!(g.known(&cell), Some(5), "a tag's version key");
        let at = g.heard();
        g.heard_of(Some("ns:~clear:a:"));
        assert_eq!(g.known(&cell), None, "a generation key changed");
        g.learn(&cell, at, 9);
        assert_eq!(g.known(&cell), None, "read before the change was heard of");
        let at = g.heard();
        g.learn(&cell, at, 3);
        assert_eq!(
            g.known(&cell),
            Some(5),
            "never goes back (an evicted key reads 0)"
        );
        cell.moved_here(7);
        assert_eq!(g.known(&cell), Some(7), "this process's own clear");

        g.tracking_lost();
        assert_eq!(g.known(&cell), None, "a gap");
        g.heard_of(None);
        assert!(is_generation_key("ns:~clear:"));
        assert!(!is_generation_key("ns:a:~tag:x~clear:"));
    }
}
