//! Sessions: typed records under random ids, with a sliding idle timeout, an absolute
//! lifetime no activity extends, and an index of each user's sessions for "log out
//! everywhere". Made by [`Cache::sessions`](crate::Cache::sessions); the guide's
//! [sessions](crate::guide::sessions) chapter has the whole story.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! let cache = cache_core::Cache::in_memory();
//! let sessions = cache.sessions().idle_timeout(Duration::from_secs(1800));
//! let id = sessions.create(Some("user-7"), &"cart: 2 items").await?;
//! assert_eq!(sessions.get::<String>(&id).await?.as_deref(), Some("cart: 2 items"));
//! sessions.delete_for_user("user-7").await?; // log out everywhere
//! assert!(!sessions.exists(&id).await?);
//! # Ok(()) }
//! ```
//!
//! # How they are stored
//!
//! On Redis a record is a hash (`d` data, `u` user, `c` created-at, `x` absolute deadline,
//! `v` version) under `<scope>~session:<id>`, whose TTL is always `min(idle timeout,
//! deadline - now)` by the server's clock, so Redis itself drops it, at its deadline at the
//! latest. A read is one pipeline of plain commands on the record's key (`HMGET` of its
//! fields and `PTTL`): nothing to check by script, since expiry enforces both timeouts. Only
//! when the TTL left has fallen at least the slide threshold below `min(idle timeout,
//! deadline - now)` does the read run the slide script (a second round trip, a `PEXPIRE` by
//! the server's `TIME`; so about once per threshold per session and process, and the record
//! is never rewritten). A
//! user's index is a sorted set `<scope>~session-user:<user>` of ids scored by their
//! deadline: entries past it are dropped on every write, the set expires with its last
//! deadline, and each write checks a random sample of its ids for records gone earlier (idle,
//! deleted), so it tracks the live sessions instead of growing with expired ones.
//!
//! Every operation touches one key per command, so nothing needs keys in one hash slot;
//! where an operation spans a record and an index, the index is written first, so a live
//! session is never missing from its user's index.
//!
//! With an encryption key on the handle, the data field is a raw envelope (`codec.rs`)
//! sealed by `crypto.rs` with the record's full key as associated data; a rotation opens it
//! under the old key and seals it for the new one.
//!
//! The embedded backend keeps the same records and indexes in per-root state, with its own
//! monotonic clock (and no encryption: its state is the process's memory).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::base::codec;
use crate::base::error::{Error, Result};
use crate::base::key::{self, KeyBuf};
use crate::base::limits;
use crate::engine::Handle;
use crate::store::Backend;
use crate::store::redis::RedisBackend;

/// Raw bytes of an id: 128 bits from the operating system's random number generator.
pub(crate) const ID_BYTES: usize = 16;
/// Length of an id in its text form (URL-safe base64 without padding).
pub(crate) const ID_LEN: usize = 22;
/// Ids of a user's index checked for a record on each write of the index, once it holds
/// more than [`SWEEP_ABOVE`] ids.
const SWEEP_SAMPLE: usize = 16;
const SWEEP_ABOVE: usize = 8;
/// Attempts of [`Sessions::modify`] before it reports [`Error::Contention`].
const MODIFY_ATTEMPTS: u32 = 64;
/// Commands per pipeline when a user's sessions are checked or deleted in bulk.
const BATCH: usize = 512;

macro_rules! session_script {
    ($name:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../scripts/session_prelude.lua"),
                include_str!(concat!("../scripts/", $name, ".lua"))
            ))
        })
    };
}

static GET: LazyLock<Script> = session_script!("session_get");
static CREATE: LazyLock<Script> = session_script!("session_create");
static UPDATE: LazyLock<Script> = session_script!("session_update");
static TAKE: LazyLock<Script> = session_script!("session_take");
static DELETE: LazyLock<Script> = session_script!("session_delete");
static INDEX: LazyLock<Script> = session_script!("session_index");

mod id;
mod memory;
#[cfg(feature = "tower-sessions")]
mod tower_store;

pub use id::{AsSessionId, SessionId};
pub(crate) use memory::MemSessions;
#[cfg(feature = "tower-sessions")]
pub use tower_store::TowerSessionStore;

// ---- the store ----------------------------------------------------------------------------

