//! Compile-time behaviour of `#[cached]`, `#[cache_evict]` and `#[cache_put]`:
//! every accepted form compiles without warnings (`ui/pass`), and every
//! rejected one fails with the message pinned in its `.stderr` (`ui/fail`).
//!
//! After an intended change of a message, regenerate with
//! `TRYBUILD=overwrite cargo test -p tests --test ui` and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
