//! A real `redis-server` on a free loopback port.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::process::{self, Signal};

/// How long a server gets to answer `PING` after it was spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many fresh ports a start tries when another process takes the one
/// picked between the probe and redis-server's own bind.
const PORT_ATTEMPTS: usize = 5;

/// How long a graceful stop waits before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of the server's output goes into an error message.
const LOG_TAIL: usize = 4096;

/// Finds the `redis-server` binary: `REDIS_SERVER_BIN` when set, else `PATH`.
///
/// ```
/// let bin = tests::find_redis_server().expect("redis-server is installed");
/// assert!(bin.is_file());
/// ```
pub fn find_redis_server() -> Result<PathBuf, HarnessError> {
    find_redis_server_in(
        std::env::var_os("REDIS_SERVER_BIN").as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

/// [`find_redis_server`] with the environment passed in, so that tests can
/// check the lookup without mutating the process environment.
///
/// `explicit` plays the part of `REDIS_SERVER_BIN` (an empty value counts as
/// unset), `path` the part of `PATH`.
///
/// ```
/// let err = tests::find_redis_server_in(Some("/nonexistent/redis-server".as_ref()), None)
///     .unwrap_err();
/// assert!(err.to_string().contains("apt-get install redis-server"));
/// ```
pub fn find_redis_server_in(
    explicit: Option<&OsStr>,
    path: Option<&OsStr>,
) -> Result<PathBuf, HarnessError> {
    if let Some(explicit) = explicit.filter(|p| !p.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return if is_executable(&explicit) {
            Ok(explicit)
        } else {
            Err(HarnessError::NotFound {
                tried: Some(explicit),
            })
        };
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| is_executable(candidate))
        .ok_or(HarnessError::NotFound { tried: None })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The version `redis-server --version` reports, such as `"7.0.15"`.
///
/// ```
/// let bin = tests::find_redis_server().expect("redis-server is installed");
/// let version = tests::redis_server_version(&bin).expect("it runs");
/// assert!(version.chars().next().is_some_and(|c| c.is_ascii_digit()));
/// ```
pub fn redis_server_version(binary: &Path) -> Result<String, HarnessError> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("cannot run `{} --version`", binary.display()), e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=..."
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .map(str::to_owned)
        .ok_or_else(|| {
            HarnessError::io(
                format!("cannot read the version of `{}`", binary.display()),
                std::io::Error::other(format!("unexpected output `{}`", text.trim())),
            )
        })
}

/// Whether something on `127.0.0.1:port` answers `PING` with `PONG` within
/// a quarter of a second.
///
/// ```
/// let server = tests::RedisServer::start();
/// assert!(tests::answers_ping(server.port()));
/// ```
pub fn answers_ping(port: u16) -> bool {
    ping(port, Duration::from_millis(250)).unwrap_or(false)
}

fn ping(port: u16, timeout: Duration) -> std::io::Result<bool> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = Vec::with_capacity(16);
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") && reply.len() < 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    // A server still loading answers `-LOADING ...`: not ready yet.
    Ok(reply.starts_with(b"+PONG"))
}

/// Options for a server started with [`RedisServer::builder`].
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    binary: Option<PathBuf>,
    args: Vec<OsString>,
    ready_timeout: Duration,
    config_file: Option<String>,
    sentinel: bool,
}

impl RedisServerBuilder {
    /// Uses this binary instead of `REDIS_SERVER_BIN` or `PATH`.
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// Adds command-line configuration, after the harness's own, such as
    /// `.arg("--requirepass").arg("secret")`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// A configuration file with this text, written into the server's directory and given
    /// first on the command line (the server may rewrite it, as Sentinel does).
    pub fn config_file(mut self, text: impl Into<String>) -> Self {
        self.config_file = Some(text.into());
        self
    }

    /// Runs the binary as a Sentinel (`--sentinel`); needs a [`config_file`](Self::config_file)
    /// with the `sentinel monitor ...` lines.
    pub fn sentinel(mut self) -> Self {
        self.sentinel = true;
        self
    }

