use std::collections::{HashMap, HashSet};

use cache_core::cached_many;

#[cached_many(key = "pair:<left>:<right>")]
async fn pairs(left: Vec<u64>, right: HashSet<u64>) -> HashMap<u64, u64> {
    left.into_iter().zip(right).collect()
}

fn main() {}
