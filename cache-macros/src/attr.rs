//! Parsing of the attribute arguments: `#[cached(key = "...", ttl = "5m", ...)]`.
//!
//! Parsing is two-staged: syn reads `name = <expression>` pairs, then each
//! value is checked on its own, so that one bad value does not hide the
//! problems of the others.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token, UnOp};

use crate::suggest;
use crate::template::{self, Template};
use crate::Errors;

/// Which of the three attributes is being expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cached,
    CachedMany,
    Evict,
    Put,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cached => "cached",
            Kind::CachedMany => "cached_many",
            Kind::Evict => "cache_evict",
            Kind::Put => "cache_put",
        }
    }

    fn accepted(self) -> &'static [&'static str] {
        match self {
            Kind::Cached => &[
                "key",
                "ttl",
                "tags",
                "cache",
                "skip",
                "cache_none",
                "cache_err",
                "crate",
                "stale",
                "refresh",
                "lock",
                "soft_timeout",
                "hard_timeout",
                "local",
            ],
            Kind::CachedMany => &[
                "key",
                "ttl",
                "tags",
                "cache",
                "skip",
                "crate",
                "stale",
                "lock",
                "cache_absent",
            ],
            Kind::Evict => &["key", "tags", "cache", "crate"],
            Kind::Put => &[
                "key",
                "ttl",
                "tags",
                "cache",
                "cache_none",
                "cache_err",
                "crate",
            ],
        }
    }
}

/// A key or tag template as written, and parsed when it is valid.
#[derive(Debug)]
pub struct TemplateArg {
    pub lit: LitStr,
    /// `None` when the template did not parse; its errors are already reported.
    pub template: Option<Template>,
}

/// The checked arguments of one attribute.
#[derive(Debug, Default)]
pub struct Args {
    pub key: Option<TemplateArg>,
    pub ttl_ms: Option<u64>,
    pub tags: Vec<TemplateArg>,
    pub cache: Option<Expr>,
    pub skip: Vec<Ident>,
    /// The flags keep their span for errors such as `cache_none` on a `Result`.
    pub cache_none: Option<Span>,
    pub cache_err: Option<Span>,
    pub krate: Option<syn::Path>,
    /// `stale`, `soft_timeout`, `hard_timeout` in milliseconds, with their spans.
    pub stale_ms: Option<u64>,
    pub soft_timeout_ms: Option<u64>,
    pub hard_timeout: Option<(u64, Span)>,
    /// `refresh = "early"`.
    pub early_refresh: bool,
    /// `lock`: 0 none, 1 local, 2 distributed.
    pub lock: Option<u8>,
    /// `local = false`: reads skip the L1 near cache.
    pub local: Option<bool>,
    /// `cache_absent = "1m"` (`#[cached_many]`): ids the body does not return are cached as
    /// absent this long.
    pub cache_absent_ms: Option<u64>,
}

impl Args {
    /// Whether any stampede or staleness attribute is given.
    pub fn has_policy(&self) -> bool {
        self.stale_ms.is_some()
            || self.soft_timeout_ms.is_some()
            || self.hard_timeout.is_some()
            || self.early_refresh
            || self.lock.is_some()
    }
}

/// `name` or `name = value`.
struct RawArg {
    name: Ident,
    value: Option<Expr>,
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `parse_any` so that `crate = "..."` reads as a name, not a keyword.
        let name = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(RawArg { name, value })
    }
}

