//! The dependencies between a crate's top-level modules, read from its source with `syn`, and
//! the circles among them. See `main.rs` for the rules and why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{Attribute, Item, Meta, Token, UseTree};

/// The `.rs` files of a crate's `src/`, by path relative to it with `/` separators
/// (`lib.rs`, `backend/mod.rs`), and their text.
pub type Sources = BTreeMap<String, String>;

/// Reads every `.rs` file under `src`.
pub fn read_sources(src: &Path) -> Sources {
    fn walk(dir: &Path, rel: &str, out: &mut Sources) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("a directory entry");
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{rel}{name}");
            if path.is_dir() {
                walk(&path, &format!("{rel}/"), out);
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                out.insert(rel, text);
            }
        }
    }
    let mut out = Sources::new();
    walk(src, "", &mut out);
    out
}

/// One place in the source that makes a module depend on another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mention {
    /// Relative to `src/`.
    pub file: String,
    pub line: usize,
    /// The path as written, e.g. `use crate::cache::{Cache, Shared}` or `crate::key::shorten`.
    pub text: String,
}

/// The top-level modules and who imports whom.
#[derive(Debug, Default)]
pub struct Graph {
    /// The `mod x;` (or inline `mod x { .. }`) of lib.rs, but those under `#[cfg(test)]`.
    pub modules: BTreeSet<String>,
    /// (from, to) -> the places that create the dependency, sorted by file and line.
    pub edges: BTreeMap<(String, String), Vec<Mention>>,
    /// Paths that name the crate root but resolve to no module: an item defined in lib.rs
    /// itself, a `super::` climbing above the root, a glob of the root. The test cannot place
    /// them in the graph, so it fails on them too.
    pub unresolved: Vec<Mention>,
    /// Files that do not parse.
    pub errors: Vec<String>,
}

/// A path's segments, with where each is written.
type Segments = Vec<(String, Span)>;

/// A flattened `use` path and its rename.
type UsePath = (Segments, Option<String>);

/// A path found in a file, before it is resolved against lib.rs.
#[derive(Debug)]
struct Raw {
    /// The module the path is written in: `["compute", "fill"]`; empty for lib.rs itself.
    module: Vec<String>,
    segments: Vec<(String, Span)>,
    is_use: bool,
    is_macro: bool,
    file: String,
}

enum Target {
    /// A top-level module.
    Module(String),
    /// Inside the module the path is written in, an extern crate, or a local name.
    Ignore,
    /// Names the root, but no module: see [`Graph::unresolved`]. The index of the segment.
    Unresolved(usize),
}

