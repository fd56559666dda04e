//! The load benchmark: our `#[cached]` against raw redis-rs, the `cached` crate and moka, in
//! one run, against one loopback redis-server, on the same logical data.
//!
//! ```text
//! cargo run --release -p bench -- --out target/bench-results.json
//! ```
//!
//! It starts its own redis-server on a free loopback port (through the test harness) unless
//! `REDIS_URL` is set, writes 10k ~100-byte users into each system under test, then runs
//! each workload (a warm-up, then several rounds bounded in time and count) on a tokio
//! runtime with two workers, printing ops/s and p50/p99 latency (medians across rounds),
//! each of ours as a ratio to its reference (the median of the per-round ratios, compared
//! workloads running next to each other), and whether the issue's targets hold. `--out`
//! writes the rows as JSON so runs can be compared. Workloads live in `workloads.rs`.

mod batch;
mod http;
mod measure;
mod near;
mod trust;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::measure::{Measurement, Plan};
use crate::workloads::{Bar, Ctx, Deployment, Expect};

const USAGE: &str = "\
usage: bench [--out FILE] [--only TEXT]... [--rounds N] [--round-secs S] [--round-ops N]
             [--warmup-secs S] [--pool-size N] [--alone] [--cluster] [--list]

  --out FILE       write the rows as JSON (workload, ops_per_sec, p50_us, p99_us,
                   reference, ratio, p50_ratio, client_cpu_us_per_op,
                   server_cpu_us_per_op)
  --only TEXT      run only workloads whose name contains TEXT (repeatable); their
                   references run too
  --rounds N       measured rounds per workload (default 25), interleaved across
                   workloads; numbers are medians, ratios medians of per-round
                   ratios
  --round-secs S   a round stops after S seconds (default 0.4)...
  --round-ops N    ...or after N operations (default 300000)
  --warmup-secs S  discarded warm-up before each round (default 0.1)
  --alone          without the references of the --only workloads (to profile one)
  --pool-size N    our cache's connection pool size (default: the library's)
  --cluster        run against a local Redis Cluster (six redis-servers, three
                   primaries) instead of one server: ours and raw redis-rs on a
                   cluster connection; the `cached` crate (one node only) is left out
  --list           print the workloads and exit

REDIS_URL=redis://...  use that server instead of starting one (keys are prefixed
                       bench<pid>: and expire after 15 minutes)
REDIS_CLUSTER_NODES=redis://h:p,...  with --cluster, use that cluster";

