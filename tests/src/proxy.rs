//! A TCP proxy on a free loopback port, between a client and a real `redis-server`, that
//! injects network faults at runtime: latency, black holes, connection resets (also in the
//! middle of a reply) and bandwidth limits. The fault matrix (`tests/tests/suite/fault_matrix.rs`)
//! puts it between the cache and the shared server.
//!
//! The proxy runs on a thread of its own (a current-thread tokio runtime), so it works the
//! same under any test runtime, and from synchronous tests; dropping the [`FaultProxy`] stops
//! it and closes every connection it holds.
//!
//! ```
//! use std::time::Duration;
//! use tests::{Direction, Fault, FaultProxy};
//!
//! let proxy = FaultProxy::start(tests::shared_server().port());
//! let mut con = redis::Client::open(proxy.url()).expect("a url").get_connection().expect("connects");
//! let pong: String = redis::cmd("PING").query(&mut con).expect("through the proxy");
//! assert_eq!(pong, "PONG");
//! proxy.set(Fault::Latency(Direction::ToClient, Duration::from_millis(20)));
//! proxy.clear();
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Which way the bytes a [`Fault`] acts on travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the server: commands.
    ToServer,
    /// From the server to the client: replies.
    ToClient,
    /// Both ways.
    Both,
}

impl Direction {
    fn covers(self, way: Way) -> bool {
        matches!(
            (self, way),
            (Direction::Both, _)
                | (Direction::ToServer, Way::ToServer)
                | (Direction::ToClient, Way::ToClient)
        )
    }
}

/// One of the two pumps of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    ToServer,
    ToClient,
}

/// What the proxy does to the traffic, from the moment it is [set](FaultProxy::set) until it
/// is [cleared](FaultProxy::clear) or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Bytes pass as they come.
    #[default]
    None,
    /// Every chunk of bytes going this way is held for this long before it is passed on
    /// (order kept; `Both` delays each way, so a round trip takes twice as long more).
    /// Bytes already on their way when a connection closes are still delivered.
    Latency(Direction, Duration),
    /// Bytes going this way are read and dropped; the connections stay open. Bytes swallowed
    /// are gone for good: clearing the fault passes only what comes after.
    BlackHole(Direction),
    /// At most this many bytes per second go this way, on each connection.
    Throttle(Direction, u64),
    /// Every connection is reset (TCP RST) once this many bytes of replies have passed on it
    /// since the fault was set (or since it opened, for a newer one): with a small number, in
    /// the middle of the next reply.
    ResetMidReply {
        /// Bytes of replies passed on before the reset.
        after_bytes: u64,
    },
    /// Every connection open when the fault is set is reset (TCP RST), and so is every new
    /// one, as soon as it is accepted: like a server that refuses clients.
    Reset,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Closed by one side (or an I/O error): the other side gets a FIN.
    Closed,
    /// Reset on purpose: both sides get an RST.
    Reset,
}

/// What the proxy thread and the handle share.
#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// The fault, and a generation that changes each time it is set.
    fault: watch::Sender<(Fault, u64)>,
    /// Counts up each time every open connection must be reset.
    resets: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicU64,
    swallowed: AtomicU64,
}

