//! Reference parameters: `&str`, `&T`, slices.
#![deny(warnings)]

use cache_core::cached;

pub struct Query {
    pub text: String,
}

#[cached(key = "search:<term>:<query.text>:<ids>")]
async fn search(term: &str, query: &Query, ids: &[u64]) -> Vec<String> {
    vec![format!("{term}{}{}", query.text, ids.len())]
}

fn main() {
    let query = Query {
        text: "q".to_owned(),
    };
    let _ = search("a", &query, &[1, 2]);
}
