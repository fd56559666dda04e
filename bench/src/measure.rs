//! Running one operation under load: a warm-up, then rounds bounded by time and by count,
//! with every operation's latency recorded.
//!
//! Latencies go into a `Vec<u64>` per task, preallocated for the round's share of operations,
//! and are sorted once per round. At these counts (at most `round_ops` per round) sorting is
//! a few milliseconds, and exact percentiles need no extra dependency: an HDR histogram would
//! only pay off for much longer runs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long and how much each workload runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Time of the discarded warm-up before each measured round.
    pub warmup: Duration,
    /// Measured rounds of each workload; the reported numbers are medians across them.
    pub rounds: usize,
    /// A round ends after this long...
    pub round_time: Duration,
    /// ...or after this many operations, whichever comes first.
    pub round_ops: u64,
}

/// One measured round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Operations measured.
    pub ops: u64,
    /// Operations run, warm-up included (for the caller's hit/miss accounting).
    pub ops_with_warmup: u64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time of this process (all threads) per operation, warm-up included.
    pub client_cpu_us: f64,
    /// CPU time of redis-server per operation, warm-up included.
    pub server_cpu_us: f64,
}

impl Round {
    /// A round of `delays.len()` operations over `elapsed`, each taking its delay (in
    /// nanoseconds); no CPU figures (the caller adds them where it measures them).
    pub fn of_delays(elapsed: std::time::Duration, delays: &mut [u64]) -> Round {
        delays.sort_unstable();
        let pct = |q: f64| match delays.len() {
            0 => f64::NAN,
            n => delays[((n - 1) as f64 * q).round() as usize] as f64 / 1_000.0,
        };
        Round {
            ops: delays.len() as u64,
            ops_with_warmup: delays.len() as u64,
            ops_per_sec: delays.len() as f64 / elapsed.as_secs_f64(),
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            client_cpu_us: f64::NAN,
            server_cpu_us: f64::NAN,
        }
    }
}

/// A round of a visibility workload: one delay per cycle (how soon a change made in one place
/// is seen in another). `cycle(i)` makes its change and returns the delay it measured
/// (usually with [`poll_until`]). Cycles run for the plan's warm-up (discarded), then for its
/// round time (at least one); p50/p99 are of the delays, ops/s counts cycles.
pub async fn delay_round<Fut: Future<Output = Duration>>(
    plan: &Plan,
    mut cycle: impl FnMut(u64) -> Fut,
) -> Round {
    let mut i = 0u64;
    let mut run_for = async |time: Duration| {
        let started = Instant::now();
        let mut delays = Vec::new();
        while started.elapsed() < time || delays.is_empty() {
            delays.push(cycle(i).await.as_nanos() as u64);
            i += 1;
        }
        (started.elapsed(), delays)
    };
    let _ = run_for(plan.warmup).await;
    let (elapsed, mut delays) = run_for(plan.round_time).await;
    Round::of_delays(elapsed, &mut delays)
}

/// Polls `done` until it holds, yielding between polls; how long that took. Panics with
/// `what` after 5 s.
pub async fn poll_until<Fut: Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> Fut,
) -> Duration {
    let t0 = Instant::now();
    while !done().await {
        assert!(t0.elapsed() < Duration::from_secs(5), "{what}");
        tokio::task::yield_now().await;
    }
    t0.elapsed()
}

/// The rounds of one workload, and their medians.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    pub rounds: Vec<Round>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Measurement {
    fn median(&self, f: fn(&Round) -> f64) -> f64 {
        median(self.rounds.iter().map(f).collect())
    }

    /// `f` of this workload over `f` of `other`, round by round, and the median of those
    /// ratios. Rounds with the same number ran moments apart (the caller runs compared
    /// workloads next to each other), so a change in the host's background load, which moves
    /// whole rounds by up to 30% here, cancels out of each ratio instead of landing on one side.
    pub fn paired_ratio(&self, other: &Measurement, f: fn(&Round) -> f64) -> f64 {
        median(
            self.rounds
                .iter()
                .zip(&other.rounds)
                .map(|(a, b)| f(a) / f(b))
                .collect(),
        )
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.median(|r| r.ops_per_sec)
    }

    pub fn p50_us(&self) -> f64 {
        self.median(|r| r.p50_us)
    }

    pub fn p99_us(&self) -> f64 {
        self.median(|r| r.p99_us)
    }

    pub fn client_cpu_us(&self) -> f64 {
        self.median(|r| r.client_cpu_us)
    }

    pub fn server_cpu_us(&self) -> f64 {
        self.median(|r| r.server_cpu_us)
    }

    /// Lowest and highest ops/s of the rounds: how noisy the median is.
    pub fn spread(&self) -> (f64, f64) {
        self.rounds
            .iter()
            .fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
                (lo.min(r.ops_per_sec), hi.max(r.ops_per_sec))
            })
    }
}

/// Runs `op` from `concurrency` tokio tasks at once: a warm-up, then one measured round.
/// `op` receives the index of the operation within its round (0, 1, 2, ...), which the
/// workloads map onto keys.
///
/// One round per call: the caller interleaves the rounds of all workloads, so a change in
/// background load (this is a shared 2-core machine) lands on every workload alike instead
/// of on whichever ran at the time.
pub async fn measure<F, Fut>(plan: &Plan, concurrency: usize, op: F) -> Round
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let warm = round(&op, concurrency, plan.warmup, plan.round_ops).await;
    let mut r = round(&op, concurrency, plan.round_time, plan.round_ops).await;
    r.ops_with_warmup = r.ops + warm.ops;
    r
}
async fn round<F, Fut>(op: &Arc<F>, concurrency: usize, time: Duration, max_ops: u64) -> Round
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let per_task = (max_ops as usize).div_ceil(concurrency) + 64;
    let started = Instant::now();
    let deadline = started + time;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let op = op.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max_ops {
                        break;
                    }
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    op(i).await;
                    latencies.push(t0.elapsed().as_nanos() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(per_task * concurrency);
    for task in tasks {
        match task.await {
            Ok(latencies) => all.extend(latencies),
            // An operation panicked (a wrong value, a Redis error): stop the benchmark with it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a benchmark task did not finish: {e}"),
        }
    }
    Round::of_delays(started.elapsed(), &mut all)
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`; `None` where that
/// does not exist. The unit is the kernel's clock tick (`USER_HZ`, 100 on Linux), so use it
/// over periods of a second or more.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_ascii_whitespace();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
