//! The checker on small source trees held in memory.

use crate::checker::{self, Graph, Sources};

fn tree(files: &[(&str, &str)]) -> Graph {
    let sources: Sources = files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    let graph = checker::graph(&sources);
    assert!(graph.errors.is_empty(), "{:?}", graph.errors);
    graph
}

fn edges(graph: &Graph) -> Vec<String> {
    graph
        .edges
        .keys()
        .map(|(a, b)| format!("{a}->{b}"))
        .collect()
}

fn mention(graph: &Graph, from: &str, to: &str) -> String {
    let m = &graph.edges[&(from.to_owned(), to.to_owned())][0];
    format!("{}:{}: {}", m.file, m.line, m.text)
}

#[test]
fn finds_a_circle_and_the_imports_that_make_it() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        ("a.rs", "use crate::b::X;\n"),
        ("b.rs", "pub fn f() {\n    crate::c::g()\n}\n"),
        ("c.rs", "use crate::{a::Y, d};\n"),
        ("d.rs", "pub struct Leaf;\n"),
    ]);
    assert_eq!(edges(&g), ["a->b", "b->c", "c->a", "c->d"]);
    assert_eq!(checker::circles(&g), [["a", "b", "c"]]);
    assert_eq!(mention(&g, "a", "b"), "a.rs:1: use crate::b::X");
    assert_eq!(mention(&g, "b", "c"), "b.rs:2: crate::c::g");
    assert_eq!(mention(&g, "c", "a"), "c.rs:1: use crate::a::Y");
    let report = checker::report(&g, "src").expect("a circle");
    assert!(
        report.contains("circle 1 of 1: 3 modules: a, b, c"),
        "{report}"
    );
    assert!(
        report.contains("c -> a  src/c.rs:1: use crate::a::Y"),
        "{report}"
    );
}

#[test]
fn no_false_positive_on_layers() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\npub use a::Top;\npub use c::Base;\n"),
        (
            "a.rs",
            "use crate::{b::Mid, c::Base};\n/// [`Base`](crate::c::Base) and [`Top`](crate::Top).\npub struct Top(pub(in crate::a) Mid, crate::Base);\n",
        ),
        ("b.rs", "use crate::c;\npub struct Mid(c::Base);\nmod inner {\n    use super::Mid;\n}\n"),
        ("c.rs", "pub struct Base;\nuse self::Base as B;\n"),
    ]);
    assert_eq!(edges(&g), ["a->b", "a->c", "b->c"]);
    assert!(checker::circles(&g).is_empty());
    assert!(checker::report(&g, "src").is_none());
}

#[test]
fn super_paths_that_climb_out_of_a_module_count() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a/mod.rs", "mod sub;\npub struct Y;\n"),
        ("a/sub.rs", "use super::Y;\nuse super::super::b::X;\n"),
        (
            "b.rs",
            "pub struct X;\nmod deep {\n    fn f() -> super::super::a::Z { todo!() }\n}\n",
        ),
    ]);
    assert_eq!(edges(&g), ["a->b", "b->a"]);
    assert_eq!(mention(&g, "a", "b"), "a/sub.rs:2: use super::super::b::X");
    assert_eq!(mention(&g, "b", "a"), "b.rs:3: super::super::a::Z");
    assert_eq!(checker::circles(&g), [["a", "b"]]);
}

#[test]
fn super_from_a_top_level_file_names_a_sibling() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use super::b::X;\n"),
        ("b.rs", ""),
    ]);
    assert_eq!(edges(&g), ["a->b"]);
}

#[test]
fn cfg_test_is_skipped_other_cfgs_count() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\n#[cfg(test)]\nmod testing;\n"),
        ("testing.rs", "use crate::a::X;\n"),
        (
            "a.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::b::X;\n}\n#[cfg(test)]\nmod more;\n\
             #[cfg(all(test, feature = \"x\"))]\nuse crate::b::Z;\n\
             pub struct S {\n    #[cfg(test)]\n    f: crate::b::F,\n}\n\
             impl S {\n    #[cfg(test)]\n    fn t() { crate::b::g() }\n}\n",
        ),
        ("a/more.rs", "use crate::b::Y;\n"),
        (
            "b.rs",
            "use crate::a::S;\n#[cfg(any(test, feature = \"y\"))]\nuse crate::a::T;\n",
        ),
    ]);
    assert_eq!(edges(&g), ["b->a"]);
    assert_eq!(
        g.edges[&("b".to_owned(), "a".to_owned())].len(),
        2,
        "cfg(any(test, ..)) counts"
    );
    assert!(!g.modules.contains("testing"));
    assert!(checker::circles(&g).is_empty());
    // A cfg that is not test counts.
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "#[cfg(feature = \"x\")]\nuse crate::b::X;\n"),
        ("b.rs", "use crate::a::Y;\n"),
    ]);
    assert_eq!(checker::circles(&g), [["a", "b"]]);
}

