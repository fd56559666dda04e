//! The cache's commands on Redis: reads of values with their tags' versions and scopes'
//! generations, conditional and plain writes, deletes by tombstone, counters and tag
//! versions, split by hash slot on a cluster. A child of redis.rs: each goes through its
//! guarded runners (`run`, `run_pipe`, `run_script`), and a write Redis did not take is
//! queued for replay (`not_reached`).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::{Cmd, RedisError};

use super::{
    CLEAR, EXISTS, INCR_OVER_TOMBSTONE, INVALIDATE, PEXPIRE, PTTL, RedisBackend, SET_IF_UNCHANGED,
    SET_IF_UNCHANGED_LUA, millis,
};
use crate::base::error::{Error, Result};
use crate::store::cluster::by_slot;
use crate::store::{ConditionalWrite, KeyTtl, TagKey, ValuesAndVersions, Write};

impl RedisBackend {
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.breaker.settle_before_read(self).await?;
        let mut cmd = command("GET", 1, key.len());
        cmd.arg(key);
        let value: Option<Vec<u8>> = self.run("GET", cmd).await?;
        Ok(value.map(Bytes::from))
    }

    /// Moves the generation `key` of a scope past every value it held (engine/clear.rs); one
    /// script. Not reached: queued (breaker.rs), escalating nothing.
    pub(crate) async fn clear_generation(&self, key: &str) -> Result<u64> {
        let cleared = self.clear_via(key, true).await;
        if let Err(e) = &cleared {
            self.not_reached(e, |b| b.queue_clear(key)).await;
        }
        cleared
    }

    pub(super) async fn clear_via(&self, key: &str, guarded: bool) -> Result<u64> {
        let mut invocation = CLEAR.key(key);
        invocation.arg(crate::base::codec::now_us());
        let text: String = if guarded {
            self.run_script("clear", &invocation).await?
        } else {
            self.script_unguarded("clear", &invocation).await?
        };
        Ok(text.parse().unwrap_or(u64::MAX))
    }

    /// The value and the current versions of `tag_keys` then of `generation_keys`, in one
    /// `MGET`.
    pub(crate) async fn get_with_scope<K: TagKey, G: TagKey>(
        &self,
        key: &str,
        tag_keys: &[K],
        generation_keys: &[G],
    ) -> Result<(Option<Bytes>, Vec<Option<u64>>)> {
        if tag_keys.is_empty() && generation_keys.is_empty() {
            return Ok((self.get(key).await?, Vec::new()));
        }
        if self.cluster {
            // One `MGET` per hash slot: redis-rs's own split of a multi-slot `MGET` answered
            // "Mismatch in the number of multi-slot results" on a cluster with replicas.
            let others: Vec<String> = tag_keys
                .iter()
                .map(|k| k.as_ref().to_owned())
                .chain(generation_keys.iter().map(|k| k.as_ref().to_owned()))
                .collect();
            let (mut values, versions) = self.get_many_with_versions(&[key], &others).await?;
            return Ok((values.pop().flatten(), versions));
        }
        self.breaker.settle_before_read(self).await?;
        // One command for the value and its tags' versions: cheaper to send and to parse
        // than a GET+MGET pipeline. The reply is taken apart by value, not converted through
        // an intermediate vector: allocations on this path are measurable (see codec::Tags).
        let mut cmd = command(
            "MGET",
            1 + tag_keys.len() + generation_keys.len(),
            key.len() + keys_len(tag_keys) + keys_len(generation_keys),
        );
        cmd.arg(key).arg(tag_keys).arg(generation_keys);
        let reply: redis::Value = self.run("MGET", cmd).await?;
        let unexpected = || Error::Command {
            operation: "MGET",
            source: RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "MGET answered something else than one value per key asked",
            )),
        };
        let redis::Value::Array(items) = reply else {
            return Err(unexpected());
        };
        if items.len() != tag_keys.len() + generation_keys.len() + 1 {
            return Err(unexpected());
        }
        let mut items = items.into_iter();
        let value = match items.next() {
            Some(redis::Value::BulkString(bytes)) => Some(Bytes::from(bytes)),
            Some(redis::Value::Nil) => None,
            _ => return Err(unexpected()),
        };
        // A version key holding something else than a version reads as changed.
        let versions = items
            .map(|item| match item {
                redis::Value::BulkString(b) => crate::base::codec::decode_version(&b),
                _ => None,
            })
            .collect();
        Ok((value, versions))
    }

    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster {
            // One `MGET` per hash slot (see `get_with_scope`).
            return Ok(self.get_many_with_versions(keys, &[]).await?.0);
        }
        self.breaker.settle_before_read(self).await?;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        let values: Vec<Option<Vec<u8>>> = self.run("MGET", cmd).await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    /// The values of `keys` and the versions of `tag_keys`, in one round trip: one `MGET` (on
    /// a cluster, one per hash slot, sent together).
    pub(crate) async fn get_many_with_versions<K: AsRef<str>>(
        &self,
        keys: &[K],
        tag_keys: &[String],
    ) -> Result<ValuesAndVersions> {
        self.breaker.settle_before_read(self).await?;
        let all: Vec<&str> = keys
            .iter()
            .map(AsRef::as_ref)
            .chain(tag_keys.iter().map(String::as_str))
            .collect();
        if all.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let groups = self.split(&all);
        let reads = groups.iter().map(|group| {
            let mut cmd = redis::cmd("MGET");
            for &i in group {
                cmd.arg(all[i]);
            }
            self.run::<Vec<Option<Vec<u8>>>>("MGET", cmd)
        });
        let answers = try_join_all(reads).await?;
        if groups.iter().zip(&answers).any(|(g, a)| g.len() != a.len()) {
            return Err(Error::Command {
                operation: "MGET",
                source: RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "MGET answered something else than one value per key asked",
                )),
            });
        }
        let mut values = reassemble(&groups, answers, all.len(), None);
        let versions = decode_versions(values.split_off(keys.len()));
        Ok((
            values.into_iter().map(|v| v.map(Bytes::from)).collect(),
            versions,
        ))
    }

    /// [`set_if_unchanged`](Self::set_if_unchanged) of each write, pipelined: one round trip
    /// (on a cluster, one per hash slot, sent together). True for each write that landed.
    pub(crate) async fn set_many_if_unchanged(
        &self,
        writes: &[ConditionalWrite],
    ) -> Result<Vec<bool>> {
        self.breaker.settle_before_read(self).await?; // before the write: see the breaker
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = writes.iter().map(|w| w.0.as_str()).collect();
        let groups = self.split(&keys);
        let pipes = groups.iter().map(|group| {
            let mut pipe = redis::pipe();
            for &i in group {
                let (key, value, ttl, seen) = &writes[i];
                match seen {
                    None => {
                        let mut cmd = Self::set_cmd(key, value, *ttl);
                        cmd.arg("NX");
                        pipe.add_command(cmd);
                    }
                    // The script's text, not its hash: a pipeline cannot retry on NOSCRIPT,
                    // and writes over something read (a tombstone, a stale entry) are rare.
                    Some(seen) => {
                        let digest = crate::base::key::lower_hex(
                            &sha1_smol::Sha1::from(&seen[..]).digest().bytes(),
                        );
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(SET_IF_UNCHANGED_LUA)
                            .arg(1)
                            .arg(key)
                            .arg(digest)
                            .arg(&value[..])
                            .arg(ttl.map_or(0, millis));
                        pipe.add_command(cmd);
                    }
                }
            }
            self.run_pipe::<Vec<redis::Value>>("SET NX (batch)", pipe)
        });
        let answers = try_join_all(pipes).await?;
        let landed = answers
            .into_iter()
            .map(|replies| {
                replies
                    .into_iter()
                    .map(|r| {
                        matches!(
                            r,
                            redis::Value::Okay
                                | redis::Value::SimpleString(_)
                                | redis::Value::Int(1)
                        )
                    })
                    .collect()
            })
            .collect();
        Ok(reassemble(&groups, landed, writes.len(), false))
    }

    /// `SET key value [PX ttl]`.
    fn set_cmd(key: &str, value: &[u8], ttl: Option<Duration>) -> Cmd {
        // `SET key value PX ms NX`
        let mut cmd = command("SET", 5, key.len() + value.len() + 2 + 20 + 2);
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        cmd
    }

    pub(crate) async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        self.breaker.settle_before_read(self).await?; // before the write: see the breaker
        let written = self.run("SET", Self::set_cmd(key, &value, ttl)).await;
        if let Err(e) = &written {
            // Redis may keep an older value: it is invalidated when Redis is back.
            let hold = self.breaker.hold();
            self.not_reached(e, |b| b.queue_keys(&[key.to_owned()], hold))
                .await;
        }
        written
    }

    /// Writes `value` only if `key` still holds what a read found (`seen`; `None`: nothing).
    /// The common case, a read that found nothing, is a plain `SET NX`.
    pub(crate) async fn set_if_unchanged(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        seen: Option<&[u8]>,
    ) -> Result<bool> {
        self.breaker.settle_before_read(self).await?; // before the write: see the breaker
        match seen {
            None => {
                let mut cmd = Self::set_cmd(key, &value, ttl);
                cmd.arg("NX");
                let written: Option<String> = self.run("SET NX", cmd).await?;
                Ok(written.is_some())
            }
            Some(seen) => {
                let digest =
                    crate::base::key::lower_hex(&sha1_smol::Sha1::from(seen).digest().bytes());
                let mut invocation = SET_IF_UNCHANGED.key(key);
                invocation.arg(digest).arg(value).arg(ttl.map_or(0, millis));
                let written: u8 = self.run_script("SET if unchanged", &invocation).await?;
                Ok(written == 1)
            }
        }
    }

    pub(crate) async fn set_many(&self, writes: Vec<Write>) -> Result<()> {
        self.breaker.settle_before_read(self).await?; // before the write: see the breaker
        if writes.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = writes.iter().map(|(k, _, _)| k.as_str()).collect();
        let pipes = self.split(&keys).into_iter().map(|group| {
            let mut pipe = redis::pipe();
            for i in group {
                let (key, value, ttl) = &writes[i];
                pipe.add_command(Self::set_cmd(key, value, *ttl)).ignore();
            }
            self.run_pipe::<()>("SET (batch)", pipe)
        });
        let written = try_join_all(pipes).await.map(drop);
        if let Err(e) = &written {
            // Redis may keep older values: they are invalidated when Redis is back.
            let keys: Vec<String> = writes.into_iter().map(|(key, _, _)| key).collect();
            let hold = self.breaker.hold();
            self.not_reached(e, |b| b.queue_keys(&keys, hold)).await;
        }
        written
    }

    /// Indexes of `keys` in groups one script or pipeline may carry: all of them on one server,
    /// one group per hash slot on a cluster.
    pub(super) fn split<K: AsRef<str>>(&self, keys: &[K]) -> Vec<Vec<usize>> {
        if self.cluster {
            by_slot(keys)
        } else {
            vec![(0..keys.len()).collect()]
        }
    }

    /// Replaces each key's value with `tombstone` for `hold`, in one script (one round trip,
    /// atomic); returns how many held a value.
    pub(crate) async fn delete(
        &self,
        keys: &[String],
        tombstone: &[u8],
        hold: Duration,
    ) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        if let [key] = keys {
            let deleted = self.delete_one(key, tombstone, hold).await;
            if let Err(e) = &deleted {
                // Not lost: replayed when Redis is back (see breaker.rs).
                self.not_reached(e, |b| b.queue_keys(keys, hold)).await;
            }
            return deleted;
        }
        let groups = self.split(keys).into_iter().map(|group| async move {
            let mut invocation = INVALIDATE.prepare_invoke();
            for i in group {
                invocation.key(&keys[i]);
            }
            invocation.arg(tombstone).arg(millis(hold));
            self.run_script::<u64>("delete", &invocation).await
        });
        let deleted = try_join_all(groups).await.map(|n| n.into_iter().sum());
        if let Err(e) = &deleted {
            // Not lost: replayed when Redis is back (see breaker.rs).
            self.not_reached(e, |b| b.queue_keys(keys, hold)).await;
        }
        deleted
    }

    /// One key: `SET key tombstone PX hold GET`, a plain command where the script is for
    /// several keys. Redis spends 0.9 µs on it against 5.0 µs on `invalidate.lua` for one key
    /// (`INFO commandstats`, redis-benchmark at c=8), which bounds deletes at c=64. It answers
    /// with the bytes it replaced (a tombstone or nothing: not held), so a delete moves the
    /// old value over the wire once. A key that holds no string (`WRONGTYPE`: `SET … GET`
    /// then changes nothing), or a server older than 6.2 (no `GET` option), goes through the
    /// script, which replaces anything.
    async fn delete_one(&self, key: &str, tombstone: &[u8], hold: Duration) -> Result<u64> {
        let mut cmd = command("SET", 5, key.len() + tombstone.len() + 2 + 20 + 3);
        cmd.arg(key)
            .arg(tombstone)
            .arg("PX")
            .arg(millis(hold))
            .arg("GET");
        match self.run::<Option<Vec<u8>>>("delete", cmd).await {
            Ok(replaced) => {
                Ok(u64::from(replaced.is_some_and(|old| {
                    !crate::base::codec::is_tombstone(&old)
                })))
            }
            Err(Error::Command { source, .. }) if set_get_refused(&source) => {
                let mut invocation = INVALIDATE.prepare_invoke();
                invocation.key(key).arg(tombstone).arg(millis(hold));
                self.run_script::<u64>("delete", &invocation).await
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        self.run_script("EXISTS", &EXISTS.key(key)).await
    }

    pub(crate) async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.breaker.settle_before_read(self).await?; // before the write: see the breaker
        let mut invocation = PEXPIRE.key(key);
        invocation.arg(millis(ttl));
        self.run_script("PEXPIRE", &invocation).await
    }

    pub(crate) async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let ms: i64 = self.run_script("PTTL", &PTTL.key(key)).await?;
        Ok(match ms {
            -2 => KeyTtl::Missing,
            -1 => KeyTtl::Persistent,
            ms => KeyTtl::Expires(Duration::from_millis(ms.max(0) as u64)),
        })
    }

    pub(crate) async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        self.breaker.settle_before_read(self).await?; // before the write: see the breaker
        let mut cmd = redis::cmd("INCRBY");
        cmd.arg(key).arg(by);
        let wrong_kind = |e| match e {
            Error::Command { source, .. } if holds_no_counter(&source) => Error::WrongKind {
                operation: "incr",
                key: key.to_owned(),
            },
            other => other,
        };
        match self.run("INCRBY", cmd).await.map_err(wrong_kind) {
            // An invalidated counter starts again from zero; checked only here, so counting
            // stays one plain command.
            Err(Error::WrongKind { .. }) => {
                let mut invocation = INCR_OVER_TOMBSTONE.key(key);
                invocation.arg(by);
                self.run_script("INCRBY", &invocation)
                    .await
                    .map_err(wrong_kind)
            }
            other => other,
        }
    }

    pub(crate) async fn versions<K: TagKey>(&self, tag_keys: &[K]) -> Result<Vec<Option<u64>>> {
        if tag_keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        cmd.arg(tag_keys);
        let values: Vec<Option<Vec<u8>>> = self.run("MGET", cmd).await?;
        Ok(decode_versions(values))
    }

    pub(crate) async fn bump<K: TagKey>(&self, tag_keys: &[K]) -> Result<Vec<u64>> {
        if tag_keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.split(tag_keys);
        let pipes = groups.iter().map(|group| {
            let mut pipe = redis::pipe();
            for &i in group {
                pipe.cmd("INCR").arg(&tag_keys[i]);
            }
            self.run_pipe::<Vec<u64>>("INCR (tags)", pipe)
        });
        let answers = match try_join_all(pipes).await {
            Ok(answers) => answers,
            Err(e) => {
                // Not lost: replayed when Redis is back (see breaker.rs).
                self.not_reached(&e, |b| b.queue_tags(tag_keys)).await;
                return Err(e);
            }
        };
        Ok(reassemble(&groups, answers, tag_keys.len(), 0))
    }

    pub(crate) async fn create_versions<K: TagKey>(
        &self,
        tag_keys: &[K],
        initial: u64,
    ) -> Result<Vec<Option<u64>>> {
        if tag_keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.split(tag_keys);
        let pipes = groups.iter().map(|group| {
            let mut pipe = redis::pipe();
            for &i in group {
                let k = &tag_keys[i];
                pipe.cmd("SET").arg(k).arg(initial).arg("NX").ignore();
                pipe.cmd("GET").arg(k);
            }
            self.run_pipe::<Vec<Option<Vec<u8>>>>("SET NX+GET (tags)", pipe)
        });
        let answers = try_join_all(pipes).await?;
        Ok(decode_versions(reassemble(
            &groups,
            answers,
            tag_keys.len(),
            None,
        )))
    }
}

