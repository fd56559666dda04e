//! Functions written by a `macro_rules!` macro: the template, the parameters
//! and the companions all come from the macro's tokens.
#![deny(warnings)]

use cache_core::cached;

macro_rules! cached_identity {
    ($name:ident) => {
        #[cached(key = "identity:<n>", tags = ["all"])]
        async fn $name(n: u64) -> u64 {
            n
        }
    };
}

cached_identity!(first);
cached_identity!(second);

fn main() {
    let _ = first(1);
    let _ = second(1);
    let _ = first_invalidate(1);
    let _ = second_refresh(1);
}
