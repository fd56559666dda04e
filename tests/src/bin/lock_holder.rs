//! A process that holds a lock, for the suite's frozen-holder test (`cluster_load.rs`): the
//! test freezes it (SIGSTOP) past its lease, lets a successor take the lock, wakes it and asks
//! what its guard says.
//!
//! `lock_holder <redis url> <namespace> <lock name> <lease ms>`: takes the lock with a
//! watchdog, prints `token <n>`, then waits for a line on stdin and prints `lost <bool>`,
//! `extend <result>` and `release <result>`, one a line, and exits.

use std::io::{BufRead, Write};
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, namespace, name, lease_ms] = args.as_slice() else {
        panic!("usage: lock_holder <redis url> <namespace> <lock name> <lease ms>; got {args:?}");
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("the lease in milliseconds"));
    let cache = cache_core::Cache::builder()
        .url(url.as_str())
        .namespace(namespace.as_str())
        .build()
        .expect("a cache builds");
    let guard = cache
        .lock(name)
        .ttl(lease)
        .watchdog(true)
        .acquire()
        .await
        .expect("the lock is free");
    say(&format!("token {}", guard.token()));
    // Blocks this process until the test writes a line (or closes stdin).
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || {
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await;
    say(&format!("lost {}", guard.is_lost()));
    say(&format!("extend {:?}", guard.extend(lease).await));
    say(&format!("release {:?}", guard.release().await));
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}
