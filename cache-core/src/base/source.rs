//! Plain public types every layer names: where a value came from, and what a lookup found.

use std::time::Duration;

/// Where a value was found, and which backend a cache uses.
///
/// ```
/// # fn main() -> Result<(), cache_core::Error> {
/// use cache_core::{Cache, Source};
/// assert_eq!(Cache::in_memory().backend(), Source::Memory);
/// let redis = Cache::builder().url("redis://127.0.0.1:6379").build()?; // not connected yet
/// assert_eq!(redis.backend(), Source::Redis);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The Redis backend.
    Redis,
    /// The embedded in-memory backend.
    Memory,
    /// The L1 near cache of this process (see
    /// [`CacheBuilder::local_cache`](crate::CacheBuilder::local_cache)).
    Local,
}

/// The outcome of [`Cache::lookup`](crate::Cache::lookup): a hit with where it came from and how old it is, or a
/// miss.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use cache_core::Lookup;
/// let cache = cache_core::Cache::in_memory();
/// cache.set("n", &7u32, None).await?;
/// match cache.lookup::<u32>("n").await? {
///     Lookup::Hit { value, age, .. } => assert!(value == 7 && age.as_secs() < 60),
///     Lookup::Miss => unreachable!("just written"),
/// }
/// assert_eq!(cache.lookup::<u32>("absent").await?, Lookup::Miss);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    /// A usable value.
    Hit {
        /// The value.
        value: T,
        /// Where it was found.
        source: Source,
        /// Time since it was written (by the writer's clock).
        age: Duration,
    },
    /// Nothing usable: absent, expired, invalidated by a tag, or not decodable as `T`.
    Miss,
}

impl<T> Lookup<T> {
    /// The value of a hit.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("n", &7u32, None).await?;
    /// assert_eq!(cache.lookup::<u32>("n").await?.into_value(), Some(7));
    /// assert_eq!(cache.lookup::<u32>("absent").await?.into_value(), None);
    /// # Ok(()) }
    /// ```
    pub fn into_value(self) -> Option<T> {
        match self {
            Lookup::Hit { value, .. } => Some(value),
            Lookup::Miss => None,
        }
    }

    /// True for a hit.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("n", &7u32, None).await?;
    /// assert!(cache.lookup::<u32>("n").await?.is_hit());
    /// assert!(!cache.lookup::<String>("n").await?.is_hit()); // not decodable as a `String`
    /// # Ok(()) }
    /// ```
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit { .. })
    }
}
