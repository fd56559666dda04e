//! Integration tests against a real redis-server (one per test process,
//! started by the `tests` harness) and the in-memory backend.

mod batch;
mod clear;
mod cluster_load;
mod fault_matrix;
mod foundation;
mod harness;
mod health;
mod http;
mod invalidation;
mod limits;
mod local;
mod lock;
mod macros;
mod ops;
mod pattern;
mod rate_limit;
mod resilience;
mod security;
mod sessions;
mod stampede;
mod tags;
mod tls;
mod topology;
mod tracking;
