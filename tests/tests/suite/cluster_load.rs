//! Issue 21: changes under load. Slots of a real Redis Cluster resharded with
//! `redis-cli --cluster reshard` while 16 tasks write and read through the cache; and a lock
//! holder process frozen (SIGSTOP) past its lease while a successor takes the lock.
//!
//! Both start what they break (a cluster of their own, a child process), so they run once per
//! `scripts/test`, in its first (single-server) pass.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::Cache;

fn first_pass_only() -> bool {
    tests::topology() == tests::Topology::Single
}

/// Bound on `redis-cli --cluster reshard` and on each step of the lock test.
const STEP_BOUND: Duration = Duration::from_secs(60);
/// Slots moved from one primary to another: the first ones of the source (redis-cli moves a
/// source's slots in ascending order), where every key the tasks use lives.
const MOVED_SLOTS: u16 = 1000;
const TASKS: usize = 16;
const KEYS_PER_TASK: usize = 4;

/// One command on a node over a fresh synchronous connection.
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> T {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("a client of the node");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("a connection to node {port}: {e}"));
    cmd.query(&mut con)
        .unwrap_or_else(|e| panic!("{cmd:?} on node {port}: {e}"))
}

/// `(first slot, last slot, primary port, primary id)` of every range, as `node` sees it.
fn slot_ranges(node: u16) -> Vec<(u16, u16, u16, String)> {
    use redis::Value;
    let ranges: Vec<Value> = query(node, redis::cmd("CLUSTER").arg("SLOTS"));
    ranges
        .into_iter()
        .map(|range| {
            let Value::Array(items) = range else {
                panic!("CLUSTER SLOTS: a range is not an array: {range:?}");
            };
            match items.as_slice() {
                [Value::Int(first), Value::Int(last), Value::Array(primary), ..] => {
                    match primary.as_slice() {
                        [_, Value::Int(port), Value::BulkString(id), ..] => (
                            *first as u16,
                            *last as u16,
                            *port as u16,
                            String::from_utf8_lossy(id).into_owned(),
                        ),
                        other => panic!("CLUSTER SLOTS: a primary {other:?}"),
                    }
                }
                other => panic!("CLUSTER SLOTS: a range {other:?}"),
            }
        })
        .collect()
}

/// The primary serving `slot`, as `node` sees it: (port, id).
fn owner(node: u16, slot: u16) -> (u16, String) {
    slot_ranges(node)
        .into_iter()
        .find(|(first, last, _, _)| (*first..=*last).contains(&slot))
        .map(|(_, _, port, id)| (port, id))
        .unwrap_or_else(|| panic!("no node serves slot {slot}"))
}

/// Runs `command` to its end, killing it after [`STEP_BOUND`].
fn run_bounded(mut command: Command) -> std::process::Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(STEP_BOUND) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{command:?}: {e}")),
        Err(_) => {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -KILL {pid}"))
                .status();
            panic!("{command:?} did not finish within {STEP_BOUND:?}")
        }
    }
}

/// Keys under `cache` whose slot is below [`MOVED_SLOTS`]: `KEYS_PER_TASK` for each task.
fn keys_in_moved_slots(cache: &Cache, node: u16) -> Vec<Vec<String>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{node}/")).expect("a client");
    let mut con = client.get_connection().expect("a connection");
    (0..TASKS)
        .map(|task| {
            let mut keys = Vec::new();
            let mut candidates = (0..).map(|i| format!("t{task}:k{i}"));
            while keys.len() < KEYS_PER_TASK {
                // 200 candidates a round trip; about 6% land in the moved slots.
                let batch: Vec<String> = candidates.by_ref().take(200).collect();
                let mut pipe = redis::pipe();
                for key in &batch {
                    pipe.cmd("CLUSTER")
                        .arg("KEYSLOT")
                        .arg(cache.full_key(key).expect("a valid key"));
                }
                let slots: Vec<u16> = pipe.query(&mut con).expect("CLUSTER KEYSLOT");
                keys.extend(
                    batch
                        .into_iter()
                        .zip(slots)
                        .filter(|(_, slot)| *slot < MOVED_SLOTS)
                        .map(|(key, _)| key)
                        .take(KEYS_PER_TASK - keys.len()),
                );
            }
            keys
        })
        .collect()
}

