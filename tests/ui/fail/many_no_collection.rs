use std::collections::HashMap;

use cache_core::cached_many;

#[cached_many(key = "user:<org_id>", skip = [ids])]
async fn users(org_id: u64, ids: Vec<u64>) -> HashMap<u64, String> {
    ids.into_iter().map(|id| (id, format!("{org_id}/{id}"))).collect()
}

fn main() {}
