//! Checks of the annotated function against the attribute: what the signature
//! allows, and whether the templates and `skip` name its parameters.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::attr::{Args, Kind, TemplateArg};
use crate::suggest;
use crate::Errors;

/// What the expansion needs to know about the function.
#[derive(Debug)]
pub struct FnInfo {
    pub receiver: Option<syn::Receiver>,
    /// Whether the function is known to live in an `impl` block: it has a
    /// receiver or its signature mentions `Self`. Companions are then called
    /// through `Self::`.
    pub in_impl: bool,
    pub params: Vec<Param>,
    pub mode: ModeKind,
    /// `#[cached_many]`: the collection parameter the key iterates over.
    pub collection: Option<Collection>,
}

/// The collection parameter of `#[cached_many]`.
#[derive(Debug)]
pub struct Collection {
    /// Its index in `params`.
    pub index: usize,
    pub kind: CollectionKind,
}

/// What the collection parameter is; the body receives the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionKind {
    Vec,
    Slice,
    Set,
}

/// The collection types `#[cached_many]` accepts, for messages.
const COLLECTIONS: &str = "`Vec<K>`, `&[K]`, `HashSet<K>` or `BTreeSet<K>`";

#[derive(Debug)]
pub struct Param {
    pub ident: Ident,
    /// The name without `r#`, as templates spell it.
    pub name: String,
}

/// How the return type decides what is cacheable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeKind {
    Plain,
    Option,
    Result,
}

pub fn check(kind: Kind, args: &Args, func: &ItemFn, errors: &mut Errors) -> FnInfo {
    let sig = &func.sig;
    let macro_name = kind.name();

    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format_args!("`#[{macro_name}]` requires an `async fn`; make the function `async`"),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(
            unsafety,
            format_args!("`#[{macro_name}]` does not support `unsafe fn`"),
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(
            variadic,
            format_args!("`#[{macro_name}]` does not support variadic functions"),
        );
    }

    let mut receiver = None;
    let mut params = Vec::new();
    let mut types: Vec<&Type> = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(recv) => {
                if recv.reference.is_none() && !is_reference(&recv.ty) {
                    errors.spanned(recv, "`self` by value is not supported; take `&self`");
                }
                receiver = Some(recv.clone());
            }
            FnArg::Typed(typed) => {
                if let Some(span) = find_impl_trait(&typed.ty) {
                    errors.at(
                        span,
                        format_args!(
                            "`impl Trait` parameters are not supported by `#[{macro_name}]`; use a generic parameter instead, such as `fn f<T: Trait>(x: T)`"
                        ),
                    );
                }
                match &*typed.pat {
                    Pat::Ident(pat) if pat.subpat.is_none() => {
                        params.push(Param {
                            name: pat.ident.unraw().to_string(),
                            ident: pat.ident.clone(),
                        });
                        types.push(&typed.ty);
                    }
                    other => errors.spanned(
                        other,
                        format_args!(
                            "`#[{macro_name}]` needs a name for each parameter; bind it to a name and destructure it in the body"
                        ),
                    ),
                }
            }
        }
    }

    let mode = mode_of(&sig.output);
    if let Some(span) = args.cache_none {
        if mode != ModeKind::Option {
            errors.at(
                span,
                "`cache_none` only applies to functions returning `Option`",
            );
        }
    }
    if let Some(span) = args.cache_err {
        if mode != ModeKind::Result {
            errors.at(
                span,
                "`cache_err` only applies to functions returning `Result`",
            );
        }
    }

    if let Some((_, span)) = args.hard_timeout {
        if mode != ModeKind::Result {
            errors.at(
                span,
                "`hard_timeout` only applies to functions returning `Result<T, E>` with `E: From<cache_core::Error>`: a computation cut off must return an error; use `soft_timeout` with `stale` to bound the wait of other functions",
            );
        }
    }
    if let (Some(_), None) = (args.soft_timeout_ms, args.stale_ms) {
        errors.at(
            Span::call_site(),
            "`soft_timeout` needs `stale = \"...\"`: it bounds the wait for a refresh when a stale value can be served instead",
        );
    }

    let collection = if kind == Kind::CachedMany {
        check_many(args, sig, &params, &types, errors)
    } else {
        None
    };
    let info = FnInfo {
        in_impl: receiver.is_some() || mentions_self(sig),
        receiver,
        params,
        mode,
        collection,
    };

    if let Some(key) = &args.key {
        check_template(key, "key", &info, errors);
    }
    for tag in &args.tags {
        check_template(tag, "tag", &info, errors);
    }

    match kind {
        Kind::Cached | Kind::CachedMany => check_coverage(args, &info, errors),
        Kind::Evict => {
            if args.key.is_none() && args.tags.is_empty() {
                errors.at(
                    Span::call_site(),
                    "`#[cache_evict]` needs something to evict: `key = \"...\"`, `tags = [...]`, or both",
                );
            }
        }
        Kind::Put => {
            if args.key.is_none() {
                errors.at(
                    Span::call_site(),
                    "`#[cache_put]` needs `key = \"...\"`: the key of the cached function whose value it writes",
                );
            }
        }
    }
    info
}

