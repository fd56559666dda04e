//! The service: a request's way through the cache (RFC 9111 §4 for a shared cache), the
//! handler's response made into a stored entry (§3), and `Cache-Status` (RFC 9211).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, CONNECTION, ETAG, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;

use super::body::{BoxError, ResponseBody};
use super::cache_control::{self, Directives, Verdict};
use super::stored::{Entry, StoredResponse, etag_of, none_match};
use super::{Config, key};
use crate::base::codec::now_ms;
use crate::pipeline::glue::Mode;
use crate::pipeline::{Call, Pipeline, Policy, Spawn};

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The service [`ResponseCacheLayer`](super::ResponseCacheLayer) wraps around another.
///
/// ```
/// use tower::Layer;
/// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory());
/// let service = layer.layer(tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
/// }));
/// # let _ = service;
/// ```
pub struct ResponseCacheService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for ResponseCacheService<S> {
    fn clone(&self) -> Self {
        ResponseCacheService {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S> std::fmt::Debug for ResponseCacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCacheService")
            .finish_non_exhaustive()
    }
}

impl<S> ResponseCacheService<S> {
    pub(super) fn new(inner: S, config: Arc<Config>) -> Self {
        ResponseCacheService { inner, config }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for ResponseCacheService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResponseBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The service made ready is the one that serves this request (tower's rule); a clone
        // stays behind for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(respond(self.config.clone(), inner, req))
    }
}

// ---- what the pipeline stores and hands back -------------------------------------------------

/// What a computation (the handler's call) or the cache gives back.
enum Reply<E> {
    /// From the cache: a hit, a stale entry, or what a concurrent request's call stored.
    Cached(Bytes),
    /// The handler's response, just received.
    Fresh(Box<Fresh>),
    /// Only something to store (a response under its variant key).
    Store(Bytes, (Duration, Option<Duration>)),
    Failed(Shared<E>),
}

/// The pipeline may hold a reference to a reply across an `.await` of a task that moves
/// between threads: a reply must be `Sync`, which a body or a handler's error need not be.
/// Only ever taken out whole, so the lock is never contended.
struct Shared<T>(Mutex<T>);

impl<T> Shared<T> {
    fn new(value: T) -> Self {
        Shared(Mutex::new(value))
    }
    fn into_inner(self) -> T {
        self.0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Fresh {
    /// What this key keeps (and requests waiting on it share); `None`: not stored.
    store: Option<Bytes>,
    lifetime: Option<(Duration, Option<Duration>)>,
    /// The response, stored under its variant key when `store` is the list of headers it
    /// varies on.
    variant: Option<(Vec<String>, Bytes)>,
    response: Shared<Response<ResponseBody>>,
    /// Why it was not stored.
    detail: Option<&'static str>,
}

/// The pipeline's view of a [`Reply`]: the entry's bytes are stored raw, for as long as the
/// response said.
struct HttpMode<E>(PhantomData<fn() -> E>);

impl<E> Clone for HttpMode<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for HttpMode<E> {}

impl<E: Send + 'static> Mode<Reply<E>> for HttpMode<E> {
    type Stored = Bytes;
    fn stored<'a>(&self, out: &'a Reply<E>) -> Option<&'a Bytes> {
        match out {
            Reply::Fresh(fresh) => fresh.store.as_ref(),
            Reply::Store(bytes, _) => Some(bytes),
            _ => None,
        }
    }
    fn restore(&self, stored: Bytes) -> Reply<E> {
        Reply::Cached(stored)
    }
    /// The L1 keeps the entry's bytes as they are (a copy is a reference count): its hits
    /// read neither the envelope nor a copy of the payload.
    fn local_clone(&self, stored: &Bytes) -> Option<Bytes> {
        Some(stored.clone())
    }
    fn succeeded(&self, out: &Reply<E>) -> bool {
        !matches!(out, Reply::Failed(_))
    }
    fn lifetime(&self, out: &Reply<E>) -> Option<(Duration, Option<Duration>)> {
        match out {
            Reply::Fresh(fresh) => fresh.lifetime,
            Reply::Store(_, lifetime) => Some(*lifetime),
            _ => None,
        }
    }
}

// ---- the request's way -----------------------------------------------------------------------

/// The request and the service that answers it, taken by whichever step calls the handler
/// (at most one does).
type Slot<S, B> = Arc<Mutex<Pending<S, B>>>;

struct Pending<S, B> {
    call: Option<(S, Request<B>)>,
    /// The request's fields, kept by the step that took the request: a variant's key is made
    /// of them. Copied only then, on the way to the handler, never on a hit.
    headers: Option<HeaderMap>,
}

fn slot<S, B>(inner: S, req: Request<B>) -> Slot<S, B> {
    Arc::new(Mutex::new(Pending {
        call: Some((inner, req)),
        headers: None,
    }))
}

/// The slot, whoever panicked while holding it (nothing there is left half-changed).
fn pending<S, B>(slot: &Slot<S, B>) -> std::sync::MutexGuard<'_, Pending<S, B>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The full key of the variant of `primary` that this request's fields select.
fn variant_key<S, B>(
    pipeline: &Pipeline,
    primary: &crate::base::key::KeyBuf,
    names: &[String],
    slot: &Slot<S, B>,
) -> String {
    let pending = pending(slot);
    let none = HeaderMap::new();
    let headers = match (&pending.call, &pending.headers) {
        (Some((_, req)), _) => req.headers(),
        (None, Some(headers)) => headers,
        (None, None) => &none,
    };
    pipeline.full_key_of(key::variant(primary.clone(), names, headers))
}

/// Which key a computation fills: the resource's, or one of its variants'.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Primary,
    Variant,
}