/// The session store of a cache scope, from [`Cache::sessions`](crate::Cache::sessions): cheap to clone, settings by
/// builder methods.
///
/// - **Ids**: [`SessionId`], 128 random bits from the operating system.
/// - **Idle timeout** (default 30 minutes): a session not read, touched or updated for this
///   long is gone. [`get`](Sessions::get), [`touch`](Sessions::touch) and
///   [`update`](Sessions::update) slide it with a `PEXPIRE` (the record is not rewritten),
///   only when that adds at least the [`slide_threshold`](Sessions::slide_threshold). A
///   `get` is one round trip (`HMGET` + `PTTL` pipelined) and takes a second one, the slide
///   script, only on the reads that slide: about one per threshold per session and process.
/// - **Maximum lifetime** (default 24 hours): counted from creation, never extended; the
///   session is gone then however active it is (a [`rotate`](Sessions::rotate) keeps it).
/// - **Users**: a session created for a user is listed by
///   [`list_for_user`](Sessions::list_for_user) and ended by
///   [`delete_for_user`](Sessions::delete_for_user) ("log out everywhere").
/// - **Concurrent writes**: [`update`](Sessions::update) replaces the data, last writer wins;
///   [`modify`](Sessions::modify) is a compare-and-set loop, so concurrent modifications of
///   different fields are all kept.
/// - **Redis unreachable: fail closed.** Every operation returns the error
///   ([`Error::is_unavailable`]); nothing falls back to a local copy, so a session deleted
///   elsewhere can never be read back.
/// - Sessions live under the handle's scope: a tenant's sessions are invisible to another.
/// - **Encryption at rest**: from a handle with an encryption key
///   ([`Cache::with_encryption`](crate::Cache::with_encryption), or the builder's), the data of each session is stored
///   encrypted on Redis (XChaCha20-Poly1305, as cached values are, bound to the record's key
///   so it does not open under another id); the user id, creation time, deadline and version
///   stay readable. Data that does not open with the handle's keys (another key, plaintext
///   from a handle without one, a copy from another record) reads as no session, never an
///   error; old keys ([`Cache::with_old_encryption_keys`](crate::Cache::with_old_encryption_keys)) still read. Turning encryption on
///   so ends the sessions stored before. The embedded backend keeps sessions in the
///   process's memory, unencrypted.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Login { name: String, admin: bool }
///
/// let cache = cache_core::Cache::in_memory();
/// let sessions = cache.sessions()
///     .idle_timeout(Duration::from_secs(1800))
///     .max_lifetime(Duration::from_secs(86_400));
/// let id = sessions.create(Some("user-7"), &Login { name: "ann".into(), admin: false }).await?;
/// let login: Option<Login> = sessions.get(&id).await?; // slides the idle timeout
/// assert_eq!(login.map(|l| l.name), Some("ann".to_owned()));
///
/// let id = sessions.rotate(&id).await?.expect("still there"); // a privilege change: new id
/// assert!(sessions.update(&id, &Login { name: "ann".into(), admin: true }).await?);
/// assert_eq!(sessions.list_for_user("user-7").await?, vec![id]);
/// assert_eq!(sessions.delete_for_user("user-7").await?, 1); // log out everywhere
/// assert!(!sessions.exists(&id).await?);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Sessions {
    cache: Handle,
    /// The root's sessions on the embedded backend.
    memory: std::sync::Arc<MemSessions>,
    idle: Duration,
    max: Duration,
    step: Option<Duration>,
}

impl Sessions {
    /// The sessions of `cache`'s scope; `memory` is the root's store on the embedded backend.
    pub(crate) fn new(cache: &Handle, memory: std::sync::Arc<MemSessions>) -> Sessions {
        Sessions {
            cache: cache.clone(),
            memory,
            idle: Duration::from_secs(30 * 60),
            max: Duration::from_secs(24 * 3600),
            step: None,
        }
    }
}

/// Settings in milliseconds, checked.
#[derive(Clone, Copy)]
struct Times {
    idle: u64,
    max: u64,
    step: u64,
}

