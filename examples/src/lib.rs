//! Code shared by the examples and their tests.

pub mod axum_service;
