//! The service: a request's way through the cache (RFC 9111 §4 for a shared cache), the
//! handler's response made into a stored entry (§3), and `Cache-Status` (RFC 9211).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AGE, CONNECTION, ETAG, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
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
type Slot<S, B> = Arc<Mutex<Option<(S, Request<B>)>>>;

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
    let status = Status::new(&config.name);
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return forward(inner, req, status.forward("method")).await;
    }
    let request_cc = Directives::of(req.headers());
    if request_cc.no_store {
        return forward(inner, req, status.forward("bypass")).await;
    }
    let Some(pipeline) = crate::cache::explicit(&config.cache).cloned() else {
        return forward(inner, req, status.forward("bypass")).await;
    };
    let (mut parts, body) = req.into_parts();
    // The handler is asked for the full response, which the cache can store; the request's
    // own validators are answered here (`If-None-Match`), from what it returns.
    let mut conditions = HeaderMap::new();
    for value in parts.headers.get_all(IF_NONE_MATCH) {
        conditions.append(IF_NONE_MATCH, value.clone());
    }
    parts.headers.remove(IF_NONE_MATCH);
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
    let headers = parts.headers.clone();
    let slot: Slot<S, ReqB> = Arc::new(Mutex::new(Some((inner, Request::from_parts(parts, body)))));
    let policy = Policy {
        // The stale window is the entry's own (written from the response); `Some` here only
        // lets reads serve it.
        stale: Some(config.defaults.max_ttl),
        lock: config.lock,
        ..Policy::DEFAULT
    };
    let mode = HttpMode::<S::Error>(PhantomData);
    let key = pipeline.full_key_of(primary.clone());

    let reply = if request_cc.revalidates() {
        // Request `no-cache`: the handler answers, and its response replaces the stored one.
        let compute = call_handler(
            slot.clone(),
            Level::Primary,
            config.clone(),
            asked.authorized,
        );
        let mut tag_keys = tags.clone();
        let reply = pipeline
            .compute_and_store(call(&pipeline, &key, &mut tag_keys, &policy), mode, compute)
            .await;
        return finish(
            &pipeline,
            &policy,
            &tags,
            (&primary, &headers),
            reply,
            status.forward("request"),
            &asked,
        )
        .await;
    } else {
        let compute = call_handler(
            slot.clone(),
            Level::Primary,
            config.clone(),
            asked.authorized,
        );
        let mut tag_keys = tags.clone();
        pipeline
            .compute_with(
                call(&pipeline, &key, &mut tag_keys, &policy),
                mode,
                Spawn,
                compute,
            )
            .await
    };
    let reply = match reply {
        Reply::Cached(bytes) => match Entry::decode(&bytes) {
            Some(Entry::Variants(names)) => {
                let key = pipeline.full_key_of(key::variant(primary.clone(), &names, &headers));
                let compute = call_handler(
                    slot.clone(),
                    Level::Variant,
                    config.clone(),
                    asked.authorized,
                );
                let mut tag_keys = tags.clone();
                let reply = pipeline
                    .compute_with(
                        call(&pipeline, &key, &mut tag_keys, &policy),
                        mode,
                        Spawn,
                        compute,
                    )
                    .await;
                return serve(
                    &pipeline,
                    &policy,
                    &tags,
                    (&primary, &headers),
                    reply,
                    slot,
                    &config,
                    status.forward("vary-miss"),
                    &asked,
                )
                .await;
            }
            _ => Reply::Cached(bytes),
        },
        other => other,
    };
    serve(
        &pipeline,
        &policy,
        &tags,
        (&primary, &headers),
        reply,
        slot,
        &config,
        status.forward("uri-miss"),
        &asked,
    )
    .await
}

