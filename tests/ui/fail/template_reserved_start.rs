use cache_core::cached;

#[cached(key = "~user:<user_id>")]
async fn get_user(user_id: u64) -> u64 {
    user_id
}

fn main() {}
