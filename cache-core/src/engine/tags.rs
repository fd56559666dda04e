//! Tag invalidation in O(1): each tag has a version counter; an entry records the versions
//! of its tags from before its value was computed; a read that finds any of them changed
//! (or missing) is a miss. Invalidating a tag is one `INCR`, whatever the number of
//! entries, and no per-tag member set grows without bound.

use crate::base::codec::Tags;
use crate::base::error::{Error, Result};
use crate::engine::{Handle, clear};

/// What separates a scope's prefix from a tag in its version key.
const VERSION_KEY_MARK: &str = "~tag:";

/// The version counter's key of `tag` in the scope `prefix`. `~` starts no user key (they are
/// refused, and escaped in parts), so these never collide with values.
pub(crate) fn version_key(prefix: &str, tag: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + VERSION_KEY_MARK.len() + tag.len());
    k.push_str(prefix);
    k.push_str(VERSION_KEY_MARK);
    k.push_str(tag);
    k
}

/// Whether `key` may be a tag's version key (the L1 forgets the tag when tracking reports it).
pub(crate) fn may_be_version_key(key: &str) -> bool {
    // Asked of every key tracking reports, and most hold no `~` at all: a byte scan first,
    // which costs a fraction of setting up the substring search.
    key.as_bytes().contains(&b'~') && key.contains(VERSION_KEY_MARK)
}

/// [`version_key`] in place, in the buffer `tag` was rendered into: generated code renders
/// its tags into strings it needs no more, and the hot path then allocates nothing more.
pub(crate) fn into_version_key(prefix: &str, tag: &mut String) {
    tag.insert_str(0, VERSION_KEY_MARK);
    tag.insert_str(0, prefix);
}

/// Tags follow the rules of keys given to the direct API.
pub(crate) fn checked_tag(tag: &str) -> Result<&str> {
    crate::base::key::validate_user_key(tag).map_err(|e| match e {
        Error::InvalidKey { key, reason } => Error::InvalidKey {
            key: format!("tag {key}"),
            reason,
        },
        other => other,
    })?;
    Ok(tag)
}

/// The current version of each tag key, creating the missing ones, then the current
/// generation of each scope of `cache` (clear.rs; a missing one is 0, never cleared), to
/// record in an entry. `known` holds versions already read in the same round trip as the
/// value, in the same order: the tags', then the generations' when the read fetched them.
pub(crate) async fn current_versions(
    cache: &Handle,
    tag_keys: &[String],
    known: Option<Vec<Option<u64>>>,
) -> Result<Vec<u64>> {
    let generation_count = cache.generation_keys().len();
    let (mut tag_versions, mut generation_versions) = match known {
        Some(mut v) if v.len() == tag_keys.len() + generation_count => {
            let g = v.split_off(tag_keys.len());
            (Some(v), Some(g))
        }
        Some(v) if v.len() == tag_keys.len() => (Some(v), None),
        _ => (None, None),
    };
    // The generations known here (tracking on), else read with what is missing.
    let mut heard = 0;
    if generation_versions.is_none() {
        match cache.known_generations() {
            Ok(known) => generation_versions = Some(known),
            Err(at) => heard = at,
        }
    }
    if tag_versions.is_none() || generation_versions.is_none() {
        let mut keys: Vec<&str> = Vec::new();
        if tag_versions.is_none() {
            keys.extend(tag_keys.iter().map(String::as_str));
        }
        if generation_versions.is_none() {
            keys.extend(cache.generation_keys().iter().map(String::as_str));
        }
        let mut read = cache.backend_ref().versions(&keys).await?.into_iter();
        if tag_versions.is_none() {
            tag_versions = Some(read.by_ref().take(tag_keys.len()).collect());
        }
        if generation_versions.is_none() {
            let read: Vec<Option<u64>> = read.collect();
            cache.learn_generations(heard, &read);
            generation_versions = Some(read);
        }
    }
    let tag_versions = tag_versions.unwrap_or_default();
    let missing: Vec<&str> = tag_keys
        .iter()
        .zip(&tag_versions)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    // Created with `SET NX`, not `INCR`: concurrent creators agree on one version instead of
    // each counting up and invalidating the others' entries. The first version is the clock in
    // microseconds, so a version key evicted and created again never repeats an old version
    // (which would revive entries invalidated before the eviction).
    let created = if missing.is_empty() {
        Vec::new()
    } else {
        let initial = crate::base::codec::now_us();
        cache
            .backend_ref()
            .create_versions(&missing, initial)
            .await?
    };
    let mut created = created.into_iter();
    Ok(tag_versions
        .iter()
        // A version key deleted between its creation and the read records 0, which never
        // matches: the entry is a miss, never a stale hit.
        .map(|v| v.or_else(|| created.next().flatten()).unwrap_or(0))
        .chain(
            generation_versions
                .unwrap_or_default()
                .iter()
                .map(|g| g.unwrap_or(0)),
        )
        .collect())
}