/// Builds the graph of `sources` (a crate's `src/`, which must hold lib.rs).
pub fn graph(sources: &Sources) -> Graph {
    let mut graph = Graph::default();
    let Some(lib_text) = sources.get("lib.rs") else {
        graph.errors.push("no lib.rs".to_owned());
        return graph;
    };
    let lib = match syn::parse_file(lib_text) {
        Ok(f) => f,
        Err(e) => {
            graph.errors.push(located("lib.rs", e));
            return graph;
        }
    };

    let mut walk = Walk {
        sources,
        raws: Vec::new(),
        exported_macros: BTreeMap::new(),
        seen: BTreeSet::new(),
        skipped: BTreeSet::new(),
        queue: VecDeque::new(),
        errors: Vec::new(),
    };
    walk.seen.insert("lib.rs".to_owned());

    // The top-level modules, and lib.rs's own `use` items: `pub use cache::{Cache, ..}` maps
    // `Cache` to `cache`, so that `crate::Cache` in another module is a dependency on `cache`.
    let mut root_names: BTreeMap<String, Option<String>> = BTreeMap::new();
    for item in &lib.items {
        match item {
            Item::Mod(m) if is_cfg_test(&m.attrs) && m.content.is_none() => {
                walk.skip_child(&m.attrs, "lib.rs", "", &m.ident.to_string());
            }
            Item::Mod(m) if is_cfg_test(&m.attrs) => {}
            Item::Mod(m) => {
                let name = m.ident.to_string();
                graph.modules.insert(name.clone());
                match &m.content {
                    Some((_, items)) => {
                        let mut v = walk.visitor("lib.rs", vec![name.clone()], format!("{name}/"));
                        for item in items {
                            v.visit_item(item);
                        }
                        v.finish(&mut walk);
                    }
                    None => walk.queue_child(&m.attrs, "lib.rs", "", &name, vec![name.clone()]),
                }
            }
            Item::Use(u) if !is_cfg_test(&u.attrs) => {
                for (segments, _) in flatten(&u.tree) {
                    let mut names: Vec<&str> = segments.iter().map(|(s, _)| s.as_str()).collect();
                    if matches!(names.first(), Some(&"crate") | Some(&"self")) {
                        names.remove(0);
                    }
                    let (Some(first), Some(leaf)) = (names.first(), leaf_name(&u.tree, &segments))
                    else {
                        continue;
                    };
                    // A module's name, or an extern crate (`pub use cache_macros::cached`).
                    let module = Some(first.to_string()).filter(|_| names.len() > 1);
                    root_names.insert(leaf, module);
                }
            }
            _ => {}
        }
    }
    while let Some((file, module, dir)) = walk.queue.pop_front() {
        let Some(text) = sources.get(&file) else {
            continue;
        };
        match syn::parse_file(text) {
            Ok(f) => {
                let mut v = walk.visitor_owned(file.clone(), module, dir);
                v.visit_file(&f);
                v.finish(&mut walk);
            }
            Err(e) => walk.errors.push(located(&file, e)),
        }
    }
    // Files no `mod` reaches (and none under `#[cfg(test)]` declares): count them anyway,
    // as the module their path says.
    let strays: Vec<String> = sources
        .keys()
        .filter(|f| !walk.seen.contains(*f) && !walk.skipped.contains(*f))
        .cloned()
        .collect();
    for file in strays {
        let mut module: Vec<String> = file
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_owned)
            .collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        let dir = format!("{}/", module.join("/"));
        match syn::parse_file(&sources[&file]) {
            Ok(f) => {
                let mut v = walk.visitor_owned(file.clone(), module, dir);
                v.visit_file(&f);
                v.finish(&mut walk);
            }
            Err(e) => walk.errors.push(located(&file, e)),
        }
    }
    graph.errors.append(&mut walk.errors);

    // Resolve, and group the leaves of one `use` that name one module on one line.
    // (from, to, line, file, is_use) -> the paths.
    type Key = (String, String, usize, String, bool);
    let mut grouped: BTreeMap<Key, Vec<Vec<String>>> = BTreeMap::new();
    for raw in &walk.raws {
        let Some(from) = raw.module.first() else {
            continue;
        };
        let target = resolve(&graph.modules, &root_names, &walk.exported_macros, raw);
        let names: Vec<String> = raw.segments.iter().map(|(s, _)| s.clone()).collect();
        match target {
            Target::Module(to) if &to != from => {
                // The line of the segment that names the module (or the last one).
                let at = raw
                    .segments
                    .iter()
                    .position(|(s, _)| *s == to)
                    .unwrap_or(raw.segments.len() - 1);
                let line = raw.segments[at].1.start().line;
                grouped
                    .entry((from.clone(), to, line, raw.file.clone(), raw.is_use))
                    .or_default()
                    .push(names);
            }
            Target::Unresolved(at) => graph.unresolved.push(Mention {
                file: raw.file.clone(),
                line: raw.segments[at].1.start().line,
                text: render(&names, raw.is_use),
            }),
            _ => {}
        }
    }
    for ((from, to, line, file, is_use), paths) in grouped {
        let mut texts: Vec<String> = Vec::new();
        if is_use {
            texts.push(render_group(&paths));
        } else {
            for p in &paths {
                let t = render(p, false);
                if !texts.contains(&t) {
                    texts.push(t);
                }
            }
        }
        graph.edges.entry((from, to)).or_default().push(Mention {
            file,
            line,
            text: texts.join(", "),
        });
    }
    for mentions in graph.edges.values_mut() {
        mentions.sort();
    }
    graph.unresolved.sort();
    graph.unresolved.dedup();
    graph
}