/// What the request said that the way back needs.
struct Asked {
    head: bool,
    authorized: bool,
    conditions: HeaderMap,
}

async fn respond<S, ReqB, ResB>(
    config: Arc<Config>,
    inner: S,
    req: Request<ReqB>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let status = Status::new(&config.status_name);
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return Box::pin(forward(inner, req, status.forward("method"))).await;
    }
    let request_cc = Directives::of(req.headers());
    if request_cc.no_store {
        return Box::pin(forward(inner, req, status.forward("bypass"))).await;
    }
    // Borrowed from the layer's configuration, which this future holds: no handle is cloned
    // per request.
    let Some(pipeline) = crate::cache::explicit(&config.cache) else {
        return Box::pin(forward(inner, req, status.forward("bypass"))).await;
    };
    let (mut parts, body) = req.into_parts();
    // The handler is asked for the full response, which the cache can store; the request's
    // own validators are answered here (`If-None-Match`), from what it returns.
    let mut conditions = HeaderMap::new();
    if parts.headers.contains_key(IF_NONE_MATCH) {
        for value in parts.headers.get_all(IF_NONE_MATCH) {
            conditions.append(IF_NONE_MATCH, value.clone());
        }
        parts.headers.remove(IF_NONE_MATCH);
    }
    parts.headers.remove(IF_MODIFIED_SINCE);
    let asked = Asked {
        head: method == Method::HEAD,
        authorized: cache_control::authorized(&parts.headers),
        conditions,
    };
    let tags = match &config.tags {
        Some(tags) => tags(&parts),
        None => Vec::new(),
    };
    let primary = key::primary(&parts.method, &parts.uri);
    let slot: Slot<S, ReqB> = slot(inner, Request::from_parts(parts, body));
    let policy = Policy {
        // The stale window is the entry's own (written from the response); `Some` here only
        // lets reads serve it.
        stale: Some(config.defaults.max_ttl),
        lock: config.lock,
        ..Policy::DEFAULT
    };
    let mode = HttpMode::<S::Error>(PhantomData);
    let key = pipeline.full_key_of(primary.clone());
    let way = Way {
        pipeline,
        policy: &policy,
        tags: &tags,
        primary: &primary,
        slot: &slot,
        config: &config,
        asked: &asked,
    };

    if request_cc.revalidates() {
        // Request `no-cache`: the handler answers, and its response replaces the stored one.
        let compute = handler_on_miss(
            slot.clone(),
            Level::Primary,
            config.clone(),
            asked.authorized,
        );
        let mut tag_keys = tags.clone();
        let reply = Box::pin(pipeline.compute_and_store(
            call(pipeline, &key, &mut tag_keys, &policy),
            mode,
            compute,
        ))
        .await;
        return way.finish(reply, status.forward("request")).await;
    }
    let reply = way.get_or_compute(&key, Level::Primary).await;
    let Reply::Cached(bytes) = reply else {
        return way.serve(reply, status.forward("uri-miss")).await;
    };
    // Decoded once: the same entry says whether the resource varies and, when it does not,
    // is the answer.
    let names = match Entry::decode(&bytes) {
        Some(Entry::Variants(names)) => names,
        found => {
            return way
                .answer_from_entry(found, status.forward("uri-miss"))
                .await;
        }
    };
    let key = variant_key(pipeline, &primary, &names, &slot);
    let reply = way.get_or_compute(&key, Level::Variant).await;
    way.serve(reply, status.forward("vary-miss")).await
}

