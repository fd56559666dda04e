//! Spawning `redis-server` so that it cannot outlive the test process.
//!
//! Three layers, because a test process can end in many ways (normal exit,
//! failed assertion, panic in a static initialiser, abort, SIGKILL):
//! - owned servers are killed on `Drop`;
//! - every live server is killed by a `libc::atexit` hook, which also covers
//!   the shared server that lives in a `static` and is never dropped;
//! - every server is spawned with `PR_SET_PDEATHSIG = SIGKILL`, which covers
//!   abort and SIGKILL of the test process. The kernel sends that signal when
//!   the *thread* that forked the child exits, so all spawns go through one
//!   dedicated thread that lives as long as the process.
//!
//! This is the only module of the harness with `unsafe` code; each block is
//! one libc call with no pointers in it.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Signals the harness sends to its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// The sender half lives in this static for the whole process, so the
/// spawner thread's receive loop never ends and the thread never exits
/// (which would fire `PR_SET_PDEATHSIG` in every server it spawned).
static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();

/// Pids of servers that are running, killed by the exit hook.
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Data directories of servers that exist, removed by the exit hook.
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

static EXIT_HOOK: Once = Once::new();

/// Spawns `command` from the long-lived spawner thread, with the parent-death
/// signal set, and records its pid so that the exit hook kills it.
pub(crate) fn spawn(mut command: Command) -> io::Result<Child> {
    install_exit_hook();
    set_parent_death_signal(&mut command);
    let spawner = SPAWNER.get_or_init(start_spawner);
    let (reply, response) = mpsc::channel();
    spawner
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the redis-server spawner thread is gone"))?;
    let child = response
        .recv()
        .map_err(|_| io::Error::other("the redis-server spawner thread is gone"))??;
    lock(&LIVE_PIDS).push(child.id());
    Ok(child)
}

fn start_spawner() -> mpsc::Sender<SpawnRequest> {
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    let spawned = thread::Builder::new()
        .name("redis-server-spawner".into())
        .spawn(move || {
            for SpawnRequest { mut command, reply } in requests {
                // The requester may have given up (it cannot, but a failed
                // send only means nobody is left to kill the child: the exit
                // hook and the parent-death signal still do).
                let _ = reply.send(command.spawn());
            }
        });
    if let Err(e) = spawned {
        // Without the thread no server can be started; every test that
        // needs one would fail anyway, with this message.
        panic!("cannot start the redis-server spawner thread: {e}");
    }
    sender
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut Command) {
    let parent = std::process::id();
    let pre_exec = move || {
        // Runs in the forked child before exec: only async-signal-safe
        // calls, no allocation.
        #[allow(unsafe_code)]
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and no
        // pointers; it only changes this (child) process's own attributes.
        let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if set == -1 {
            return Err(io::Error::last_os_error());
        }
        // If the test process died between fork and prctl, the signal was
        // never sent: notice it and do not start an orphan.
        #[allow(unsafe_code)]
        // SAFETY: getppid has no arguments and cannot fail.
        let current_parent = unsafe { libc::getppid() };
        if u32::try_from(current_parent).ok() != Some(parent) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: `pre_exec` is unsafe because the closure runs between fork and
    // exec; ours calls only prctl and getppid, which are async-signal-safe,
    // and touches no locks or heap memory.
    unsafe {
        command.pre_exec(pre_exec);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_command: &mut Command) {
    // No parent-death signal outside Linux: Drop and the exit hook remain.
}

fn install_exit_hook() {
    EXIT_HOOK.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: registers a plain `extern "C" fn()` with no captured state;
        // atexit only stores the pointer. A failure (non-zero) leaves Drop
        // and the parent-death signal, so it is not fatal.
        let _ = unsafe { libc::atexit(kill_live_servers_at_exit) };
    });
}

extern "C" fn kill_live_servers_at_exit() {
    let pids: Vec<u32> = std::mem::take(&mut *lock(&LIVE_PIDS));
    for &pid in &pids {
        let _ = send_signal(pid, Signal::Kill);
    }
    // Reap them (bounded), so that their files are closed before the
    // directories go.
    let deadline = Instant::now() + Duration::from_secs(2);
    for &pid in &pids {
        while !reaped(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    }
    for dir in std::mem::take(&mut *lock(&LIVE_DIRS)) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether `pid` has exited (and is now reaped); errors count as exited,
/// since then there is nothing left to wait for.
fn reaped(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    let mut status: libc::c_int = 0;
    #[allow(unsafe_code)]
    // SAFETY: `status` is a valid, exclusive, live c_int for the call.
    let result = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    result != 0
}

/// Sends `signal` to the process `pid`.
pub(crate) fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    #[allow(unsafe_code)]
    // SAFETY: kill takes two integers and no pointers. `pid` is one of our
    // own children that has not been reaped yet, so it cannot name an
    // unrelated process that reused the number.
    let result = unsafe { libc::kill(pid, signal.raw()) };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops the exit hook from killing `pid` (about to be killed and reaped
/// through its `Child`, after which the number may be reused).
pub(crate) fn forget_pid(pid: u32) {
    lock(&LIVE_PIDS).retain(|&p| p != pid);
}

pub(crate) fn track_dir(dir: &Path) {
    lock(&LIVE_DIRS).push(dir.to_path_buf());
}

pub(crate) fn forget_dir(dir: &Path) {
    lock(&LIVE_DIRS).retain(|d| d != dir);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a plain Vec behind,
    // still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
