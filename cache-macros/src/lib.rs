//! Procedural macros of `cache_core`: `#[cached]`, `#[cached_many]`, `#[cache_evict]`
//! and `#[cache_put]`.
//!
//! Depend on `cache_core`, which re-exports them; the generated code calls
//! `cache_core::__private` and nothing else.
//!
//! The work is split the way `thiserror-impl` splits it: `attr` parses the
//! attribute, `template` parses key templates, `validate` checks both
//! against the function, and `expand` writes the glue. Every error of one
//! attribute is reported at once, and the function is still emitted unchanged
//! next to the errors.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attr;
mod expand;
mod suggest;
mod template;
mod validate;

use std::fmt::Display;

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::ToTokens;

use crate::attr::Kind;

/// Caches the result of an `async fn`, in Redis or in memory.
///
/// ```
/// # use cache_core::cached;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct User;
/// # #[derive(Debug)] struct DbError;
/// #[cached(key = "user:<user_id>", ttl = "5m", tags = ["org:<org_id>"])]
/// async fn get_user(org_id: u64, user_id: u64) -> Result<User, DbError> {
///     // ... the expensive part ...
/// #   let _ = org_id;
/// #   Ok(User)
/// }
/// ```
///
/// The first call with given arguments runs the body and stores its result;
/// later calls with the same key return the stored value until the time to
/// live runs out or the entry is invalidated. A cached function never fails
/// because of the cache: if Redis is unreachable or a stored value cannot be
/// decoded, the body runs and its result is returned.
///
/// # Attributes
///
/// | attribute | meaning |
/// |---|---|
/// | `key = "user:<user_id>"` | key template (below); default: the function's path and every argument not in `skip` |
/// | `ttl = 60`, `ttl = "5m"` | time to live, in seconds or as a duration (`"30s"`, `"1h 30m"`), checked at compile time; default: the cache's |
/// | `tags = ["org:<org_id>"]` | tag templates; invalidating a tag invalidates every entry stored with it |
/// | `cache = expr` | the `Cache` to use: a static, `self.cache`, a parameter in `skip`; default: the global cache installed with `cache_core::install` |
/// | `skip = [conn, ...]` | parameters deliberately left out of the key |
/// | `cache_none` | also cache `None` (by default only `Some` is cached) |
/// | `cache_err` | also cache `Err` (by default only `Ok` is cached; requires `E: Serialize + DeserializeOwned`) |
/// | `crate = "path"` | where `cache_core` is, for crates that re-export it |
/// | `stale = "1h"` | keep a value this long past its TTL: served at once while one refresh runs, and whenever the refresh fails (fail-safe) |
/// | `refresh = "early"` | probabilistic early refresh (XFetch) ahead of expiry |
/// | `lock = "local"` | stampede protection: `"local"` (default, single-flight in the process), `"distributed"` (plus a fill lock in Redis across processes) or `"none"` |
/// | `soft_timeout = "100ms"` | with `stale`: how long a caller waits for a refresh before it is served the stale value |
/// | `hard_timeout = "2s"` | bound on any wait for the body; `Result<T, E>` with `E: From<cache_core::Error>` only (a timeout is an `Err`) |
///
/// With `stale`, `soft_timeout`, `hard_timeout` or `refresh`, a function whose
/// parameters are all owned (no reference, lifetime, generic or receiver) finishes its
/// refreshes in a task of its own, so its body must be `Send`; other functions are driven by
/// their caller (see the guide, `cache_core::guide::stampedes_and_staleness`).
///
/// # Key templates
///
/// `<name>` inserts a parameter, `<name.field.field>` a field of one, and
/// `<self.field>` a field of the receiver; everything else is literal, so
/// `"{tenant:<tenant_id>}:user:<user_id>"` keeps a Redis Cluster hash tag.
/// `<<` and `>>` write a literal `<` and `>`. Each inserted value goes through
/// `cache_core::KeyPart`, which escapes separators, so different arguments
/// never render to the same key. Two placeholders must be separated by
/// literal text.
///
/// Every parameter must appear in the key or in `skip`; otherwise two calls
/// differing only in it would share a value, which is a compile error.
///
/// # Return types
///
/// `T` is always cached; `Option<T>` only for `Some` unless `cache_none`;
/// `Result<T, E>` only for `Ok` unless `cache_err`. The cached value type must
/// be `Serialize + DeserializeOwned + Send + Sync + 'static`; `E` needs nothing
/// without `cache_err`.
///
/// # Companions
///
/// Beside `get_user`, the macro generates, with the same visibility and
/// arguments:
///
/// - `get_user_uncached(..)`: the original body, bypassing the cache;
/// - `get_user_invalidate(..) -> Result<bool, cache_core::Error>`: removes the
///   entry for these arguments; a call computing that entry when it lands
///   returns its value but does not store it (see `Cache::delete`);
/// - `get_user_refresh(..)`: computes, stores and returns a fresh value.
///
/// # Methods and generics
///
/// Inherent methods taking `&self` are supported; the receiver is not part of
/// the key unless the template names it (`<self.tenant>`), and the companions
/// are methods too. `&mut self` works with a cache that is not borrowed from
/// `self` (the body needs `self` while the cache is in use). `self` by value
/// is rejected.
///
/// Generic functions work; the default key includes the names of the type
/// parameters (`std::any::type_name`), and of `Self` for methods, so
/// `load::<User>(1)` and `load::<Org>(1)` have different keys. Those names may
/// change with the compiler version, which only costs misses after an upgrade.
///
/// Methods of trait implementations cannot be annotated, since the companions
/// would not be members of the trait. An associated function without a
/// receiver is recognised as one only when its signature mentions `Self`;
/// otherwise it is treated as a free function, and its companions are called
/// without `Self::`.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Cached, args.into(), item.into()).into()
}