/// Waits until every node agrees on the slots' owners (`redis-cli --cluster check` passes):
/// after a reshard the new configuration reaches the other nodes by gossip, and redis-cli
/// refuses to reshard a cluster whose nodes disagree ("Nodes don't agree about
/// configuration"). Bounded by `STEP_BOUND`.
fn wait_until_nodes_agree(entry: u16) {
    let started = Instant::now();
    loop {
        let mut check = Command::new(tests::find_redis_cli().expect("redis-cli"));
        check
            .arg("--cluster")
            .arg("check")
            .arg(format!("127.0.0.1:{entry}"));
        let output = run_bounded(check);
        if output.status.success() {
            return;
        }
        assert!(
            started.elapsed() < STEP_BOUND,
            "the nodes did not agree within {STEP_BOUND:?}:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Moves `MOVED_SLOTS` slots (with their keys) from the primary `from` to `to`, once the nodes
/// agree on the configuration.
fn reshard(entry: u16, from: &str, to: &str) -> Duration {
    wait_until_nodes_agree(entry);
    let started = Instant::now();
    let mut command = Command::new(tests::find_redis_cli().expect("redis-cli"));
    command
        .arg("--cluster")
        .arg("reshard")
        .arg(format!("127.0.0.1:{entry}"))
        .args(["--cluster-from", from, "--cluster-to", to])
        .args(["--cluster-slots", &MOVED_SLOTS.to_string(), "--cluster-yes"]);
    let output = run_bounded(command);
    assert!(
        output.status.success(),
        "redis-cli --cluster reshard failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// 16 tasks write and read their keys (each reads its own write back) while the slots of
/// every key move from one primary to another and back with `redis-cli --cluster reshard`:
/// no call returns an error, and every read returns the value last written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_load_surface_no_error_and_no_stale_read() {
    if !first_pass_only() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(tests::RedisCluster::start)
        .await
        .expect("the cluster starts");
    let cache = Cache::builder()
        .cluster_nodes(cluster.urls())
        .namespace(tests::unique_namespace())
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2))
        .build()
        .expect("a cluster cache builds");
    let entry = cluster.nodes()[0].port();
    let (source_port, source) = owner(entry, 0);
    let (target_port, target) = owner(entry, 16383);
    assert_ne!(source, target);
    let keys = keys_in_moved_slots(&cache, entry);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = keys
        .into_iter()
        .map(|keys| {
            let (cache, stop, calls, problems) =
                (cache.clone(), stop.clone(), calls.clone(), problems.clone());
            tokio::spawn(async move {
                let mut last = vec![0u64; keys.len()];
                while !stop.load(Ordering::Relaxed) {
                    for (i, key) in keys.iter().enumerate() {
                        let next = last[i] + 1;
                        let wrote = cache.set(key, &next, None).await;
                        let read = cache.get::<u64>(key).await;
                        calls.fetch_add(2, Ordering::Relaxed);
                        let problem = match (&wrote, &read) {
                            (Err(e), _) => Some(format!("set {key} = {next}: {e}")),
                            (Ok(()), Ok(Some(v))) if *v == next => None,
                            (Ok(()), other) => {
                                Some(format!("get {key} after writing {next}: {other:?}"))
                            }
                        };
                        last[i] = next;
                        if let Some(p) = problem {
                            problems.lock().expect("not poisoned").push(p);
                        }
                    }
                    // A breath per round: load, not a busy loop that starves the other tests.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                keys.into_iter().zip(last).collect::<Vec<_>>()
            })
        })
        .collect();

    // Under way before the slots move, and again between the two moves.
    let under_way = |at_least: u64| {
        let calls = calls.clone();
        async move {
            let since = Instant::now();
            while calls.load(Ordering::Relaxed) < at_least {
                assert!(since.elapsed() < STEP_BOUND, "the tasks make no progress");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    under_way(200).await;
    let (there, back) = {
        let (s, t) = (source.clone(), target.clone());
        let there = tokio::task::spawn_blocking(move || reshard(entry, &s, &t))
            .await
            .expect("joined");
        assert_eq!(owner(target_port, 0).1, target, "slot 0 moved");
        under_way(calls.load(Ordering::Relaxed) + 200).await;
        let (s, t) = (source.clone(), target.clone());
        let back = tokio::task::spawn_blocking(move || reshard(entry, &t, &s))
            .await
            .expect("joined");
        assert_eq!(owner(source_port, 0).1, source, "slot 0 moved back");
        (there, back)
    };
    under_way(calls.load(Ordering::Relaxed) + 200).await;
    stop.store(true, Ordering::Relaxed);
    let mut last_written = Vec::new();
    for task in tasks {
        last_written.extend(task.await.expect("no task panicked"));
    }
    // A cache that saw none of it reads the last value of every key.
    let fresh = Cache::builder()
        .cluster_nodes(cluster.urls())
        .namespace(cache.key_prefix().trim_end_matches(':'))
        .build()
        .expect("a second cache builds");
    for (key, last) in &last_written {
        assert_eq!(
            fresh.get::<u64>(key).await.expect("get after"),
            Some(*last),
            "{key}"
        );
    }
    let problems = problems.lock().expect("not poisoned").clone();
    eprintln!(
        "reshard under load: {} calls by {TASKS} tasks on {} keys; {MOVED_SLOTS} slots moved in {there:?} and back in {back:?}; {} errors or stale reads",
        calls.load(Ordering::Relaxed),
        last_written.len(),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} errors or stale reads, the first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}

/// A child process that is killed when dropped (a test that fails leaves none behind).
struct Holder {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Holder {
    fn spawn(url: &str, namespace: &str, name: &str, lease: Duration) -> Holder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lock_holder"))
            .args([url, namespace, name, &lease.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the lock holder starts");
        let stdout = child.stdout.take().expect("its stdout");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Holder { child, lines }
    }

    /// The next line the holder prints, within [`STEP_BOUND`].
    fn line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(STEP_BOUND)
            .unwrap_or_else(|_| panic!("the lock holder printed no `{what}` line"))
    }

    fn signal(&self, signal: &str) {
        // The shell's `kill`: the suite has no libc calls of its own.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {}", self.child.id()))
            .status()
            .expect("sh runs");
        assert!(status.success(), "kill -{signal}: {status}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process holding a lock (with a watchdog) is frozen with SIGSTOP past its lease: a
/// successor takes the lock with a larger fencing token; once woken, the old holder's guard
/// says it is lost, and it can neither extend nor release the successor's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_frozen_past_its_lease_loses_the_lock_to_a_successor() {
    if !first_pass_only() {
        return;
    }
    let lease = Duration::from_millis(1_000);
    let namespace = tests::unique_namespace();
    let cache = Cache::builder()
        .url(tests::redis_url())
        .namespace(namespace.as_str())
        .build()
        .expect("a cache builds");
    let name = "invoice:42";
    let holder = Holder::spawn(&tests::redis_url(), &namespace, name, lease);
    let first: u64 = holder
        .line("token")
        .strip_prefix("token ")
        .and_then(|t| t.parse().ok())
        .expect("`token <n>`");
    assert!(
        cache.lock(name).try_acquire().await.expect("try").is_none(),
        "the child holds the lock"
    );

    holder.signal("STOP");
    let frozen = Instant::now();
    // Its watchdog is frozen too: the lease runs out, and the successor is woken by that.
    let successor = cache
        .lock(name)
        .ttl(Duration::from_secs(30))
        .wait(STEP_BOUND)
        .acquire()
        .await
        .expect("the successor takes the lock once the frozen holder's lease ran out");
    let taken_after = frozen.elapsed();
    let second = successor.token();
    assert!(second > first, "fencing: {second} after {first}");

    holder.signal("CONT");
    holder
        .child
        .stdin
        .as_ref()
        .expect("its stdin")
        .write_all(b"check\n")
        .expect("the holder reads its stdin");
    let lost = holder.line("lost");
    let extend = holder.line("extend");
    let release = holder.line("release");
    assert_eq!(lost, "lost true", "the woken holder knows it lost the lock");
    assert_eq!(
        extend, "extend Ok(false)",
        "it cannot extend the successor's lock"
    );
    assert_eq!(
        release, "release Ok(false)",
        "it cannot release the successor's lock"
    );

    // The successor's lock is untouched: still held, and its own.
    assert!(cache.lock(name).try_acquire().await.expect("try").is_none());
    assert!(!successor.is_lost());
    assert!(successor
        .extend(Duration::from_secs(30))
        .await
        .expect("extend"));
    assert!(successor.release().await.expect("release"));
    eprintln!(
        "frozen holder: token {first}, the successor's {second} taken {taken_after:?} after the freeze (lease {lease:?}); the woken holder: {lost}, {extend}, {release}"
    );
    drop(holder);
}