impl Sessions {
    /// How long a session lives without activity (default 30 minutes). Zero is
    /// [`Error::Config`] on the next operation; above [`MAX_TTL`](crate::limits::MAX_TTL), clamped.
    ///
    /// ```
    /// use std::time::Duration;
    /// let sessions = cache_core::Cache::in_memory().sessions().idle_timeout(Duration::from_secs(600));
    /// assert_eq!(sessions.idle(), Duration::from_secs(600));
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle = timeout;
        self
    }

    /// The absolute lifetime of a session from its creation, which no activity extends
    /// (default 24 hours). Zero is [`Error::Config`] on the next operation; above
    /// [`MAX_TTL`](crate::limits::MAX_TTL), clamped.
    ///
    /// ```
    /// use std::time::Duration;
    /// let sessions = cache_core::Cache::in_memory().sessions().max_lifetime(Duration::from_secs(3600));
    /// assert_eq!(sessions.lifetime(), Duration::from_secs(3600));
    /// ```
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max = lifetime;
        self
    }

    /// Reads slide the idle timeout only when that adds at least this much (default: a tenth
    /// of the idle timeout, at most one minute). A session may so end up to this much before
    /// a full idle timeout after its last read; in exchange, most reads write nothing (no
    /// `PEXPIRE` sent to replicas and the AOF) and, on Redis, take one round trip instead of
    /// two. Zero slides on every read that adds a millisecond or more.
    ///
    /// ```
    /// use std::time::Duration;
    /// let sessions = cache_core::Cache::in_memory().sessions().slide_threshold(Duration::ZERO);
    /// # let _ = sessions;
    /// ```
    pub fn slide_threshold(mut self, threshold: Duration) -> Self {
        self.step = Some(threshold);
        self
    }

    /// The idle timeout.
    ///
    /// ```
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// assert_eq!(sessions.idle(), std::time::Duration::from_secs(1800));
    /// ```
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The maximum lifetime.
    ///
    /// ```
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// assert_eq!(sessions.lifetime(), std::time::Duration::from_secs(86_400));
    /// ```
    pub fn lifetime(&self) -> Duration {
        self.max
    }

    fn times(&self) -> Result<Times> {
        // The crate's one rule for durations: whole milliseconds rounded up, zero refused,
        // above `MAX_TTL` clamped.
        let idle = limits::setting("sessions idle_timeout", self.idle)?;
        let max = limits::setting("sessions max_lifetime", self.max)?;
        let step = match self.step {
            Some(step) => step.min(limits::MAX_TTL).as_millis() as u64,
            None => (limits::millis(idle) / 10).min(60_000),
        };
        Ok(Times {
            idle: limits::millis(idle),
            max: limits::millis(max),
            step,
        })
    }

    fn record_key(&self, id: &SessionId) -> String {
        let prefix = &self.cache.key_prefix();
        let mut k = String::with_capacity(prefix.len() + 9 + ID_LEN);
        k.push_str(prefix);
        k.push_str("~session:");
        k.push_str(std::str::from_utf8(&id.encode()).unwrap_or_default());
        k
    }

    fn index_key(&self, user: &str) -> Result<String> {
        if user.is_empty() {
            return Err(Error::invalid_key(user, "a session's user cannot be empty"));
        }
        let mut part = KeyBuf::new();
        part.part(user);
        Ok(format!(
            "{}~session-user:{}",
            self.cache.key_prefix(),
            part.as_str()
        ))
    }

    fn encode<T: Serialize>(&self, id: Option<&SessionId>, data: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(data).map_err(|source| Error::Encode {
            key: match id {
                Some(id) => key::shorten_for_display(&self.record_key(id)),
                None => format!("{}~session:<new>", self.cache.key_prefix()),
            },
            source,
        })
    }

    /// Data that no longer decodes as `T` (a deploy changed the type) reads as no session:
    /// the user logs in again, and the log says why.
    fn decode<T: DeserializeOwned>(&self, id: &SessionId, bytes: &[u8]) -> Option<T> {
        match serde_json::from_slice(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(session = ?id, error = %e, type_name = std::any::type_name::<T>(),
                    "session data does not decode as the requested type: treated as no session");
                None
            }
        }
    }

    /// The data to store under `key`: the plaintext, or, when the handle encrypts, a raw
    /// envelope sealed with its key and bound to `key` (a ciphertext copied under another
    /// record does not open).
    fn seal(&self, key: &str, data: Vec<u8>) -> Result<Vec<u8>> {
        if !self.cache.is_encrypted() {
            return Ok(data);
        }
        let envelope =
            codec::encode(&data, &codec::Meta::default(), usize::MAX).map_err(|source| {
                Error::Encode {
                    key: key::shorten_for_display(key),
                    source,
                }
            })?;
        self.cache.seal(key, envelope)
    }

    /// The plaintext of data read from `key`; `None` when the handle encrypts and it does not
    /// open (another key, not encrypted, tampered with, moved from another record): the
    /// session reads as gone, and the log says why.
    fn open(&self, id: &SessionId, key: &str, stored: Vec<u8>) -> Option<Vec<u8>> {
        if !self.cache.is_encrypted() {
            return Some(stored);
        }
        let opened = codec::parse(&stored)
            .map_err(str::to_owned)
            .and_then(|env| self.cache.open_value::<Vec<u8>>(key, &stored, &env, 0));
        match opened {
            Ok(plaintext) => Some(plaintext),
            Err(reason) => {
                tracing::warn!(session = ?id, %reason,
                    "session data does not decrypt with this handle's keys: treated as no session");
                None
            }
        }
    }

    fn redis(&self) -> Option<&RedisBackend> {
        match self.cache.backend_ref() {
            Backend::Redis(r) => Some(r),
            Backend::Memory(_) => None,
        }
    }

    fn memory(&self) -> std::sync::Arc<MemSessions> {
        self.memory.clone()
    }

    /// Starts a session holding `data`, for `user` if given (listed by
    /// [`list_for_user`](Sessions::list_for_user)), and returns its new id. An empty user is
    /// [`Error::InvalidKey`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let anonymous = sessions.create(None, &vec!["cart item"]).await?;
    /// let ann = sessions.create(Some("ann"), &()).await?;
    /// assert_ne!(anonymous, ann);
    /// assert_eq!(sessions.list_for_user("ann").await?, vec![ann]);
    /// # Ok(()) }
    /// ```
    pub async fn create<T: Serialize>(&self, user: Option<&str>, data: &T) -> Result<SessionId> {
        let times = self.times()?;
        let bytes = self.encode(None, data)?;
        let index = user.map(|u| self.index_key(u)).transpose()?;
        let user = user.unwrap_or("");
        let record = Record {
            data: bytes,
            user: user.to_owned(),
            created: 0,
            deadline: 0,
            version: 1,
        };
        // A collision of 128 random bits does not happen; the loop is there so that it would
        // never hand out someone else's session.
        for _ in 0..4 {
            let id = SessionId::random()?;
            if self.insert(&id, &record, index.as_deref(), times).await? {
                return Ok(id);
            }
        }
        Err(Error::Config {
            setting: "session id",
            reason: "four random ids in a row were taken: the random number generator is broken"
                .to_owned(),
        })
    }

    /// Writes a new record under `id` (false if the id is taken), indexing it first.
    async fn insert(
        &self,
        id: &SessionId,
        record: &Record,
        index: Option<&str>,
        times: Times,
    ) -> Result<bool> {
        let key = self.record_key(id);
        let Some(redis) = self.redis() else {
            let mem = self.memory();
            return Ok(mem.insert(key, id, record, index, times));
        };
        let mut deadline = record.deadline;
        if let Some(index) = index {
            deadline = self.index_add(redis, index, id, deadline, times).await?;
        }
        let data = self.seal(&key, record.data.clone())?;
        let mut invocation = CREATE.key(&key);
        invocation
            .arg(data)
            .arg(&record.user)
            .arg(deadline)
            .arg(times.idle)
            .arg(record.created)
            .arg(record.version)
            .arg(times.max);
        let created: i64 = redis.run_script("session create", &invocation).await?;
        if created != 1
            && let Some(index) = index
        {
            // Taken by another session (which has its own entry), or already past its
            // deadline: this entry is not one.
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(index).arg(id.to_string());
            redis.run::<i64>("session index remove", cmd).await?;
        }
        Ok(created == 1)
    }

    /// Adds `id` to a user's index (with `deadline`, or now + max when 0) and returns the
    /// deadline; drops the sampled ids whose record is gone.
    async fn index_add(
        &self,
        redis: &RedisBackend,
        index: &str,
        id: &SessionId,
        deadline: u64,
        times: Times,
    ) -> Result<u64> {
        let mut invocation = INDEX.key(index);
        invocation
            .arg(id.to_string())
            .arg(times.max)
            .arg(deadline)
            .arg(SWEEP_SAMPLE)
            .arg(SWEEP_ABOVE);
        let (deadline, sample): (u64, Vec<String>) =
            redis.run_script("session index", &invocation).await?;
        let sample: Vec<SessionId> = sample
            .iter()
            .filter_map(|s| SessionId::decode(s))
            .filter(|s| s != id)
            .collect();
        if !sample.is_empty() {
            self.keep_live(redis, index, sample).await?;
        }
        Ok(deadline)
    }

    /// Of `ids` in a user's index, those whose record exists; the others are removed from
    /// the index.
    async fn keep_live(
        &self,
        redis: &RedisBackend,
        index: &str,
        ids: Vec<SessionId>,
    ) -> Result<Vec<SessionId>> {
        let mut live = Vec::with_capacity(ids.len());
        let mut dead = Vec::new();
        for chunk in ids.chunks(BATCH) {
            // One command per key, all in flight at once (the multiplexed connection
            // pipelines them): a pipeline would have to stay in one hash slot on a cluster.
            let found = futures_util::future::try_join_all(chunk.iter().map(|id| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.record_key(id));
                redis.run::<bool>("session exists", cmd)
            }))
            .await?;
            for (id, found) in chunk.iter().zip(found) {
                if found {
                    live.push(*id);
                } else {
                    dead.push(id.to_string());
                }
            }
        }
        for chunk in dead.chunks(BATCH) {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(index).arg(chunk);
            redis.run::<i64>("session index remove", cmd).await?;
        }
        Ok(live)
    }

    /// The session's data, sliding its idle timeout; `None` if there is no such session
    /// (never was, expired, deleted, malformed id) or its data does not decode as `T`.
    ///
    /// On Redis: one round trip (`HMGET` + `PTTL` on the record, pipelined); when the TTL has
    /// fallen at least the [`slide_threshold`](Sessions::slide_threshold) below
    /// `min(idle timeout, deadline - now)`, a second one runs the slide script, which sets
    /// the TTL by the server's clock (the decision to ask uses this process's clock). The
    /// maximum lifetime needs no check on a read: every slide caps the TTL at the deadline,
    /// so Redis drops the record then.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let id = sessions.create(None, &42u32).await?;
    /// assert_eq!(sessions.get::<u32>(&id).await?, Some(42));
    /// assert_eq!(sessions.get::<u32>("AAAAAAAAAAAAAAAAAAAAAA").await?, None); // unknown
    /// assert_eq!(sessions.get::<u32>("x".repeat(1 << 20)).await?, None);     // malformed
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, id: impl AsSessionId) -> Result<Option<T>> {
        Ok(self
            .get_versioned(id, false)
            .await?
            .and_then(|(id, bytes, _)| self.decode(&id, &bytes)))
    }

    /// The raw data and version of a session (the version read only if `with_version`, else
    /// 1), sliding its idle timeout.
    async fn get_versioned(
        &self,
        id: impl AsSessionId,
        with_version: bool,
    ) -> Result<Option<(SessionId, Vec<u8>, u64)>> {
        let Some(id) = id.session_id() else {
            return Ok(None);
        };
        let times = self.times()?;
        let key = self.record_key(&id);
        let Some(redis) = self.redis() else {
            return Ok(self
                .memory()
                .get(&key, times)
                .map(|(data, version)| (id, data, version)));
        };
        // One pipeline of plain commands on the record's key (one slot on a cluster): its
        // fields and its TTL. Expiry needs no script: every slide caps the TTL at the
        // deadline, so Redis drops the record at its deadline at the latest.
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&key).arg("x").arg("d");
        if with_version {
            pipe.arg("v");
        }
        pipe.cmd("PTTL").arg(&key);
        let (fields, pttl): (Vec<Option<Vec<u8>>>, i64) =
            redis.run_pipe("session get", pipe).await?;
        let mut fields = fields.into_iter();
        let deadline = fields.next().flatten();
        let data = fields.next().flatten();
        let version = fields.next().flatten();
        // `x` and `v` are ASCII digits as the scripts write them; anything else is no record.
        let (Some(deadline), Some(data)) = (deadline.and_then(|x| codec::decode_version(&x)), data)
        else {
            return Ok(None);
        };
        let version = version.and_then(|v| codec::decode_version(&v));
        if pttl == -2 {
            return Ok(None);
        }
        let Some(data) = self.open(&id, &key, data) else {
            return Ok(None);
        };
        if needs_slide(deadline, pttl, times, codec::now_ms()) {
            // The slide itself is the touch script, by the server's clock: it may find the
            // record gone meanwhile (deleted, ended), and then this read is a miss too.
            let mut invocation = GET.key(&key);
            invocation.arg(times.idle).arg(times.step).arg("0");
            let found: Option<i64> = redis.run_script("session touch", &invocation).await?;
            if found.is_none() {
                return Ok(None);
            }
        }
        Ok(Some((id, data, version.unwrap_or(1))))
    }

    /// Replaces the session's data, sliding its idle timeout; false if there is no such
    /// session (an update never brings one back). Concurrent updates: the last one wins; see
    /// [`modify`](Sessions::modify) to change part of the data without losing another
    /// writer's change.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let id = sessions.create(None, &1u32).await?;
    /// assert!(sessions.update(&id, &2u32).await?);
    /// assert_eq!(sessions.get::<u32>(&id).await?, Some(2));
    /// sessions.delete(&id).await?;
    /// assert!(!sessions.update(&id, &3u32).await?);
    /// # Ok(()) }
    /// ```
    pub async fn update<T: Serialize>(&self, id: impl AsSessionId, data: &T) -> Result<bool> {
        let Some(id) = id.session_id() else {
            return Ok(false);
        };
        let bytes = self.encode(Some(&id), data)?;
        Ok(matches!(
            self.write(&id, bytes, None, None).await?,
            Written::Yes { .. }
        ))
    }

    /// Writes new data (and, if given, a new user) if the version is still `expected`.
    pub(crate) async fn write(
        &self,
        id: &SessionId,
        data: Vec<u8>,
        expected: Option<u64>,
        user: Option<&str>,
    ) -> Result<Written> {
        let times = self.times()?;
        let key = self.record_key(id);
        let Some(redis) = self.redis() else {
            return Ok(self.memory().write(&key, data, expected, user, times));
        };
        let data = self.seal(&key, data)?;
        let mut invocation = UPDATE.key(&key);
        invocation
            .arg(data)
            .arg(times.idle)
            .arg(times.step)
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(user.unwrap_or(""));
        let reply: Vec<redis::Value> = redis.run_script("session update", &invocation).await?;
        let mut reply = reply.into_iter();
        let version = match reply.next() {
            Some(redis::Value::Int(v)) => v,
            _ => 0,
        };
        let previous_user = match reply.next() {
            Some(redis::Value::BulkString(b)) => String::from_utf8(b).unwrap_or_default(),
            _ => String::new(),
        };
        Ok(match version {
            0 => Written::Missing,
            v if v < 0 => Written::Conflict,
            _ => Written::Yes { previous_user },
        })
    }

    /// Reads the session's data, lets `change` modify it, and writes it back only if no
    /// other write landed in between, else starts over with the newer data: concurrent
    /// modifications (of different fields, say) are all kept. Returns what `change` returned,
    /// or `None` if there is no such session (or its data does not decode as `T`). After 64
    /// conflicting attempts in a row, [`Error::Contention`]. `change` may run several times.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize, Default)]
    /// struct Prefs { theme: String, visits: u32 }
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let id = sessions.create(None, &Prefs::default()).await?;
    /// let visits = sessions.modify(&id, |p: &mut Prefs| { p.visits += 1; p.visits }).await?;
    /// assert_eq!(visits, Some(1));
    /// # Ok(()) }
    /// ```
    pub async fn modify<T, R>(
        &self,
        id: impl AsSessionId,
        mut change: impl FnMut(&mut T) -> R,
    ) -> Result<Option<R>>
    where
        T: Serialize + DeserializeOwned,
    {
        let Some(id) = id.session_id() else {
            return Ok(None);
        };
        for attempt in 0..MODIFY_ATTEMPTS {
            let Some((_, bytes, version)) = self.get_versioned(&id, true).await? else {
                return Ok(None);
            };
            let Some(mut data) = self.decode::<T>(&id, &bytes) else {
                return Ok(None);
            };
            let out = change(&mut data);
            let bytes = self.encode(Some(&id), &data)?;
            match self.write(&id, bytes, Some(version), None).await? {
                Written::Yes { .. } => return Ok(Some(out)),
                Written::Missing => return Ok(None),
                Written::Conflict => {
                    // Spread the retries of writers that collided, so one of them wins soon.
                    let spread = u64::from(id.as_bytes()[(attempt as usize) % ID_BYTES] % 4);
                    tokio::time::sleep(Duration::from_micros(
                        50 * (1 + spread) * u64::from(attempt.min(8) + 1),
                    ))
                    .await;
                }
            }
        }
        Err(Error::Contention {
            operation: "sessions modify",
            attempts: MODIFY_ATTEMPTS,
        })
    }

    /// Slides the session's idle timeout without reading its data; false if there is no
    /// such session.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let id = sessions.create(None, &()).await?;
    /// assert!(sessions.touch(&id).await?);
    /// assert!(!sessions.touch("AAAAAAAAAAAAAAAAAAAAAA").await?);
    /// # Ok(()) }
    /// ```
    pub async fn touch(&self, id: impl AsSessionId) -> Result<bool> {
        let Some(id) = id.session_id() else {
            return Ok(false);
        };
        let times = self.times()?;
        let key = self.record_key(&id);
        let Some(redis) = self.redis() else {
            return Ok(self.memory().get(&key, times).is_some());
        };
        let mut invocation = GET.key(&key);
        invocation.arg(times.idle).arg(times.step).arg("0");
        let found: Option<i64> = redis.run_script("session touch", &invocation).await?;
        Ok(found.is_some())
    }

    /// True if the session exists; does not slide its idle timeout.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let id = sessions.create(None, &()).await?;
    /// assert!(sessions.exists(&id).await?);
    /// assert!(!sessions.exists("malformed").await?);
    /// # Ok(()) }
    /// ```
    pub async fn exists(&self, id: impl AsSessionId) -> Result<bool> {
        Ok(self.ttl(id).await?.is_some())
    }

    /// How long the session lives if nothing slides its idle timeout; `None` if there is no
    /// such session. Does not slide it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let sessions = cache_core::Cache::in_memory().sessions().idle_timeout(Duration::from_secs(60));
    /// let id = sessions.create(None, &()).await?;
    /// assert!(sessions.ttl(&id).await?.is_some_and(|left| left <= Duration::from_secs(60)));
    /// # Ok(()) }
    /// ```
    pub async fn ttl(&self, id: impl AsSessionId) -> Result<Option<Duration>> {
        let Some(id) = id.session_id() else {
            return Ok(None);
        };
        let key = self.record_key(&id);
        let Some(redis) = self.redis() else {
            return Ok(self.memory().ttl(&key));
        };
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(&key);
        let ms: i64 = redis.run("session ttl", cmd).await?;
        Ok(match ms {
            -2 => None,
            // A record always has a TTL; one without has no deadline either: report it as
            // ending now rather than never.
            -1 => Some(Duration::ZERO),
            ms => Some(Duration::from_millis(ms.max(0) as u64)),
        })
    }

    /// Ends the session; false if there was no such session.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let id = sessions.create(Some("ann"), &()).await?;
    /// assert!(sessions.delete(&id).await?);
    /// assert!(!sessions.delete(&id).await?);
    /// assert!(sessions.list_for_user("ann").await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, id: impl AsSessionId) -> Result<bool> {
        let Some(id) = id.session_id() else {
            return Ok(false);
        };
        let key = self.record_key(&id);
        let Some(redis) = self.redis() else {
            return Ok(self.memory().delete(&key, &id));
        };
        let (deleted, user): (i64, String) = redis
            .run_script("session delete", &DELETE.key(&key))
            .await?;
        if !user.is_empty() {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(self.index_key(&user)?).arg(id.to_string());
            redis.run::<i64>("session index remove", cmd).await?;
        }
        Ok(deleted == 1)
    }

    /// Moves the session to a new id, atomically: the old id stops working before the new
    /// one exists, and the data, user, creation time and maximum lifetime go with it. Call it
    /// when the session's privileges change (a login), so that an id known before (session
    /// fixation) is worth nothing after. `None` if there is no such session.
    ///
    /// On Redis the old record is taken (read and deleted) by one script, then written under
    /// the new id: if Redis fails in between, the session is lost (the user logs in again),
    /// never left reachable under both ids.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let before = sessions.create(None, &"cart").await?;
    /// let after = sessions.rotate(&before).await?.expect("exists");
    /// assert_eq!(sessions.get::<String>(&after).await?.as_deref(), Some("cart"));
    /// assert!(!sessions.exists(&before).await?);
    /// # Ok(()) }
    /// ```
    pub async fn rotate(&self, id: impl AsSessionId) -> Result<Option<SessionId>> {
        let Some(old) = id.session_id() else {
            return Ok(None);
        };
        let times = self.times()?;
        let old_key = self.record_key(&old);
        let Some(redis) = self.redis() else {
            let mem = self.memory();
            let new = SessionId::random()?;
            return Ok(mem.rotate(&old_key, &old, new, times, |key| self.record_key(key)));
        };
        let taken: Option<(Vec<u8>, String, u64, u64, u64)> = redis
            .run_script("session take", &TAKE.key(&old_key))
            .await?;
        let Some((data, user, created, deadline, version)) = taken else {
            return Ok(None);
        };
        // Encrypted data is bound to its record's key: opened here, sealed for the new one.
        let Some(data) = self.open(&old, &old_key, data) else {
            if !user.is_empty() {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(self.index_key(&user)?).arg(old.to_string());
                redis.run::<i64>("session index remove", cmd).await?;
            }
            return Ok(None);
        };
        let record = Record {
            data,
            user,
            created,
            deadline,
            version: version + 1,
        };
        let index = if record.user.is_empty() {
            None
        } else {
            Some(self.index_key(&record.user)?)
        };
        let mut moved = None;
        for _ in 0..4 {
            let new = SessionId::random()?;
            if self.insert(&new, &record, index.as_deref(), times).await? {
                moved = Some(new);
                break;
            }
        }
        if let Some(index) = &index {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(index).arg(old.to_string());
            redis.run::<i64>("session index remove", cmd).await?;
        }
        Ok(moved)
    }

    /// The live sessions of `user`, oldest deadline first. Entries of sessions found gone
    /// are dropped from the user's index on the way.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let phone = sessions.create(Some("ann"), &"phone").await?;
    /// let laptop = sessions.create(Some("ann"), &"laptop").await?;
    /// let mine = sessions.list_for_user("ann").await?;
    /// assert!(mine.len() == 2 && mine.contains(&phone) && mine.contains(&laptop));
    /// assert!(sessions.list_for_user("bob").await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn list_for_user(&self, user: &str) -> Result<Vec<SessionId>> {
        let index = self.index_key(user)?;
        let Some(redis) = self.redis() else {
            return Ok(self.memory().list(&index, |id| self.record_key(id)));
        };
        let ids = self.index_members(redis, &index).await?;
        self.keep_live(redis, &index, ids).await
    }

    async fn index_members(&self, redis: &RedisBackend, index: &str) -> Result<Vec<SessionId>> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(index).arg(0).arg(-1);
        let members: Vec<String> = redis.run("session index", cmd).await?;
        Ok(members
            .iter()
            .filter_map(|m| SessionId::decode(m))
            .collect())
    }

    /// Ends every session of `user` ("log out everywhere") and returns how many there were.
    /// A session created while this runs may survive it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let sessions = cache_core::Cache::in_memory().sessions();
    /// let a = sessions.create(Some("ann"), &()).await?;
    /// let b = sessions.create(Some("ann"), &()).await?;
    /// let bob = sessions.create(Some("bob"), &()).await?;
    /// assert_eq!(sessions.delete_for_user("ann").await?, 2);
    /// assert!(!sessions.exists(&a).await? && !sessions.exists(&b).await?);
    /// assert!(sessions.exists(&bob).await?);
    /// # Ok(()) }
    /// ```
    pub async fn delete_for_user(&self, user: &str) -> Result<u64> {
        let index = self.index_key(user)?;
        let Some(redis) = self.redis() else {
            return Ok(self.memory().delete_all(&index, |id| self.record_key(id)));
        };
        let ids = self.index_members(redis, &index).await?;
        let mut deleted = 0u64;
        for chunk in ids.chunks(BATCH) {
            let mut cmd = redis::cmd("DEL");
            for id in chunk {
                cmd.arg(self.record_key(id));
            }
            deleted += redis.run::<u64>("session delete", cmd).await?;
            // Only the ids seen: one added meanwhile keeps its entry with its session.
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(&index);
            for id in chunk {
                cmd.arg(id.to_string());
            }
            redis.run::<i64>("session index remove", cmd).await?;
        }
        Ok(deleted)
    }

    /// Binds the session to `user` after a write that found `previous` (the tower-sessions
    /// store's `save`, when the user field changed): index entry added, the old one removed.
    #[cfg(feature = "tower-sessions")]
    pub(crate) async fn reindex(&self, id: &SessionId, user: &str, previous: &str) -> Result<()> {
        if user == previous {
            return Ok(());
        }
        let times = self.times()?;
        let index = self.index_key(user)?;
        match self.redis() {
            None => {
                let mem = self.memory();
                mem.reindex(&index, id, times);
                if !previous.is_empty() {
                    mem.unindex(&self.index_key(previous)?, id);
                }
            }
            Some(redis) => {
                self.index_add(redis, &index, id, 0, times).await?;
                if !previous.is_empty() {
                    let mut cmd = redis::cmd("ZREM");
                    cmd.arg(self.index_key(previous)?).arg(id.to_string());
                    redis.run::<i64>("session index remove", cmd).await?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a read that found the record with `pttl` ms left (-1: no expiry), `deadline` its
/// absolute deadline in unix ms, should slide its idle timeout: when that would add at least
/// the slide threshold (and at least a millisecond). `now` is this process's clock, which only
/// decides whether to ask: the slide script recomputes the TTL with the server's `TIME`. A
/// clock behind the server's makes a few reads near the deadline ask for a slide that adds
/// nothing; one ahead makes reads near the deadline skip a slide that would have added less
/// than that skew.
fn needs_slide(deadline: u64, pttl: i64, times: Times, now: u64) -> bool {
    if pttl < 0 {
        return true; // no expiry: the script sets it
    }
    let want = times.idle.min(deadline.saturating_sub(now));
    want.saturating_sub(pttl as u64) >= times.step.max(1)
}

/// A record to write.
struct Record {
    data: Vec<u8>,
    user: String,
    /// 0: now.
    created: u64,
    /// 0: now + max lifetime.
    deadline: u64,
    version: u64,
}

/// The outcome of a conditional write.
#[derive(Debug)]
pub(crate) enum Written {
    /// Written; the user the record had before.
    Yes {
        #[cfg_attr(not(feature = "tower-sessions"), allow(dead_code))]
        previous_user: String,
    },
    /// No such session.
    Missing,
    /// Another write changed the version first.
    Conflict,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text() {
        for seed in 0..=255u8 {
            let bytes: [u8; 16] =
                std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 17));
            let id = SessionId::from_bytes(bytes);
            let text = id.to_string();
            assert_eq!(text.len(), ID_LEN);
            assert!(text.bytes().all(|c| id::b64_value(c).is_some()));
            assert_eq!(text.parse::<SessionId>().ok(), Some(id));
        }
        let all_ones = SessionId::from_bytes([0xff; 16]).to_string();
        assert_eq!(all_ones, "_____________________w");
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAAAAAA",   // 21
            "AAAAAAAAAAAAAAAAAAAAAAA", // 23
            "AAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAA+A",
            "AAAAAAAAAAAAAAAAAAAA/A",
            "AAAAAAAAAAAAAAAAAAAAAB", // non-canonical last character
            "AAAAAAAAAAAAAAAAAAAAéA",
        ] {
            assert!(SessionId::decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn reads_ask_for_a_slide_only_when_it_adds_the_threshold() {
        let times = Times {
            idle: 10_000,
            max: 100_000,
            step: 1_000,
        };
        let now = 1_000_000;
        let far = now + 50_000;
        assert!(!needs_slide(far, 10_000, times, now), "fresh");
        assert!(!needs_slide(far, 9_001, times, now), "less than the step");
        assert!(needs_slide(far, 9_000, times, now), "the step");
        assert!(needs_slide(far, -1, times, now), "no expiry");
        // Near the deadline the TTL is capped there: nothing to add.
        let near = now + 3_000;
        assert!(!needs_slide(near, 3_000, times, now));
        assert!(!needs_slide(near, 2_500, times, now));
        assert!(needs_slide(near, 2_000, times, now));
        // Past it by this clock: never asks (Redis drops the record at its deadline).
        assert!(!needs_slide(now - 5, 100, times, now));
        // A zero threshold asks whenever a millisecond would be added.
        let every = Times { step: 0, ..times };
        assert!(!needs_slide(far, 10_000, every, now));
        assert!(needs_slide(far, 9_999, every, now));
    }

    #[test]
    fn debug_hides_the_id() {
        let id = SessionId::from_bytes([0xab; 16]);
        let debug = format!("{id:?}");
        assert!(!debug.contains(&id.to_string()));
    }
}