    /// How long the server may take to answer `PING` (default [`READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the server, panicking with the reason when it cannot.
    pub fn start(self) -> RedisServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server on a free loopback port and waits until it answers `PING`.
    ///
    /// ```
    /// let server = tests::RedisServer::builder()
    ///     .arg("--maxmemory")
    ///     .arg("10mb")
    ///     .try_start()
    ///     .expect("redis-server starts");
    /// assert!(server.answers_ping());
    /// ```
    pub fn try_start(self) -> Result<RedisServer, HarnessError> {
        let binary = match &self.binary {
            Some(binary) => find_redis_server_in(Some(binary.as_os_str()), None)?,
            None => find_redis_server()?,
        };
        let debug_command = redis_server_version(&binary)?
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .is_some_and(|major| major >= 7);
        let dir = make_data_dir()?;
        let config_path = match &self.config_file {
            Some(text) => {
                let path = dir.join("redis.conf");
                fs::write(&path, text).map_err(|e| {
                    HarnessError::io(format!("cannot write `{}`", path.display()), e)
                })?;
                Some(path)
            }
            None => None,
        };
        let mut server = RedisServer {
            config_path,
            sentinel: self.sentinel,
            debug_command,
            log_path: dir.join("redis.log"),
            dir,
            binary,
            args: self.args,
            ready_timeout: self.ready_timeout,
            port: 0,
            child: None,
        };
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.launch()? {
                Launch::Ready => return Ok(server),
                Launch::PortTaken(log) => last_log = log,
            }
        }
        Err(HarnessError::PortRace {
            attempts: PORT_ATTEMPTS,
            log: last_log,
        })
    }
}

/// A `redis-server` process of the test's own, on `127.0.0.1`, without
/// persistence, in a temporary directory. Killed, and its directory removed,
/// when dropped, even when the test panics.
///
/// For tests that kill, restart, freeze or reconfigure their server. Ordinary
/// tests share one server per test process: see [`crate::redis_url`].
///
/// ```
/// let mut server = tests::RedisServer::start();
/// let port = server.port();
/// server.kill();
/// assert!(!tests::answers_ping(port));
/// server.restart();
/// assert_eq!(server.port(), port);
/// assert!(server.answers_ping());
/// ```
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    config_path: Option<PathBuf>,
    sentinel: bool,
    args: Vec<OsString>,
    ready_timeout: Duration,
    /// Whether this version knows `--enable-debug-command` (7.0 and later).
    debug_command: bool,
    port: u16,
    dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

enum Launch {
    Ready,
    /// Someone else bound the port first; carries the server's output.
    PortTaken(String),
}

