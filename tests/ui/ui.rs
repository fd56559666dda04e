//! Compile-time behaviour of `#[cached]`, `#[cache_evict]` and `#[cache_put]`:
//! every accepted form compiles without warnings (`pass/`), and every
//! rejected one fails with the message pinned in its `.stderr` (`fail/`).
//!
//! After an intended change of a message, regenerate with
//! `TRYBUILD=overwrite cargo test -p ui-tests --test ui` and review the diff.

#[test]
fn ui() {
    // trybuild compiles the cases in a Cargo project of its own (under
    // `target/tests/trybuild/`), which does not read the workspace's `[profile]`s.
    // It compiles the dependencies (cache-core and everything below it) twice, once
    // in its warm-up build and once with the flags of the cases, and links every
    // pass case against them: without debuginfo the cold run took 107-117 s here
    // against 192 s with it (and 156 s with line tables), and nothing built there is
    // ever debugged. trybuild's cargo inherits this environment; a value the caller
    // set wins.
    if std::env::var_os("CARGO_PROFILE_DEV_DEBUG").is_none() {
        std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "false");
    }

    let t = trybuild::TestCases::new();
    t.pass("pass/*.rs");
    t.compile_fail("fail/*.rs");
}