fn located(file: &str, e: syn::Error) -> String {
    let at = e.span().start();
    format!("{file}:{}:{}: does not parse: {e}", at.line, at.column + 1)
}

fn resolve(
    modules: &BTreeSet<String>,
    root_names: &BTreeMap<String, Option<String>>,
    macros: &BTreeMap<String, String>,
    raw: &Raw,
) -> Target {
    let segs: Vec<&str> = raw.segments.iter().map(|(s, _)| s.as_str()).collect();
    let at_root = match segs.first() {
        Some(&"crate") | Some(&"$crate") => 1,
        Some(&"super") => {
            let mut module = raw.module.clone();
            let mut i = 0;
            while segs.get(i) == Some(&"super") {
                if module.pop().is_none() {
                    return Target::Unresolved(i);
                }
                i += 1;
            }
            if !module.is_empty() {
                return Target::Ignore; // still inside the module it is written in
            }
            i
        }
        _ => return Target::Ignore,
    };
    let Some(name) = segs.get(at_root) else {
        return Target::Ignore; // `crate` alone: `pub(crate)`, `use super::{self}`
    };
    let last = at_root + 1 == segs.len();
    if raw.is_macro && last {
        if let Some(m) = macros.get(*name) {
            return Target::Module(m.clone());
        }
    }
    if modules.contains(*name) {
        return Target::Module(name.to_string());
    }
    match root_names.get(*name) {
        Some(Some(m)) if modules.contains(m) => Target::Module(m.clone()),
        Some(_) => Target::Ignore, // re-exported from an extern crate
        None => Target::Unresolved(at_root.min(segs.len() - 1)),
    }
}