/// A fault-injecting TCP proxy to a server on `127.0.0.1`; see the [module docs](self).
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    /// Dropping it stops the proxy's runtime, which closes every connection.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream_port` on a free loopback port; panics when it
    /// cannot bind one.
    pub fn start(upstream_port: u16) -> FaultProxy {
        Self::try_start(upstream_port)
            .unwrap_or_else(|e| panic!("cannot start a fault proxy to port {upstream_port}: {e}"))
    }

    /// [`start`](Self::start), returning the error instead of panicking.
    ///
    /// ```
    /// let proxy = tests::FaultProxy::try_start(tests::shared_server().port()).expect("starts");
    /// assert_ne!(proxy.port(), tests::shared_server().port());
    /// ```
    pub fn try_start(upstream_port: u16) -> std::io::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port)),
            fault: watch::Sender::new((Fault::None, 0)),
            resets: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            swallowed: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(listener) => listener,
                            Err(e) => panic!("the fault proxy cannot listen: {e}"),
                        };
                        tokio::select! {
                            _ = stopped => {}
                            _ = accept_loop(listener, shared) => {}
                        }
                    });
                    // Dropping the runtime here drops every connection task: sockets close.
                })?
        };
        Ok(FaultProxy {
            port,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`: give it to the client instead of the server's URL.
    ///
    /// ```
    /// let proxy = tests::FaultProxy::start(tests::shared_server().port());
    /// assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}/", proxy.port()));
    /// ```
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sets the fault, replacing the one before; it acts on open connections and new ones.
    ///
    /// ```
    /// use tests::{Direction, Fault};
    /// let proxy = tests::FaultProxy::start(tests::shared_server().port());
    /// proxy.set(Fault::BlackHole(Direction::Both));
    /// assert_eq!(proxy.fault(), Fault::BlackHole(Direction::Both));
    /// ```
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_modify(|(current, generation)| {
            (*current, *generation) = (fault, *generation + 1)
        });
        if fault == Fault::Reset {
            self.reset_all();
        }
    }

    /// Removes the fault: bytes pass as they come again.
    ///
    /// ```
    /// use tests::{Direction, Fault};
    /// let proxy = tests::FaultProxy::start(tests::shared_server().port());
    /// proxy.set(Fault::BlackHole(Direction::ToClient));
    /// proxy.clear();
    /// assert_eq!(proxy.fault(), Fault::None);
    /// ```
    pub fn clear(&self) {
        self.set(Fault::None);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.shared.fault.borrow().0
    }

    /// Resets (TCP RST) every connection open now, once; new ones pass.
    ///
    /// ```
    /// let proxy = tests::FaultProxy::start(tests::shared_server().port());
    /// proxy.reset_all();
    /// ```
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted and not yet closed or reset).
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes a black hole swallowed so far, both ways.
    pub fn swallowed(&self) -> u64 {
        self.shared.swallowed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            if shared.fault.borrow().0 == Fault::Reset {
                reset(&client);
                return;
            }
            let Ok(server) = TcpStream::connect(shared.upstream).await else {
                // The server is gone: the client sees its connection reset.
                reset(&client);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            shared.open.fetch_add(1, Ordering::SeqCst);
            relay(client, server, &shared).await;
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Makes the close of `stream` (when it is dropped) an RST rather than a FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Passes bytes both ways until a side closes, or a fault resets the connection.
async fn relay(mut client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let mut resets = shared.resets.subscribe();
    resets.mark_unchanged();
    let end = {
        let (from_client, to_client) = client.split();
        let (from_server, to_server) = server.split();
        let up = pump(from_client, to_server, Way::ToServer, shared);
        let down = pump(from_server, to_client, Way::ToClient, shared);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => {
                    if end == End::Reset { break End::Reset; }
                    up_done = true;
                }
                end = &mut down, if !down_done => {
                    if end == End::Reset { break End::Reset; }
                    down_done = true;
                }
                // An error: the proxy is stopping, and its runtime drops this task next.
                changed = resets.changed() => {
                    break if changed.is_ok() { End::Reset } else { End::Closed };
                }
            }
            // One side closed and its bytes were delivered: a client that hung up is gone
            // (Redis closes on EOF), so the connection ends when both ways are done.
            if up_done && down_done {
                break End::Closed;
            }
        }
    };
    if end == End::Reset {
        reset(&client);
        reset(&server);
    }
}

