use cache_core::cached;

#[cached(key = "users:<org_id>")]
async fn list_users(org_id: u64, include_deleted: bool) -> Vec<u64> {
    if include_deleted {
        vec![org_id]
    } else {
        Vec::new()
    }
}

fn main() {}