/// What the steps after a lookup share: the request's key, tags and slot, and how it asked.
struct Way<'a, S, B> {
    pipeline: &'a Pipeline,
    policy: &'a Policy,
    tags: &'a [String],
    primary: &'a crate::base::key::KeyBuf,
    slot: &'a Slot<S, B>,
    config: &'a Arc<Config>,
    asked: &'a Asked,
}

impl<S, ReqB, ResB> Way<'_, S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    /// Get-or-compute of the entry under `key` (the resource's, or a variant's): what the
    /// cache holds, or the handler's reply, stored when it may be.
    async fn get_or_compute(&self, key: &str, level: Level) -> Reply<S::Error> {
        let compute = handler_on_miss(
            self.slot.clone(),
            level,
            self.config.clone(),
            self.asked.authorized,
        );
        let mut tag_keys = self.tags.to_vec();
        self.pipeline
            .compute_with(
                call(self.pipeline, key, &mut tag_keys, self.policy),
                HttpMode::<S::Error>(PhantomData),
                Spawn,
                compute,
            )
            .await
    }

    /// A reply from a lookup: a cached entry is served when it may answer this request, else
    /// the handler answers.
    async fn serve(
        &self,
        reply: Reply<S::Error>,
        miss: Status<'_>,
    ) -> Result<Response<ResponseBody>, S::Error> {
        match reply {
            Reply::Cached(bytes) => self.answer_from_entry(Entry::decode(&bytes), miss).await,
            reply => self.finish(reply, miss).await,
        }
    }

    /// A decoded entry from the cache: the answer when it may answer this request, else the
    /// handler answers.
    async fn answer_from_entry(
        &self,
        found: Option<Entry>,
        miss: Status<'_>,
    ) -> Result<Response<ResponseBody>, S::Error> {
        let asked = self.asked;
        let detail = match found {
            Some(Entry::Response(stored)) if !asked.authorized || stored.shareable => {
                return Ok(conditional(from_stored(stored, asked.head, miss), asked));
            }
            // A response that may not answer a request with credentials (RFC 9111 §3.5), or
            // bytes this layer did not write: the handler answers, and nothing is stored.
            Some(_) => "authorization",
            None => "unreadable",
        };
        let reply = Box::pin(call_handler(
            self.slot.clone(),
            Level::Variant,
            self.config.clone(),
            asked.authorized,
        ))
        .await;
        match reply {
            Reply::Fresh(fresh) => Ok(conditional(
                with_status(
                    fresh.response.into_inner(),
                    miss.forward("request").not_stored(detail),
                ),
                asked,
            )),
            Reply::Failed(e) => Err(e.into_inner()),
            Reply::Cached(_) | Reply::Store(..) => Ok(gone(miss)),
        }
    }

    /// The handler's response, just received: stored under its variant key too when it
    /// varies, then answered.
    async fn finish(
        &self,
        reply: Reply<S::Error>,
        status: Status<'_>,
    ) -> Result<Response<ResponseBody>, S::Error> {
        let asked = self.asked;
        match reply {
            Reply::Fresh(fresh) => {
                if let (Some((names, entry)), Some(lifetime)) = (fresh.variant, fresh.lifetime) {
                    let key = variant_key(self.pipeline, self.primary, &names, self.slot);
                    let mut tag_keys = self.tags.to_vec();
                    Box::pin(self.pipeline.compute_and_store(
                        call(self.pipeline, &key, &mut tag_keys, self.policy),
                        HttpMode::<S::Error>(PhantomData),
                        std::future::ready(Reply::Store(entry, lifetime)),
                    ))
                    .await;
                }
                let status = match fresh.detail {
                    None => status.stored(),
                    Some(detail) => status.not_stored(detail),
                };
                Ok(conditional(
                    with_status(fresh.response.into_inner(), status),
                    asked,
                ))
            }
            Reply::Cached(bytes) => match Entry::decode(&bytes) {
                Some(Entry::Response(stored)) => {
                    Ok(conditional(from_stored(stored, asked.head, status), asked))
                }
                _ => Ok(gone(status)),
            },
            Reply::Failed(e) => Err(e.into_inner()),
            Reply::Store(..) => Ok(gone(status)),
        }
    }
}