fn check_template(arg: &TemplateArg, which: &str, info: &FnInfo, errors: &mut Errors) {
    let Some(template) = &arg.template else {
        return;
    };
    for placeholder in template.placeholders() {
        let root = placeholder.root.as_str();
        if root == "self" {
            if info.receiver.is_none() {
                errors.spanned(
                    &arg.lit,
                    format_args!(
                        "`self` in {which} template, but the function has no `self` parameter"
                    ),
                );
            }
            continue;
        }
        if info.params.iter().any(|p| p.name == root) {
            continue;
        }
        errors.spanned(
            &arg.lit,
            unknown_parameter(root, &format!("in {which} template"), info),
        );
    }
}

fn unknown_parameter(name: &str, place: &str, info: &FnInfo) -> String {
    let names = info.params.iter().map(|p| p.name.as_str());
    if let Some(close) = suggest::closest(name, names.clone()) {
        return format!("unknown parameter `{name}` {place}; did you mean `{close}`?");
    }
    if info.params.is_empty() {
        format!("unknown parameter `{name}` {place}; the function has no parameters")
    } else {
        format!(
            "unknown parameter `{name}` {place}; the parameters are {}",
            suggest::list(names)
        )
    }
}

/// Every parameter must be in the key, in a tag or in `skip`, else two calls
/// differing only in it would share a cached value.
fn check_coverage(args: &Args, info: &FnInfo, errors: &mut Errors) {
    let names: Vec<&str> = info.params.iter().map(|p| p.name.as_str()).collect();
    let roots = |arg: &TemplateArg| -> Vec<String> {
        arg.template
            .iter()
            .flat_map(|t| t.placeholders().map(|p| p.root.clone()))
            .collect()
    };
    let in_key: Vec<String> = args.key.iter().flat_map(roots).collect();

    for skipped in &args.skip {
        let name = skipped.unraw().to_string();
        if name == "self" {
            errors.spanned(
                skipped,
                "`self` is never part of the key unless the key template names it; remove it from `skip`",
            );
        } else if !names.contains(&name.as_str()) {
            errors.spanned(skipped, unknown_parameter(&name, "in `skip`", info));
        } else if in_key.contains(&name) {
            errors.spanned(
                skipped,
                format_args!(
                    "parameter `{name}` is both in the key template and in `skip`; remove it from one of them"
                ),
            );
        }
    }

    let key_unchecked = match &args.key {
        // Without `key`, the default key holds every parameter not skipped.
        None => true,
        // A template that did not parse has its own errors.
        Some(key) => key.template.is_none(),
    };
    if key_unchecked {
        return;
    }
    let mut covered: Vec<String> = in_key;
    covered.extend(args.tags.iter().flat_map(roots));
    covered.extend(args.skip.iter().map(|s| s.unraw().to_string()));
    // A misspelt name covers the parameter it was probably meant to be, so
    // that one typo gives one error.
    let meant: Vec<String> = covered
        .iter()
        .filter(|name| !names.contains(&name.as_str()))
        .filter_map(|name| suggest::closest(name, names.iter().copied()))
        .map(str::to_owned)
        .collect();
    covered.extend(meant);

    for param in &info.params {
        if !covered.contains(&param.name) {
            errors.spanned(
                &param.ident,
                format_args!(
                    "parameter `{}` is not part of the key; add it to the key or to `skip = [...]`, otherwise calls that differ only in `{}` share a cached value",
                    param.name, param.name
                ),
            );
        }
    }
}