pub fn parse(kind: Kind, tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args::default();
    let raw = match Punctuated::<RawArg, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(raw) => raw,
        Err(error) => {
            errors.push(error);
            return args;
        }
    };

    let mut seen: Vec<String> = Vec::new();
    for RawArg { name, value } in raw {
        let name_str = name.to_string();
        if !kind.accepted().contains(&name_str.as_str()) {
            errors.at(name.span(), unknown_attribute(kind, &name_str));
            continue;
        }
        if seen.contains(&name_str) {
            errors.at(
                name.span(),
                format_args!("duplicate attribute `{name_str}`; give it once"),
            );
            continue;
        }
        seen.push(name_str.clone());

        match name_str.as_str() {
            "cache_none" | "cache_err" => {
                if let Some(value) = value {
                    errors.spanned(
                        &value,
                        format_args!(
                            "`{name_str}` is a flag and takes no value; write `{name_str}` alone"
                        ),
                    );
                } else if name_str == "cache_none" {
                    args.cache_none = Some(name.span());
                } else {
                    args.cache_err = Some(name.span());
                }
            }
            _ => {
                let Some(value) = value else {
                    errors.at(
                        name.span(),
                        format_args!("`{name_str}` needs a value: {}", example(&name_str)),
                    );
                    continue;
                };
                match name_str.as_str() {
                    "key" => args.key = template_arg(&name_str, value, errors),
                    "ttl" => args.ttl_ms = ttl(value, errors),
                    "tags" => args.tags = tags(value, errors),
                    "cache" => args.cache = Some(value),
                    "skip" => args.skip = skip(value, errors),
                    "crate" => args.krate = crate_path(value, errors),
                    "stale" => args.stale_ms = duration("stale", value, errors),
                    "soft_timeout" => {
                        args.soft_timeout_ms = duration("soft_timeout", value, errors)
                    }
                    "hard_timeout" => {
                        let span = value.span();
                        args.hard_timeout =
                            duration("hard_timeout", value, errors).map(|ms| (ms, span));
                    }
                    "refresh" => {
                        args.early_refresh = choice("refresh", &value, &["early"], errors).is_some()
                    }
                    "lock" => {
                        args.lock =
                            choice("lock", &value, &["none", "local", "distributed"], errors)
                                .map(|i| i as u8)
                    }
                    "local" => args.local = local_flag(value, errors),
                    "cache_absent" => {
                        args.cache_absent_ms = duration("cache_absent", value, errors)
                    }
                    _ => unreachable!("`{name_str}` is in the accepted list but not handled"),
                }
            }
        }
    }
    args
}

fn unknown_attribute(kind: Kind, name: &str) -> String {
    let accepted = kind.accepted();
    let expected = suggest::list(accepted.iter().copied());
    match suggest::closest(name, accepted.iter().copied()) {
        Some(close) => format!(
            "unknown attribute `{name}` for `#[{}]`; did you mean `{close}`? expected one of {expected}",
            kind.name()
        ),
        None => format!(
            "unknown attribute `{name}` for `#[{}]`; expected one of {expected}",
            kind.name()
        ),
    }
}

fn example(name: &str) -> &'static str {
    match name {
        "key" => "`key = \"user:<user_id>\"`",
        "ttl" => "`ttl = 60` (seconds) or `ttl = \"5m\"`",
        "tags" => "`tags = [\"org:<org_id>\"]`",
        "cache" => "`cache = CACHE` or `cache = self.cache`",
        "skip" => "`skip = [param, ...]`",
        "crate" => "`crate = \"path::to::cache_core\"`",
        "stale" => "`stale = \"1h\"`",
        "soft_timeout" => "`soft_timeout = \"100ms\"`",
        "hard_timeout" => "`hard_timeout = \"2s\"`",
        "refresh" => "`refresh = \"early\"`",
        "lock" => "`lock = \"local\"`, `lock = \"distributed\"` or `lock = \"none\"`",
        "local" => "`local = false`",
        "cache_absent" => "`cache_absent = \"1m\"`",
        _ => "`name = value`",
    }
}

fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Some(lit),
        Expr::Group(group) => string_literal(&group.expr),
        _ => None,
    }
}

fn template_arg(what: &str, value: Expr, errors: &mut Errors) -> Option<TemplateArg> {
    let Some(lit) = string_literal(&value) else {
        errors.spanned(
            &value,
            format_args!(
                "`{what}` expects a string literal, such as {}",
                example(what)
            ),
        );
        return None;
    };
    Some(parse_template(what, lit.clone(), errors))
}

fn parse_template(what: &str, lit: LitStr, errors: &mut Errors) -> TemplateArg {
    let which = if what == "key" { "key" } else { "tag" };
    let template = match template::parse(&lit.value()) {
        Ok(template) => Some(template),
        Err(template_errors) => {
            for error in template_errors {
                // Spans inside a string literal are not available on stable,
                // so the whole literal carries the error.
                let message =
                    error
                        .kind
                        .to_string()
                        .replacen("template", &format!("{which} template"), 1);
                errors.at(lit.span(), message);
            }
            None
        }
    };
    TemplateArg { lit, template }
}

fn tags(value: Expr, errors: &mut Errors) -> Vec<TemplateArg> {
    let Expr::Array(array) = value else {
        errors.spanned(
            &value,
            format_args!(
                "`tags` expects a list of string literals, such as {}",
                example("tags")
            ),
        );
        return Vec::new();
    };
    let mut tags = Vec::new();
    for element in array.elems {
        match string_literal(&element) {
            Some(lit) => tags.push(parse_template("tags", lit.clone(), errors)),
            None => errors.spanned(
                &element,
                "each tag must be a string literal template, such as `\"org:<org_id>\"`",
            ),
        }
    }
    tags
}

