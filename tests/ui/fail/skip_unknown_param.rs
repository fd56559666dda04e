use cache_core::cached;

#[cached(key = "user:<user_id>", skip = [conection])]
async fn get_user(connection: &str, user_id: u64) -> u64 {
    let _ = connection;
    user_id
}

fn main() {}
