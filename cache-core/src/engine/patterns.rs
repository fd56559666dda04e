//! The log of recent pattern invalidations (ARCHITECTURE.md): what keeps a computation that
//! read before an invalidation by pattern from storing after it. The invalidation itself is
//! the `pattern` capability's.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::base::glob::glob_match;
use crate::engine::Handle;

/// Patterns invalidated recently in this process (or heard of through the L1 feed), so a
/// computation of a key that held nothing when the scan passed does not store after the
/// invalidation returned.
#[derive(Default)]
pub(crate) struct PatternLog {
    /// Bumped with every pattern recorded; a computation notes it before it starts.
    epoch: AtomicU64,
    recent: Mutex<VecDeque<(u64, Instant, String)>>,
}

impl PatternLog {
    pub(crate) fn record(&self, glob: &str, hold: Duration) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent.front().is_some_and(|(_, until, _)| *until <= now) {
            recent.pop_front();
        }
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        recent.push_back((epoch, now + hold, glob.to_owned()));
    }

    fn superseded(&self, full_key: &str, since: u64) -> bool {
        if self.epoch.load(Ordering::SeqCst) == since {
            return false;
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().any(|(epoch, _, glob)| {
            *epoch > since && glob_match(glob.as_bytes(), full_key.as_bytes())
        })
    }
}

impl Handle {
    /// Noted by a computation before it reads: see [`Cache::pattern_superseded`](crate::Cache::pattern_superseded).
    pub(crate) fn pattern_mark(&self) -> u64 {
        self.shared.patterns.epoch.load(Ordering::SeqCst)
    }

    /// True if a pattern invalidated since `mark` matches `full_key`: the computation's
    /// result must not be stored.
    pub(crate) fn pattern_superseded(&self, full_key: &str, mark: u64) -> bool {
        self.shared.patterns.superseded(full_key, mark)
    }
}