/// [`call_handler`] as a lookup's computation. Every request builds one and a hit drops it
/// unrun, so it holds only its arguments: the handler's future (the inner service's, the
/// body's collection) is boxed when it runs, and stays out of the future of every request.
/// (The steps that run only on a miss are boxed for the same reason.)
async fn handler_on_miss<S, ReqB, ResB>(
    slot: Slot<S, ReqB>,
    level: Level,
    config: Arc<Config>,
    authorized: bool,
) -> Reply<S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    Box::pin(call_handler(slot, level, config, authorized)).await
}

/// Calls the handler with the request in `slot` and makes its response a [`Reply`].
async fn call_handler<S, ReqB, ResB>(
    slot: Slot<S, ReqB>,
    level: Level,
    config: Arc<Config>,
    authorized: bool,
) -> Reply<S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    // Taken when the computation runs, not when it is made: a hit drops it unrun, and
    // the request stays for the step after.
    let taken = {
        let mut pending = pending(&slot);
        let taken = pending.call.take();
        if let Some((_, req)) = &taken {
            pending.headers = Some(req.headers().clone());
        }
        taken
    };
    let Some((mut inner, req)) = taken else {
        // Every path takes the request once; this is a bug's answer, not a panic.
        return Reply::Fresh(Box::new(Fresh {
            store: None,
            lifetime: None,
            variant: None,
            response: Shared::new(bad_gateway()),
            detail: Some("handler-not-reached"),
        }));
    };
    match inner.call(req).await {
        Ok(response) => Reply::Fresh(Box::new(
            classify(response, level, &config, authorized).await,
        )),
        Err(e) => Reply::Failed(Shared::new(e)),
    }
}

