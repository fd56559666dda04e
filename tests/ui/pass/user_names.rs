//! Parameters named like the generated locals do not clash with them.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "k:<__cache_key>:<__cache_tags>", tags = ["t:<__cache_tag>"])]
async fn clash(__cache_key: u64, __cache_tags: u64, __cache_tag: u64) -> u64 {
    __cache_key + __cache_tags + __cache_tag
}

fn main() {
    let _ = clash(1, 2, 3);
}