/// `#[cached_many]`: the key template names exactly one collection parameter, and the
/// function returns a map.
fn check_many(
    args: &Args,
    sig: &syn::Signature,
    params: &[Param],
    types: &[&Type],
    errors: &mut Errors,
) -> Option<Collection> {
    if !returns_map(&sig.output) {
        let found = match &sig.output {
            ReturnType::Default => "`()`".to_owned(),
            ReturnType::Type(_, ty) => format!(
                "`{}`",
                quote::ToTokens::to_token_stream(ty)
                    .to_string()
                    .replace(' ', "")
            ),
        };
        let message = format!(
            "`#[cached_many]` returns a map from each id to its value: `HashMap<K, V>` or `Result<HashMap<K, V>, E>`; found {found}"
        );
        match &sig.output {
            ReturnType::Default => errors.at(sig.ident.span(), message),
            ReturnType::Type(_, ty) => errors.spanned(ty, message),
        }
    }
    let Some(key) = &args.key else {
        errors.at(
            Span::call_site(),
            format_args!(
                "`#[cached_many]` needs `key = \"...\"` naming the collection parameter ({COLLECTIONS}), which stands for each id: `key = \"user:<ids>\"`"
            ),
        );
        return None;
    };
    let template = key.template.as_ref()?;
    let collections: Vec<(usize, CollectionKind)> = params
        .iter()
        .zip(types)
        .enumerate()
        .filter_map(|(i, (_, ty))| collection_kind(ty).map(|kind| (i, kind)))
        .collect();
    let mut named: Vec<(usize, CollectionKind)> = Vec::new();
    for placeholder in template.placeholders() {
        if let Some(&(i, kind)) = collections
            .iter()
            .find(|(i, _)| params[*i].name == placeholder.root)
        {
            if !named.iter().any(|(j, _)| *j == i) {
                named.push((i, kind));
            }
        }
    }
    match named.as_slice() {
        [(index, kind)] => Some(Collection {
            index: *index,
            kind: *kind,
        }),
        [] => {
            let choices = if collections.is_empty() {
                format!("the function has none; take the ids as {COLLECTIONS}")
            } else {
                format!(
                    "name one of {}",
                    suggest::list(collections.iter().map(|(i, _)| params[*i].name.as_str()))
                )
            };
            errors.spanned(
                &key.lit,
                format_args!(
                    "the key template of `#[cached_many]` names no collection parameter ({COLLECTIONS}) to stand for each id; {choices}, such as `key = \"user:<ids>\"`"
                ),
            );
            None
        }
        [..] => {
            let names = suggest::list(named.iter().map(|(i, _)| params[*i].name.as_str()));
            errors.spanned(
                &key.lit,
                format_args!(
                    "the key template of `#[cached_many]` names {} collection parameters ({names}); a batch iterates over exactly one: keep one of them in the key template",
                    named.len()
                ),
            );
            None
        }
    }
}