fn skip(value: Expr, errors: &mut Errors) -> Vec<Ident> {
    let Expr::Array(array) = value else {
        errors.spanned(
            &value,
            format_args!(
                "`skip` expects a list of parameter names, such as {}",
                example("skip")
            ),
        );
        return Vec::new();
    };
    let mut names: Vec<Ident> = Vec::new();
    for element in array.elems {
        match &element {
            Expr::Path(path) if path.qself.is_none() && path.path.get_ident().is_some() => {
                let ident = path.path.segments[0].ident.clone();
                if names.contains(&ident) {
                    errors.spanned(&ident, format_args!("`{ident}` is listed twice in `skip`"));
                } else {
                    names.push(ident);
                }
            }
            _ => errors.spanned(
                &element,
                "`skip` expects parameter names, such as `skip = [conn]`",
            ),
        }
    }
    names
}

const TTL_EXPECTED: &str =
    "expected seconds as an integer or a duration such as \"30s\", \"5m\", \"1h\"";

fn ttl(value: Expr, errors: &mut Errors) -> Option<u64> {
    let span = value.span();
    let millis = match &value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<u64>() {
            Ok(seconds) => seconds.checked_mul(1000).ok_or_else(|| {
                format!(
                    "invalid `ttl` {}: too large; {TTL_EXPECTED}",
                    int.base10_digits()
                )
            }),
            Err(_) => Err(format!("invalid `ttl` {int}: {TTL_EXPECTED}")),
        },
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            let text = lit.value();
            match humantime::parse_duration(&text) {
                Ok(duration) => Ok(round_up_to_millis(duration)),
                Err(_) if text.trim_start().starts_with('-') => Err(format!(
                    "invalid `ttl` {text:?}: a time to live cannot be negative; {TTL_EXPECTED}"
                )),
                Err(_) => Err(format!("invalid `ttl` {text:?}: {TTL_EXPECTED}")),
            }
        }
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => Err(format!(
            "invalid `ttl` {}: a time to live cannot be negative; {TTL_EXPECTED}",
            quote::ToTokens::to_token_stream(&value)
                .to_string()
                .replace(' ', "")
        )),
        _ => Err(format!("invalid `ttl`: {TTL_EXPECTED}")),
    };
    match millis {
        Ok(0) => {
            errors.at(
                span,
                format_args!("invalid `ttl` of zero: a time to live must be greater than zero; {TTL_EXPECTED}"),
            );
            None
        }
        Ok(millis) => Some(millis),
        Err(message) => {
            errors.at(span, message);
            None
        }
    }
}

const DURATION_EXPECTED: &str = "expected a duration such as \"100ms\", \"2s\", \"1h\"";

/// `stale`, `soft_timeout`, `hard_timeout`: a duration in a string, greater than zero.
fn duration(what: &str, value: Expr, errors: &mut Errors) -> Option<u64> {
    let Some(lit) = string_literal(&value) else {
        errors.spanned(
            &value,
            format_args!("invalid `{what}`: {DURATION_EXPECTED}, in a string"),
        );
        return None;
    };
    let text = lit.value();
    match humantime::parse_duration(&text) {
        Ok(d) if d.is_zero() => {
            errors.spanned(
                lit,
                format_args!(
                    "invalid `{what}` of zero: it must be greater than zero; {DURATION_EXPECTED}"
                ),
            );
            None
        }
        Ok(d) => Some(round_up_to_millis(d)),
        Err(_) => {
            errors.spanned(
                lit,
                format_args!("invalid `{what}` {text:?}: {DURATION_EXPECTED}"),
            );
            None
        }
    }
}

/// A string naming one of `choices`; its index.
fn choice(what: &str, value: &Expr, choices: &[&str], errors: &mut Errors) -> Option<usize> {
    let expected = suggest::list(choices.iter().copied());
    let Some(lit) = string_literal(value) else {
        errors.spanned(
            value,
            format_args!("`{what}` expects a string, one of {expected}"),
        );
        return None;
    };
    let text = lit.value();
    match choices.iter().position(|c| *c == text) {
        Some(i) => Some(i),
        None => {
            errors.spanned(
                lit,
                format_args!("invalid `{what}` {text:?}; expected one of {expected}"),
            );
            None
        }
    }
}

