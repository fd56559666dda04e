use cache_core::cached;

pub struct User {
    pub id: u64,
}

#[cached(key = "user:<id>")]
async fn get_user(id: u64) -> Option<User> {
    Some(User { id })
}

fn main() {}
