//! Tag invalidation in O(1): each tag has a version counter; an entry records the versions
//! of its tags from before its value was computed; a read that finds any of them changed
//! (or missing) is a miss. Invalidating a tag is one `INCR`, whatever the number of
//! entries, and no per-tag member set grows without bound.

use crate::base::codec::Tags;
use crate::base::error::{Error, Result};
use crate::engine::Handle;

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
    key.contains(VERSION_KEY_MARK)
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

/// The current version of each tag key, creating the missing ones, to record in an entry.
/// `known` holds versions already read in the same round trip as the value.
pub(crate) async fn current_versions(
    cache: &Handle,
    tag_keys: &[String],
    known: Option<Vec<Option<u64>>>,
) -> Result<Vec<u64>> {
    if tag_keys.is_empty() {
        return Ok(Vec::new());
    }
    let versions = match known {
        Some(v) if v.len() == tag_keys.len() => v,
        _ => cache.backend_ref().versions(tag_keys).await?,
    };
    let missing: Vec<&str> = tag_keys
        .iter()
        .zip(&versions)
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
    Ok(versions
        .into_iter()
        // A version key deleted between its creation and the read records 0, which never
        // matches: the entry is a miss, never a stale hit.
        .map(|v| v.or_else(|| created.next().flatten()).unwrap_or(0))
        .collect())
}

/// True if every tag recorded in an entry still has the recorded version. `known` holds
/// versions read in the same round trip as the entry; the others are read now.
pub(crate) async fn still_valid(
    cache: &Handle,
    recorded: Tags<'_>,
    known: Option<(&[String], &[Option<u64>])>,
) -> Result<bool> {
    let mut unknown = Vec::new();
    for (key, version) in recorded {
        let current = known.and_then(|(keys, versions)| {
            // `mget` passes every tag of its entries, sorted, where a scan per recorded tag
            // would make it quadratic; a function's few tags come in its order, where the
            // search may miss and the scan finds them (a search only stops on an equal key).
            keys.binary_search_by(|k| k.as_str().cmp(key))
                .ok()
                .or_else(|| keys.iter().position(|k| k.as_str() == key))
                .and_then(|i| versions.get(i).copied())
        });
        match current {
            Some(Some(v)) if v == version => {}
            Some(_) => return Ok(false),
            None => unknown.push((key, version)),
        }
    }
    if unknown.is_empty() {
        return Ok(true);
    }
    let keys: Vec<&str> = unknown.iter().map(|(k, _)| *k).collect();
    let current = cache.backend_ref().versions(&keys).await?;
    Ok(unknown
        .iter()
        .zip(current)
        .all(|((_, recorded), now)| now == Some(*recorded)))
}
