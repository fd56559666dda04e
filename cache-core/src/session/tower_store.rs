//! The `tower-sessions` integration (feature `tower-sessions`): [`TowerSessionStore`]
//! implements its `SessionStore` trait on [`Sessions`].

use std::collections::HashMap;

use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use super::{SessionId, Sessions, Written};

/// The session store as a [`tower_sessions::SessionStore`](tower_sessions_core::SessionStore)
/// (feature `tower-sessions`), for axum and tower services that already use the
/// `tower-sessions` middleware: `SessionManagerLayer::new(TowerSessionStore::new(cache.sessions()))`.
///
/// - Ids are drawn by this store in `create` (128 bits from the operating system), and
///   are the same text in the cookie as a [`SessionId`]; a `Record`'s own id is replaced.
/// - The [`Sessions`]' idle timeout and maximum lifetime apply on top of the record's
///   `expiry_date` (whichever ends first); `load` slides the idle timeout.
/// - `save` of a session that is gone (expired, deleted, ended by "log out everywhere"
///   meanwhile) does not bring it back: the next request starts a new one.
/// - With [`user_field`](TowerSessionStore::user_field), the session is indexed under
///   the user id found in that field of the data, so
///   [`Sessions::delete_for_user`] ends it. Set the user with `session.cycle_id()` on
///   login (a new id, as `create` indexes it before the record exists); a user set by a
///   later `save` is indexed right after that write.
/// - Redis unreachable: every call fails ([`session_store::Error::Backend`]), so the
///   middleware answers 500 rather than serve a request without its session.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_sessions_core::{session::Record, SessionStore};
/// let cache = cache_core::Cache::in_memory();
/// let store = cache_core::session::TowerSessionStore::new(cache.sessions()).user_field("user");
/// let mut record = Record {
///     id: Default::default(),
///     data: [("user".to_owned(), serde_json::json!("ann"))].into(),
///     expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
/// };
/// store.create(&mut record).await?;
/// let loaded = store.load(&record.id).await?.expect("stored");
/// assert_eq!(loaded.data["user"], "ann");
/// assert_eq!(cache.sessions().list_for_user("ann").await?.len(), 1);
/// store.delete(&record.id).await?;
/// assert!(store.load(&record.id).await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TowerSessionStore {
    sessions: Sessions,
    user_field: Option<String>,
}

/// What is stored: the record's data and its expiry, in unix milliseconds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<D> {
    d: D,
    e: i64,
}

fn backend(e: crate::base::error::Error) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

impl TowerSessionStore {
    /// A store keeping tower-sessions' records in `sessions` (their scope, idle timeout
    /// and lifetime).
    ///
    /// ```
    /// let store = cache_core::session::TowerSessionStore::new(cache_core::Cache::in_memory().sessions());
    /// # let _ = store;
    /// ```
    pub fn new(sessions: Sessions) -> Self {
        TowerSessionStore {
            sessions,
            user_field: None,
        }
    }

    /// Indexes each session under the user id held in this field of its data (a string
    /// or a number), for [`Sessions::list_for_user`] and [`Sessions::delete_for_user`].
    ///
    /// ```
    /// let store = cache_core::session::TowerSessionStore::new(cache_core::Cache::in_memory().sessions())
    ///     .user_field("user_id");
    /// # let _ = store;
    /// ```
    pub fn user_field(mut self, field: impl Into<String>) -> Self {
        self.user_field = Some(field.into());
        self
    }

    /// The session store underneath (to list or end a user's sessions).
    ///
    /// ```
    /// let store = cache_core::session::TowerSessionStore::new(cache_core::Cache::in_memory().sessions());
    /// assert_eq!(store.sessions().idle(), std::time::Duration::from_secs(1800));
    /// ```
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The [`SessionId`] of a tower-sessions id (the same text in a cookie).
    ///
    /// ```
    /// use tower_sessions_core::session::Id;
    /// let id = Id(42);
    /// assert_eq!(cache_core::session::TowerSessionStore::session_id(&id).to_string(), id.to_string());
    /// ```
    pub fn session_id(id: &Id) -> SessionId {
        SessionId::from_bytes(id.0.to_le_bytes())
    }

    fn user_of(&self, record: &Record) -> Option<String> {
        let value = record.data.get(self.user_field.as_deref()?)?;
        match value {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn stored(record: &Record) -> Stored<&HashMap<String, serde_json::Value>> {
        let expiry = record.expiry_date.unix_timestamp_nanos() / 1_000_000;
        Stored {
            d: &record.data,
            e: i64::try_from(expiry).unwrap_or(i64::MAX),
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for TowerSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let user = self.user_of(record);
        let id = self
            .sessions
            .create(user.as_deref(), &Self::stored(record))
            .await
            .map_err(backend)?;
        record.id = Id(i128::from_le_bytes(*id.as_bytes()));
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let id = Self::session_id(&record.id);
        let user = self.user_of(record);
        let bytes = serde_json::to_vec(&Self::stored(record))
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let written = self
            .sessions
            .write(&id, bytes, None, user.as_deref())
            .await
            .map_err(backend)?;
        if let (Written::Yes { previous_user }, Some(user)) = (written, user) {
            self.sessions
                .reindex(&id, &user, &previous_user)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let id = Self::session_id(session_id);
        let Some(stored) = self
            .sessions
            .get::<Stored<HashMap<String, serde_json::Value>>>(&id)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let Ok(expiry_date) =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(stored.e) * 1_000_000)
        else {
            return Ok(None);
        };
        if expiry_date <= time::OffsetDateTime::now_utc() {
            return Ok(None);
        }
        Ok(Some(Record {
            id: *session_id,
            data: stored.d,
            expiry_date,
        }))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.sessions
            .delete(&Self::session_id(session_id))
            .await
            .map_err(backend)?;
        Ok(())
    }
}
