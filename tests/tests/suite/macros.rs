//! `#[cached]`, `#[cache_evict]` and `#[cache_put]` at run time, on both
//! backends. Each function takes its cache and a call counter as parameters
//! left out of the key (`skip`), so that tests stay independent; the counter
//! shows whether the body ran.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{cache_evict, cache_put, cached, Cache};
use serde::{Deserialize, Serialize};

fn calls(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

// ---- get-or-compute and the companions ----------------------------------------------------

#[cached(cache = cache, skip = [cache, calls], key = "square:<n>", ttl = "1h")]
async fn square(cache: &Cache, calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[tokio::test]
async fn repeated_calls_run_the_body_once_per_key() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        for _ in 0..3 {
            assert_eq!(square(&cache, &counter, 3).await, 9, "{backend}");
        }
        assert_eq!(
            calls(&counter),
            1,
            "{backend}: one computation for three calls"
        );
        assert_eq!(square(&cache, &counter, 4).await, 16, "{backend}");
        assert_eq!(calls(&counter), 2, "{backend}: another key computes");
        assert_eq!(square(&cache, &counter, 3).await, 9, "{backend}");
        assert_eq!(calls(&counter), 2, "{backend}");
    }
}

/// serde_json cannot write maps with non-string keys: such a value can never be cached.
#[cached(cache = cache, skip = [cache, calls], key = "grid:<n>")]
async fn grid(
    cache: &Cache,
    calls: &AtomicUsize,
    n: u8,
) -> std::collections::HashMap<(u8, u8), u8> {
    calls.fetch_add(1, Ordering::SeqCst);
    [((n, n), n)].into_iter().collect()
}

#[tokio::test]
async fn a_value_that_does_not_serialize_is_computed_every_time_and_counted() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        for _ in 0..3 {
            assert_eq!(grid(&cache, &counter, 2).await[&(2, 2)], 2, "{backend}");
        }
        assert_eq!(calls(&counter), 3, "{backend}: nothing stored, so no hit");
        let s = cache.stats();
        assert_eq!(
            (s.encode_errors, s.backend_errors, s.writes),
            (3, 0, 0),
            "{backend}: {s:?}"
        );
        assert!(!cache.exists("grid:2").await.expect("exists"), "{backend}");
    }
}

#[tokio::test]
async fn the_key_template_gives_the_stored_key() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        square(&cache, &counter, 7).await;
        assert!(cache.exists("square:7").await.expect("exists"), "{backend}");
        let stored: Option<u64> = cache.get("square:7").await.expect("get");
        assert_eq!(stored, Some(49), "{backend}");
        // A value written through the direct API under the same key is what the
        // function returns.
        cache.set("square:8", &1u64, None).await.expect("set");
        assert_eq!(square(&cache, &counter, 8).await, 1, "{backend}");
        assert_eq!(calls(&counter), 1, "{backend}");
    }
}

#[tokio::test]
async fn invalidate_companion_removes_the_entry() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        square(&cache, &counter, 3).await;
        square(&cache, &counter, 4).await;
        assert_eq!(calls(&counter), 2, "{backend}");

        let existed = square_invalidate(&cache, &counter, 3)
            .await
            .expect("invalidate");
        assert!(existed, "{backend}: the entry existed");
        let existed = square_invalidate(&cache, &counter, 3)
            .await
            .expect("invalidate");
        assert!(!existed, "{backend}: already gone");

        assert_eq!(square(&cache, &counter, 3).await, 9, "{backend}");
        assert_eq!(
            calls(&counter),
            3,
            "{backend}: computed again after invalidation"
        );
        assert_eq!(square(&cache, &counter, 4).await, 16, "{backend}");
        assert_eq!(calls(&counter), 3, "{backend}: other keys are untouched");
    }
}

#[tokio::test]
async fn uncached_companion_bypasses_the_cache() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        assert_eq!(square_uncached(&cache, &counter, 5).await, 25, "{backend}");
        assert_eq!(square_uncached(&cache, &counter, 5).await, 25, "{backend}");
        assert_eq!(calls(&counter), 2, "{backend}: runs every time");
        assert!(
            !cache.exists("square:5").await.expect("exists"),
            "{backend}: stores nothing"
        );
        square(&cache, &counter, 5).await;
        assert_eq!(
            calls(&counter),
            3,
            "{backend}: the cached call still computes"
        );
    }
}