/// A sub-millisecond remainder rounds up: `"1us"` must not become "no expiry".
fn round_up_to_millis(duration: Duration) -> u64 {
    let millis = duration.as_millis();
    let rounded = if duration.subsec_nanos().is_multiple_of(1_000_000) {
        millis
    } else {
        millis + 1
    };
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

fn crate_path(value: Expr, errors: &mut Errors) -> Option<syn::Path> {
    if let Some(lit) = string_literal(&value) {
        return match lit.parse::<syn::Path>() {
            Ok(path) => Some(path),
            Err(_) => {
                errors.spanned(
                    lit,
                    format_args!(
                        "invalid `crate` path {:?}: expected a path such as \"::my_crate::cache\"",
                        lit.value()
                    ),
                );
                None
            }
        };
    }
    if let Expr::Path(path) = &value {
        if path.qself.is_none() {
            return Some(path.path.clone());
        }
    }
    errors.spanned(
        &value,
        format_args!(
            "`crate` expects a path in a string, such as {}",
            example("crate")
        ),
    );
    None
}

/// `local = false` (or `true`, the default).
fn local_flag(value: Expr, errors: &mut Errors) -> Option<bool> {
    match &value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Some(b.value),
        _ => {
            errors.spanned(
                &value,
                "`local` takes `true` or `false`: `local = false` keeps this function's values out of the L1 near cache",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse_ok(kind: Kind, tokens: TokenStream) -> Args {
        let mut errors = Errors::default();
        let args = parse(kind, tokens, &mut errors);
        if let Err(error) = errors.finish() {
            panic!("unexpected error: {error}");
        }
        args
    }

    fn messages(kind: Kind, tokens: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        parse(kind, tokens, &mut errors);
        match errors.finish() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn ttl_forms() {
        let ttl = |tokens| parse_ok(Kind::Cached, tokens).ttl_ms;
        assert_eq!(ttl(quote!(ttl = 60)), Some(60_000));
        assert_eq!(ttl(quote!(ttl = "5m")), Some(300_000));
        assert_eq!(ttl(quote!(ttl = "1h 30m")), Some(5_400_000));
        assert_eq!(ttl(quote!(ttl = "250ms")), Some(250));
        assert_eq!(ttl(quote!(ttl = "1us")), Some(1));
        assert_eq!(ttl(quote!()), None);
    }

    #[test]
    fn bad_ttls() {
        for tokens in [
            quote!(ttl = "5 parsecs"),
            quote!(ttl = -5),
            quote!(ttl = "-5m"),
            quote!(ttl = 0),
            quote!(ttl = "0s"),
            quote!(ttl = 1.5),
            quote!(ttl = 18446744073709551615),
        ] {
            let messages = messages(Kind::Cached, tokens.clone());
            assert_eq!(messages.len(), 1, "{tokens}: {messages:?}");
            assert!(messages[0].starts_with("invalid `ttl`"), "{messages:?}");
        }
    }

    #[test]
    fn everything_at_once() {
        let args = parse_ok(
            Kind::Cached,
            quote!(
                key = "u:<id>",
                ttl = 5,
                tags = ["a", "b:<id>"],
                cache = CACHE,
                skip = [conn],
                cache_none,
                cache_err,
                crate = "::my::cache"
            ),
        );
        assert!(args.key.is_some());
        assert_eq!(args.tags.len(), 2);
        assert!(args.cache.is_some());
        assert_eq!(args.skip.len(), 1);
        assert!(args.cache_none.is_some() && args.cache_err.is_some());
        assert!(args.krate.is_some());
    }

    #[test]
    fn unknown_and_duplicate() {
        let messages = messages(
            Kind::Cached,
            quote!(tll = 5, expiry = "1m", key = "a", key = "b"),
        );
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("did you mean `ttl`?"), "{messages:?}");
        assert!(
            messages[1].contains("expected one of `key`"),
            "{messages:?}"
        );
        assert_eq!(messages[2], "duplicate attribute `key`; give it once");
    }

    #[test]
    fn attributes_of_other_macros_are_unknown() {
        let messages = messages(Kind::Evict, quote!(key = "a", ttl = 5));
        assert_eq!(messages.len(), 1);
        assert!(
            messages[0].starts_with("unknown attribute `ttl` for `#[cache_evict]`"),
            "{messages:?}"
        );
    }

    #[test]
    fn template_errors_name_the_template() {
        let messages = messages(Kind::Cached, quote!(key = "u:<id", tags = ["<>"]));
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].starts_with("unclosed `<` in key template"));
        assert!(messages[1].starts_with("empty placeholder `<>` in tag template"));
    }
}
