//! Braces are literal, so Redis Cluster hash tags can be written, and `<<`,
//! `>>` escape angle brackets.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "{tenant:<tenant_id>}:user:<user_id>")]
async fn user(tenant_id: u64, user_id: u64) -> String {
    format!("{tenant_id}:{user_id}")
}

#[cached(key = "<<generic>>:<id>")]
async fn generic(id: u64) -> u64 {
    id
}

fn main() {
    let _ = user(1, 2);
    let _ = generic(1);
}
