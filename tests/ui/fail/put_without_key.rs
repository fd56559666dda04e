use cache_core::cache_put;

#[cache_put(ttl = 60)]
async fn save(user_id: u64) -> u64 {
    user_id
}

fn main() {}