/// `use a::{b, c::d as e, f::*}` as `[a, b]`, `[a, c, d]`, `[a, f, *]` (with the rename, if any).
fn flatten(tree: &UseTree) -> Vec<UsePath> {
    fn go(tree: &UseTree, prefix: &mut Vec<(String, Span)>, out: &mut Vec<UsePath>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push((p.ident.to_string(), p.ident.span()));
                go(&p.tree, prefix, out);
                prefix.pop();
            }
            UseTree::Name(n) if n.ident == "self" => out.push((prefix.clone(), None)),
            UseTree::Name(n) => {
                let mut v = prefix.clone();
                v.push((n.ident.to_string(), n.ident.span()));
                out.push((v, None));
            }
            UseTree::Rename(r) => {
                let mut v = prefix.clone();
                v.push((r.ident.to_string(), r.ident.span()));
                out.push((v, Some(r.rename.to_string())));
            }
            UseTree::Glob(g) => {
                let mut v = prefix.clone();
                v.push(("*".to_owned(), g.star_token.span));
                out.push((v, None));
            }
            UseTree::Group(g) => {
                for t in &g.items {
                    go(t, prefix, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    go(tree, &mut Vec::new(), &mut out);
    out
}

/// The name a flattened `use` path brings into scope (its rename, or its last segment).
fn leaf_name(tree: &UseTree, segments: &[(String, Span)]) -> Option<String> {
    let same = |s: &[(String, Span)]| {
        s.len() == segments.len() && s.iter().zip(segments).all(|(a, b)| a.0 == b.0)
    };
    let renamed = flatten(tree)
        .into_iter()
        .find(|(s, _)| same(s))
        .and_then(|(_, r)| r);
    renamed
        .or_else(|| segments.last().map(|(s, _)| s.clone()))
        .filter(|s| s != "*")
}

fn render(path: &[String], is_use: bool) -> String {
    let p = path.join("::");
    if is_use {
        format!("use {p}")
    } else {
        p
    }
}

/// `[crate, cache, Cache]` and `[crate, cache, Shared]` as `use crate::cache::{Cache, Shared}`.
fn render_group(paths: &[Vec<String>]) -> String {
    if paths.len() == 1 {
        return render(&paths[0], true);
    }
    let mut common = 0;
    while paths
        .iter()
        .all(|p| p.len() > common + 1 && p[common] == paths[0][common])
    {
        common += 1;
    }
    let rests: Vec<String> = paths.iter().map(|p| p[common..].join("::")).collect();
    format!(
        "use {}::{{{}}}",
        paths[0][..common].join("::"),
        rests.join(", ")
    )
}

/// Whether a `#[cfg(..)]` among `attrs` holds only under `test`: `cfg(test)`,
/// `cfg(all(test, ..))`, `cfg(any(test, all(test, ..)))`.
pub fn is_cfg_test(attrs: &[Attribute]) -> bool {
    fn requires_test(meta: &Meta) -> bool {
        let list = |m: &syn::MetaList| {
            m.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .map(|v| v.into_iter().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        match meta {
            Meta::Path(p) => p.is_ident("test"),
            Meta::List(m) if m.path.is_ident("all") => list(m).iter().any(requires_test),
            Meta::List(m) if m.path.is_ident("any") => {
                let v = list(m);
                !v.is_empty() && v.iter().all(requires_test)
            }
            _ => false,
        }
    }
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<Meta>().is_ok_and(|m| requires_test(&m))
    })
}

struct Walk<'a> {
    sources: &'a Sources,
    raws: Vec<Raw>,
    /// `#[macro_export] macro_rules! name` -> the top-level module it is defined in.
    exported_macros: BTreeMap<String, String>,
    /// Files reached from lib.rs.
    seen: BTreeSet<String>,
    /// Files declared under `#[cfg(test)]`.
    skipped: BTreeSet<String>,
    /// (file, its module path, the directory of its children's files).
    queue: VecDeque<(String, Vec<String>, String)>,
    errors: Vec<String>,
}

impl Walk<'_> {
    fn visitor(&self, file: &str, module: Vec<String>, dir: String) -> FileVisitor {
        self.visitor_owned(file.to_owned(), module, dir)
    }

    fn visitor_owned(&self, file: String, module: Vec<String>, dir: String) -> FileVisitor {
        FileVisitor {
            file,
            module,
            dir,
            raws: Vec::new(),
            children: Vec::new(),
            skipped: Vec::new(),
            macros: Vec::new(),
        }
    }

    /// The file of `mod name;` declared in `file` whose children live in `dir`.
    fn child_file(&self, attrs: &[Attribute], file: &str, dir: &str, name: &str) -> Option<String> {
        let by_attr = attrs.iter().find_map(|a| match &a.meta {
            Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        });
        if let Some(p) = by_attr {
            let base = file.rfind('/').map_or("", |i| &file[..=i]);
            return Some(format!("{base}{p}"));
        }
        [format!("{dir}{name}.rs"), format!("{dir}{name}/mod.rs")]
            .into_iter()
            .find(|f| self.sources.contains_key(f))
    }

    fn queue_child(
        &mut self,
        attrs: &[Attribute],
        file: &str,
        dir: &str,
        name: &str,
        module: Vec<String>,
    ) {
        match self.child_file(attrs, file, dir, name) {
            Some(child) if self.seen.insert(child.clone()) => {
                self.queue
                    .push_back((child, module, format!("{dir}{name}/")))
            }
            Some(_) => {}
            None => self.errors.push(format!(
                "{file}: `mod {name};` has no file {dir}{name}.rs or {dir}{name}/mod.rs"
            )),
        }
    }

    fn skip_child(&mut self, attrs: &[Attribute], file: &str, dir: &str, name: &str) {
        if let Some(child) = self.child_file(attrs, file, dir, name) {
            self.skipped.insert(child);
        }
    }
}

/// Collects the paths of one file (or of one inline module of lib.rs).
struct FileVisitor {
    file: String,
    module: Vec<String>,
    dir: String,
    raws: Vec<Raw>,
    /// `mod x;`: (attributes, the dir it was declared in, name, module path).
    children: Vec<(Vec<Attribute>, String, String, Vec<String>)>,
    skipped: Vec<(Vec<Attribute>, String, String)>,
    macros: Vec<String>,
}

impl FileVisitor {
    fn finish(self, walk: &mut Walk<'_>) {
        walk.raws.extend(self.raws);
        if let Some(top) = self.module.first() {
            for m in self.macros {
                walk.exported_macros.insert(m, top.clone());
            }
        }
        for (attrs, dir, name, module) in self.children {
            walk.queue_child(&attrs, &self.file, &dir, &name, module);
        }
        for (attrs, dir, name) in self.skipped {
            walk.skip_child(&attrs, &self.file, &dir, &name);
        }
    }

    fn record(&mut self, segments: Vec<(String, Span)>, is_use: bool, is_macro: bool) {
        if segments.len() < 2 || !matches!(segments[0].0.as_str(), "crate" | "$crate" | "super") {
            return;
        }
        self.raws.push(Raw {
            module: self.module.clone(),
            segments,
            is_use,
            is_macro,
            file: self.file.clone(),
        });
    }

    /// Paths inside a macro's tokens (`matches!(e, crate::Error::X)`, `tracing::warn!(%crate::key::f(..))`,
    /// a `macro_rules!` body's `$crate::..`), which `syn` leaves unparsed.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tts: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tts.len() {
            match &tts[i] {
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let dollar =
                        i > 0 && matches!(&tts[i - 1], TokenTree::Punct(p) if p.as_char() == '$');
                    let first = (
                        if dollar {
                            "$crate".to_owned()
                        } else {
                            id.to_string()
                        },
                        id.span(),
                    );
                    let (paths, next) = token_path(&tts, i + 1, vec![first]);
                    for p in paths {
                        self.record(p, false, false);
                    }
                    i = next;
                }
                _ => i += 1,
            }
        }
    }
}

