//! The embedded backend's sessions: the same semantics as the Redis scripts, in process, with
//! this process's clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{ID_LEN, Record, SessionId, Times, Written};
use crate::base::key::KeyBuf;

/// Sessions of an in-memory cache root: records and user indexes under the same full keys
/// as on Redis, with a monotonic clock.
pub(crate) struct MemSessions {
    start: Instant,
    state: Mutex<MemState>,
}

// Holds session data: its `Debug` shows nothing of it.
impl std::fmt::Debug for MemSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSessions").finish_non_exhaustive()
    }
}

impl Default for MemSessions {
    fn default() -> Self {
        MemSessions {
            start: Instant::now(),
            state: Mutex::new(MemState::default()),
        }
    }
}

#[derive(Default)]
pub(super) struct MemState {
    pub(super) records: HashMap<String, MemRecord>,
    /// Index key -> id -> deadline.
    pub(super) indexes: HashMap<String, HashMap<SessionId, u64>>,
    /// Writes since the last sweep of expired records.
    pub(super) writes: usize,
}

pub(super) struct MemRecord {
    pub(super) data: Vec<u8>,
    pub(super) user: String,
    pub(super) deadline: u64,
    pub(super) version: u64,
    pub(super) expires: u64,
}

impl MemRecord {
    pub(super) fn live(&self, now: u64) -> bool {
        now < self.expires && now < self.deadline
    }

    /// The read path's `slide`.
    pub(super) fn slide(&mut self, now: u64, times: Times) {
        let want = times.idle.min(self.deadline.saturating_sub(now));
        if want.saturating_sub(self.expires.saturating_sub(now)) >= times.step.max(1)
            || times.step == 0
        {
            self.expires = now + want;
        }
    }
}