#[cached(cache = cache, skip = [cache, counter], key = "next")]
async fn next(cache: &Cache, counter: &AtomicUsize) -> usize {
    counter.fetch_add(1, Ordering::SeqCst) + 1
}

#[tokio::test]
async fn refresh_companion_recomputes_and_stores() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        assert_eq!(next(&cache, &counter).await, 1, "{backend}");
        assert_eq!(next(&cache, &counter).await, 1, "{backend}: cached");
        assert_eq!(
            next_refresh(&cache, &counter).await,
            2,
            "{backend}: recomputed"
        );
        assert_eq!(
            next(&cache, &counter).await,
            2,
            "{backend}: the refreshed value is served"
        );
        assert_eq!(calls(&counter), 2, "{backend}");
    }
}

#[cached(cache = cache, skip = [cache, calls], key = "short:<n>", ttl = "300ms")]
async fn short_lived(cache: &Cache, calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        short_lived(&cache, &counter, 1).await;
        short_lived(&cache, &counter, 1).await;
        assert_eq!(calls(&counter), 1, "{backend}");
        tokio::time::sleep(Duration::from_millis(700)).await;
        short_lived(&cache, &counter, 1).await;
        assert_eq!(calls(&counter), 2, "{backend}: expired, computed again");
    }
}

// ---- keys -------------------------------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls])]
async fn double(cache: &Cache, calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    n * 2
}

#[cached(cache = cache, skip = [cache, calls])]
async fn triple(cache: &Cache, calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    n * 3
}

#[tokio::test]
async fn functions_with_the_same_arguments_never_collide() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        assert_eq!(double(&cache, &counter, 5).await, 10, "{backend}");
        assert_eq!(triple(&cache, &counter, 5).await, 15, "{backend}");
        assert_eq!(double(&cache, &counter, 5).await, 10, "{backend}");
        assert_eq!(triple(&cache, &counter, 5).await, 15, "{backend}");
        assert_eq!(calls(&counter), 2, "{backend}");
        // Invalidating one leaves the other.
        assert!(double_invalidate(&cache, &counter, 5)
            .await
            .expect("invalidate"));
        assert_eq!(triple(&cache, &counter, 5).await, 15, "{backend}");
        assert_eq!(calls(&counter), 2, "{backend}");
    }
}

#[cached(cache = cache, skip = [cache, calls], key = "join:<a>:<b>")]
async fn join(cache: &Cache, calls: &AtomicUsize, a: &str, b: &str) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    format!("{a}+{b}")
}

#[tokio::test]
async fn reference_arguments_are_escaped_so_keys_never_collide() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        // Both render to `join:a:b:c` if `:` inside a part were not escaped.
        assert_eq!(
            join(&cache, &counter, "a:b", "c").await,
            "a:b+c",
            "{backend}"
        );
        assert_eq!(
            join(&cache, &counter, "a", "b:c").await,
            "a+b:c",
            "{backend}"
        );
        assert_eq!(
            join(&cache, &counter, "a:b", "c").await,
            "a:b+c",
            "{backend}"
        );
        assert_eq!(calls(&counter), 2, "{backend}");
        // Glob characters and braces in values are inert too.
        assert_eq!(
            join(&cache, &counter, "*", "{x}").await,
            "*+{x}",
            "{backend}"
        );
        assert_eq!(
            join(&cache, &counter, "*", "{x}").await,
            "*+{x}",
            "{backend}"
        );
        assert_eq!(calls(&counter), 3, "{backend}");
    }
}

#[derive(Debug)]
pub struct Account {
    pub tenant: u64,
    pub id: u64,
}

#[cached(cache = cache, skip = [cache, calls], key = "{tenant:<account.tenant>}:account:<account.id>")]
async fn balance(cache: &Cache, calls: &AtomicUsize, account: &Account) -> i64 {
    calls.fetch_add(1, Ordering::SeqCst);
    (account.tenant * 100 + account.id) as i64
}

#[tokio::test]
async fn field_placeholders_and_hash_tags() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        let account = Account { tenant: 4, id: 2 };
        assert_eq!(balance(&cache, &counter, &account).await, 402, "{backend}");
        assert_eq!(balance(&cache, &counter, &account).await, 402, "{backend}");
        assert_eq!(calls(&counter), 1, "{backend}");
        let stored = cache.exists("{tenant:4}:account:2").await.expect("exists");
        assert!(stored, "{backend}: the braces are kept literally");
    }
}

