//! Clearing a scope (the root, a namespace, a tenant) in O(1): a generation per scope.
//!
//! - Each scope has a generation key, `<root>~clear:<what the scope adds>`
//!   (`store::breaker::generation_key`), persistent. Missing means "never cleared" and reads
//!   as 0, so a scope that was never cleared costs no key and no write.
//! - Every entry records the generations of the scopes of the handle that wrote it, from
//!   before its value was computed, in the envelope's tag list after its tags
//!   (base/codec.rs); a generation at 0 is not recorded (no bytes for a scope never cleared).
//! - A clear moves the scope's generation past every value it held: the larger of the current
//!   one plus one and the clock in microseconds (scripts/clear.lua), one command whatever the
//!   number of keys. An entry is current while each generation it records (0 for one it does
//!   not record) is at least the current one: a clear makes every entry written before it a
//!   miss, and a computation that read before it stores an entry that is a miss too
//!   (ARCHITECTURE.md §4).
//! - Reads compare with the generations this process knows (generations.rs), at no cost in
//!   round trips: a feed (feed.rs, [`GENERATIONS_FEED`]) tracks the root's generation keys
//!   (`CLIENT TRACKING on BCAST PREFIX <root>~clear:`, values not included; with an L1, the
//!   L1's feed, which covers the whole root), and any change of one, by anyone, makes every
//!   generation known here unknown until read again. While
//!   tracking is not on (starting, a gap, an open breaker) and with
//!   [`strict_clear`](crate::CacheBuilder::strict_clear), a read fetches its scopes'
//!   generations in the same `MGET` as its value (tags.rs, `still_valid`), and learns them.
//!   So a clear is seen at once by the instance that made it, and by the others once its
//!   push reached them (the L1's visibility figures: well under a millisecond on loopback).
//! - A generation key lost to eviction reads as 0 again: entries written after the clear
//!   (which record a larger generation) stay hits rather than all turning into misses; this
//!   process keeps the largest generation it learned. The guide (invalidation.md) says what
//!   `allkeys-random` would do.
//! - Old entries are not deleted: they expire with their TTL, or are evicted, like any entry.
//! - The L1 of every instance drops what the scope's prefix covers (local.rs's pattern
//!   message), so that no instance serves an entry from memory after the clear; the fallback
//!   store of an open breaker is emptied, and the clear is queued (store/breaker.rs).

use std::sync::Arc;

use crate::base::error::Result;
use crate::base::observe::Operation;
use crate::engine::Handle;
use crate::engine::feed::{Feed, Subscription};
use crate::engine::generations::is_generation_key;
use crate::store::Backend;

/// The generations' tracking when there is no L1: the root's generation keys only
/// (`<root>~clear:`), so that an instance hears of clears and of nothing else. With an L1, its
/// feed (local.rs), which covers the whole root, tells the generations too.
pub(crate) static GENERATIONS_FEED: Feed = Feed {
    name: "scope generations",
    refused: "every read fetches its scopes' generations with its value",
    subscription: |shared| {
        let root = shared.config.root_prefix();
        Some(Subscription {
            prefix: crate::store::breaker::generation_prefix(&root),
            channel: None,
        })
    },
    receive: |shared, push| {
        if push.kind == redis::PushKind::Invalidate {
            // Only generation keys are tracked: any push is a change of one (or a flush).
            shared.generations.forget_all();
        }
    },
    live: |shared, tracking, _| shared.generations.tracking_on(tracking),
    gap: |shared| shared.generations.tracking_lost(),
};

/// Whether a version an entry recorded for `key` is still current: a tag's must be the
/// current one (a missing tag version key is a change); a scope's generation must be at
/// least the current one (a missing generation key is 0: never cleared, or evicted).
pub(crate) fn current(key: &str, recorded: u64, current: Option<u64>) -> bool {
    if current == Some(recorded) {
        return true; // the common case, for both: no key to look at
    }
    if is_generation_key(key) {
        current.unwrap_or(0) <= recorded
    } else {
        current == Some(recorded)
    }
}

/// `prefix`, glob-escaped, then `*`: what the L1s drop on a clear.
fn prefix_glob(prefix: &str) -> String {
    let mut glob = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            glob.push('\\');
        }
        glob.push(c);
    }
    glob.push('*');
    glob
}

impl Handle {
    /// The generation keys of the root and of each scope down to this handle's.
    pub(crate) fn generation_keys(&self) -> &[String] {
        &self.scope.generations
    }

    /// The generation keys a read must fetch with its value (none while this process knows
    /// them all), and the `heard` count to learn what it fetches with
    /// ([`learn_generations`](Self::learn_generations)).
    pub(crate) fn generations_to_read(&self) -> (&[String], u64) {
        let generations = &self.shared.generations;
        let heard = generations.heard();
        if self
            .scope
            .generation_cells
            .iter()
            .all(|c| generations.known(c).is_some())
        {
            return (&[], heard);
        }
        self.ensure_generations_feed();
        (&self.scope.generations, heard)
    }

