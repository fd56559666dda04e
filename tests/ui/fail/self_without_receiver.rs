use cache_core::cached;

#[cached(key = "tenant:<self.tenant>:<id>")]
async fn name(id: u64) -> String {
    id.to_string()
}

fn main() {}