impl RedisServer {
    /// Options: the binary, extra configuration, the readiness timeout.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder {
            binary: None,
            args: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            config_file: None,
            sentinel: false,
        }
    }

    /// Starts a server with the default configuration, panicking with the
    /// reason (and how to install redis-server) when it cannot.
    pub fn start() -> RedisServer {
        Self::builder().start()
    }

    /// Starts a server with the default configuration.
    pub fn try_start() -> Result<RedisServer, HarnessError> {
        Self::builder().try_start()
    }

    /// Its port on `127.0.0.1`; the same across [`restart`](Self::restart)s.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for raw commands (`PTTL`, garbage bytes under a key,
    /// `CLIENT PAUSE`, `DEBUG SLEEP`, ...).
    ///
    /// ```
    /// let server = tests::RedisServer::start();
    /// let mut con = server.client().get_connection().expect("connects");
    /// let pong: String = redis::cmd("PING").query(&mut con).expect("answers");
    /// assert_eq!(pong, "PONG");
    /// ```
    pub fn client(&self) -> redis::Client {
        // Cannot fail: the URL is well formed and opening does not connect.
        redis::Client::open(self.url())
            .unwrap_or_else(|e| panic!("invalid redis url `{}`: {e}", self.url()))
    }

    /// Its working directory, holding its log `redis.log`; removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (it may be frozen, see [`freeze`](Self::freeze)).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Whether it answers `PING` now.
    pub fn answers_ping(&self) -> bool {
        answers_ping(self.port)
    }

    /// Everything the server has written to stdout and stderr (its log),
    /// across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    /// Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::forget_pid(child.id());
            // Fails only when it has exited already; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM, as a deploy would, and waits for it
    /// (killing it after a few seconds). Does nothing when it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if process::send_signal(pid, Signal::Term).is_ok() {
            // A frozen server would hold the SIGTERM until continued.
            let _ = process::send_signal(pid, Signal::Cont);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    process::forget_pid(pid);
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        self.child = Some(child);
        self.kill();
    }

    /// Freezes the process with SIGSTOP: connections are accepted by the
    /// kernel but nothing is answered, like a server stuck in a long command.
    pub fn freeze(&mut self) {
        self.signal(Signal::Stop);
    }

    /// Resumes a process frozen by [`freeze`](Self::freeze).
    pub fn thaw(&mut self) {
        self.signal(Signal::Cont);
    }

    fn signal(&mut self, signal: Signal) {
        let Some(pid) = self.pid() else {
            panic!("redis-server on port {} is not running", self.port);
        };
        if let Err(e) = process::send_signal(pid, signal) {
            panic!("cannot send {signal:?} to redis-server (pid {pid}): {e}");
        }
    }

    /// Kills the server if it runs and starts it again on the same port,
    /// empty (there is no persistence). Panics when it cannot.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// [`restart`](Self::restart), returning the error instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        // The old process has released the port, but another process may
        // have taken it meanwhile: wait a little for it to go away.
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            match self.launch()? {
                Launch::Ready => return Ok(()),
                Launch::PortTaken(log) if Instant::now() >= deadline => {
                    return Err(HarnessError::PortRace { attempts: 1, log });
                }
                Launch::PortTaken(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        if let Some(path) = &self.config_path {
            command.arg(path);
        }
        if self.sentinel {
            command.arg("--sentinel");
        }
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            // No persistence: nothing written, nothing reloaded on restart.
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--loglevel", "notice"]);
        if self.debug_command {
            // Fault tests use `DEBUG SLEEP`; before 7.0 it is always enabled.
            command.args(["--enable-debug-command", "local"]);
        }
        command.args(&self.args).stdin(Stdio::null());
        command
    }

    fn command_line(&self) -> String {
        let command = self.command();
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|a| {
                let a = a.to_string_lossy();
                if a.is_empty() || a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Spawns the process on `self.port` and waits until it answers.
    fn launch(&mut self) -> Result<Launch, HarnessError> {
        debug_assert!(self.child.is_none());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| {
                HarnessError::io(format!("cannot open `{}`", self.log_path.display()), e)
            })?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log
            .try_clone()
            .map_err(|e| HarnessError::io("cannot duplicate the log file handle", e))?;
        let mut command = self.command();
        command.stdout(log).stderr(stderr);
        let child = process::spawn(command).map_err(|e| {
            HarnessError::io(format!("cannot start `{}`", self.binary.display()), e)
        })?;
        self.child = Some(child);

        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => Some(status),
                Some(Err(e)) => {
                    self.kill();
                    return Err(HarnessError::io("cannot check on redis-server", e));
                }
                None => unreachable!("the child was just set"),
            };
            if let Some(status) = exited {
                if let Some(child) = self.child.take() {
                    process::forget_pid(child.id());
                }
                let log = self.log_since(log_start);
                if log.contains("Address already in use") {
                    return Ok(Launch::PortTaken(log));
                }
                return Err(HarnessError::Exited {
                    status,
                    command: self.command_line(),
                    log,
                });
            }
            if answers_ping(self.port) {
                return Ok(Launch::Ready);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(HarnessError::NotReady {
                    waited: self.ready_timeout,
                    command: self.command_line(),
                    log: self.log_since(log_start),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of what the server wrote since byte `start` of its log.
    fn log_since(&self, start: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let from = start.max(len.saturating_sub(LOG_TAIL as u64));
            if file.seek(SeekFrom::Start(from)).is_ok() {
                let mut bytes = Vec::new();
                let _ = file.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        if text.trim().is_empty() {
            text = "(nothing)".to_owned();
        }
        text
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
        process::forget_dir(&self.dir);
    }
}

/// A port on 127.0.0.1 that was free a moment ago: bound by the OS, then
/// released for redis-server to bind (hence the retries on a race).
pub(crate) fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| HarnessError::io("cannot bind a loopback port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| HarnessError::io("cannot read the bound port", e))?
        .port();
    Ok(port)
}

/// A fresh directory for one server's working files and log.
fn make_data_dir() -> Result<PathBuf, HarnessError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!(
        "cache-rs-redis-{}-{n}-{}",
        std::process::id(),
        &random[..8]
    ));
    fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("cannot create `{}`", dir.display()), e))?;
    process::track_dir(&dir);
    Ok(dir)
}