/// `Vec<K>`, `&[K]`, `HashSet<K>`, `BTreeSet<K>` (by the last segment of the path).
fn collection_kind(ty: &Type) -> Option<CollectionKind> {
    match ty {
        Type::Group(group) => collection_kind(&group.elem),
        Type::Paren(paren) => collection_kind(&paren.elem),
        Type::Reference(r) => match &*r.elem {
            Type::Slice(_) => Some(CollectionKind::Slice),
            _ => None,
        },
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            if !matches!(last.arguments, PathArguments::AngleBracketed(_)) {
                return None;
            }
            match last.ident.to_string().as_str() {
                "Vec" => Some(CollectionKind::Vec),
                "HashSet" | "BTreeSet" => Some(CollectionKind::Set),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `HashMap<..>` or `Result<HashMap<..>, ..>`.
fn returns_map(output: &ReturnType) -> bool {
    fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
        match ty {
            Type::Group(group) => last_segment(&group.elem),
            Type::Paren(paren) => last_segment(&paren.elem),
            Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
            _ => None,
        }
    }
    fn is_map(ty: &Type) -> bool {
        last_segment(ty).is_some_and(|s| s.ident == "HashMap")
    }
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    if is_map(ty) {
        return true;
    }
    match last_segment(ty) {
        Some(segment) if segment.ident == "Result" => match &segment.arguments {
            PathArguments::AngleBracketed(args) => match args.args.first() {
                Some(GenericArgument::Type(ok)) => is_map(ok),
                _ => false,
            },
            _ => false,
        },
        _ => false,
    }
}

fn is_reference(ty: &Type) -> bool {
    match ty {
        Type::Reference(_) => true,
        Type::Group(group) => is_reference(&group.elem),
        Type::Paren(paren) => is_reference(&paren.elem),
        _ => false,
    }
}

/// The span of the first `impl Trait` inside a parameter type.
fn find_impl_trait(ty: &Type) -> Option<Span> {
    match ty {
        Type::ImplTrait(impl_trait) => Some(impl_trait.span()),
        Type::Reference(r) => find_impl_trait(&r.elem),
        Type::Ptr(p) => find_impl_trait(&p.elem),
        Type::Slice(s) => find_impl_trait(&s.elem),
        Type::Array(a) => find_impl_trait(&a.elem),
        Type::Paren(p) => find_impl_trait(&p.elem),
        Type::Group(g) => find_impl_trait(&g.elem),
        Type::Tuple(t) => t.elems.iter().find_map(find_impl_trait),
        Type::Path(path) => {
            path.path
                .segments
                .iter()
                .find_map(|segment| match &segment.arguments {
                    PathArguments::AngleBracketed(args) => {
                        args.args.iter().find_map(|arg| match arg {
                            GenericArgument::Type(ty) => find_impl_trait(ty),
                            _ => None,
                        })
                    }
                    _ => None,
                })
        }
        _ => None,
    }
}

fn mode_of(output: &ReturnType) -> ModeKind {
    let ReturnType::Type(_, ty) = output else {
        return ModeKind::Plain;
    };
    let mut ty = &**ty;
    while let Type::Group(group) = ty {
        ty = &group.elem;
    }
    match ty {
        Type::Path(path) if path.qself.is_none() => {
            match path
                .path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .as_deref()
            {
                Some("Option") => ModeKind::Option,
                Some("Result") => ModeKind::Result,
                _ => ModeKind::Plain,
            }
        }
        _ => ModeKind::Plain,
    }
}

/// Whether `Self` appears anywhere in the signature, which places the function
/// in an `impl` block even without a receiver.
fn mentions_self(sig: &syn::Signature) -> bool {
    fn walk(tokens: proc_macro2::TokenStream) -> bool {
        tokens.into_iter().any(|tree| match tree {
            proc_macro2::TokenTree::Ident(ident) => ident == "Self",
            proc_macro2::TokenTree::Group(group) => walk(group.stream()),
            _ => false,
        })
    }
    walk(quote::ToTokens::to_token_stream(sig))
}
