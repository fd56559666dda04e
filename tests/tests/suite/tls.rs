//! `rediss://` against a real redis-server listening with TLS, trusting a private CA made
//! for the test.

use std::net::TcpListener;
use std::time::Duration;

use cache_core::{Cache, Error};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tests::RedisServer;

struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn make_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca cert");
    let server_key = KeyPair::generate().expect("server key");
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .expect("server cert");
    Pki {
        ca_pem: ca.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A server with a plain port (for the harness's readiness check) and a TLS port.
fn tls_server(pki: &Pki) -> (RedisServer, u16) {
    let dir = std::env::temp_dir().join(format!("cache-tls-{}", tests::unique_namespace()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    let cert = write("server.crt", &pki.server_cert_pem);
    let key = write("server.key", &pki.server_key_pem);
    let ca = write("ca.crt", &pki.ca_pem);
    let tls_port = free_port();
    let server = RedisServer::builder()
        .arg("--tls-port")
        .arg(tls_port.to_string())
        .arg("--tls-cert-file")
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .arg("--tls-ca-cert-file")
        .arg(ca)
        .arg("--tls-auth-clients")
        .arg("no")
        .start();
    (server, tls_port)
}

#[tokio::test]
async fn rediss_with_a_private_ca_round_trips() {
    let pki = make_pki();
    let (_server, tls_port) = tls_server(&pki);
    let cache = Cache::builder()
        .url(format!("rediss://127.0.0.1:{tls_port}/"))
        .tls_ca_pem(pki.ca_pem.clone())
        .namespace(tests::unique_namespace())
        .build()
        .expect("builds");
    cache
        .set("k", &"over tls", Duration::from_secs(30))
        .await
        .expect("set over TLS");
    assert_eq!(
        cache
            .get::<String>("k")
            .await
            .expect("get over TLS")
            .as_deref(),
        Some("over tls")
    );
}

#[tokio::test]
async fn rediss_with_an_untrusted_certificate_is_a_connection_error() {
    let pki = make_pki();
    let (_server, tls_port) = tls_server(&pki);
    let other_ca = make_pki().ca_pem;
    let cache = Cache::builder()
        .url(format!("rediss://127.0.0.1:{tls_port}/"))
        .tls_ca_pem(other_ca)
        .connect_timeout(Duration::from_millis(500))
        .namespace(tests::unique_namespace())
        .build()
        .expect("builds");
    let err = cache
        .get::<String>("k")
        .await
        .expect_err("an unknown CA must not be trusted");
    assert!(
        err.is_unavailable(),
        "expected a connection error, got {err:?}"
    );
}

#[tokio::test]
async fn redis_tls_env_switches_the_scheme() {
    let pki = make_pki();
    let (_server, tls_port) = tls_server(&pki);
    let ca_path = std::env::temp_dir().join(format!("cache-ca-{}.pem", tests::unique_namespace()));
    std::fs::write(&ca_path, &pki.ca_pem).expect("write ca");
    let port = tls_port.to_string();
    let ca = ca_path.display().to_string();
    let cache = cache_core::CacheBuilder::from_lookup(|name| match name {
        "REDIS_HOST" => Some("127.0.0.1".to_owned()),
        "REDIS_PORT" => Some(port.clone()),
        "REDIS_TLS" => Some("true".to_owned()),
        "REDIS_TLS_CA" => Some(ca.clone()),
        _ => None,
    })
    .expect("reads the environment")
    .namespace(tests::unique_namespace())
    .build()
    .expect("builds");
    cache.set("k", &1u8, None).await.expect("set over TLS");
    assert_eq!(cache.get::<u8>("k").await.expect("get over TLS"), Some(1));
    let _ = std::fs::remove_file(ca_path);
}

#[test]
fn unreadable_ca_file_is_a_config_error() {
    let err = cache_core::CacheBuilder::from_lookup(|name| match name {
        "REDIS_URL" => Some("rediss://127.0.0.1:1/".to_owned()),
        "REDIS_TLS_CA" => Some("/nonexistent/ca.pem".to_owned()),
        _ => None,
    })
    .expect_err("missing CA file");
    assert!(
        matches!(
            err,
            Error::Config {
                setting: "REDIS_TLS_CA",
                ..
            }
        ),
        "{err:?}"
    );
}
