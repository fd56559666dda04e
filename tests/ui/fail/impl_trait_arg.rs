use cache_core::cached;

#[cached(key = "name:<id>")]
async fn name(id: impl std::fmt::Display) -> String {
    id.to_string()
}

fn main() {}