// ---- return types -----------------------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls], key = "find:<id>")]
async fn find(cache: &Cache, calls: &AtomicUsize, id: u64) -> Option<String> {
    calls.fetch_add(1, Ordering::SeqCst);
    (id != 0).then(|| format!("item {id}"))
}

#[cached(cache = cache, skip = [cache, calls], key = "find:<id>", cache_none)]
async fn find_caching_none(cache: &Cache, calls: &AtomicUsize, id: u64) -> Option<String> {
    calls.fetch_add(1, Ordering::SeqCst);
    (id != 0).then(|| format!("item {id}"))
}

#[tokio::test]
async fn option_caches_some_and_not_none() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        assert_eq!(find(&cache, &counter, 0).await, None, "{backend}");
        assert_eq!(find(&cache, &counter, 0).await, None, "{backend}");
        assert_eq!(calls(&counter), 2, "{backend}: `None` is not cached");
        assert_eq!(
            find(&cache, &counter, 1).await.as_deref(),
            Some("item 1"),
            "{backend}"
        );
        assert_eq!(
            find(&cache, &counter, 1).await.as_deref(),
            Some("item 1"),
            "{backend}"
        );
        assert_eq!(calls(&counter), 3, "{backend}: `Some` is cached");
    }
}

#[tokio::test]
async fn cache_none_caches_none() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        assert_eq!(
            find_caching_none(&cache, &counter, 0).await,
            None,
            "{backend}"
        );
        assert_eq!(
            find_caching_none(&cache, &counter, 0).await,
            None,
            "{backend}"
        );
        assert_eq!(calls(&counter), 1, "{backend}: `None` is cached");
        assert_eq!(
            find_caching_none(&cache, &counter, 2).await.as_deref(),
            Some("item 2"),
            "{backend}"
        );
        assert_eq!(calls(&counter), 2, "{backend}");
    }
}

/// Deliberately not serializable: without `cache_err`, `E` needs nothing.
#[derive(Debug, PartialEq)]
pub struct DbError(String);

#[cached(cache = cache, skip = [cache, calls], key = "row:<id>")]
async fn row(cache: &Cache, calls: &AtomicUsize, id: u64) -> Result<String, DbError> {
    calls.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        return Err(DbError("no row 0".to_owned()));
    }
    let doubled: u64 = (id * 2)
        .to_string()
        .parse()
        .map_err(|_| DbError("parse".to_owned()))?;
    Ok(format!("row {doubled}"))
}

#[tokio::test]
async fn result_caches_ok_and_not_err() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        assert_eq!(
            row(&cache, &counter, 0).await,
            Err(DbError("no row 0".to_owned()))
        );
        assert_eq!(
            row(&cache, &counter, 0).await,
            Err(DbError("no row 0".to_owned()))
        );
        assert_eq!(calls(&counter), 2, "{backend}: `Err` is not cached");
        assert_eq!(
            row(&cache, &counter, 2).await,
            Ok("row 4".to_owned()),
            "{backend}"
        );
        assert_eq!(
            row(&cache, &counter, 2).await,
            Ok("row 4".to_owned()),
            "{backend}"
        );
        assert_eq!(calls(&counter), 3, "{backend}: `Ok` is cached");
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum LookupError {
    NotFound(u64),
}

#[cached(cache = cache, skip = [cache, calls], key = "lookup:<id>", cache_err)]
async fn lookup(cache: &Cache, calls: &AtomicUsize, id: u64) -> Result<u64, LookupError> {
    calls.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        Err(LookupError::NotFound(id))
    } else {
        Ok(id)
    }
}

#[tokio::test]
async fn cache_err_caches_err() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        assert_eq!(
            lookup(&cache, &counter, 0).await,
            Err(LookupError::NotFound(0))
        );
        assert_eq!(
            lookup(&cache, &counter, 0).await,
            Err(LookupError::NotFound(0))
        );
        assert_eq!(calls(&counter), 1, "{backend}: `Err` is cached");
        assert_eq!(lookup(&cache, &counter, 3).await, Ok(3), "{backend}");
        assert_eq!(lookup(&cache, &counter, 3).await, Ok(3), "{backend}");
        assert_eq!(calls(&counter), 2, "{backend}");
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub id: u64,
    pub name: String,
    pub tags: Vec<String>,
}

