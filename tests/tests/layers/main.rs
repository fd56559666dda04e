//! cache-core's top-level modules import each other in one direction: no import circle.
//!
//! The modules are the `mod x;` (and inline `mod x { .. }`) of `cache-core/src/lib.rs`, but
//! those under `#[cfg(test)]`; everything in `src/x.rs` and under `src/x/` belongs to `x`. The
//! test parses every `.rs` file of `cache-core/src` with `syn` (following the `mod` tree from
//! lib.rs; a file no `mod` reaches counts as the module its path names) and records a
//! dependency of module A on module B for every path, written in a file of A, that names B:
//! - in a `use` tree, however it is grouped: `use crate::{B::x, C}` names B and C;
//! - in any path of an expression, type, pattern, trait bound or macro name: `crate::B::f()`;
//! - in the tokens of a macro call, which `syn` leaves unparsed:
//!   `matches!(e, crate::B::X)`, `tracing::warn!(%crate::B::f(..))`, and a `macro_rules!`
//!   body's `$crate::B` (counted for the module that defines the macro);
//! - through `super::`: from `src/A/sub.rs`, `super::super::B` climbs out of A and names B
//!   (`super::x` stays in A and is no dependency).
//!
//! Not counted: items, statements, fields, arms under `#[cfg(test)]` (unit tests import
//! freely), `#[cfg(test)] mod tests;` files, attributes (rustdoc links such as
//! ``[`Cache`](crate::Cache)`` are no import), `pub(in crate::x)`, and lib.rs itself: it is the
//! front door, which re-exports from everything.
//!
//! Names re-exported at the root are resolved to the module lib.rs re-exports them from:
//! `crate::Cache` is a dependency on `cache`, because lib.rs says `pub use cache::{Cache, ..}`.
//! That is the dependency the compiler sees, and it keeps the test about circles: importing
//! `crate::Error` rather than `crate::error::Error` is a matter of style, not of layering.
//! (The alternative, a dependency on the root that fails whenever a module uses it, would
//! forbid a harmless idiom and report every such use as a circle through lib.rs.) A
//! `#[macro_export]` macro named as `crate::m!` belongs to the module that defines it. A path
//! through the root that reaches no module (an item defined in lib.rs itself, a glob of the
//! root, `super` above it) cannot be placed, and fails the test by itself.
//!
//! On a circle the test prints each strongly connected component of more than one module:
//! a walk around it with one `file:line: path` per step (the last step is the import that
//! closes it), then every edge inside it with the number of places that create it and the
//! first one, and the table of what each module imports.

mod checker;
mod checker_tests;

use std::path::Path;

#[test]
fn cache_core_modules_import_in_one_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cache-core/src");
    let graph = checker::graph(&checker::read_sources(&src));
    assert!(
        graph.modules.len() > 1,
        "found no modules in {} (is lib.rs there?)",
        src.display()
    );
    match checker::report(&graph, "cache-core/src") {
        Some(report) => panic!("{report}"),
        None => println!("{}", checker::imports_table(&graph)),
    }
}