#[test]
fn root_reexports_resolve_to_their_module_and_root_items_fail() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\npub use b::{Thing as Renamed, Other};\npub use serde::Serialize;\npub struct Root;\n"),
        ("a.rs", "fn f() -> crate::Renamed { todo!() }\nfn g(_: crate::Serialize) {}\n"),
        ("b.rs", "use crate::a::X;\n"),
    ]);
    assert_eq!(edges(&g), ["a->b", "b->a"]);
    assert!(g.unresolved.is_empty(), "{:?}", g.unresolved);
    let g = tree(&[
        ("lib.rs", "mod a;\npub struct Root;\n"),
        ("a.rs", "\nuse crate::Root;\n"),
    ]);
    assert_eq!(g.unresolved.len(), 1);
    let report = checker::report(&g, "src").expect("an unresolved path");
    assert!(report.contains("src/a.rs:2: use crate::Root"), "{report}");
}

#[test]
fn paths_in_macro_tokens_and_exported_macros_count() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        ("a.rs", "fn f(e: E) -> bool {\n    matches!(e, crate::b::X { .. })\n}\nfn g() { crate::m!(); }\n"),
        ("b.rs", "fn f() { tracing::warn!(x = %crate::d::show(1), \"w\"); }\n"),
        ("c.rs", "#[macro_export]\nmacro_rules! m {\n    () => { $crate::d::X; use crate::{d::Y}; };\n}\n"),
        ("d.rs", ""),
    ]);
    assert_eq!(edges(&g), ["a->b", "a->c", "b->d", "c->d"]);
    assert_eq!(mention(&g, "a", "b"), "a.rs:2: crate::b::X");
    assert_eq!(mention(&g, "c", "d"), "c.rs:3: $crate::d::X, crate::d::Y");
}

#[test]
fn grouped_use_is_shown_per_module() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::{\n    b::{X, Y},\n    c,\n};\n"),
        ("b.rs", ""),
        ("c.rs", ""),
    ]);
    assert_eq!(mention(&g, "a", "b"), "a.rs:2: use crate::b::{X, Y}");
    assert_eq!(mention(&g, "a", "c"), "a.rs:3: use crate::c");
}

#[test]
fn the_walk_visits_every_module_of_a_circle_and_closes() {
    // a <-> b, a <-> c: no simple cycle holds all three, the walk does.
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::{b::X, c::Y};\n"),
        ("b.rs", "use crate::a::Z;\n"),
        ("c.rs", "use crate::a::Z;\n"),
    ]);
    let circles = checker::circles(&g);
    assert_eq!(circles, [["a", "b", "c"]]);
    let steps = checker::walk_around(&g, &circles[0]);
    let flat: Vec<String> = steps.iter().map(|(a, b)| format!("{a}->{b}")).collect();
    assert_eq!(flat, ["a->b", "b->a", "a->c", "c->a"]);
}

#[test]
fn two_separate_circles() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        ("a.rs", "use crate::b::X;\n"),
        ("b.rs", "use crate::a::X;\nuse crate::c::X;\n"),
        ("c.rs", "use crate::d::X;\n"),
        ("d.rs", "use crate::c::X;\n"),
    ]);
    assert_eq!(checker::circles(&g), [["a", "b"], ["c", "d"]]);
}

#[test]
fn a_stray_file_counts_as_its_path_says() {
    let g = tree(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", ""),
        ("a/old.rs", "use crate::b::X;\n"),
        ("b.rs", ""),
    ]);
    assert_eq!(edges(&g), ["a->b"]);
}