#[cached(cache = cache, skip = [cache, calls], key = "profile:<id>")]
async fn profile(cache: &Cache, calls: &AtomicUsize, id: u64) -> Profile {
    calls.fetch_add(1, Ordering::SeqCst);
    Profile {
        id,
        name: format!("user {id}"),
        tags: vec!["a".to_owned(), "b".to_owned()],
    }
}

#[tokio::test]
async fn structs_round_trip_through_the_cache() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        let first = profile(&cache, &counter, 9).await;
        let second = profile(&cache, &counter, 9).await;
        assert_eq!(first, second, "{backend}");
        assert_eq!(second.tags, ["a", "b"], "{backend}");
        assert_eq!(calls(&counter), 1, "{backend}");
    }
}

// ---- methods and generics -----------------------------------------------------------------

struct Repo {
    cache: Cache,
    tenant: String,
    calls: AtomicUsize,
}

impl Repo {
    fn new(cache: &Cache, tenant: &str) -> Repo {
        Repo {
            cache: cache.clone(),
            tenant: tenant.to_owned(),
            calls: AtomicUsize::new(0),
        }
    }

    /// The receiver is not part of the key: repositories sharing a cache share
    /// this value.
    #[cached(cache = self.cache, key = "name:<id>")]
    async fn name(&self, id: u64) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("{}/{id}", self.tenant)
    }

    /// Named in the template, a field of the receiver is part of the key.
    #[cached(cache = self.cache, key = "tenant:<self.tenant>:name:<id>")]
    async fn tenant_name(&self, id: u64) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("{}/{id}", self.tenant)
    }
}

#[tokio::test]
async fn methods_with_self() {
    for (backend, cache) in tests::backends().await {
        let acme = Repo::new(&cache, "acme");
        let globex = Repo::new(&cache, "globex");

        assert_eq!(acme.name(1).await, "acme/1", "{backend}");
        assert_eq!(acme.name(1).await, "acme/1", "{backend}");
        assert_eq!(calls(&acme.calls), 1, "{backend}");
        assert_eq!(
            globex.name(1).await,
            "acme/1",
            "{backend}: `self` is not in the key"
        );
        assert_eq!(calls(&globex.calls), 0, "{backend}");

        assert_eq!(acme.tenant_name(1).await, "acme/1", "{backend}");
        assert_eq!(globex.tenant_name(1).await, "globex/1", "{backend}");
        assert_eq!(globex.tenant_name(1).await, "globex/1", "{backend}");
        assert_eq!(calls(&globex.calls), 1, "{backend}");

        assert!(
            acme.name_invalidate(1).await.expect("invalidate"),
            "{backend}"
        );
        assert_eq!(
            globex.name(1).await,
            "globex/1",
            "{backend}: recomputed by globex"
        );
        assert_eq!(acme.name_uncached(2).await, "acme/2", "{backend}");
        assert_eq!(acme.tenant_name_refresh(1).await, "acme/1", "{backend}");
        assert_eq!(calls(&acme.calls), 4, "{backend}");
    }
}

#[cached(cache = cache, skip = [cache, calls])]
async fn default_of<T>(cache: &Cache, calls: &AtomicUsize, id: u64) -> T
where
    T: Default + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let _ = id;
    calls.fetch_add(1, Ordering::SeqCst);
    T::default()
}

#[cached(cache = cache, skip = [cache, calls], key = "show:<value>")]
async fn show<V>(cache: &Cache, calls: &AtomicUsize, value: V) -> String
where
    V: cache_core::KeyPart + std::fmt::Debug + Send + Sync,
{
    calls.fetch_add(1, Ordering::SeqCst);
    format!("{value:?}")
}

#[tokio::test]
async fn generic_functions() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        let s: String = default_of(&cache, &counter, 1).await;
        let n: u64 = default_of(&cache, &counter, 1).await;
        let v: Vec<u8> = default_of(&cache, &counter, 1).await;
        assert_eq!((s.as_str(), n, v.len()), ("", 0, 0), "{backend}");
        assert_eq!(calls(&counter), 3, "{backend}: each type has its own key");
        let _: String = default_of(&cache, &counter, 1).await;
        let _: u64 = default_of(&cache, &counter, 1).await;
        assert_eq!(calls(&counter), 3, "{backend}: and each is cached");

        assert_eq!(show(&cache, &counter, 7u32).await, "7", "{backend}");
        assert_eq!(show(&cache, &counter, "x").await, "\"x\"", "{backend}");
        assert_eq!(show(&cache, &counter, 7u32).await, "7", "{backend}");
        assert_eq!(calls(&counter), 5, "{backend}");
    }
}

