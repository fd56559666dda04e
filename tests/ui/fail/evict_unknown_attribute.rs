use cache_core::cache_evict;

#[cache_evict(key = "user:<user_id>", ttl = 60)]
async fn delete_user(user_id: u64) {
    let _ = user_id;
}

fn main() {}
