use cache_core::cached;

pub struct Filter {
    pub active: bool,
}

#[cached(key = "users:<filter>")]
async fn list_users(filter: Filter) -> Vec<u64> {
    if filter.active {
        vec![1]
    } else {
        Vec::new()
    }
}

fn main() {}