// ---- cache_evict and cache_put ------------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls], key = "user:<user_id>", tags = ["org:<org_id>"])]
async fn get_user(
    cache: &Cache,
    calls: &AtomicUsize,
    org_id: u64,
    user_id: u64,
) -> Result<String, DbError> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(format!("user {user_id} of org {org_id}"))
}

#[cache_evict(cache = cache, key = "user:<user_id>")]
async fn delete_user(cache: &Cache, user_id: u64, fail: bool) -> Result<(), DbError> {
    if fail {
        return Err(DbError("delete failed".to_owned()));
    }
    let _ = user_id;
    Ok(())
}

#[cache_evict(cache = cache, tags = ["org:<org_id>"])]
async fn rename_org(cache: &Cache, org_id: u64) {
    let _ = org_id;
}

#[tokio::test]
async fn cache_evict_removes_the_key_after_success_only() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        get_user(&cache, &counter, 1, 10).await.expect("user");
        get_user(&cache, &counter, 1, 11).await.expect("user");
        assert_eq!(calls(&counter), 2, "{backend}");

        let failed = delete_user(&cache, 10, true).await;
        assert_eq!(
            failed,
            Err(DbError("delete failed".to_owned())),
            "{backend}"
        );
        get_user(&cache, &counter, 1, 10).await.expect("user");
        assert_eq!(
            calls(&counter),
            2,
            "{backend}: a failed call evicts nothing"
        );

        delete_user(&cache, 10, false).await.expect("deleted");
        get_user(&cache, &counter, 1, 10).await.expect("user");
        assert_eq!(calls(&counter), 3, "{backend}: evicted, computed again");
        get_user(&cache, &counter, 1, 11).await.expect("user");
        assert_eq!(calls(&counter), 3, "{backend}: other users stay cached");
    }
}

#[tokio::test]
async fn cache_evict_invalidates_tags() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        get_user(&cache, &counter, 1, 10).await.expect("user");
        get_user(&cache, &counter, 1, 11).await.expect("user");
        get_user(&cache, &counter, 2, 20).await.expect("user");
        assert_eq!(calls(&counter), 3, "{backend}");

        rename_org(&cache, 1).await;
        get_user(&cache, &counter, 1, 10).await.expect("user");
        get_user(&cache, &counter, 1, 11).await.expect("user");
        assert_eq!(
            calls(&counter),
            5,
            "{backend}: every entry tagged `org:1` is invalid"
        );
        get_user(&cache, &counter, 2, 20).await.expect("user");
        assert_eq!(calls(&counter), 5, "{backend}: `org:2` is untouched");
    }
}

#[cache_put(cache = cache, key = "user:<user_id>", tags = ["org:<org_id>"])]
async fn save_user(
    cache: &Cache,
    org_id: u64,
    user_id: u64,
    name: &str,
) -> Result<String, DbError> {
    if name.is_empty() {
        return Err(DbError("empty name".to_owned()));
    }
    let _ = (org_id, user_id);
    Ok(name.to_owned())
}

#[tokio::test]
async fn cache_put_writes_through() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        let saved = save_user(&cache, 1, 10, "renamed").await;
        assert_eq!(saved, Ok("renamed".to_owned()), "{backend}");
        let read = get_user(&cache, &counter, 1, 10).await;
        assert_eq!(read, Ok("renamed".to_owned()), "{backend}: written through");
        assert_eq!(calls(&counter), 0, "{backend}");

        assert!(save_user(&cache, 1, 10, "").await.is_err(), "{backend}");
        let read = get_user(&cache, &counter, 1, 10).await;
        assert_eq!(
            read,
            Ok("renamed".to_owned()),
            "{backend}: an `Err` is not written"
        );

        // The value was stored with its tag, so invalidating the tag drops it.
        rename_org(&cache, 1).await;
        let read = get_user(&cache, &counter, 1, 10).await;
        assert_eq!(read, Ok("user 10 of org 1".to_owned()), "{backend}");
        assert_eq!(calls(&counter), 1, "{backend}");
    }
}

