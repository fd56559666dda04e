use cache_core::cached_many;

#[cached_many(key = "user:<ids>")]
async fn users(ids: Vec<u64>) -> Vec<String> {
    ids.into_iter().map(|id| id.to_string()).collect()
}

fn main() {}