/// Continues the path `prefix` at `tts[i]` (`:: ident`, `:: { .. }`, `:: *`); returns the
/// paths and the index after them.
fn token_path(
    tts: &[TokenTree],
    mut i: usize,
    mut prefix: Vec<(String, Span)>,
) -> (Vec<Vec<(String, Span)>>, usize) {
    let colon =
        |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == ':');
    while colon(tts.get(i)) && colon(tts.get(i + 1)) {
        match tts.get(i + 2) {
            Some(TokenTree::Ident(id)) => {
                prefix.push((id.to_string(), id.span()));
                i += 3;
            }
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                let mut out = Vec::new();
                for part in inner.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
                {
                    if let Some(TokenTree::Ident(id)) = part.first() {
                        let mut p = prefix.clone();
                        if id != "self" {
                            p.push((id.to_string(), id.span()));
                        }
                        out.extend(token_path(part, 1, p).0);
                    }
                }
                return (out, i + 3);
            }
            _ => break,
        }
    }
    (vec![prefix], i)
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

impl<'ast> Visit<'ast> for FileVisitor {
    fn visit_item(&mut self, item: &'ast Item) {
        if is_cfg_test(item_attrs(item)) {
            if let Item::Mod(m) = item {
                if m.content.is_none() {
                    self.skipped
                        .push((m.attrs.clone(), self.dir.clone(), m.ident.to_string()));
                }
            }
            return;
        }
        visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let name = m.ident.to_string();
        let mut module = self.module.clone();
        module.push(name.clone());
        match &m.content {
            Some((_, items)) => {
                let outer_module = std::mem::replace(&mut self.module, module);
                let inner_dir = format!("{}{name}/", self.dir);
                let outer_dir = std::mem::replace(&mut self.dir, inner_dir);
                for item in items {
                    self.visit_item(item);
                }
                self.module = outer_module;
                self.dir = outer_dir;
            }
            None => self
                .children
                .push((m.attrs.clone(), self.dir.clone(), name, module)),
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        for (segments, _) in flatten(&u.tree) {
            self.record(segments, true, false);
        }
    }

    fn visit_item_macro(&mut self, m: &'ast syn::ItemMacro) {
        if let Some(name) = &m.ident {
            if m.attrs.iter().any(|a| a.path().is_ident("macro_export")) {
                self.macros.push(name.to_string());
            }
        }
        visit::visit_item_macro(self, m);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        let segments = m
            .path
            .segments
            .iter()
            .map(|s| (s.ident.to_string(), s.ident.span()))
            .collect();
        if m.path.leading_colon.is_none() {
            self.record(segments, false, true);
        }
        self.scan_tokens(m.tokens.clone());
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            self.record(
                p.segments
                    .iter()
                    .map(|s| (s.ident.to_string(), s.ident.span()))
                    .collect(),
                false,
                false,
            );
        }
        visit::visit_path(self, p);
    }

