use cache_core::cached;

#[cached(key = "user:<id>", local = "no")]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
