use cache_core::cached;

pub struct User {
    pub name: String,
}

#[cached(key = "user:<user.nmae>")]
async fn greet(user: User) -> String {
    format!("hello {}", user.name)
}

fn main() {}