/// A command whose buffers are sized up front for `args` arguments after its name, `bytes`
/// long in all (a number counted as 20). Grown argument by argument, as `redis::cmd` does,
/// the buffer of a `SET` of a 100-byte value is reallocated four or five times: 1,400 of the
/// 21,900 instructions a `set` took, and 2,300 of a `delete`'s 18,200 (callgrind).
fn command(name: &'static str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(args + 1, name.len() + bytes);
    cmd.arg(name);
    cmd
}

/// The bytes of `keys`, for [`command`].
fn keys_len<K: AsRef<str>>(keys: &[K]) -> usize {
    keys.iter().map(|k| k.as_ref().len()).sum()
}

/// Puts answers of per-group requests back in the order of the keys the groups index.
fn reassemble<T: Clone>(
    groups: &[Vec<usize>],
    answers: Vec<Vec<T>>,
    len: usize,
    fill: T,
) -> Vec<T> {
    if groups.len() == 1 {
        if let Some(only) = answers.into_iter().next() {
            return only;
        }
        return Vec::new();
    }
    let mut out = vec![fill; len];
    for (group, answer) in groups.iter().zip(answers) {
        for (&i, v) in group.iter().zip(answer) {
            out[i] = v;
        }
    }
    out
}

/// `SET … GET` did nothing: the key holds no string, or the server predates the option.
fn set_get_refused(e: &RedisError) -> bool {
    match (e.code(), e.detail()) {
        (Some("WRONGTYPE"), _) => true,
        (Some("ERR"), Some(detail)) => detail.contains("syntax"),
        _ => false,
    }
}

/// True if `INCRBY` failed because of what the key holds (not a counter, or a counter that
/// would overflow), as opposed to a failure of the server (out of memory, ACL, read-only
/// replica), which stays a command error.
fn holds_no_counter(e: &RedisError) -> bool {
    match (e.code(), e.detail()) {
        (Some("WRONGTYPE"), _) => true,
        (Some("ERR"), Some(detail)) => {
            detail.contains("not an integer") || detail.contains("would overflow")
        }
        _ => false,
    }
}

/// Version keys read back; one that holds something else than a version reads as missing
/// (changed), as on the memory backend, rather than failing the whole read.
fn decode_versions(values: impl IntoIterator<Item = Option<Vec<u8>>>) -> Vec<Option<u64>> {
    values
        .into_iter()
        .map(|v| v.and_then(|b| crate::base::codec::decode_version(&b)))
        .collect()
}