/// RFC 9111 §3: what of the handler's response is stored, and for how long.
async fn classify<B>(
    response: Response<B>,
    level: Level,
    config: &Config,
    authorized: bool,
) -> Fresh
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let passed = |parts, body, detail| Fresh {
        store: None,
        lifetime: None,
        variant: None,
        response: Shared::new(Response::from_parts(parts, ResponseBody::wrap(body))),
        detail: Some(detail),
    };
    if cache_control::is_error(parts.status) {
        // Not stored; with a stale entry inside its window, the pipeline serves that instead
        // (stale-if-error).
        return passed(parts, body, "error");
    }
    let size = body.size_hint();
    match size.exact() {
        None => return passed(parts, body, "streaming"),
        Some(n) if n > config.max_body_size as u64 => return passed(parts, body, "too-large"),
        Some(_) => {}
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Fresh {
                store: None,
                lifetime: None,
                variant: None,
                response: Shared::new(bad_gateway()),
                detail: Some("body-error"),
            };
        }
    };
    remove_hop_by_hop(&mut parts.headers);
    let initial_age = parts
        .headers
        .remove(AGE)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        .unwrap_or(0);
    parts.headers.remove(CACHE_STATUS);
    if parts.status.is_success() && !parts.headers.contains_key(ETAG) {
        parts.headers.insert(ETAG, etag_of(&body));
    }
    let verdict =
        cache_control::verdict(authorized, parts.status, &parts.headers, &config.defaults);
    let mut response = Response::from_parts(parts, ResponseBody::from(body.clone()));
    let Verdict::Store {
        ttl,
        stale,
        shareable,
    } = verdict
    else {
        let Verdict::NotStored(detail) = verdict else {
            unreachable!("a verdict is Store or NotStored")
        };
        return Fresh {
            store: None,
            lifetime: None,
            variant: None,
            response: Shared::new(response),
            detail: Some(detail),
        };
    };
    // The response's fields are lent to the entry while it is written, then given back: the
    // response is answered too, and nothing of it is copied but into the entry's bytes.
    let entry = Entry::Response(StoredResponse {
        status: response.status(),
        headers: std::mem::take(response.headers_mut()),
        body,
        stored_at_ms: now_ms(),
        initial_age,
        fresh_ms: ttl.as_millis() as u64,
        shareable,
    });
    let encoded = entry.encode();
    if let Entry::Response(stored) = entry {
        *response.headers_mut() = stored.headers;
    }
    let entry = encoded;
    let names = key::vary_names(response.headers());
    let (store, variant) = if names.is_empty() || level == Level::Variant {
        (entry, None)
    } else {
        (
            Entry::Variants(names.clone()).encode(),
            Some((names, entry)),
        )
    };
    Fresh {
        store: Some(store),
        lifetime: Some((ttl, stale)),
        variant,
        response: Shared::new(response),
        detail: None,
    }
}

/// Passes a request the cache does not handle straight to the handler.
async fn forward<S, ReqB, ResB>(
    mut inner: S,
    req: Request<ReqB>,
    status: Status<'_>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let response = inner.call(req).await?;
    let (parts, body) = response.into_parts();
    Ok(with_status(
        Response::from_parts(parts, ResponseBody::wrap(body)),
        status.not_stored_plain(),
    ))
}