/// Invalidates cached entries after the annotated `async fn` succeeds.
///
/// ```
/// # use cache_core::cache_evict;
/// # #[derive(Debug)] struct DbError;
/// #[cache_evict(key = "user:<user_id>", tags = ["org:<org_id>"])]
/// async fn delete_user(org_id: u64, user_id: u64) -> Result<(), DbError> {
///     // ... delete it from the database ...
/// #   let _ = (org_id, user_id);
/// #   Ok(())
/// }
/// ```
///
/// The entry of `key` is deleted and every tag in `tags` is invalidated once
/// the function returns: for a `Result`, only when it is `Ok`; otherwise
/// always. The function's result is returned unchanged, and a failure of the
/// cache is logged and counted, never returned.
///
/// Attributes: `key` and `tags` (at least one), `cache` and `crate`, as for
/// [`cached`](macro@cached).
#[proc_macro_attribute]
pub fn cache_evict(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Evict, args.into(), item.into()).into()
}

/// Batch get-or-compute: `#[cached]` over a collection of ids. The key template names the
/// collection parameter (`Vec<K>`, `&[K]`, `HashSet<K>` or `BTreeSet<K>`), which stands for
/// each of its elements; the body runs once, with the same type holding only the ids not
/// cached, and returns `HashMap<K, V>` or `Result<HashMap<K, V>, E>`.
///
/// ```
/// # use std::collections::HashMap;
/// # use cache_core::cached_many;
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User { id: u64 }
/// # #[derive(Debug)] struct DbError;
/// #[cached_many(key = "user:<ids>", ttl = "5m", tags = ["org:<org_id>"])]
/// async fn users(org_id: u64, ids: Vec<u64>) -> Result<HashMap<u64, User>, DbError> {
///     // ... one query for the ids not cached ...
/// #   let _ = org_id;
/// #   Ok(ids.into_iter().map(|id| (id, User { id })).collect())
/// }
/// ```
///
/// Ids the body does not return are absent from the map, and not cached unless
/// `cache_absent = "1m"` is given. Other parameters take part in the key (or the tags, or
/// `skip`) as for [`cached`](macro@cached). Attributes: `key` (required), `ttl`, `tags`,
/// `cache`, `skip`, `crate`, `stale`, `lock`, `cache_absent`. Companions:
/// `<name>_uncached` (the body) and `<name>_invalidate` (same arguments: removes the entries
/// of those ids, returns how many existed).
#[proc_macro_attribute]
pub fn cached_many(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::CachedMany, args.into(), item.into()).into()
}

/// Stores the result of the annotated `async fn` under a key (write-through).
///
/// ```
/// # use cache_core::cache_put;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct User { id: u64 }
/// # #[derive(Debug)] struct DbError;
/// #[cache_put(key = "user:<user.id>", ttl = "5m")]
/// async fn save_user(user: User) -> Result<User, DbError> {
///     // ... write it to the database ...
///     Ok(user)
/// }
/// ```
///
/// Use the key template of the `#[cached]` function whose value this updates,
/// with the same `cache_none` / `cache_err` choices, so that it reads what was
/// written. What is cacheable follows the return type as for
/// [`cached`](macro@cached); the function's result is returned unchanged.
///
/// Attributes: `key` (required), `ttl`, `tags`, `cache`, `cache_none`,
/// `cache_err` and `crate`, as for [`cached`](macro@cached).
#[proc_macro_attribute]
pub fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Put, args.into(), item.into()).into()
}

/// Errors of one attribute, gathered so that they are all reported at once.
#[derive(Debug, Default)]
struct Errors {
    first: Option<syn::Error>,
}

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.first {
            Some(first) => first.combine(error),
            None => self.first = Some(error),
        }
    }

    fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// The error spans all of `tokens`, as far as the compiler allows.
    fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    fn finish(self) -> Result<(), syn::Error> {
        match self.first {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