#[tokio::test]
async fn refresh_stores_the_value_with_its_tags() {
    for (backend, cache) in tests::backends().await {
        let counter = AtomicUsize::new(0);
        let refreshed = get_user_refresh(&cache, &counter, 3, 30).await;
        assert_eq!(refreshed, Ok("user 30 of org 3".to_owned()), "{backend}");
        get_user(&cache, &counter, 3, 30).await.expect("user");
        assert_eq!(calls(&counter), 1, "{backend}: the refresh stored it");

        // Twice through the same call site: each call renders its own tags.
        get_user_refresh(&cache, &counter, 3, 30)
            .await
            .expect("user");
        assert_eq!(calls(&counter), 2, "{backend}");
        rename_org(&cache, 3).await;
        get_user(&cache, &counter, 3, 30).await.expect("user");
        assert_eq!(
            calls(&counter),
            3,
            "{backend}: the refreshed entry carries `org:3`"
        );
        get_user(&cache, &counter, 3, 30).await.expect("user");
        assert_eq!(calls(&counter), 3, "{backend}: and is cached again");
    }
}

// ---- the global cache ---------------------------------------------------------------------

#[cached(key = "macros-global:<n>", skip = [calls])]
async fn global_square(calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[tokio::test]
async fn without_cache_the_installed_global_cache_is_used() {
    // Another test may have installed one first; either way one is installed.
    let _ = cache_core::install(tests::memory_cache());
    let global = cache_core::installed().expect("a global cache is installed");
    let n = 12_345;
    let counter = AtomicUsize::new(0);
    assert_eq!(global_square(&counter, n).await, n * n);
    assert_eq!(global_square(&counter, n).await, n * n);
    assert_eq!(calls(&counter), 1);
    let key = format!("macros-global:{n}");
    assert!(global.exists(&key).await.expect("exists"));
    assert!(global_square_invalidate(&counter, n)
        .await
        .expect("invalidate"));
    assert!(!global.exists(&key).await.expect("exists"));
}

// ---- failures of the cache ----------------------------------------------------------------

#[tokio::test]
async fn a_cached_function_never_fails_because_of_the_cache() {
    let mut server = tests::RedisServer::start();
    let cache = tests::redis_cache_at(&server.url());
    let counter = AtomicUsize::new(0);
    assert_eq!(square(&cache, &counter, 3).await, 9);
    assert_eq!(square(&cache, &counter, 3).await, 9);
    assert_eq!(calls(&counter), 1);

    server.kill();
    // Unreachable: every call computes, and the result is the function's.
    assert_eq!(square(&cache, &counter, 3).await, 9);
    assert_eq!(square(&cache, &counter, 4).await, 16);
    assert_eq!(calls(&counter), 3);
    assert_eq!(row(&cache, &counter, 2).await, Ok("row 4".to_owned()));
    assert!(
        delete_user(&cache, 10, false).await.is_ok(),
        "evicting fails silently"
    );
    assert_eq!(
        save_user(&cache, 1, 10, "x").await,
        Ok("x".to_owned()),
        "writing through fails silently"
    );
    // The companions that only talk to the cache report the failure.
    assert!(square_invalidate(&cache, &counter, 3).await.is_err());

    server.restart();
    // Served again once the server is back (it restarted empty, or kept its data).
    assert_eq!(square(&cache, &counter, 5).await, 25);
    assert_eq!(square(&cache, &counter, 5).await, 25);
    assert_eq!(calls(&counter), 5);
}

/// A `#[cached]` call's future is built and moved whole by every caller, hits included: an
/// L1 hit that finishes at its first poll still copies all of it. The rare paths (a replay
/// before a read, a pool checkout, a read of tag versions not known yet, the miss path) are
/// boxed so that they stay out of it; one awaited inline again would take it back to the
/// ~4 KB it was (4,024 bytes in this profile, 4,112 in release, before they were boxed).
#[test]
fn a_cached_call_builds_a_small_future() {
    let cache = Cache::in_memory();
    let counter = AtomicUsize::new(0);
    let call = square(&cache, &counter, 3);
    let size = std::mem::size_of_val(&call);
    drop(call);
    assert!(size <= 2560, "a #[cached] call's future is {size} bytes");
}
