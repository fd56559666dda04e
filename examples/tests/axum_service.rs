//! Drives the example service over loopback HTTP, with a raw HTTP/1.1 client on a
//! `TcpStream` (nothing between the test and the bytes on the wire): the rate limit's 429 and
//! its headers, a session that survives across requests through its cookie, logout, "log out
//! everywhere", and sessions failing closed when the cache is unreachable. On both backends.

use std::net::SocketAddr;
use std::time::Duration;

use cache_core::Cache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP response, as read off the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `sid` cookie this response sets (`Some("")` when it clears it).
    fn session_cookie(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        let (pair, _) = set.split_once(';').unwrap_or((set, ""));
        pair.strip_prefix("sid=").map(str::to_owned)
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: theme=dark; sid={cookie}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("sends");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the service answers within 30 s")
        .expect("reads");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    assert!(
        headers
            .iter()
            .all(|(n, v)| !(n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))),
        "this client reads Content-Length bodies only"
    );
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Starts the service on a free loopback port; it runs until the test's runtime ends.
async fn start(cache: Cache, products_per_minute: u64) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(examples::axum_service::serve(
        listener,
        cache,
        products_per_minute,
    ));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_across_requests_and_logout_ends_them() {
    for (backend, cache) in tests::backends().await {
        let addr = start(cache.clone(), 1000).await;

        let health = request(addr, "GET", "/health", None).await;
        assert_eq!(health.status, 200, "{backend}: {health:?}");
        assert_eq!(health.json()["backend"], backend);
        assert_eq!(health.json()["status"], "ok");

        assert_eq!(request(addr, "GET", "/me", None).await.status, 401);
        assert_eq!(request(addr, "POST", "/login", None).await.status, 400);

        // Log in: a cookie that carries the session across requests.
        let login = request(addr, "POST", "/login?user=ann", None).await;
        assert_eq!(login.status, 200, "{backend}: {login:?}");
        let set = login.header("set-cookie").expect("a cookie").to_owned();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax"),
            "{set}"
        );
        let phone = login.session_cookie().expect("sid");
        assert_eq!(phone.len(), 22, "{phone}");
        for visit in 1..=3 {
            let me = request(addr, "GET", "/me", Some(&phone)).await;
            assert_eq!(me.status, 200, "{backend}: {me:?}");
            assert_eq!(me.json()["user"], "ann");
            assert_eq!(me.json()["visits"], visit, "{backend}");
        }

        // A second device, then logout on the first: only the first ends.
        let laptop = request(addr, "POST", "/login?user=ann", None)
            .await
            .session_cookie()
            .expect("sid");
        assert_ne!(laptop, phone);
        let out = request(addr, "POST", "/logout", Some(&phone)).await;
        assert_eq!(out.status, 204, "{backend}: {out:?}");
        assert_eq!(
            out.session_cookie().as_deref(),
            Some(""),
            "the cookie is cleared"
        );
        assert_eq!(
            request(addr, "GET", "/me", Some(&phone)).await.status,
            401,
            "{backend}"
        );
        assert_eq!(
            request(addr, "GET", "/me", Some(&laptop)).await.status,
            200,
            "{backend}"
        );

        // Logging in again with a session ends it: a planted id is worth nothing.
        let tablet = request(addr, "POST", "/login?user=ann", Some(&laptop))
            .await
            .session_cookie()
            .expect("sid");
        assert_eq!(
            request(addr, "GET", "/me", Some(&laptop)).await.status,
            401,
            "{backend}"
        );
        let desktop = request(addr, "POST", "/login?user=ann", None)
            .await
            .session_cookie()
            .expect("sid");
        let bob = request(addr, "POST", "/login?user=bob", None)
            .await
            .session_cookie()
            .expect("sid");

        // Log out everywhere: every session of ann, none of bob's.
        let all = request(addr, "POST", "/logout-everywhere", Some(&tablet)).await;
        assert_eq!(all.status, 200, "{backend}: {all:?}");
        assert_eq!(all.json()["sessions_ended"], 2, "{backend}");
        for sid in [&tablet, &desktop] {
            assert_eq!(
                request(addr, "GET", "/me", Some(sid)).await.status,
                401,
                "{backend}"
            );
        }
        assert_eq!(
            request(addr, "GET", "/me", Some(&bob)).await.status,
            200,
            "{backend}"
        );

        // Malformed and unknown cookies are no session.
        for sid in ["garbage", "AAAAAAAAAAAAAAAAAAAAAA", &"x".repeat(4000)] {
            assert_eq!(
                request(addr, "GET", "/me", Some(sid)).await.status,
                401,
                "{backend}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_its_headers() {
    for (backend, cache) in tests::backends().await {
        let addr = start(cache, 5).await;
        for n in 1..=5u64 {
            let ok = request(addr, "GET", "/products/7", None).await;
            assert_eq!(ok.status, 200, "{backend}: request {n}: {ok:?}");
            assert_eq!(ok.json()["name"], "product #7");
            assert_eq!(
                ok.header("ratelimit-policy"),
                Some("\"products\";q=5;w=60"),
                "{backend}: {ok:?}"
            );
            let remaining = ok.header("ratelimit").expect("RateLimit");
            assert!(
                remaining.starts_with(&format!("\"products\";r={};t=", 5 - n)),
                "{backend}: request {n}: {remaining}"
            );
        }
        let limited = request(addr, "GET", "/products/7", None).await;
        assert_eq!(limited.status, 429, "{backend}: {limited:?}");
        let retry: u64 = limited
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        // A sliding-window counter weights the previous minute's count: the wait can reach
        // into the next window (up to 72 s here), never past two.
        assert!((1..=120).contains(&retry), "{backend}: Retry-After {retry}");
        assert_eq!(
            limited.header("ratelimit"),
            Some(format!("\"products\";r=0;t={retry}").as_str()),
            "{backend}"
        );
        assert_eq!(
            limited.header("ratelimit-policy"),
            Some("\"products\";q=5;w=60")
        );
        // Other routes are not limited.
        assert_eq!(request(addr, "GET", "/health", None).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_fail_closed_when_the_cache_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cache = Cache::builder()
        .url(format!("redis://127.0.0.1:{port}"))
        .namespace(tests::unique_namespace())
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect("builds without connecting");
    let addr = start(cache, 1000).await;
    assert_eq!(request(addr, "GET", "/health", None).await.status, 503);
    assert_eq!(
        request(addr, "POST", "/login?user=ann", None).await.status,
        503
    );
    // A well-formed session id cannot be checked: 503, not "logged in" nor "logged out".
    let me = request(addr, "GET", "/me", Some("AAAAAAAAAAAAAAAAAAAAAA")).await;
    assert_eq!(me.status, 503, "{me:?}");
    assert_eq!(
        me.session_cookie(),
        None,
        "the cookie is kept for when the cache is back"
    );
}
