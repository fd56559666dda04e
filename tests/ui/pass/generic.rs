//! Generic functions pass their generics through; the default key includes
//! the type parameters, so `load::<A>(1)` and `load::<B>(1)` differ.
#![deny(warnings)]

use cache_core::{cached, KeyPart};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[cached(key = "item:<id>")]
async fn describe<K: KeyPart + std::fmt::Display + Sync>(id: K) -> String {
    id.to_string()
}

#[cached]
async fn load<T>(id: u64) -> Option<T>
where
    T: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    let _ = id;
    Some(T::default())
}

fn main() {
    let _ = describe(1u32);
    let _ = describe("x");
    let _ = load::<String>(1);
    let _ = load_invalidate::<String>(1);
}
