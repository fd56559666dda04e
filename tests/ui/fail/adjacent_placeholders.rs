use cache_core::cached;

#[cached(key = "pair:<a><b>")]
async fn pair(a: String, b: String) -> String {
    a + &b
}

fn main() {}
