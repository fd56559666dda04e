use std::collections::HashMap;

use cache_core::cached_many;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    pub active: bool,
}

#[cached_many(key = "filter:<filters>")]
async fn counts(filters: Vec<Filter>) -> HashMap<Filter, u64> {
    filters.into_iter().map(|f| (f, 1)).collect()
}

fn main() {}
