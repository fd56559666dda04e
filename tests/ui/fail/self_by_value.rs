use cache_core::cached;

struct Repo;

impl Repo {
    #[cached(key = "name:<id>")]
    async fn name(self, id: u64) -> String {
        id.to_string()
    }
}

fn main() {}