/// One way of a connection: a reader that applies black holes and stamps each chunk with
/// its arrival, and a writer that applies latency, throttling and resets mid-reply.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    way: Way,
    shared: &Shared,
) -> End {
    // Bounded: a throttled or delayed writer holds the reader back, as a slow link would.
    let (chunks, mut arrived) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let fault = shared.fault.borrow().0;
            if matches!(fault, Fault::BlackHole(d) if d.covers(way)) {
                shared.swallowed.fetch_add(n as u64, Ordering::SeqCst);
                continue;
            }
            if chunks
                .send((Instant::now(), buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let write = async move {
        let mut faults = shared.fault.subscribe();
        let mut generation = faults.borrow_and_update().1;
        // Replies passed on since the fault was set (or the connection opened).
        let mut passed: u64 = 0;
        while let Some((at, mut bytes)) = arrived.recv().await {
            let (fault, now_generation) = *faults.borrow_and_update();
            if now_generation != generation {
                (generation, passed) = (now_generation, 0);
            }
            match fault {
                Fault::Latency(d, delay) if d.covers(way) => {
                    tokio::time::sleep_until(at + delay).await;
                }
                Fault::ResetMidReply { after_bytes } if way == Way::ToClient => {
                    let allowed = after_bytes.saturating_sub(passed);
                    if (bytes.len() as u64) > allowed {
                        bytes.truncate(allowed as usize);
                        let _ = to.write_all(&bytes).await;
                        let _ = to.flush().await;
                        return End::Reset;
                    }
                }
                Fault::Throttle(d, per_second) if d.covers(way) => {
                    // Slices of a twentieth of a second's worth, each followed by its time.
                    let per_second = per_second.max(1);
                    let slice = (per_second / 20).max(1) as usize;
                    for part in bytes.chunks(slice) {
                        if to.write_all(part).await.is_err() {
                            return End::Closed;
                        }
                        let took = Duration::from_secs_f64(part.len() as f64 / per_second as f64);
                        tokio::time::sleep(took).await;
                    }
                    passed += bytes.len() as u64;
                    continue;
                }
                _ => {}
            }
            if to.write_all(&bytes).await.is_err() {
                return End::Closed;
            }
            passed += bytes.len() as u64;
        }
        // The reader saw the end: pass the FIN on (half-close), as TCP would.
        let _ = to.shutdown().await;
        End::Closed
    };
    // The writer decides when this way is done: after the reader's end (its channel closed
    // and drained) or at a failed write or a reset, where the reader is dropped with it.
    let read = async move {
        read.await;
        std::future::pending::<End>().await
    };
    tokio::select! {
        end = write => end,
        end = read => end,
    }
}

#[cfg(test)]
mod tests {
    //! The proxy itself, against a real redis-server: each fault does what it says.

    use super::*;

    const BOUND: Duration = Duration::from_secs(5);

    fn connection(proxy: &FaultProxy, timeout: Duration) -> redis::Connection {
        let client = redis::Client::open(proxy.url()).expect("a url");
        let con = client
            .get_connection_with_timeout(BOUND)
            .expect("connects through the proxy");
        con.set_read_timeout(Some(timeout)).expect("read timeout");
        con.set_write_timeout(Some(timeout)).expect("write timeout");
        con
    }

    fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
        redis::cmd("PING").query(con)
    }

    fn direct() -> redis::Connection {
        crate::shared_server()
            .client()
            .get_connection()
            .expect("a direct connection")
    }

    #[test]
    fn bytes_pass_both_ways_without_a_fault() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        let mut con = connection(&proxy, BOUND);
        let key = format!("{}:k", crate::unique_namespace());
        let value = vec![7u8; 256 * 1024];
        redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .exec(&mut con)
            .expect("SET");
        let back: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut con).expect("GET");
        assert_eq!(back, value);
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.open_connections(), 1);
        drop(con);
        let deadline = std::time::Instant::now() + BOUND;
        while proxy.open_connections() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the connection never closed"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn latency_holds_each_way_and_clearing_it_restores_the_pace() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        let mut con = connection(&proxy, BOUND);
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
        proxy.set(Fault::Latency(Direction::Both, Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
        // A lower bound, not a speed assertion: the fault adds at least its delay each way.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        proxy.set(Fault::Latency(
            Direction::ToClient,
            Duration::from_millis(150),
        ));
        let started = std::time::Instant::now();
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        proxy.clear();
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
    }

    #[test]
    fn a_black_hole_to_the_server_swallows_commands_and_keeps_the_connection() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        let mut con = connection(&proxy, Duration::from_millis(300));
        let key = format!("{}:k", crate::unique_namespace());
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
        proxy.set(Fault::BlackHole(Direction::ToServer));
        let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(1).query(&mut con);
        assert!(r.is_err_and(|e| e.is_timeout()), "the reply never comes");
        assert!(proxy.swallowed() > 0);
        assert_eq!(proxy.open_connections(), 1, "the connection stays open");
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut direct())
            .expect("EXISTS");
        assert!(!exists, "the swallowed SET never reached the server");
    }

    #[test]
    fn a_black_hole_to_the_client_swallows_replies_of_commands_that_ran() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        let mut con = connection(&proxy, Duration::from_millis(300));
        let key = format!("{}:k", crate::unique_namespace());
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
        proxy.set(Fault::BlackHole(Direction::ToClient));
        let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(1).query(&mut con);
        assert!(r.is_err_and(|e| e.is_timeout()), "the reply never comes");
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut direct())
            .expect("EXISTS");
        assert!(exists, "the SET ran; only its reply was swallowed");
        // Both ways: a new connection cannot even say hello (the client's handshake times out).
        proxy.set(Fault::BlackHole(Direction::Both));
        let client = redis::Client::open(proxy.url()).expect("a url");
        let r = client
            .get_connection_with_timeout(Duration::from_millis(300))
            .and_then(|mut fresh| {
                fresh.set_read_timeout(Some(Duration::from_millis(300)))?;
                ping(&mut fresh)
            });
        assert!(r.is_err_and(|e| e.is_timeout()));
    }

    #[test]
    fn reset_all_resets_open_connections_and_lets_new_ones_through() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        let mut con = connection(&proxy, BOUND);
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
        proxy.reset_all();
        let deadline = std::time::Instant::now() + BOUND;
        while proxy.open_connections() != 0 {
            assert!(std::time::Instant::now() < deadline, "not reset");
            thread::sleep(Duration::from_millis(10));
        }
        let e = ping(&mut con).expect_err("the connection was reset");
        assert!(e.is_connection_dropped() || e.is_io_error(), "{e:?}");
        let mut fresh = connection(&proxy, BOUND);
        assert_eq!(ping(&mut fresh).expect("a new connection passes"), "PONG");
    }

    #[test]
    fn the_reset_fault_refuses_every_new_connection_until_cleared() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        proxy.set(Fault::Reset);
        let client = redis::Client::open(proxy.url()).expect("a url");
        let refused = client
            .get_connection_with_timeout(BOUND)
            .and_then(|mut c| ping(&mut c));
        assert!(refused.is_err(), "{refused:?}");
        proxy.clear();
        let mut con = connection(&proxy, BOUND);
        assert_eq!(ping(&mut con).expect("PING"), "PONG");
    }

    #[test]
    fn reset_mid_reply_cuts_a_reply_after_that_many_bytes() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        let mut con = connection(&proxy, BOUND);
        let key = format!("{}:k", crate::unique_namespace());
        let value = vec![b'x'; 64 * 1024];
        redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .exec(&mut con)
            .expect("SET");
        proxy.set(Fault::ResetMidReply { after_bytes: 1000 });
        let r: redis::RedisResult<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut con);
        let e = r.expect_err("the reply was cut");
        assert!(e.is_connection_dropped() || e.is_io_error(), "{e:?}");
        proxy.clear();
        let mut fresh = connection(&proxy, BOUND);
        let back: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut fresh).expect("GET");
        assert_eq!(back, value);
    }

    #[test]
    fn throttle_bounds_the_bandwidth_of_one_way() {
        let proxy = FaultProxy::start(crate::shared_server().port());
        let mut con = connection(&proxy, BOUND);
        let key = format!("{}:k", crate::unique_namespace());
        let value = vec![b'x'; 20 * 1024];
        redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .exec(&mut con)
            .expect("SET");
        proxy.set(Fault::Throttle(Direction::ToClient, 40 * 1024));
        let started = std::time::Instant::now();
        let back: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut con).expect("GET");
        assert_eq!(back, value);
        // 20 KiB at 40 KiB/s: half a second at least (a lower bound, not a speed assertion).
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }
}
