//! Why the harness could not give a test its `redis-server`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// How to get a `redis-server`, appended to every "not found" message.
const HOW_TO_INSTALL: &str = "\
the integration tests run against a real redis-server (there is no mock); to get one:
  - install it: `apt-get install redis-server` (Debian/Ubuntu; prefix `sudo` when not root)
  - or set `REDIS_SERVER_BIN` to the path of a redis-server binary
  - or run `scripts/test`, which installs it when it is missing";

/// Why a `redis-server` could not be found, started or made ready.
#[derive(Debug)]
#[non_exhaustive]
pub enum HarnessError {
    /// No usable binary: `tried` is the explicit path that was rejected
    /// (from `REDIS_SERVER_BIN` or the builder), or `None` after a `PATH` search.
    NotFound {
        /// The explicit path that does not name an executable file.
        tried: Option<PathBuf>,
    },
    /// An operating-system call failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The server exited before it answered `PING`.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Its command line.
        command: String,
        /// The end of its output.
        log: String,
    },
    /// The server did not answer `PING` in time.
    NotReady {
        /// How long the harness waited.
        waited: Duration,
        /// Its command line.
        command: String,
        /// The end of its output.
        log: String,
    },
    /// A cluster or Sentinel setup did not come together (`what` says which step, with the
    /// nodes' answers).
    Topology {
        /// The step and what the nodes said.
        what: String,
    },
    /// Every free port tried was taken by someone else before the server bound it.
    PortRace {
        /// How many ports were tried.
        attempts: usize,
        /// The output of the last attempt.
        log: String,
    },
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::NotFound { tried: Some(path) } => write!(
                f,
                "redis-server not found: `{}` (from `REDIS_SERVER_BIN`) is not an executable file\n{HOW_TO_INSTALL}",
                path.display()
            ),
            HarnessError::NotFound { tried: None } => write!(
                f,
                "redis-server not found: it is not on `PATH` and `REDIS_SERVER_BIN` is not set\n{HOW_TO_INSTALL}"
            ),
            HarnessError::Io { context, source } => write!(f, "{context}: {source}"),
            HarnessError::Exited {
                status,
                command,
                log,
            } => write!(
                f,
                "redis-server exited before answering PING ({status})\ncommand: {command}\noutput:\n{log}"
            ),
            HarnessError::NotReady {
                waited,
                command,
                log,
            } => write!(
                f,
                "redis-server did not answer PING within {waited:?}\ncommand: {command}\noutput:\n{log}"
            ),
            HarnessError::Topology { what } => write!(f, "{what}"),
            HarnessError::PortRace { attempts, log } => write!(
                f,
                "redis-server could not bind a free loopback port in {attempts} attempts (another process took each one first)\nlast output:\n{log}"
            ),
        }
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HarnessError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
