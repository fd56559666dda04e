//! Self-tests of the test harness: the servers it starts are real, isolated
//! and gone when they should be.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{answers_ping, find_redis_server_in, RedisServer};

fn ping(server: &RedisServer) -> String {
    let mut con = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connects to redis-server");
    redis::cmd("PING").query(&mut con).expect("PING answered")
}

/// Waits (bounded) until nothing answers PING on `port`.
fn stops_answering(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !answers_ping(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn shared_server_answers_ping() {
    assert_eq!(ping(tests::shared_server()), "PONG");
    assert_eq!(tests::redis_url(), tests::shared_server().url());
    assert!(tests::redis_url().starts_with("redis://127.0.0.1:"));
}

#[test]
fn shared_server_has_no_persistence() {
    let mut con = tests::shared_server()
        .client()
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connects");
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut con)
        .expect("CONFIG GET save");
    assert_eq!(config, ["save", ""]);
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query(&mut con)
        .expect("CONFIG GET appendonly");
    assert_eq!(config, ["appendonly", "no"]);
}

#[test]
fn owned_servers_get_different_ports() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.port(), tests::shared_server().port());
    assert_eq!(ping(&a), "PONG");
    assert_eq!(ping(&b), "PONG");
}

#[test]
fn dropped_server_stops_answering() {
    let server = RedisServer::start();
    let port = server.port();
    assert!(answers_ping(port));
    drop(server);
    assert!(
        stops_answering(port),
        "port {port} still answers after drop"
    );
}

#[test]
fn killed_server_stops_answering_and_restarts_on_the_same_port_empty() {
    let mut server = RedisServer::start();
    let port = server.port();
    let mut con = server.client().get_connection().expect("connects");
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .exec(&mut con)
        .expect("SET");

    server.kill();
    assert!(!server.is_running());
    assert!(stops_answering(port));

    server.restart();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_eq!(ping(&server), "PONG");
    let mut con = server.client().get_connection().expect("reconnects");
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut con).expect("GET");
    assert_eq!(value, None, "no persistence: a restarted server is empty");
}

#[test]
fn restart_of_a_running_server_keeps_the_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    let pid = server.pid();
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert_eq!(ping(&server), "PONG");
}

#[test]
fn stopped_server_stops_answering() {
    let mut server = RedisServer::start();
    let port = server.port();
    server.stop();
    assert!(!server.is_running());
    assert!(stops_answering(port));
}

#[test]
fn frozen_server_does_not_answer_until_thawed() {
    let mut server = RedisServer::start();
    server.freeze();
    assert!(!server.answers_ping());
    server.thaw();
    assert_eq!(ping(&server), "PONG");
}

#[test]
fn extra_configuration_is_applied() {
    let server = RedisServer::builder()
        .arg("--maxmemory")
        .arg("12345678")
        .start();
    let mut con = server.client().get_connection().expect("connects");
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut con)
        .expect("CONFIG GET");
    assert_eq!(config, ["maxmemory", "12345678"]);
}

#[test]
fn a_server_that_cannot_start_reports_its_output() {
    let err = RedisServer::builder()
        .arg("--no-such-option")
        .arg("1")
        .try_start()
        .expect_err("an unknown option stops redis-server");
    let message = err.to_string();
    assert!(
        message.contains("exited before answering PING"),
        "{message}"
    );
    assert!(message.contains("no-such-option"), "{message}");
}

#[test]
fn missing_binary_says_how_to_install_it() {
    let err = find_redis_server_in(Some("/nonexistent/redis-server".as_ref()), None)
        .expect_err("a nonexistent REDIS_SERVER_BIN is rejected");
    let message = err.to_string();
    for needle in [
        "/nonexistent/redis-server",
        "REDIS_SERVER_BIN",
        "apt-get install redis-server",
        "scripts/test",
    ] {
        assert!(
            message.contains(needle),
            "`{needle}` missing from: {message}"
        );
    }

    let err = RedisServer::builder()
        .binary("/nonexistent/redis-server")
        .try_start()
        .expect_err("no server from a nonexistent binary");
    assert!(err.to_string().contains("apt-get install redis-server"));
}

#[test]
fn binary_not_on_path_says_how_to_install_it() {
    let empty = std::env::temp_dir();
    let err = find_redis_server_in(None, Some(empty.as_os_str()))
        .expect_err("no redis-server in the temp dir");
    let message = err.to_string();
    assert!(message.contains("not on `PATH`"), "{message}");
    assert!(
        message.contains("apt-get install redis-server"),
        "{message}"
    );
    // An empty REDIS_SERVER_BIN counts as unset.
    let err = find_redis_server_in(Some("".as_ref()), None).expect_err("nothing to search");
    assert!(err.to_string().contains("not on `PATH`"));
}

#[test]
fn unique_namespaces_differ() {
    let names: std::collections::HashSet<String> =
        (0..1000).map(|_| tests::unique_namespace()).collect();
    assert_eq!(names.len(), 1000);
}

#[tokio::test]
async fn backends_are_memory_and_redis() {
    let names: Vec<&str> = tests::backends()
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["memory", "redis"]);
}

const CHILD_MODE: &str = "TESTS_HARNESS_CHILD_MODE";

/// Run as a subprocess by `shared_server_dies_with_the_test_process`; does
/// nothing in a normal run.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let server = tests::shared_server();
    println!("HARNESS_CHILD_PORT={}", server.port());
    println!("HARNESS_CHILD_DIR={}", server.dir().display());
    // "abort": no exit hook, no destructors, only the parent-death signal is
    // left; otherwise the test process ends normally and runs the exit hook.
    if mode == "abort" {
        std::process::abort();
    }
}

fn shared_server_dies_with_a_child_that(mode: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([
            "--exact",
            "harness::child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .stdin(Stdio::null())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let port: u16 = stdout
        .lines()
        // libtest prints the test's name on the same line, before it.
        .find_map(|line| line.split_once("HARNESS_CHILD_PORT=").map(|(_, port)| port))
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the child printed no port\nstdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(
        stops_answering(port),
        "redis-server on port {port} outlived its test process ({mode})"
    );
    // An aborted process cannot remove the server's directory itself.
    if let Some(dir) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("HARNESS_CHILD_DIR="))
    {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
}

#[test]
fn shared_server_dies_when_the_test_process_exits() {
    shared_server_dies_with_a_child_that("exit");
}

#[test]
fn shared_server_dies_when_the_test_process_aborts() {
    shared_server_dies_with_a_child_that("abort");
}