    /// The generations of this handle's scopes, if this process knows them all; else the
    /// `heard` count to learn them with once read
    /// ([`learn_generations`](Self::learn_generations)).
    pub(crate) fn known_generations(&self) -> Result<Vec<Option<u64>>, u64> {
        let generations = &self.shared.generations;
        let heard = generations.heard();
        let known = self
            .scope
            .generation_cells
            .iter()
            .map(|c| generations.known(c).map(Some))
            .collect::<Option<Vec<_>>>();
        known.ok_or_else(|| {
            self.ensure_generations_feed();
            heard
        })
    }

    /// Generation `i` of this handle's scopes, if this process knows it.
    pub(crate) fn known_generation(&self, i: usize) -> Option<u64> {
        let cell = self.scope.generation_cells.get(i)?;
        self.shared.generations.known(cell)
    }

    /// True when every scope of this handle is known never to have been cleared: an entry
    /// without tags then has nothing to check.
    pub(crate) fn never_cleared(&self) -> bool {
        let generations = &self.shared.generations;
        self.scope
            .generation_cells
            .iter()
            .all(|c| generations.known(c) == Some(0))
    }

    /// The generations a read fetched (`values`, in the order of
    /// [`generation_keys`](Self::generation_keys)), read after `heard` was `at`.
    pub(crate) fn learn_generations(&self, at: u64, values: &[Option<u64>]) {
        if values.len() != self.scope.generation_cells.len() {
            return;
        }
        for (cell, value) in self.scope.generation_cells.iter().zip(values) {
            self.shared.generations.learn(cell, at, value.unwrap_or(0));
        }
    }

    /// Waits until the generations' tracking is on (at most the connect timeout) and every
    /// change of a generation key Redis made before this call was heard of: afterwards no
    /// read here trusts a generation older than a clear that returned, anywhere, before it.
    /// At once on the memory backend and with `strict_clear` (reads fetch them).
    pub(crate) async fn sync_generations(&self) {
        let generations = &self.shared.generations;
        let Backend::Redis(redis) = &self.shared.backend else {
            return;
        };
        if generations.strict() {
            return;
        }
        self.ensure_generations_feed();
        let limit = self.shared.config.connect_timeout;
        let Some(tracking) = generations.tracking_within(limit).await else {
            return; // not on: reads fetch the generations meanwhile
        };
        // Bounded by the command timeout: each `PING` is a command of a tracking connection.
        if !redis.tracking_barrier(&tracking).await {
            generations.forget_all(); // unknown: read them again
        }
    }

    /// Starts what tracks the generation keys on a Redis backend, once, from a task with a
    /// runtime: the L1's feed when there is an L1 (it covers them), else the generations'.
    pub(crate) fn ensure_generations_feed(&self) {
        if let Some(local) = self.shared.local.as_deref() {
            self.ensure_feed(local); // local.rs
            return;
        }
        let generations = &self.shared.generations;
        if !matches!(self.shared.backend, Backend::Redis(_)) || !generations.claim_feed() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(crate::engine::feed::run(
                    Arc::downgrade(&self.shared),
                    self.shared.config.connect_timeout,
                    &GENERATIONS_FEED,
                ));
            }
            // No runtime here: try again from the next read that has one.
            Err(_) => generations.feed_not_started(),
        }
    }

    /// Clears this handle's scope: no read through it, or through a handle made from it, on
    /// any instance, returns a value written before. One command in Redis.
    pub(crate) async fn clear(&self) -> Result<()> {
        let mut op = self.op(Operation::InvalidateTags); // ops: counted as an invalidation
        let (Some(generation), Some(cell)) = (
            self.scope.generations.last(),
            self.scope.generation_cells.last(),
        ) else {
            return Ok(());
        };
        let r = self.shared.backend.clear_generation(generation).await;
        op.result(&r);
        if let Ok(moved_to) = &r {
            // Known here at once: this process's reads from now on miss what the scope held
            // (its own push, when it comes, makes it read the generation again).
            cell.moved_here(*moved_to);
        }
        let glob = prefix_glob(&self.scope.prefix);
        if let Err(e) = r {
            self.backend_err("clear", generation, &e);
            // Queued for replay (store/breaker.rs); this instance's L1 drops the scope now.
            crate::engine::local::pattern_here(self, &glob);
            return Err(e);
        }
        // local.rs: this instance's L1 drops the scope's entries, the others hear of it.
        crate::engine::local::after_pattern(self, &glob).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_generation_is_never_cleared_and_a_missing_tag_version_a_change() {
        assert!(current("ns:~clear:", 0, None));
        assert!(
            current("ns:~clear:a:", 5, None),
            "evicted: later entries stay"
        );
        assert!(current("ns:~clear:", 5, Some(5)));
        assert!(
            !current("ns:~clear:@t:", 4, Some(5)),
            "written before the clear"
        );
        assert!(current("ns:~tag:t", 3, Some(3)));
        assert!(!current("ns:~tag:t", 3, None));
        assert!(
            !current("ns:a:~tag:x~clear:", 3, None),
            "a tag that looks like one"
        );
        assert_eq!(prefix_glob("ns:a*b:"), "ns:a\\*b:*");
    }
}
