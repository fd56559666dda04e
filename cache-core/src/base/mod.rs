//! The base layer: errors, keys, the value envelope's codec, limits, counters and plain
//! settings. Imports nothing from the rest of the crate (ARCHITECTURE.md).

pub(crate) mod advisor;
pub(crate) mod codec;
pub(crate) mod crypto;
pub(crate) mod error;
pub(crate) mod glob;
pub(crate) mod key;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod observe;
pub(crate) mod settings;
pub(crate) mod source;
pub(crate) mod stats;
