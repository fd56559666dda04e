//! Code generation. The generated code is glue: it renders the key and tags
//! through `KeyBuf`, then calls one generic helper of `cache_core::__private`.
//! Everything that can be decided at run time is decided there, not here.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, GenericParam, ItemFn, Meta, Pat, ReturnType, Signature};

use crate::attr::{self, Args, Kind, TemplateArg};
use crate::template::Segment;
use crate::validate::{self, CollectionKind, FnInfo, ModeKind};
use crate::Errors;

pub fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                format!("`#[{}]` applies to an `async fn` with a body", kind.name()),
            )
            .into_compile_error();
            return quote!(#error #item);
        }
    };

    let mut errors = Errors::default();
    let args = attr::parse(kind, args, &mut errors);
    let info = validate::check(kind, &args, &func, &mut errors);
    if let Err(error) = errors.finish() {
        // The function is kept as written so that its own errors, its callers
        // and IDEs keep working while the attribute is being fixed.
        let error = error.into_compile_error();
        return quote!(#error #item);
    }

    let cx = Context {
        krate: match &args.krate {
            Some(path) => path.to_token_stream(),
            None => quote!(::cache_core),
        },
        args: &args,
        func: &func,
        info: &info,
    };
    match kind {
        Kind::Cached => cx.cached(),
        Kind::CachedMany => cx.cached_many(),
        Kind::Evict => cx.evict(),
        Kind::Put => cx.put(),
    }
}

struct Context<'a> {
    krate: TokenStream,
    args: &'a Args,
    func: &'a ItemFn,
    info: &'a FnInfo,
}

/// Names of the locals of generated code. `mixed_site` keeps them from
/// clashing with the user's names, whatever they are.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