/// A reply from a lookup: a cached entry is served when it may answer this request, else
/// the handler answers.
#[allow(clippy::too_many_arguments)] // one private step
async fn serve<S, ReqB, ResB>(
    pipeline: &Pipeline,
    policy: &Policy,
    tags: &[String],
    request: (&crate::base::key::KeyBuf, &HeaderMap),
    reply: Reply<S::Error>,
    slot: Slot<S, ReqB>,
    config: &Arc<Config>,
    miss: Status,
    asked: &Asked,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let Reply::Cached(bytes) = reply else {
        return finish(pipeline, policy, tags, request, reply, miss, asked).await;
    };
    match Entry::decode(&bytes) {
        Some(Entry::Response(stored)) if !asked.authorized || stored.shareable => {
            Ok(conditional(from_stored(&stored, asked.head, &miss), asked))
        }
        // A response that may not answer a request with credentials (RFC 9111 §3.5), or
        // bytes this layer did not write: the handler answers, and nothing is stored.
        found => {
            let detail = match found {
                Some(_) => "authorization",
                None => "unreadable",
            };
            let reply = call_handler(slot, Level::Variant, config.clone(), asked.authorized).await;
            match reply {
                Reply::Fresh(fresh) => Ok(conditional(
                    with_status(
                        fresh.response.into_inner(),
                        miss.forward("request").not_stored(detail),
                    ),
                    asked,
                )),
                Reply::Failed(e) => Err(e.into_inner()),
                Reply::Cached(_) | Reply::Store(..) => Ok(gone(&miss)),
            }
        }
    }
}

/// The handler's response, just received: stored under its variant key too when it varies,
/// then answered.
async fn finish<E: Send + 'static>(
    pipeline: &Pipeline,
    policy: &Policy,
    tags: &[String],
    (primary, headers): (&crate::base::key::KeyBuf, &HeaderMap),
    reply: Reply<E>,
    status: Status,
    asked: &Asked,
) -> Result<Response<ResponseBody>, E> {
    match reply {
        Reply::Fresh(fresh) => {
            if let (Some((names, entry)), Some(lifetime)) = (fresh.variant, fresh.lifetime) {
                let key = pipeline.full_key_of(key::variant(primary.clone(), &names, headers));
                let mut tag_keys = tags.to_vec();
                pipeline
                    .compute_and_store(
                        call(pipeline, &key, &mut tag_keys, policy),
                        HttpMode::<E>(PhantomData),
                        std::future::ready(Reply::Store(entry, lifetime)),
                    )
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
            Some(Entry::Response(stored)) => Ok(conditional(
                from_stored(&stored, asked.head, &status),
                asked,
            )),
            _ => Ok(gone(&status)),
        },
        Reply::Failed(e) => Err(e.into_inner()),
        Reply::Store(..) => Ok(gone(&status)),
    }
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
    let taken = slot.lock().ok().and_then(|mut s| s.take());
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
    let response = Response::from_parts(parts, ResponseBody::from(body.clone()));
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
    let entry = Entry::Response(StoredResponse {
        status: response.status(),
        headers: response.headers().clone(),
        body,
        stored_at_ms: now_ms(),
        initial_age,
        fresh_ms: ttl.as_millis() as u64,
        shareable,
    })
    .encode();
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
    status: Status,
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
fn from_stored(stored: &StoredResponse, head: bool, status: &Status) -> Response<ResponseBody> {
    let body = if head {
        ResponseBody::empty()
    } else {
        ResponseBody::from(stored.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers.clone();
    let headers = response.headers_mut();
    headers.insert(AGE, HeaderValue::from(stored.age()));
    let hit = status.hit(stored.ttl_left(), stored.is_stale());
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
fn gone(status: &Status) -> Response<ResponseBody> {
    with_status(bad_gateway(), status.not_stored("handler-not-reached"))
}

/// RFC 9111 §7.6.1: the fields that belong to one connection, never stored or replayed.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        headers.remove(name);
    }
}

// ---- Cache-Status (RFC 9211) -----------------------------------------------------------------

/// One member of `Cache-Status`, built up as the request goes: `<name>; hit; ttl=N`,
/// `<name>; fwd=uri-miss; stored`, `<name>; fwd=uri-miss; stored=?0; detail="private"`.
#[derive(Clone)]
struct Status {
    name: String,
    fwd: Option<&'static str>,
}

impl Status {
    fn new(name: &str) -> Status {
        // An sf-token when the name is one, else an sf-string.
        let token = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '*')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c));
        let name = if token {
            name.to_owned()
        } else {
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
        };
        Status { name, fwd: None }
    }

    fn forward(&self, why: &'static str) -> Status {
        Status {
            name: self.name.clone(),
            fwd: Some(why),
        }
    }

    fn prefix(&self) -> String {
        match self.fwd {
            Some(why) => format!("{}; fwd={why}", self.name),
            None => self.name.clone(),
        }
    }

    fn hit(&self, ttl_left: i64, stale: bool) -> HeaderValue {
        let name = &self.name;
        value(if stale {
            format!("{name}; hit; ttl={ttl_left}; detail=stale")
        } else {
            format!("{name}; hit; ttl={ttl_left}")
        })
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
