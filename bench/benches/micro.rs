//! Micro-benchmarks of the pure parts of a cached call: key building, the value envelope, and
//! a read from the embedded backend. `cargo bench -p bench` (or `scripts/bench --criterion`).

use std::hint::black_box;
use std::time::Duration;

use cache_core::__private::{bench_decode, bench_encode, bench_open, bench_seal};
use cache_core::{key::KeyBuf, Cache, EncryptionKey};
use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};

/// The load benchmark's value: about 100 bytes of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    org: u64,
    name: String,
    email: String,
    active: bool,
    plan: String,
}

fn user(id: u64) -> User {
    User {
        id,
        org: id % 100,
        name: format!("user-{id:010}"),
        email: format!("user-{id:010}@example.com"),
        active: true,
        plan: "team".to_owned(),
    }
}

/// What generated code does for `key = "user:<id>:<name>"`.
fn user_key(id: u64, name: &str) -> KeyBuf {
    let mut k = KeyBuf::new();
    k.literal("user:");
    k.part(&id);
    k.literal(":");
    k.part(name);
    k
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    g.bench_function("user:<id>:<name> plain", |b| {
        b.iter(|| user_key(black_box(1_234_567), black_box("alice.smith")))
    });
    // Every structural character escaped: separators, globs, braces, whitespace, control.
    g.bench_function("user:<id>:<name> adversarial", |b| {
        b.iter(|| {
            user_key(
                black_box(1_234_567),
                black_box("a:b*c?[d]\\{e} f\tg\n~@#,()"),
            )
        })
    });
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let value = user(1_234);
    let tags = vec![("bench:~tag:org:34".to_owned(), 7_u64)];
    let plain = bench_encode(&value, &[]);
    let tagged = bench_encode(&value, &tags);
    assert_eq!(bench_decode::<User>(&plain).as_ref(), Some(&value));
    assert_eq!(bench_decode::<User>(&tagged).as_ref(), Some(&value));

    let mut g = c.benchmark_group("envelope");
    g.bench_function("encode", |b| {
        b.iter(|| bench_encode(black_box(&value), &[]))
    });
    g.bench_function("encode, 1 tag", |b| {
        b.iter(|| bench_encode(black_box(&value), black_box(&tags)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| bench_decode::<User>(black_box(&plain)))
    });
    g.bench_function("decode, 1 tag", |b| {
        b.iter(|| bench_decode::<User>(black_box(&tagged)))
    });
    g.finish();
}

/// Encryption of the ~100-byte envelope (XChaCha20-Poly1305, a random nonce per write), and
/// decryption with the decode of the value: what an encrypted write and hit add.
fn encryption(c: &mut Criterion) {
    let key = EncryptionKey::from_bytes([7; 32]);
    let full = "bench:user:1234";
    let value = user(1_234);
    let plain = bench_encode(&value, &[]);
    let sealed = match bench_seal(&key, full, plain.clone()) {
        Some(sealed) => sealed,
        None => panic!("cannot encrypt"),
    };
    assert_eq!(
        bench_open::<User>(&key, full, &sealed).as_ref(),
        Some(&value)
    );

    let mut g = c.benchmark_group("encryption");
    g.bench_function("encode + encrypt", |b| {
        b.iter(|| bench_seal(&key, full, bench_encode(black_box(&value), &[])))
    });
    g.bench_function("decrypt + decode", |b| {
        b.iter(|| bench_open::<User>(&key, full, black_box(&sealed)))
    });
    g.finish();
}

fn memory_get(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a tokio runtime: {e}"),
    };
    let cache = Cache::in_memory();
    let value = user(42);
    if let Err(e) = rt.block_on(cache.set("user:42", &value, Duration::from_secs(600))) {
        panic!("cannot store in the memory backend: {e}");
    }

    c.bench_function("memory backend get (hit)", |b| {
        b.to_async(&rt).iter(|| async {
            match cache.get::<User>(black_box("user:42")).await {
                Ok(Some(u)) if u.id == 42 => u,
                other => panic!("expected user 42, got {other:?}"),
            }
        })
    });
}

criterion_group!(micro, keys, envelope, encryption, memory_get);
criterion_main!(micro);
