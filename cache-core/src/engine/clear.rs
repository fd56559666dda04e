//! Clearing a scope (the root, a namespace, a tenant) in O(1): a generation per scope.
//!
//! - Each scope has a generation key, `<prefix>~clear` (`store::breaker::generation_key`),
//!   persistent. Missing means "never cleared" and reads as 0, so a scope that was never
//!   cleared costs no key and no write.
//! - Every entry records the generations of the scopes of the handle that wrote it, from the
//!   read before its value was computed, in the envelope's tag list after its tags
//!   (base/codec.rs); a generation at 0 is not recorded (no bytes for a scope never cleared). A read fetches the generations of the reading handle's scopes in the
//!   same `MGET` as the value and its tags' versions (tags.rs, `still_valid`).
//! - A clear moves the scope's generation past every value it held: the larger of the current
//!   one plus one and the clock in microseconds (scripts/clear.lua), one command whatever the
//!   number of keys. An entry is current while each generation it records (0 for one it does
//!   not record) is at least the current one: a clear makes every entry written before it a
//!   miss, and a computation that read before it stores an entry that is a miss too
//!   (ARCHITECTURE.md §4).
//! - A generation key lost to eviction reads as 0 again: entries written after the clear
//!   (which record a larger generation) stay hits rather than all turning into misses. It is
//!   read by every hit of its scope, so an LRU or LFU eviction policy keeps it longest of all
//!   the scope's keys; the guide (invalidation.md) says what `allkeys-random` would do.
//! - Old entries are not deleted: they expire with their TTL, or are evicted, like any entry.
//! - The L1 of every instance drops what the scope's prefix covers (local.rs's pattern
//!   message), so that no instance serves an entry from memory after the clear; the fallback
//!   store of an open breaker is emptied, and the clear is queued (store/breaker.rs).

use crate::base::error::Result;
use crate::base::observe::Operation;
use crate::engine::Handle;
use crate::store::breaker::GENERATION_MARK;

/// True for a scope's generation key (not a tag's version key, which holds `~tag:`).
fn is_generation_key(key: &str) -> bool {
    key.ends_with(GENERATION_MARK) && !key.contains("~tag:")
}

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
    /// The generation keys of the root and of each scope down to this handle's; none without
    /// `fast_clear`.
    pub(crate) fn generation_keys(&self) -> &[String] {
        &self.scope.generations
    }

    /// Whether scopes have generations (`CacheBuilder::fast_clear`).
    pub(crate) fn fast_clear(&self) -> bool {
        self.shared.config.fast_clear
    }

    /// Clears this handle's scope: no read through it, or through a handle made from it, on
    /// any instance, returns a value written before. One command in Redis.
    pub(crate) async fn clear(&self) -> Result<()> {
        let mut op = self.op(Operation::InvalidateTags); // ops: counted as an invalidation
        let Some(generation) = self.scope.generations.last() else {
            return Ok(());
        };
        let r = self.shared.backend.clear_generation(generation).await;
        op.result(&r);
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
        assert!(current("ns:~clear", 0, None));
        assert!(current("ns:~clear", 5, None), "evicted: later entries stay");
        assert!(current("ns:~clear", 5, Some(5)));
        assert!(
            !current("ns:~clear", 4, Some(5)),
            "written before the clear"
        );
        assert!(current("ns:~tag:t", 3, Some(3)));
        assert!(!current("ns:~tag:t", 3, None));
        assert!(
            !current("ns:~tag:x~clear", 3, None),
            "a tag that looks like one"
        );
        assert_eq!(prefix_glob("ns:a*b:"), "ns:a\\*b:*");
    }
}