struct Args {
    out: Option<PathBuf>,
    only: Vec<String>,
    list: bool,
    alone: bool,
    cluster: bool,
    pool_size: Option<u32>,
    plan: Plan,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        out: None,
        only: Vec::new(),
        list: false,
        alone: false,
        cluster: false,
        pool_size: None,
        // Many short rounds rather than a few long ones: the host's load changes within
        // seconds, and a ratio is the median of per-round ratios, so the closer in time the two
        // sides of a pair run and the more pairs there are, the less of that change is left in
        // it. Over four runs of 25 rounds of 0.4 s every target held and none moved by more
        // than 0.06; two runs of 9 rounds of 1.5 s, on the same binary and host, put the c=1
        // hit's p50 ratio at 0.96x and then 1.21x.
        plan: Plan {
            warmup: Duration::from_millis(100),
            rounds: 25,
            round_time: Duration::from_millis(400),
            round_ops: 300_000,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let secs = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("`{v}` is not a positive number of seconds"))
        };
        let count = |v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{v}` is not a positive integer"))
        };
        match flag.as_str() {
            "--out" => args.out = Some(PathBuf::from(value()?)),
            "--only" => args.only.push(value()?),
            "--rounds" => args.plan.rounds = count(value()?)? as usize,
            "--round-secs" => args.plan.round_time = secs(value()?)?,
            "--round-ops" => args.plan.round_ops = count(value()?)?,
            "--warmup-secs" => args.plan.warmup = secs(value()?)?,
            "--pool-size" => args.pool_size = Some(count(value()?)?.min(u32::MAX.into()) as u32),
            "--list" => args.list = true,
            "--alone" => args.alone = true,
            "--cluster" => args.cluster = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

/// One row of the report and of the JSON file.
#[derive(Debug, Serialize)]
struct Row {
    workload: &'static str,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    reference: Option<&'static str>,
    /// ops/s of this workload over ops/s of its reference: the median of the per-round
    /// ratios.
    ratio: Option<f64>,
    /// p50 of this workload over p50 of its reference, the same way.
    p50_ratio: Option<f64>,
    /// CPU microseconds per operation of the benchmark process (so of the client library:
    /// the tasks, the connection drivers) and of redis-server.
    client_cpu_us_per_op: f64,
    server_cpu_us_per_op: f64,
    #[serde(skip)]
    spread: (f64, f64),
    #[serde(skip)]
    measured: Measurement,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    let all: Vec<_> = workloads::workloads()
        .into_iter()
        .chain(batch::workloads())
        .chain(http::workloads())
        .chain(trust::workloads())
        .chain(near::workloads())
        .filter(|w| !(args.cluster && workloads::single_server_only(w.name)))
        .collect();
    if args.list {
        for w in &all {
            println!("{}", w.name);
        }
        return ExitCode::SUCCESS;
    }
    let selected: Vec<_> = {
        let wanted = |name: &str| {
            args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()))
        };
        let mut names: Vec<&str> = all
            .iter()
            .filter(|w| wanted(w.name))
            .flat_map(|w| [Some(w.name), w.reference.filter(|_| !args.alone)])
            .flatten()
            .collect();
        names.sort_unstable();
        names.dedup();
        all.into_iter()
            .filter(|w| names.contains(&w.name))
            .collect()
    };
    if selected.is_empty() {
        eprintln!("error: no workload matches {:?} (see --list)", args.only);
        return ExitCode::from(2);
    }

    // Our own server (or cluster) unless REDIS_URL (REDIS_CLUSTER_NODES) is given; dropped
    // (killed) at the end of main.
    let given = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (deployment, _servers): (Deployment, Option<Box<dyn std::any::Any>>) = if args.cluster {
        match given("REDIS_CLUSTER_NODES") {
            Some(nodes) => (
                Deployment::Cluster(nodes.split(',').map(|n| n.trim().to_owned()).collect()),
                None,
            ),
            None => match tests::RedisCluster::try_start() {
                Ok(cluster) => (Deployment::Cluster(cluster.urls()), Some(Box::new(cluster))),
                Err(e) => {
                    eprintln!("error: cannot start a redis cluster: {e}");
                    return ExitCode::FAILURE;
                }
            },
        }
    } else {
        match given("REDIS_URL") {
            Some(url) => (Deployment::Single(url), None),
            None => match tests::RedisServer::try_start() {
                Ok(server) => (Deployment::Single(server.url()), Some(Box::new(server))),
                Err(e) => {
                    eprintln!("error: cannot start redis-server: {e}");
                    return ExitCode::FAILURE;
                }
            },
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = runtime.block_on(run(&deployment, args.plan, args.pool_size, &selected));

    print_targets(&rows);
    if let Some(out) = &args.out {
        let json = match serde_json::to_string_pretty(&rows) {
            Ok(json) => json,
            Err(e) => {
                eprintln!("error: cannot encode the results: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(out, json + "\n") {
            eprintln!("error: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
        println!("\nwrote {}", out.display());
    }
    ExitCode::SUCCESS
}

async fn run(
    deployment: &Deployment,
    plan: Plan,
    pool_size: Option<u32>,
    selected: &[workloads::Workload],
) -> Vec<Row> {
    println!(
        "redis {deployment:?}; tokio multi-thread runtime, 2 workers; {} keys per system; \
         {} rounds of every workload, interleaved, each a {:?} warm-up then at most {:?} or \
         {} ops measured (medians shown; ratios are medians of per-round ratios)",
        workloads::KEYS,
        plan.rounds,
        plan.warmup,
        plan.round_time,
        plan.round_ops,
    );
    let cx: &'static Ctx = Box::leak(Box::new(Ctx::new(deployment, plan, pool_size).await));
    let started = Instant::now();
    cx.populate().await;
    let stats = cx.ours.stats();
    if stats.backend_errors + stats.encode_errors > 0 {
        panic!("populating our cache failed: {stats:?}");
    }
    let sample = serde_json::to_vec(&workloads::User::load(1234)).map_or(0, |v| v.len());
    println!(
        "populated in {:.1?} (a value is {sample} bytes of JSON; the cached crate stores MessagePack)\n",
        started.elapsed()
    );

    // Rounds are interleaved: round 1 of every workload, then round 2 of every workload, ...
    // Compared workloads are neighbours in the list; every other round runs it backwards, so
    // neither side of a comparison always runs first.
    let mut measured: Vec<Measurement> = vec![Measurement::default(); selected.len()];
    for round in 1..=cx.plan.rounds {
        print!("round {round}/{}:", cx.plan.rounds);
        let mut order: Vec<usize> = (0..selected.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let (w, m) = (&selected[i], &mut measured[i]);
            let before = workloads::computes();
            let (client_cpu, server_cpu) = (measure::process_cpu(), cx.server_cpu().await);
            let mut r = (w.run)(cx).await;
            let per_op = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
                (Some(b), Some(a)) => {
                    a.saturating_sub(b).as_secs_f64() * 1e6 / r.ops_with_warmup.max(1) as f64
                }
                _ => f64::NAN,
            };
            r.client_cpu_us = per_op(client_cpu, measure::process_cpu());
            r.server_cpu_us = per_op(server_cpu, cx.server_cpu().await);
            let computed = workloads::computes() - before;
            match w.expect {
                Expect::Hits if computed != 0 => panic!(
                    "{}: {computed} of {} operations ran the function: the data is not all \
                     cached (our counters: {:?})",
                    w.name,
                    r.ops_with_warmup,
                    cx.ours.stats()
                ),
                Expect::Misses if computed != r.ops_with_warmup => panic!(
                    "{}: {computed} of {} operations ran the function: some were hits",
                    w.name, r.ops_with_warmup
                ),
                _ => {}
            }
            m.rounds.push(r);
            print!(".");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        println!();
    }

    println!("\ncpu us/op: CPU time per operation of this process + of redis-server");
    println!(
        "{:<24} {:>10} {:>8} {:>8} {:>19} {:>11}   ratio to reference",
        "workload", "ops/s", "p50 us", "p99 us", "ops/s min..max", "cpu us/op"
    );
    let mut rows: Vec<Row> = Vec::with_capacity(selected.len());
    for (w, m) in selected.iter().zip(&measured) {
        let reference = w.reference.and_then(|r| {
            let i = selected.iter().position(|s| s.name == r)?;
            Some(&measured[i])
        });
        let row = Row {
            workload: w.name,
            ops_per_sec: m.ops_per_sec(),
            p50_us: m.p50_us(),
            p99_us: m.p99_us(),
            reference: w.reference,
            ratio: reference.map(|r| m.paired_ratio(r, |r| r.ops_per_sec)),
            p50_ratio: reference.map(|r| m.paired_ratio(r, |r| r.p50_us)),
            client_cpu_us_per_op: m.client_cpu_us(),
            server_cpu_us_per_op: m.server_cpu_us(),
            spread: m.spread(),
            measured: m.clone(),
        };
        print_row(&row);
        rows.push(row);
    }
    // Ours is a pool of multiplexed connections; the raw reference and each of the cached
    // crate's stores have one each. Say how many there were.
    let mut conn = cx.raw.clone();
    if let Ok(info) = redis::cmd("INFO")
        .arg("clients")
        .query_async::<String>(&mut conn)
        .await
    {
        if let Some(n) = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
        {
            println!("\nconnections to redis-server at the end: {}", n.trim());
        }
    }
    rows
}

fn print_row(row: &Row) {
    let ratio = match (row.reference, row.ratio, row.p50_ratio) {
        (Some(r), Some(ratio), Some(p50)) => {
            format!("{ratio:.2}x ops/s, {p50:.2}x p50  vs {r}")
        }
        (Some(r), _, _) => format!("(reference {r} did not run)"),
        _ => String::new(),
    };
    println!(
        "{:<24} {:>10.0} {:>8.1} {:>8.1} {:>9.0}..{:<9.0} {:>5.1}+{:<5.1}   {ratio}",
        row.workload,
        row.ops_per_sec,
        row.p50_us,
        row.p99_us,
        row.spread.0,
        row.spread.1,
        row.client_cpu_us_per_op,
        row.server_cpu_us_per_op,
    );
}

fn print_targets(rows: &[Row]) {
    let find = |name: &str| rows.iter().find(|r| r.workload == name);
    let mut printed = false;
    for t in workloads::targets()
        .into_iter()
        .chain(batch::targets())
        .chain(http::targets())
        .chain(near::targets())
    {
        let (Some(ours), Some(reference)) = (find(t.ours), find(t.reference)) else {
            continue;
        };
        if !printed {
            println!("\ntargets:");
            printed = true;
        }
        let (ours, reference) = (&ours.measured, &reference.measured);
        let (what, value, holds) = match t.bar {
            Bar::OpsAtLeast(x) => {
                let v = ours.paired_ratio(reference, |r| r.ops_per_sec);
                (format!("ops/s >= {x}x"), v, v >= x)
            }
            Bar::P50AtMost(x) => {
                let v = ours.paired_ratio(reference, |r| r.p50_us);
                (format!("p50 <= {x}x"), v, v <= x)
            }
            Bar::P50OverAtMost(x) => {
                let v = ours.p50_us() - reference.p50_us();
                let holds = v <= x;
                println!(
                    "  {:<4} {} vs {}: p50 over it <= {x:.1} us (measured {v:.2} us)",
                    if holds { "ok" } else { "MISS" },
                    t.ours,
                    t.reference,
                );
                continue;
            }
            // Absolute bars: "measured" is the value itself.
            Bar::OpsAbove(x) => {
                let v = ours.ops_per_sec();
                (format!("ops/s >= {x:.0}"), v, v >= x)
            }
            Bar::P50Below(x) => {
                let v = ours.p50_us();
                (format!("p50 <= {x:.1} µs"), v, v <= x)
            }
        };
        let measured = match t.bar {
            Bar::OpsAbove(_) | Bar::P50Below(_) => format!("{value:.1}"),
            _ => format!("{value:.2}x"),
        };
        println!(
            "  {:<4} {} vs {}: {what} (measured {measured})",
            if holds { "ok" } else { "MISS" },
            t.ours,
            t.reference,
        );
    }
}