/// A stored response as a hit: its status, headers and body, with `Age` and
/// `Cache-Status`.
fn from_stored(stored: StoredResponse, head: bool, status: Status<'_>) -> Response<ResponseBody> {
    let now = now_ms();
    let age = HeaderValue::from(stored.age(now));
    let hit = status.hit(stored.ttl_left(now), stored.is_stale(now));
    let body = if head {
        ResponseBody::empty()
    } else {
        ResponseBody::from(stored.body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = stored.status;
    // Moved, not copied: the entry was decoded for this response alone.
    *response.headers_mut() = stored.headers;
    let headers = response.headers_mut();
    headers.insert(AGE, age);
    headers.append(CACHE_STATUS, hit);
    response
}

/// `If-None-Match` that matches the response's `ETag`: 304 with no body (RFC 9110 §13.1.2,
/// §15.4.5: the validator and caching fields are kept).
fn conditional(response: Response<ResponseBody>, asked: &Asked) -> Response<ResponseBody> {
    if asked.conditions.is_empty()
        || !(response.status() == StatusCode::OK || response.status() == StatusCode::NO_CONTENT)
        || !none_match(&asked.conditions, response.headers().get(ETAG))
    {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    for name in [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_TYPE,
        http::header::CONTENT_ENCODING,
        http::header::CONTENT_RANGE,
    ] {
        parts.headers.remove(name);
    }
    Response::from_parts(parts, ResponseBody::empty())
}

fn with_status(
    mut response: Response<ResponseBody>,
    status: HeaderValue,
) -> Response<ResponseBody> {
    response.headers_mut().append(CACHE_STATUS, status);
    response
}

fn bad_gateway() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// A reply no path produces; answered rather than panicking.
fn gone(status: Status<'_>) -> Response<ResponseBody> {
    with_status(bad_gateway(), status.not_stored("handler-not-reached"))
}

/// RFC 9111 §7.6.1: the fields that belong to one connection, never stored or replayed.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // Names, not strings: nothing is parsed per response.
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
}

// ---- Cache-Status (RFC 9211) -----------------------------------------------------------------

/// One member of `Cache-Status`, built up as the request goes: `<name>; hit; ttl=N`,
/// `<name>; fwd=uri-miss; stored`, `<name>; fwd=uri-miss; stored=?0; detail="private"`.
/// Borrows the name, written once per layer ([`cache_status_name`]).
#[derive(Clone, Copy)]
struct Status<'a> {
    name: &'a str,
    fwd: Option<&'static str>,
}

/// The cache's name as `Cache-Status` writes it: an sf-token when the name is one, else an
/// sf-string.
pub(super) fn cache_status_name(name: &str) -> String {
    let token = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '*')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c));
    if token {
        return name.to_owned();
    }
    let mut quoted = String::from("\"");
    for c in name
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
    {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

impl<'a> Status<'a> {
    fn new(name: &'a str) -> Status<'a> {
        Status { name, fwd: None }
    }

    fn forward(self, why: &'static str) -> Status<'a> {
        Status {
            name: self.name,
            fwd: Some(why),
        }
    }

    fn prefix(&self) -> String {
        match self.fwd {
            Some(why) => format!("{}; fwd={why}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// `<name>; hit; ttl=N`, written into one buffer that becomes the value (every hit
    /// writes it: no formatting machinery, one allocation).
    fn hit(&self, ttl_left: i64, stale: bool) -> HeaderValue {
        const DETAIL: &[u8] = b"; detail=stale";
        let mut out = BytesMut::with_capacity(self.name.len() + 32 + DETAIL.len());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(b"; hit; ttl=");
        put_decimal(&mut out, ttl_left);
        if stale {
            out.extend_from_slice(DETAIL);
        }
        HeaderValue::from_maybe_shared(out.freeze()).unwrap_or(HeaderValue::from_static("cache-rs"))
    }

    fn stored(&self) -> HeaderValue {
        value(format!("{}; stored", self.prefix()))
    }

    fn not_stored(&self, detail: &str) -> HeaderValue {
        value(format!("{}; stored=?0; detail=\"{detail}\"", self.prefix()))
    }

    fn not_stored_plain(&self) -> HeaderValue {
        value(self.prefix())
    }
}

/// `n` in decimal, as `format!("{n}")` writes it.
fn put_decimal(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.extend_from_slice(b"-");
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn value(text: String) -> HeaderValue {
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("cache-rs"))
}

/// The pipeline's `Call` of a response's entry: its full key and tags, the TTL the response
/// sets (through its mode's `lifetime`, hence none here).
fn call<'a>(
    pipeline: &Pipeline,
    key: &'a str,
    tags: &'a mut [String],
    policy: &'a Policy,
) -> Call<'a> {
    Call {
        function: "http",
        full: key,
        tag_keys: pipeline.version_keys_in_place(tags),
        ttl: None,
        policy,
    }
}
