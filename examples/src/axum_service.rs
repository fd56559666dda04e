//! The service of `cargo run --example axum_service`, as a library so that a test can run it
//! on a free port and drive it over HTTP.
//!
//! Routes:
//! - `GET /health`: the cache's backend and a ping round trip, as JSON (200, or 503 when the
//!   backend does not answer);
//! - `GET /products/{id}`: a `#[cached]` lookup, rate-limited per client address
//!   (`PRODUCTS_PER_MINUTE`, default 30) by the cache's tower layer (429 with `Retry-After` and
//!   the IETF `RateLimit-Policy` / `RateLimit` fields once the limit is reached);
//! - `POST /login?user=ann`: a new session for the user (cookie `sid`, `HttpOnly`,
//!   `SameSite=Lax`); any session the request came with ends;
//! - `GET /me`: the session's user and its visit count (401 without a session);
//! - `POST /logout`: ends this session; `POST /logout-everywhere`: every session of its user.
//!
//! Sessions fail closed: when the cache cannot be reached, session routes answer 503, never
//! "logged out" and never "logged in".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cache_core::rate_limit::tower::{ClientIp, KeyExtractor, RateLimitLayer};
use cache_core::{cached, Cache, RateLimit, SessionId, Sessions};
use serde::{Deserialize, Serialize};

/// The session cookie's name.
pub const COOKIE: &str = "sid";

/// What the service keeps in a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    /// Who logged in.
    pub user: String,
    /// Requests to `/me` in this session.
    pub visits: u64,
}

/// A product, as the slow "database" answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: u32,
    /// Its name.
    pub name: String,
}

#[derive(Clone)]
struct AppState {
    cache: Cache,
    sessions: Sessions,
}

/// The `#[cached]` handler helper: computed once per id and minute, then served from the
/// cache (Redis or the embedded backend alike).
#[cached(key = "product:<id>", ttl = "1m", cache = cache, skip = [cache])]
async fn load_product(cache: &Cache, id: u32) -> Result<Product, std::convert::Infallible> {
    tokio::time::sleep(Duration::from_millis(20)).await; // a database call, in real life
    Ok(Product {
        id,
        name: format!("product #{id}"),
    })
}

/// The router, on `cache`, with at most `products_per_minute` product lookups a minute per
/// client address.
pub fn app(cache: Cache, products_per_minute: u64) -> Router {
    let limiter = cache.rate_limiter(
        RateLimit::sliding_window(products_per_minute, Duration::from_secs(60)).name("products"),
    );
    // The peer address axum records with `into_make_service_with_connect_info`; no proxy is
    // trusted, so `X-Forwarded-For` is ignored.
    let client = ClientIp::new().peer_addr(|req| {
        req.extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    });
    let products = Router::new()
        .route("/products/{id}", get(product))
        .layer(RateLimitLayer::new(limiter).key(KeyExtractor::client_ip(client)));
    let state = AppState {
        sessions: cache
            .sessions()
            .idle_timeout(Duration::from_secs(30 * 60))
            .max_lifetime(Duration::from_secs(24 * 3600)),
        cache,
    };
    Router::new()
        .route("/health", get(health))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .merge(products)
        .with_state(state)
}

/// Serves [`app`] on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cache: Cache,
    products_per_minute: u64,
) -> std::io::Result<()> {
    let app = app(cache, products_per_minute);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// A cache error on a session route: the cache is down (503) or something else broke (500).
fn unavailable(e: cache_core::Error) -> Response {
    tracing::warn!(error = %e, "session store error: failing closed");
    let status = if e.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        status,
        Json(serde_json::json!({ "error": "session store unavailable" })),
    )
        .into_response()
}

/// The `sid` cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn set_cookie(id: Option<&SessionId>) -> HeaderValue {
    let value = match id {
        Some(id) => format!("{COOKIE}={id}; HttpOnly; SameSite=Lax; Path=/"),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"),
    };
    // Ids are URL-safe base64: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}

async fn health(State(state): State<AppState>) -> Response {
    let start = Instant::now();
    // A minimal health check: one round trip to the backend.
    let ping = state.cache.exists("health:ping").await;
    let ping_ms = start.elapsed().as_secs_f64() * 1000.0;
    let backend = match state.cache.backend() {
        cache_core::Source::Redis => "redis",
        _ => "memory",
    };
    let (status, code) = match &ping {
        Ok(_) => ("ok", StatusCode::OK),
        Err(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = serde_json::json!({
        "status": status,
        "backend": backend,
        "ping_ms": ping_ms,
        "error": ping.err().map(|e| e.to_string()),
    });
    (code, Json(body)).into_response()
}

async fn product(State(state): State<AppState>, Path(id): Path<u32>) -> Json<Product> {
    let Ok(product) = load_product(&state.cache, id).await;
    Json(product)
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(user) = query.get("user").filter(|u| !u.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "?user= is required").into_response();
    };
    // A privilege change: whatever session the request came with ends, and the user gets a
    // fresh id (an id planted before the login is worth nothing after it).
    if let Some(old) = session_cookie(&headers) {
        if let Err(e) = state.sessions.delete(old.as_str()).await {
            return unavailable(e);
        }
    }
    let login = Login {
        user: user.clone(),
        visits: 0,
    };
    match state.sessions.create(Some(user), &login).await {
        Ok(id) => (
            [(header::SET_COOKIE, set_cookie(Some(&id)))],
            Json(serde_json::json!({ "user": user })),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

async fn me(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(sid) = session_cookie(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    // A compare-and-set update: concurrent requests of one session all count.
    match state
        .sessions
        .modify(sid.as_str(), |login: &mut Login| {
            login.visits += 1;
            login.clone()
        })
        .await
    {
        Ok(Some(login)) => Json(login).into_response(),
        Ok(None) => (
            [(header::SET_COOKIE, set_cookie(None))],
            StatusCode::UNAUTHORIZED,
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(sid) = session_cookie(&headers) {
        if let Err(e) = state.sessions.delete(sid.as_str()).await {
            return unavailable(e);
        }
    }
    (
        [(header::SET_COOKIE, set_cookie(None))],
        StatusCode::NO_CONTENT,
    )
        .into_response()
}

async fn logout_everywhere(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(sid) = session_cookie(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let login = match state.sessions.get::<Login>(sid.as_str()).await {
        Ok(Some(login)) => login,
        Ok(None) => return StatusCode::UNAUTHORIZED.into_response(),
        Err(e) => return unavailable(e),
    };
    match state.sessions.delete_for_user(&login.user).await {
        Ok(ended) => (
            [(header::SET_COOKIE, set_cookie(None))],
            Json(serde_json::json!({ "user": login.user, "sessions_ended": ended })),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}