impl Context<'_> {
    fn private(&self) -> TokenStream {
        let krate = &self.krate;
        quote!(#krate::__private)
    }

    fn cached(&self) -> TokenStream {
        let krate = &self.krate;
        let private = self.private();
        let func = self.func;
        let name = &func.sig.ident;
        let vis = &func.vis;
        let (docs, shared, other) = split_attrs(&func.attrs);
        let shared_allowing = expect_to_allow(&shared);

        let uncached_name = format_ident!("{}_uncached", name);
        let invalidate_name = format_ident!("{}_invalidate", name);
        let refresh_name = format_ident!("{}_refresh", name);

        let wrapper_sig = plain_signature(&func.sig);
        let mut uncached_sig = func.sig.clone();
        uncached_sig.ident = uncached_name.clone();
        let mut refresh_sig = wrapper_sig.clone();
        refresh_sig.ident = refresh_name.clone();
        let mut invalidate_sig = wrapper_sig.clone();
        invalidate_sig.ident = invalidate_name.clone();
        invalidate_sig.output = syn::parse_quote!(
            -> ::core::result::Result<bool, #krate::Error>
        );
        let body = self.uncached_body();

        let spec = self.spec();
        let key = local("__cache_key");
        let tags = local("__cache_tags");
        let build_key = self.build_key(&key);
        let build_tags = self.build_tags(&tags, true);
        let cache = self.cache_ref();
        let mode = self.mode();
        let compute = self.call(&uncached_name);
        let helper_span = return_span(&func.sig);
        let local_mode = self.local_mode(&mode); // the L1 near cache (local.rs)
        let cached = if self.args.has_policy() {
            // A body that owns everything it uses can finish without its caller (a refresh
            // behind a stale value, past a timeout); one that borrows is driven by it.
            let background = self.args.stale_ms.is_some()
                || self.args.soft_timeout_ms.is_some()
                || self.args.hard_timeout.is_some()
                || self.args.early_refresh;
            let detach = if background && self.owns_its_arguments() {
                quote!(#private::Spawn)
            } else {
                quote!(#private::Inline)
            };
            call_helper(
                quote!(#private::cached_with),
                quote!(#cache, &__CACHE_SPEC, #local_mode, #detach, #key, &mut #tags, #compute),
                helper_span,
            )
        } else {
            call_helper(
                quote!(#private::cached),
                quote!(#cache, &__CACHE_SPEC, #local_mode, #key, &mut #tags, #compute),
                helper_span,
            )
        };
        let refresh = call_helper(
            quote!(#private::refresh),
            quote!(#cache, &__CACHE_SPEC, #mode, #key, &mut #tags, #compute),
            helper_span,
        );
        let params = self.info.params.iter().map(|p| &p.ident);

        let name_str = name.to_string();
        let uncached_doc = format!(
            "Calls `{name_str}` without the cache: runs its body, and neither reads nor stores a cached value."
        );
        let invalidate_doc = format!(
            "Removes the cached value of `{name_str}` for these arguments, so that the next call computes it again.\n\n\
             Takes the same arguments as `{name_str}`; those that are not part of the key are ignored. \
             Returns whether a value was cached."
        );
        let refresh_doc = format!(
            "Computes `{name_str}` for these arguments without reading the cache, stores the result \
             when it is cacheable, and returns it."
        );

        quote! {
            #(#docs)*
            #(#shared_allowing)*
            #(#other)*
            #vis #wrapper_sig {
                #spec
                #build_key
                #build_tags
                #cached
            }

            #[doc = #uncached_doc]
            #[allow(dead_code)]
            #(#shared)*
            #vis #uncached_sig #body

            #[doc = #invalidate_doc]
            #[allow(dead_code)]
            #(#shared_allowing)*
            #vis #invalidate_sig {
                // Some arguments only exist to match the cached function.
                let _ = (#(&#params,)*);
                #build_key
                #private::invalidate(#cache, #key).await
            }

            #[doc = #refresh_doc]
            #[allow(dead_code)]
            #(#shared_allowing)*
            #vis #refresh_sig {
                #spec
                #build_key
                #build_tags
                #refresh
            }
        }
    }

    fn cached_many(&self) -> TokenStream {
        let krate = &self.krate;
        let private = self.private();
        let func = self.func;
        let name = &func.sig.ident;
        let vis = &func.vis;
        let (docs, shared, other) = split_attrs(&func.attrs);
        let shared_allowing = expect_to_allow(&shared);
        let collection = self
            .info
            .collection
            .as_ref()
            .expect("checked: `#[cached_many]` has a collection parameter");
        let ids = &self.info.params[collection.index].ident;

        let uncached_name = format_ident!("{}_uncached", name);
        let invalidate_name = format_ident!("{}_invalidate", name);
        let wrapper_sig = plain_signature(&func.sig);
        let mut uncached_sig = func.sig.clone();
        uncached_sig.ident = uncached_name.clone();
        let mut invalidate_sig = wrapper_sig.clone();
        invalidate_sig.ident = invalidate_name.clone();
        invalidate_sig.output = syn::parse_quote!(
            -> ::core::result::Result<u64, #krate::Error>
        );
        let body = self.uncached_body();
        let spec = self.spec();
        let cache = self.cache_ref();

        // Inside the loops below, the collection's name is bound to each element, so that
        // `<ids>` in the templates renders the element, through the same code (and with the
        // same spans and messages) as any other parameter.
        let key = local("__cache_key");
        let tag = local("__cache_tag");
        let elements = local("__cache_elements");
        let missing = local("__cache_missing");
        let template = self
            .args
            .key
            .as_ref()
            .expect("checked: `#[cached_many]` has a key");
        let render_key = self.render(&key, template);
        let rendered_tags = self.args.tags.iter().map(|template| {
            let render = self.render(&tag, template);
            quote!({ #render #tag.into_string() })
        });
        // The ids the cache did not answer, as the type the body takes.
        let missing_as_param = match collection.kind {
            CollectionKind::Vec => quote!(#missing),
            CollectionKind::Set => quote!(::core::iter::Iterator::collect(
                ::core::iter::IntoIterator::into_iter(#missing)
            )),
            CollectionKind::Slice => quote!(&#missing[..]),
        };
        let compute = self.call_with(&uncached_name, collection.index, &missing_as_param);
        let helper = match self.info.mode {
            ModeKind::Result => quote!(#private::cached_many),
            _ => quote!(#private::cached_many_plain),
        };
        let helper_span = return_span(&func.sig);
        let cached = call_helper(
            helper,
            quote!(#cache, &__CACHE_SPEC, #elements, |#missing: ::std::vec::Vec<_>| async move { #compute.await }),
            helper_span,
        );
        let params = self.info.params.iter().map(|p| &p.ident);

        let name_str = name.to_string();
        let uncached_doc = format!(
            "Calls `{name_str}` without the cache: runs its body with every id, and neither reads nor stores cached values."
        );
        let invalidate_doc = format!(
            "Removes the cached values of `{name_str}` for these ids, so that the next call loads them again.\n\n\
             Takes the same arguments as `{name_str}`; those that are not part of the key are ignored. \
             Returns how many values were cached."
        );

        quote! {
            #(#docs)*
            #(#shared_allowing)*
            #(#other)*
            #vis #wrapper_sig {
                #spec
                let #elements = {
                    let mut #elements = ::std::vec::Vec::new();
                    for #ids in #ids.iter() {
                        #render_key
                        let #tag = ::std::vec![#(#rendered_tags),*];
                        #elements.push((::core::clone::Clone::clone(#ids), #key, #tag));
                    }
                    #elements
                };
                #cached
            }

            #[doc = #uncached_doc]
            #[allow(dead_code)]
            #(#shared)*
            #vis #uncached_sig #body

            #[doc = #invalidate_doc]
            #[allow(dead_code)]
            #(#shared_allowing)*
            #vis #invalidate_sig {
                // Some arguments only exist to match the cached function.
                let _ = (#(&#params,)*);
                let mut #elements = ::std::vec::Vec::new();
                for #ids in #ids.iter() {
                    #render_key
                    #elements.push(#key);
                }
                #private::invalidate_many(#cache, #elements).await
            }
        }
    }

    fn evict(&self) -> TokenStream {
        let private = self.private();
        let func = self.func;
        let attrs = &func.attrs;
        let vis = &func.vis;
        let sig = &func.sig;
        let keys = local("__cache_keys");
        let key = local("__cache_key");
        let tags = local("__cache_tags");
        let build_keys = match &self.args.key {
            Some(template) => {
                let build = self.render(&key, template);
                quote!(let #keys = { #build ::std::vec![#key] };)
            }
            None => quote!(let #keys = ::std::vec::Vec::new();),
        };
        let build_tags = self.build_tags(&tags, false);
        let cache = self.cache_ref();
        let mode = self.mode();
        let body = self.body_future();
        let call = call_helper(
            quote!(#private::evict_after),
            quote!(#cache, #mode, #keys, &#tags, #body),
            return_span(sig),
        );
        quote! {
            #(#attrs)*
            #vis #sig {
                #build_keys
                #build_tags
                #call
            }
        }
    }

    fn put(&self) -> TokenStream {
        let private = self.private();
        let func = self.func;
        let attrs = &func.attrs;
        let vis = &func.vis;
        let sig = &func.sig;
        let key = local("__cache_key");
        let tags = local("__cache_tags");
        let spec = self.spec();
        let build_key = self.build_key(&key);
        let build_tags = self.build_tags(&tags, true);
        let cache = self.cache_ref();
        let mode = self.mode();
        let body = self.body_future();
        let call = call_helper(
            quote!(#private::put_after),
            quote!(#cache, &__CACHE_SPEC, #mode, #key, &mut #tags, #body),
            return_span(sig),
        );
        quote! {
            #(#attrs)*
            #vis #sig {
                #spec
                #build_key
                #build_tags
                #call
            }
        }
    }

    /// The original body. Parameters used by `cache = ...` are marked as used,
    /// since the body itself may not need them.
    fn uncached_body(&self) -> syn::Block {
        let mut block = (*self.func.block).clone();
        let Some(cache) = &self.args.cache else {
            return block;
        };
        let mentioned = idents_in(cache.to_token_stream());
        let used: Vec<syn::Stmt> = self
            .info
            .params
            .iter()
            .filter(|param| mentioned.contains(&param.ident))
            .map(|param| {
                let ident = &param.ident;
                syn::parse_quote!(let _ = &#ident;)
            })
            .collect();
        block.stmts.splice(0..0, used);
        block
    }

    /// `static __CACHE_SPEC`: what the runtime needs to know about the
    /// function, built once.
    fn spec(&self) -> TokenStream {
        let private = self.private();
        let name = self.func.sig.ident.to_string();
        let ttl = match self.args.ttl_ms {
            Some(ms) => quote!(::core::option::Option::Some(#ms)),
            None => quote!(::core::option::Option::None),
        };
        let policy = if self.args.has_policy() {
            let ms = |v: Option<u64>| match v {
                Some(ms) => quote!(::core::option::Option::Some(#ms)),
                None => quote!(::core::option::Option::None),
            };
            let stale = ms(self.args.stale_ms);
            let soft = ms(self.args.soft_timeout_ms);
            let hard = ms(self.args.hard_timeout.map(|(ms, _)| ms));
            let early = self.args.early_refresh;
            let lock = self.args.lock.unwrap_or(1);
            quote!(.policy(#stale, #soft, #hard, #early, #lock))
        } else {
            quote!()
        };
        let absent = match self.args.cache_absent_ms {
            Some(ms) => quote!(.cache_absent(::core::option::Option::Some(#ms))),
            None => quote!(),
        };
        quote! {
            static __CACHE_SPEC: #private::Spec = #private::Spec::new(
                ::core::concat!(::core::module_path!(), "::", #name),
                #ttl,
            )#policy #absent;
        }
    }

    /// Whether the body's future can be `'static`: no receiver, no generic or lifetime
    /// parameter, no reference or lifetime in a parameter's type. (A body that is not
    /// `Send` then fails to compile with `stale`, `soft_timeout`, `hard_timeout` or
    /// `refresh`, which is documented.)
    fn owns_its_arguments(&self) -> bool {
        let sig = &self.func.sig;
        if self.info.receiver.is_some()
            || sig
                .generics
                .params
                .iter()
                .any(|p| !matches!(p, GenericParam::Const(_)))
        {
            return false;
        }
        sig.inputs.iter().all(|input| match input {
            FnArg::Typed(typed) => !borrows(typed.ty.to_token_stream()),
            FnArg::Receiver(_) => false,
        })
    }

    fn cache_ref(&self) -> TokenStream {
        let private = self.private();
        match &self.args.cache {
            Some(expr) => quote_spanned!(expr.span()=> #private::explicit(&(#expr))),
            None => quote!(#private::global()),
        }
    }

    /// The mode value, spanned on the return type: when the value type is not
    /// serializable, the failing bound is introduced by this argument.
    fn mode(&self) -> TokenStream {
        respan(self.mode_tokens(), return_span(&self.func.sig))
    }

    /// The mode for reads: `local = false` wraps it in `NoLocal`; a value type that is
    /// `Clone` (known here, where the return type is concrete) gets `Cloning`, so L1 hits
    /// clone the decoded value (autoref specialization: the `Clone` impl is on `&LocalProbe`).
    fn local_mode(&self, mode: &TokenStream) -> TokenStream {
        let private = self.private();
        let mode = match self.args.local {
            Some(false) => quote!(#private::NoLocal(#mode)),
            _ => mode.clone(),
        };
        let out = match &self.func.sig.output {
            ReturnType::Type(_, ty) => quote!(#ty),
            ReturnType::Default => quote!(()),
        };
        let probe = quote! {{
            #[allow(unused_imports)]
            use #private::{LocalViaBytes as _, LocalViaClone as _};
            (&&#private::LocalProbe::<#out, _>::new(#mode)).local_mode()
        }};
        respan(probe, return_span(&self.func.sig))
    }

    fn mode_tokens(&self) -> TokenStream {
        let private = self.private();
        match self.info.mode {
            ModeKind::Plain => quote!(#private::Plain),
            ModeKind::Option => {
                let cache_none = self.args.cache_none.is_some();
                quote!(#private::OptionMode { cache_none: #cache_none })
            }
            ModeKind::Result => {
                let mode = if self.args.cache_err.is_some() {
                    quote!(#private::ResultErrMode)
                } else {
                    quote!(#private::ResultMode)
                };
                if self.args.hard_timeout.is_some() {
                    quote!(#private::Timed(#mode))
                } else {
                    mode
                }
            }
        }
    }

    /// `let mut <key> = KeyBuf::new(); ...` from the template, or the default
    /// key: the function's path, its type parameters, and every argument not
    /// skipped, separated by `:` (which key parts escape).
    fn build_key(&self, key: &Ident) -> TokenStream {
        if let Some(template) = &self.args.key {
            return self.render(key, template);
        }
        let private = self.private();
        let name = self.func.sig.ident.to_string();
        let path = if self.info.in_impl {
            // Two impl blocks of one module may have methods of the same name.
            let suffix = format!("::{name}");
            quote! {
                #key.literal(::core::any::type_name::<Self>());
                #key.literal(#suffix);
            }
        } else {
            quote!(#key.literal(::core::concat!(::core::module_path!(), "::", #name));)
        };
        // `load::<User>(1)` and `load::<Org>(1)` must not share a key.
        let type_params = self
            .func
            .sig
            .generics
            .params
            .iter()
            .filter_map(|param| match param {
                GenericParam::Type(ty) => {
                    let ident = &ty.ident;
                    Some(quote! {
                        #key.literal(":");
                        #key.literal(::core::any::type_name::<#ident>());
                    })
                }
                GenericParam::Const(c) => {
                    let ident = &c.ident;
                    Some(quote_spanned! {ident.span()=>
                        #key.literal(":");
                        #key.part(&#ident);
                    })
                }
                GenericParam::Lifetime(_) => None,
            });
        let parts = self
            .info
            .params
            .iter()
            .filter(|param| !self.args.skip.contains(&param.ident))
            .map(|param| {
                let ident = &param.ident;
                quote_spanned! {ident.span()=>
                    #key.literal(":");
                    #key.part(&#ident);
                }
            });
        quote! {
            let mut #key = #private::KeyBuf::new();
            #path
            #(#type_params)*
            #(#parts)*
        }
    }

    /// Renders one template into a fresh `KeyBuf` named `buf`. Each part is
    /// spanned on the template literal, so that a parameter that is not a
    /// `KeyPart`, or a misspelt field, is reported on the attribute.
    fn render(&self, buf: &Ident, arg: &TemplateArg) -> TokenStream {
        let private = self.private();
        let span = arg.lit.span();
        let template = arg
            .template
            .as_ref()
            .expect("templates that failed to parse stop the expansion");
        let segments = template.segments.iter().map(|segment| match segment {
            Segment::Literal(text) => quote_spanned!(span=> #buf.literal(#text);),
            Segment::Placeholder(placeholder) => {
                let root = if placeholder.root == "self" {
                    quote_spanned!(span=> self)
                } else {
                    let param = self
                        .info
                        .params
                        .iter()
                        .find(|p| p.name == placeholder.root)
                        .expect("placeholders are checked against the parameters");
                    let mut ident = param.ident.clone();
                    ident.set_span(span);
                    ident.into_token_stream()
                };
                let fields = placeholder.fields.iter().map(|field| {
                    if field.bytes().all(|b| b.is_ascii_digit()) {
                        let index = syn::Index {
                            index: field.parse().unwrap_or(u32::MAX),
                            span,
                        };
                        quote_spanned!(span=> .#index)
                    } else {
                        // Located at the literal but marked as generated, so
                        // that rustc reports an unknown field there without
                        // suggesting to rewrite the literal into a field name.
                        let field = Ident::new(field, Span::call_site().located_at(span));
                        quote_spanned!(span=> .#field)
                    }
                });
                quote_spanned!(span=> #buf.part(&#root #(#fields)*);)
            }
        });
        quote! {
            let mut #buf = #private::KeyBuf::new();
            #(#segments)*
        }
    }

    /// `let <tags> = [String, ...];`, each tag rendered like a key; `mut` where the runtime
    /// turns them into version keys in place (reads and writes), not where it needs the
    /// tags themselves (`#[cache_evict]`).
    fn build_tags(&self, tags: &Ident, mutable: bool) -> TokenStream {
        let binding = if mutable {
            quote!(mut #tags)
        } else {
            quote!(#tags)
        };
        if self.args.tags.is_empty() {
            return quote!(let #binding: [::std::string::String; 0] = [];);
        }
        let tag = local("__cache_tag");
        let rendered = self.args.tags.iter().map(|template| {
            let render = self.render(&tag, template);
            quote!({ #render #tag.into_string() })
        });
        quote!(let #binding = [#(#rendered),*];)
    }

    /// The call of the `_uncached` companion with the wrapper's arguments.
    fn call(&self, target: &Ident) -> TokenStream {
        let generics: Vec<&Ident> = self
            .func
            .sig
            .generics
            .params
            .iter()
            .filter_map(|param| match param {
                GenericParam::Type(ty) => Some(&ty.ident),
                GenericParam::Const(c) => Some(&c.ident),
                GenericParam::Lifetime(_) => None,
            })
            .collect();
        let turbofish = if generics.is_empty() {
            quote!()
        } else {
            quote!(::<#(#generics),*>)
        };
        let args = self.info.params.iter().map(|p| &p.ident);
        match &self.info.receiver {
            Some(receiver) => {
                let self_token = &receiver.self_token;
                quote!(Self::#target #turbofish(#self_token, #(#args),*))
            }
            None if self.info.in_impl => quote!(Self::#target #turbofish(#(#args),*)),
            None => quote!(#target #turbofish(#(#args),*)),
        }
    }

    /// [`call`](Self::call) with the parameter at `index` replaced by `value`.
    fn call_with(&self, target: &Ident, index: usize, value: &TokenStream) -> TokenStream {
        let generics: Vec<&Ident> = self
            .func
            .sig
            .generics
            .params
            .iter()
            .filter_map(|param| match param {
                GenericParam::Type(ty) => Some(&ty.ident),
                GenericParam::Const(c) => Some(&c.ident),
                GenericParam::Lifetime(_) => None,
            })
            .collect();
        let turbofish = if generics.is_empty() {
            quote!()
        } else {
            quote!(::<#(#generics),*>)
        };
        let args = self.info.params.iter().enumerate().map(|(i, p)| {
            if i == index {
                value.clone()
            } else {
                p.ident.to_token_stream()
            }
        });
        match &self.info.receiver {
            Some(receiver) => {
                let self_token = &receiver.self_token;
                quote!(Self::#target #turbofish(#self_token, #(#args),*))
            }
            None if self.info.in_impl => quote!(Self::#target #turbofish(#(#args),*)),
            None => quote!(#target #turbofish(#(#args),*)),
        }
    }

    /// The body of the function as a future. The unreachable `return` pins the
    /// block's output to the declared return type, so that `?` and `return`
    /// inside the body infer as they do in the function itself (the same
    /// device as `tracing-attributes`).
    fn body_future(&self) -> TokenStream {
        let block = &self.func.block;
        let ret = match &self.func.sig.output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, ty) => ty.to_token_stream(),
        };
        let fake = local("__cache_return");
        quote_spanned! {return_span(&self.func.sig)=>
            async move {
                #[allow(
                    unknown_lints,
                    unreachable_code,
                    clippy::diverging_sub_expression,
                    clippy::let_unit_value,
                    clippy::unreachable,
                    clippy::empty_loop
                )]
                if false {
                    let #fake: #ret = loop {};
                    return #fake;
                }
                #block
            }
        }
    }
}

/// `path(args).await` with the path, the parentheses and `.await` on `span`
/// (the return type's) while the arguments keep theirs: a bound of the helper
/// that fails is then reported once, on the return type.
fn call_helper(path: TokenStream, args: TokenStream, span: Span) -> TokenStream {
    let mut group = proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, args);
    group.set_span(span);
    let path = respan(path, span);
    let dot_await = respan(quote!(.await), span);
    quote!(#path #group #dot_await)
}

/// Gives every token of `tokens` the span `span`. The helper's path gets the
/// return type's span so that "`User: Serialize` is not satisfied" points at
/// the type to fix rather than at the whole attribute.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut new =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                tree = new.into();
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

fn return_span(sig: &Signature) -> Span {
    match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    }
}

/// The signature with `mut` and `ref` removed from parameter bindings: the
/// wrapper only forwards its arguments, and `mut` there would warn.
fn plain_signature(sig: &Signature) -> Signature {
    let mut sig = sig.clone();
    for input in &mut sig.inputs {
        match input {
            FnArg::Typed(typed) => {
                if let Pat::Ident(pat) = &mut *typed.pat {
                    pat.mutability = None;
                    pat.by_ref = None;
                }
            }
            FnArg::Receiver(receiver) => {
                // `mut self: &Self` rebinding is the body's business; the
                // `mut` of `&mut self` is part of the type and stays.
                if receiver.reference.is_none() {
                    receiver.mutability = None;
                }
            }
        }
    }
    sig
}

/// Whether a type mentions a reference, a lifetime, `impl` or `dyn` (which may hide one).
fn borrows(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tree| match tree {
        proc_macro2::TokenTree::Punct(p) => p.as_char() == '&' || p.as_char() == '\'',
        proc_macro2::TokenTree::Ident(ident) => {
            ident == "impl" || ident == "dyn" || ident == "Self"
        }
        proc_macro2::TokenTree::Group(group) => borrows(group.stream()),
        proc_macro2::TokenTree::Literal(_) => false,
    })
}

fn idents_in(tokens: TokenStream) -> Vec<Ident> {
    let mut idents = Vec::new();
    for tree in tokens {
        match tree {
            proc_macro2::TokenTree::Ident(ident) => idents.push(ident),
            proc_macro2::TokenTree::Group(group) => idents.extend(idents_in(group.stream())),
            _ => {}
        }
    }
    idents
}

/// Splits the function's attributes into documentation (the wrapper's only),
/// those every generated function needs (`cfg`, lint levels) and the rest
/// (the wrapper's: `#[tracing::instrument]`, `#[deprecated]`, ...).
fn split_attrs(attrs: &[Attribute]) -> (Vec<&Attribute>, Vec<&Attribute>, Vec<&Attribute>) {
    const SHARED: &[&str] = &[
        "cfg", "cfg_attr", "allow", "warn", "deny", "forbid", "expect",
    ];
    let mut docs = Vec::new();
    let mut shared = Vec::new();
    let mut other = Vec::new();
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("doc") {
            docs.push(attr);
        } else if SHARED.iter().any(|name| path.is_ident(name)) {
            shared.push(attr);
        } else {
            other.push(attr);
        }
    }
    (docs, shared, other)
}

/// `#[expect(lint)]` holds on the function with the body; on the generated
/// functions, which may not trigger the lint, it becomes `#[allow(lint)]`.
fn expect_to_allow(attrs: &[&Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .map(|attr| {
            let mut attr = (*attr).clone();
            if let Meta::List(list) = &mut attr.meta {
                if list.path.is_ident("expect") {
                    list.path = syn::parse_quote!(allow);
                }
            }
            attr
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(kind: Kind, args: TokenStream, item: TokenStream) -> String {
        expand(kind, args, item).to_string()
    }

    #[test]
    fn cached_generates_the_wrapper_and_its_companions() {
        let out = expand_str(
            Kind::Cached,
            quote!(key = "user:<user_id>", ttl = "5m", tags = ["org:<org_id>"]),
            quote! {
                /// Loads a user.
                pub async fn get_user(org_id: u64, user_id: u64) -> Result<User, DbError> {
                    db::load(org_id, user_id).await
                }
            },
        );
        for expected in [
            "pub async fn get_user (org_id : u64 , user_id : u64)",
            "pub async fn get_user_uncached (org_id : u64 , user_id : u64)",
            "pub async fn get_user_invalidate (org_id : u64 , user_id : u64) -> :: core :: result :: Result < bool , :: cache_core :: Error >",
            "pub async fn get_user_refresh (org_id : u64 , user_id : u64)",
            "Some (300000u64)",
            "__cache_key . literal (\"user:\") ; __cache_key . part (& user_id) ;",
            "__cache_tag . literal (\"org:\") ; __cache_tag . part (& org_id) ;",
            ":: cache_core :: __private :: ResultMode",
            "get_user_uncached (org_id , user_id)",
        ] {
            assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
        }
        // The body lives only in `_uncached`, and the docs stay on the wrapper.
        assert_eq!(out.matches("db :: load").count(), 1, "{out}");
        assert_eq!(out.matches("Loads a user.").count(), 1, "{out}");
    }

    #[test]
    fn errors_keep_the_function_unchanged() {
        let item = quote!(
            async fn get(id: u64) -> u64 {
                id
            }
        );
        let out = expand_str(Kind::Cached, quote!(key = "x:<idd>", ttl = 0), item.clone());
        assert!(out.starts_with(":: core :: compile_error !"), "{out}");
        assert_eq!(out.matches("compile_error").count(), 2, "{out}");
        assert!(out.ends_with(&item.to_string()), "{out}");
        assert!(!out.contains("get_uncached"), "{out}");
    }

    #[test]
    fn methods_call_their_companions_through_self() {
        let out = expand_str(
            Kind::Cached,
            quote!(cache = self.cache),
            quote!(
                async fn name(&self, id: u64) -> String {
                    id.to_string()
                }
            ),
        );
        assert!(out.contains("Self :: name_uncached (self , id)"), "{out}");
        assert!(
            out.contains(":: core :: any :: type_name :: < Self > ()"),
            "{out}"
        );
        assert!(out.contains("explicit (& (self . cache))"), "{out}");
    }

    #[test]
    fn generic_functions_pass_their_type_parameters() {
        let out = expand_str(
            Kind::Cached,
            quote!(),
            quote!(
                async fn load<'a, T: Bound, const N: usize>(id: &'a str) -> T {
                    todo!()
                }
            ),
        );
        assert!(out.contains("load_uncached :: < T , N > (id)"), "{out}");
        assert!(out.contains("type_name :: < T > ()"), "{out}");
        assert!(out.contains("__cache_key . part (& N)"), "{out}");
    }
}