/// True if every tag recorded in an entry still has the recorded version, and no scope of the
/// entry or of the reading handle was cleared since the entry's value was read (clear.rs).
/// `known` holds the versions read in the same round trip as the entry: those of its keys,
/// then those of the reading handle's generation keys; the others are read now.
pub(crate) async fn still_valid(
    cache: &Handle,
    recorded: Tags<'_>,
    known: Option<(&[String], &[Option<u64>])>,
) -> Result<bool> {
    let generations = cache.generation_keys();
    let (keys, versions) = known.unwrap_or((&[], &[]));
    // The reader's generations follow the keys, when the caller read them.
    let known_generations = versions
        .get(keys.len()..)
        .filter(|g| g.len() == generations.len());
    let current_of = |key: &str| -> Option<Option<u64>> {
        // `mget` passes every tag of its entries, sorted, where a scan per recorded tag
        // would make it quadratic; a function's few tags come in its order, where the
        // search may miss and the scan finds them (a search only stops on an equal key).
        keys.binary_search_by(|k| k.as_str().cmp(key))
            .ok()
            .or_else(|| keys.iter().position(|k| k.as_str() == key))
            .and_then(|i| versions.get(i).copied())
            .or_else(|| {
                // Read with the entry, or known here (clear.rs).
                let i = generations.iter().position(|g| g.as_str() == key)?;
                known_generations
                    .map(|g| g[i])
                    .or_else(|| cache.known_generation(i).map(Some))
            })
    };
    let mut unknown: Vec<(&str, u64)> = Vec::new();
    // Which of the reader's generations the entry records (a scope has few levels).
    let mut recorded_generations = 0u64;
    for (key, version) in recorded {
        if let Some(i) = generations.iter().position(|g| g.as_str() == key) {
            recorded_generations |= 1 << i.min(63);
        }
        match current_of(key) {
            Some(current) if !clear::current(key, version, current) => return Ok(false),
            Some(_) => {}
            None => unknown.push((key, version)),
        }
    }
    // The reader's scopes the entry does not record (written through another handle, or
    // before this version): as if recorded at 0, never cleared.
    for (i, generation) in generations.iter().enumerate() {
        if recorded_generations & (1 << i.min(63)) != 0 {
            continue;
        }
        match current_of(generation) {
            Some(current) if !clear::current(generation, 0, current) => return Ok(false),
            Some(_) => {}
            None => unknown.push((generation, 0)),
        }
    }
    if unknown.is_empty() {
        return Ok(true);
    }
    let keys: Vec<&str> = unknown.iter().map(|(k, _)| *k).collect();
    // Boxed: a read of versions not known yet is the rare case (a round trip of its own),
    // and its state would otherwise be part of every read's future.
    let current = Box::pin(cache.backend_ref().versions(&keys)).await?;
    Ok(unknown
        .iter()
        .zip(current)
        .all(|((key, recorded), now)| clear::current(key, *recorded, now)))
}