    // Not imports: `#[..]` (doc links included) and `pub(in crate::x)`.
    fn visit_attribute(&mut self, _: &'ast Attribute) {}
    fn visit_vis_restricted(&mut self, _: &'ast syn::VisRestricted) {}

    fn visit_impl_item(&mut self, i: &'ast syn::ImplItem) {
        let attrs: &[Attribute] = match i {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !is_cfg_test(attrs) {
            visit::visit_impl_item(self, i);
        }
    }

    fn visit_trait_item(&mut self, i: &'ast syn::TraitItem) {
        let attrs: &[Attribute] = match i {
            syn::TraitItem::Const(i) => &i.attrs,
            syn::TraitItem::Fn(i) => &i.attrs,
            syn::TraitItem::Type(i) => &i.attrs,
            syn::TraitItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !is_cfg_test(attrs) {
            visit::visit_trait_item(self, i);
        }
    }

    fn visit_stmt(&mut self, s: &'ast syn::Stmt) {
        let skip = match s {
            syn::Stmt::Local(l) => is_cfg_test(&l.attrs),
            syn::Stmt::Macro(m) => is_cfg_test(&m.attrs),
            _ => false,
        };
        if !skip {
            visit::visit_stmt(self, s);
        }
    }

    fn visit_field(&mut self, f: &'ast syn::Field) {
        if !is_cfg_test(&f.attrs) {
            visit::visit_field(self, f);
        }
    }

    fn visit_variant(&mut self, v: &'ast syn::Variant) {
        if !is_cfg_test(&v.attrs) {
            visit::visit_variant(self, v);
        }
    }

    fn visit_arm(&mut self, a: &'ast syn::Arm) {
        if !is_cfg_test(&a.attrs) {
            visit::visit_arm(self, a);
        }
    }

    fn visit_field_value(&mut self, f: &'ast syn::FieldValue) {
        if !is_cfg_test(&f.attrs) {
            visit::visit_field_value(self, f);
        }
    }
}

/// The strongly connected components of more than one module (Tarjan), each sorted, in the
/// order of their first module.
pub fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        next: BTreeMap<&'g str, Vec<&'g str>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.next.get(v).cloned().unwrap_or_default() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        next: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    let mut nodes: BTreeSet<&str> = graph.modules.iter().map(String::as_str).collect();
    for (from, to) in graph.edges.keys() {
        t.next.entry(from.as_str()).or_default().push(to.as_str());
        nodes.insert(from);
        nodes.insert(to);
    }
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

/// A closed walk through every module of `circle`, from its first, one edge per step: the
/// nearest module not yet visited by the shortest path, then back.
pub fn walk_around(graph: &Graph, circle: &[String]) -> Vec<(String, String)> {
    let inside: BTreeSet<&str> = circle.iter().map(String::as_str).collect();
    let shortest = |from: &str, to: &dyn Fn(&str) -> bool| -> Vec<String> {
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = BTreeSet::from([from]);
        while let Some(v) = queue.pop_front() {
            for ((a, b), _) in graph.edges.range((v.to_owned(), String::new())..) {
                if a != v {
                    break;
                }
                if !inside.contains(b.as_str()) || !seen.insert(b.as_str()) {
                    continue;
                }
                prev.insert(b.as_str(), v);
                if to(b) {
                    let mut path = vec![b.clone()];
                    let mut at = b.as_str();
                    while let Some(p) = prev.get(at) {
                        path.push((*p).to_owned());
                        at = p;
                        if at == from {
                            break;
                        }
                    }
                    path.reverse();
                    return path;
                }
                queue.push_back(b.as_str());
            }
        }
        Vec::new()
    };
    let mut visited: BTreeSet<String> = BTreeSet::from([circle[0].clone()]);
    let mut at = circle[0].clone();
    let mut steps = Vec::new();
    loop {
        let done = visited.len() == circle.len();
        let path = if done {
            let start = circle[0].clone();
            shortest(&at, &|m: &str| m == start)
        } else {
            shortest(&at, &|m: &str| !visited.contains(m))
        };
        if path.len() < 2 {
            return steps; // not strongly connected: cannot happen for a component
        }
        for pair in path.windows(2) {
            steps.push((pair[0].clone(), pair[1].clone()));
            visited.insert(pair[1].clone());
        }
        at = path[path.len() - 1].clone();
        if done {
            return steps;
        }
    }
}

/// The failure message, or `None` when the modules import in one direction.
pub fn report(graph: &Graph, src: &str) -> Option<String> {
    let circles = circles(graph);
    if circles.is_empty() && graph.unresolved.is_empty() && graph.errors.is_empty() {
        return None;
    }
    let at = |m: &Mention| format!("{src}/{}:{}: {}", m.file, m.line, m.text);
    let mut out = String::new();
    for e in &graph.errors {
        let _ = writeln!(out, "{src}/{e}");
    }
    if !circles.is_empty() {
        let _ = writeln!(
            out,
            "\n{src}: {} import circle{} between top-level modules. Each module may import only from \
             modules below it; remove every import of at least one edge of each circle.",
            circles.len(),
            if circles.len() == 1 { "" } else { "s" }
        );
    }
    for (n, circle) in circles.iter().enumerate() {
        let _ = writeln!(
            out,
            "\ncircle {} of {}: {} modules: {}",
            n + 1,
            circles.len(),
            circle.len(),
            circle.join(", ")
        );
        let _ = writeln!(
            out,
            "  around it, one import per step (the last step closes it):"
        );
        let steps = walk_around(graph, circle);
        let width = steps
            .iter()
            .map(|(a, b)| a.len() + b.len() + 4)
            .max()
            .unwrap_or(0);
        for (a, b) in &steps {
            let m = &graph.edges[&(a.clone(), b.clone())][0];
            let _ = writeln!(out, "    {:width$}  {}", format!("{a} -> {b}"), at(m));
        }
        let inside: Vec<(&(String, String), &Vec<Mention>)> = graph
            .edges
            .iter()
            .filter(|((a, b), _)| circle.contains(a) && circle.contains(b))
            .collect();
        let _ = writeln!(
            out,
            "  all {} edges inside it (imports per edge; the first one):",
            inside.len()
        );
        let width = inside
            .iter()
            .map(|((a, b), _)| a.len() + b.len() + 4)
            .max()
            .unwrap_or(0);
        for ((a, b), ms) in inside {
            let _ = writeln!(
                out,
                "    {:width$} {:>3}  {}",
                format!("{a} -> {b}"),
                ms.len(),
                at(&ms[0])
            );
        }
    }
    if !graph.unresolved.is_empty() {
        let _ = writeln!(
            out,
            "\npaths through the crate root that name no module (an item of lib.rs itself, a glob \
             or `super` above the root): import it from the module that defines it"
        );
        for m in &graph.unresolved {
            let _ = writeln!(out, "    {}", at(m));
        }
    }
    let _ = write!(out, "\n{}", imports_table(graph));
    Some(out)
}

/// Every module and the modules it imports.
pub fn imports_table(graph: &Graph) -> String {
    let mut out = String::from("what each module imports:\n");
    let width = graph.modules.iter().map(String::len).max().unwrap_or(0);
    for m in &graph.modules {
        let to: Vec<&str> = graph
            .edges
            .keys()
            .filter(|(a, _)| a == m)
            .map(|(_, b)| b.as_str())
            .collect();
        let _ = writeln!(
            out,
            "    {m:width$}  {}",
            if to.is_empty() {
                "-".to_owned()
            } else {
                to.join(", ")
            }
        );
    }
    out
}