impl MemSessions {
    pub(super) fn now(&self) -> u64 {
        // From 1, so that 0 can mean "now" in a record to write.
        self.start.elapsed().as_millis() as u64 + 1
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(super) fn insert(
        &self,
        key: String,
        id: &SessionId,
        record: &Record,
        index: Option<&str>,
        times: Times,
    ) -> bool {
        let now = self.now();
        let mut state = self.lock();
        state.sweep(now);
        if state.records.get(&key).is_some_and(|r| r.live(now)) {
            return false;
        }
        let deadline = match record.deadline {
            0 => now + times.max,
            d => d,
        };
        if deadline <= now {
            return false;
        }
        if let Some(index) = index {
            state.index_add(index, *id, deadline, now);
        }
        state.records.insert(
            key,
            MemRecord {
                data: record.data.clone(),
                user: record.user.clone(),
                deadline,
                version: record.version,
                expires: now + times.idle.min(deadline - now),
            },
        );
        true
    }

    pub(super) fn get(&self, key: &str, times: Times) -> Option<(Vec<u8>, u64)> {
        let now = self.now();
        let mut state = self.lock();
        let record = state.records.get_mut(key)?;
        if !record.live(now) {
            state.records.remove(key);
            return None;
        }
        record.slide(now, times);
        Some((record.data.clone(), record.version))
    }

    pub(super) fn write(
        &self,
        key: &str,
        data: Vec<u8>,
        expected: Option<u64>,
        user: Option<&str>,
        times: Times,
    ) -> Written {
        let now = self.now();
        let mut state = self.lock();
        let Some(record) = state.records.get_mut(key) else {
            return Written::Missing;
        };
        if !record.live(now) {
            state.records.remove(key);
            return Written::Missing;
        }
        if expected.is_some_and(|v| v != record.version) {
            return Written::Conflict;
        }
        record.slide(now, times);
        record.data = data;
        record.version += 1;
        let previous_user = match user {
            Some(u) => std::mem::replace(&mut record.user, u.to_owned()),
            None => record.user.clone(),
        };
        Written::Yes { previous_user }
    }

    pub(super) fn ttl(&self, key: &str) -> Option<Duration> {
        let now = self.now();
        let state = self.lock();
        let record = state.records.get(key).filter(|r| r.live(now))?;
        Some(Duration::from_millis(
            record.expires.min(record.deadline) - now,
        ))
    }

    pub(super) fn delete(&self, key: &str, id: &SessionId) -> bool {
        let now = self.now();
        let mut state = self.lock();
        let Some(record) = state.records.remove(key) else {
            return false;
        };
        if !record.user.is_empty() {
            let mut part = KeyBuf::new();
            part.part(record.user.as_str());
            let suffix = format!("~session-user:{}", part.as_str());
            let index = format!("{}{}", &key[..key.len() - ID_LEN - 9], suffix);
            state.unindex(&index, id);
        }
        record.live(now)
    }

    pub(super) fn rotate(
        &self,
        old_key: &str,
        old: &SessionId,
        mut new: SessionId,
        times: Times,
        key_of: impl Fn(&SessionId) -> String,
    ) -> Option<SessionId> {
        let now = self.now();
        let mut state = self.lock();
        let record = state.records.remove(old_key)?;
        if !record.live(now) {
            return None;
        }
        // Checked under the lock: no other writer can take the id meanwhile. (128 random
        // bits do not collide; were the generator broken, this would still not hand out a
        // live session.)
        while state.records.contains_key(&key_of(&new)) {
            new = SessionId::random().ok()?;
        }
        if !record.user.is_empty() {
            let prefix = &old_key[..old_key.len() - ID_LEN - 9];
            let mut part = KeyBuf::new();
            part.part(record.user.as_str());
            let index = format!("{prefix}~session-user:{}", part.as_str());
            state.index_add(&index, new, record.deadline, now);
            state.unindex(&index, old);
        }
        let expires = now + times.idle.min(record.deadline - now);
        state.records.insert(
            key_of(&new),
            MemRecord {
                version: record.version + 1,
                expires,
                ..record
            },
        );
        Some(new)
    }

    pub(super) fn list(
        &self,
        index: &str,
        key_of: impl Fn(&SessionId) -> String,
    ) -> Vec<SessionId> {
        let now = self.now();
        let mut state = self.lock();
        state.prune_index(index, now, &key_of);
        let mut ids: Vec<(u64, SessionId)> = state
            .indexes
            .get(index)
            .map(|ids| ids.iter().map(|(id, d)| (*d, *id)).collect())
            .unwrap_or_default();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    pub(super) fn delete_all(&self, index: &str, key_of: impl Fn(&SessionId) -> String) -> u64 {
        let now = self.now();
        let mut state = self.lock();
        let Some(ids) = state.indexes.remove(index) else {
            return 0;
        };
        ids.keys()
            .filter(|id| {
                state
                    .records
                    .remove(&key_of(id))
                    .is_some_and(|r| r.live(now))
            })
            .count() as u64
    }

    #[cfg(feature = "tower-sessions")]
    pub(super) fn reindex(&self, index: &str, id: &SessionId, times: Times) {
        let now = self.now();
        let mut state = self.lock();
        state.index_add(index, *id, now + times.max, now);
    }

    #[cfg(feature = "tower-sessions")]
    pub(super) fn unindex(&self, index: &str, id: &SessionId) {
        self.lock().unindex(index, id);
    }
}

impl MemState {
    /// Drops expired records once per as many writes as there are records (amortized O(1)
    /// per write), and index entries whose record is gone.
    pub(super) fn sweep(&mut self, now: u64) {
        self.writes += 1;
        if self.writes < self.records.len().max(256) {
            return;
        }
        self.writes = 0;
        self.records.retain(|_, r| r.live(now));
        let records = &self.records;
        self.indexes.retain(|index, ids| {
            let prefix = index.split("~session-user:").next().unwrap_or("");
            ids.retain(|id, deadline| {
                *deadline > now && records.contains_key(&format!("{prefix}~session:{id}"))
            });
            !ids.is_empty()
        });
    }

    pub(super) fn index_add(&mut self, index: &str, id: SessionId, deadline: u64, now: u64) {
        let prefix = index
            .split("~session-user:")
            .next()
            .unwrap_or("")
            .to_owned();
        let records = &self.records;
        let ids = self.indexes.entry(index.to_owned()).or_default();
        // As on Redis: entries past their deadline go, and those whose record is gone.
        ids.retain(|id, d| {
            *d > now
                && records
                    .get(&format!("{prefix}~session:{id}"))
                    .is_some_and(|r| r.live(now))
        });
        ids.insert(id, deadline);
    }

    pub(super) fn unindex(&mut self, index: &str, id: &SessionId) {
        if let Some(ids) = self.indexes.get_mut(index) {
            ids.remove(id);
            if ids.is_empty() {
                self.indexes.remove(index);
            }
        }
    }

    pub(super) fn prune_index(
        &mut self,
        index: &str,
        now: u64,
        key_of: &impl Fn(&SessionId) -> String,
    ) {
        let records = &self.records;
        if let Some(ids) = self.indexes.get_mut(index) {
            ids.retain(|id, d| *d > now && records.get(&key_of(id)).is_some_and(|r| r.live(now)));
            if ids.is_empty() {
                self.indexes.remove(index);
            }
        }
    }
}
