//! A checked model of a service: the trait `#[cluster_service]` is applied to, with every
//! shape the generated code cannot handle rejected here, each at its own token.

use proc_macro2::Span;
use quote::ToTokens;
use std::collections::HashMap;
use std::fmt::Display;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Item, ItemTrait, Pat, PathArguments, ReturnType,
    Token, TraitItem, TraitItemFn, Type, TypeParamBound, Visibility,
};

/// Method names the generated client and server types use themselves. A service method of
/// one of these names would clash with (or shadow) the generated one.
const RESERVED: &[&str] = &["new", "with_deadline", "from_caller", "clone"];

/// A service: the trait, its attributes and its methods.
#[derive(Debug)]
pub(crate) struct Service {
    /// The trait's own attributes (docs among them), copied onto the rewritten trait.
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) trait_token: Token![trait],
    pub(crate) ident: Ident,
    /// Supertraits the user wrote; `Send + Sync + 'static` are added to them.
    pub(crate) supertraits: Vec<TypeParamBound>,
    pub(crate) methods: Vec<Method>,
}

/// One `async fn` of the service.
#[derive(Debug)]
pub(crate) struct Method {
    /// Every attribute of the method, copied onto the trait method.
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) fn_token: Token![fn],
    pub(crate) ident: Ident,
    pub(crate) args: Vec<Arg>,
    /// The return type, `()` when the method declares none.
    pub(crate) output: Type,
    /// The variant of the request and response enums: the method's name in CamelCase.
    pub(crate) variant: Ident,
}

/// One argument after `&self`: a plain name and a type.
#[derive(Debug)]
pub(crate) struct Arg {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

impl Service {
    /// The service's name on the wire: the trait's name.
    pub(crate) fn name(&self) -> String {
        self.ident.unraw().to_string()
    }
}

impl Method {
    /// The method's name on the wire (without `r#`).
    pub(crate) fn name(&self) -> String {
        self.ident.unraw().to_string()
    }

    /// The `#[doc]` attributes (doc comments), which generated items repeat.
    pub(crate) fn docs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|a| a.path().is_ident("doc"))
    }

    /// The `#[cfg]` attributes, which every generated item for this method repeats.
    pub(crate) fn cfgs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|a| a.path().is_ident("cfg"))
    }

    /// Whether the method has a doc comment of its own.
    pub(crate) fn has_docs(&self) -> bool {
        self.docs().next().is_some()
    }
}

impl Parse for Service {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let item = match input.parse()? {
            Item::Trait(item) => item,
            _ => {
                return Err(syn::Error::new(
                    Span::call_site(),
                    "`#[cluster_service]` applies to traits only",
                ))
            }
        };
        Self::check(item)
    }
}

impl Service {
    fn check(item: ItemTrait) -> syn::Result<Self> {
        let mut errors = Errors::default();
        if let Some(unsafety) = &item.unsafety {
            errors.spanned(unsafety, "a cluster service trait cannot be `unsafe`");
        }
        if let Some(auto) = &item.auto_token {
            errors.spanned(auto, "a cluster service trait cannot be an auto trait");
        }
        if !item.generics.params.is_empty() {
            errors.spanned(
                &item.generics,
                "a cluster service trait cannot be generic: the request and response enums \
                 need concrete types",
            );
        }
        if let Some(where_clause) = &item.generics.where_clause {
            errors.spanned(
                where_clause,
                "a cluster service trait cannot have a `where` clause",
            );
        }
        if item.items.is_empty() {
            errors.spanned(&item.ident, "a cluster service needs at least one method");
        }

        let mut methods = Vec::new();
        for trait_item in item.items {
            match trait_item {
                TraitItem::Fn(f) => match Method::check(f) {
                    Ok(method) => methods.push(method),
                    Err(e) => errors.push(e),
                },
                other => errors.spanned(
                    other,
                    "a cluster service trait may contain only `async fn` methods",
                ),
            }
        }

        // Two methods whose names differ only in underscores or case would share a variant.
        let mut variants: HashMap<String, &Ident> = HashMap::new();
        for method in &methods {
            let name = method.name();
            if RESERVED.contains(&name.as_str()) {
                errors.spanned(
                    &method.ident,
                    format!(
                        "`{name}` is reserved: the generated `{trait_name}Client` and \
                         `{trait_name}Server` use this name; rename the method",
                        trait_name = item.ident.unraw(),
                    ),
                );
            }
            if let Some(first) = variants.insert(method.variant.to_string(), &method.ident) {
                errors.spanned(
                    &method.ident,
                    format!(
                        "`{}` and `{}` both become the variant `{}`; rename one of them",
                        first.unraw(),
                        method.ident.unraw(),
                        method.variant,
                    ),
                );
            }
        }

        errors.finish(Self {
            attrs: item.attrs,
            vis: item.vis,
            trait_token: item.trait_token,
            ident: item.ident,
            supertraits: item.supertraits.into_iter().collect(),
            methods,
        })
    }
}

impl Parse for Method {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Self::check(input.parse()?)
    }
}

impl Method {
    fn check(item: TraitItemFn) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let sig = item.sig;
        if let Some(default) = &item.default {
            errors.spanned(
                default,
                "a cluster service method cannot have a default body; implement it on your type",
            );
        }
        if let Some(constness) = &sig.constness {
            errors.spanned(constness, "a cluster service method cannot be `const`");
        }
        if let Some(unsafety) = &sig.unsafety {
            errors.spanned(unsafety, "a cluster service method cannot be `unsafe`");
        }
        if let Some(abi) = &sig.abi {
            errors.spanned(abi, "a cluster service method cannot have an `extern` ABI");
        }
        if sig.asyncness.is_none() {
            errors.spanned(
                sig.fn_token,
                "a cluster service method must be an `async fn`",
            );
        }
        if !sig.generics.params.is_empty() {
            errors.spanned(
                &sig.generics,
                "a cluster service method cannot be generic: its arguments and return value \
                 need concrete types to cross the wire",
            );
        }
        if let Some(where_clause) = &sig.generics.where_clause {
            errors.spanned(
                where_clause,
                "a cluster service method cannot have a `where` clause",
            );
        }
        if let Some(variadic) = &sig.variadic {
            errors.spanned(variadic, "a cluster service method cannot be variadic");
        }

        let mut args = Vec::new();
        let mut inputs = sig.inputs.into_iter().peekable();
        match inputs.peek() {
            Some(FnArg::Receiver(receiver)) => {
                let plain_ref = receiver
                    .reference
                    .as_ref()
                    .is_some_and(|(_, l)| l.is_none())
                    && receiver.mutability.is_none()
                    && receiver.colon_token.is_none();
                if !plain_ref {
                    errors.spanned(
                        receiver,
                        "a cluster service method takes `&self`: the server shares one \
                         instance between concurrent calls",
                    );
                }
                inputs.next();
            }
            _ => errors.spanned(
                &sig.ident,
                "a cluster service method takes `&self` as its first argument",
            ),
        }
        for input in inputs {
            match input {
                // Only the first argument can be a receiver; rustc says so for the others.
                FnArg::Receiver(receiver) => {
                    errors.spanned(receiver, "`self` must be the first argument")
                }
                FnArg::Typed(typed) => {
                    if let Some(attr) = typed.attrs.first() {
                        errors.spanned(attr, "attributes on arguments are not supported");
                    }
                    check_type(&typed.ty, &mut errors);
                    match *typed.pat {
                        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                            // `mut x` is the implementation's business; the trait drops `mut`.
                            args.push(Arg {
                                ident: pat.ident,
                                ty: *typed.ty,
                            });
                        }
                        pat => errors.spanned(
                            pat,
                            "arguments of a cluster service method must be plain names: each \
                             becomes a field of the request enum",
                        ),
                    }
                }
            }
        }

        let output = match sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => {
                check_type(&ty, &mut errors);
                *ty
            }
        };

        let variant = variant_ident(&sig.ident);
        let variant = match variant {
            Ok(variant) => variant,
            Err(e) => {
                errors.push(e);
                Ident::new("Invalid", sig.ident.span())
            }
        };

        errors.finish(Self {
            attrs: item.attrs,
            fn_token: sig.fn_token,
            ident: sig.ident,
            args,
            output,
            variant,
        })
    }
}

/// Rejects the parts of an argument or return type that cannot cross the wire: `impl Trait`
/// and references, at any depth.
fn check_type(ty: &Type, errors: &mut Errors) {
    match ty {
        Type::ImplTrait(_) => errors.spanned(
            ty,
            "`impl Trait` cannot cross the wire: arguments and return values of a cluster \
             service need concrete types",
        ),
        Type::Reference(_) => errors.spanned(
            ty,
            "references cannot cross the wire: arguments and return values of a cluster \
             service must be owned types (`String`, not `&str`)",
        ),
        Type::Array(array) => check_type(&array.elem, errors),
        Type::Slice(slice) => check_type(&slice.elem, errors),
        Type::Group(group) => check_type(&group.elem, errors),
        Type::Paren(paren) => check_type(&paren.elem, errors),
        Type::Ptr(ptr) => check_type(&ptr.elem, errors),
        Type::Tuple(tuple) => tuple.elems.iter().for_each(|t| check_type(t, errors)),
        Type::Path(path) => {
            if let Some(qself) = &path.qself {
                check_type(&qself.ty, errors);
            }
            for segment in &path.path.segments {
                if let PathArguments::AngleBracketed(generics) = &segment.arguments {
                    for arg in &generics.args {
                        match arg {
                            GenericArgument::Type(t) => check_type(t, errors),
                            GenericArgument::AssocType(assoc) => check_type(&assoc.ty, errors),
                            _ => {}
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The enum variant for a method: its name in CamelCase, an error if that is no identifier
/// (`_1` gives `1`, `self_` gives the keyword `Self`).
fn variant_ident(method: &Ident) -> syn::Result<Ident> {
    let name = method.unraw().to_string();
    let camel = snake_to_camel(&name);
    match syn::parse_str::<Ident>(&camel) {
        Ok(_) => Ok(Ident::new(&camel, method.span())),
        Err(_) => Err(syn::Error::new_spanned(
            method,
            format!("`{name}` has no CamelCase form to name its enum variant; rename the method"),
        )),
    }
}

/// `snake_case` to `CamelCase`: each `_`-separated word gets its first letter upper-cased,
/// the rest of the word is kept (`get_URL` becomes `GetURL`), underscores go.
pub(crate) fn snake_to_camel(snake: &str) -> String {
    let mut camel = String::with_capacity(snake.len());
    for word in snake.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            camel.extend(first.to_uppercase());
            camel.push_str(chars.as_str());
        }
    }
    camel
}

/// Collects errors so that all of them are reported together.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(errors) => Err(errors),
            None => Ok(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn camel_case() {
        assert_eq!(snake_to_camel("fnv"), "Fnv");
        assert_eq!(snake_to_camel("get_user_by_id"), "GetUserById");
        assert_eq!(snake_to_camel("fetch_v2"), "FetchV2");
        assert_eq!(snake_to_camel("get_URL"), "GetURL");
        assert_eq!(snake_to_camel("_private__twice_"), "PrivateTwice");
        assert_eq!(snake_to_camel("already_Camel"), "AlreadyCamel");
        assert_eq!(snake_to_camel("ünïcode_ß"), "ÜnïcodeSS");
        assert_eq!(snake_to_camel("__"), "");
    }

    #[test]
    fn variant_names() {
        let variant = |name: &str| variant_ident(&Ident::new(name, Span::call_site()));
        assert_eq!(variant("div").unwrap(), "Div");
        assert_eq!(
            variant_ident(&syn::parse_str("r#type").unwrap()).unwrap(),
            "Type"
        );
        assert!(variant("_1").is_err());
        assert!(variant("self_").is_err());
        assert!(variant("__").is_err());
    }

    fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Service> {
        syn::parse2(tokens)
    }

    fn messages(tokens: proc_macro2::TokenStream) -> Vec<String> {
        parse(tokens)
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_valid_service() {
        let service = parse(quote! {
            /// Hashes data.
            pub trait Hasher: Clone {
                /// 64-bit FNV-1a.
                #[cfg(feature = "fnv")]
                async fn fnv(&self, data: Vec<u8>) -> u64;
                async fn div(&self, a: u32, mut b: u32) -> Result<u32, DivError>;
                async fn ping(&self);
                async fn r#type(&self, t: ::std::borrow::Cow<'static, str>);
            }
        })
        .unwrap();
        assert_eq!(service.name(), "Hasher");
        assert_eq!(service.supertraits.len(), 1);
        let names: Vec<_> = service.methods.iter().map(Method::name).collect();
        assert_eq!(names, ["fnv", "div", "ping", "type"]);
        let variants: Vec<_> = service
            .methods
            .iter()
            .map(|m| m.variant.to_string())
            .collect();
        assert_eq!(variants, ["Fnv", "Div", "Ping", "Type"]);
        let fnv = &service.methods[0];
        assert!(fnv.has_docs());
        assert_eq!(fnv.cfgs().count(), 1);
        assert_eq!(service.methods[1].args[1].ident, "b");
        let unit = &service.methods[2].output;
        assert_eq!(quote!(#unit).to_string(), "()");
    }

    #[test]
    fn every_error_is_reported() {
        let messages = messages(quote! {
            trait Bad<T> where T: Copy {
                fn not_async(&self);
                async fn by_value(self);
                async fn mutable(&mut self);
                async fn no_receiver(x: u8);
                async fn generic<U>(&self, u: U);
                async fn pattern(&self, (a, b): (u8, u8));
                async fn borrowed(&self, s: &str) -> Vec<impl Copy>;
                async fn with_default(&self) {}
                async fn new(&self);
                async fn foo_bar(&self);
                async fn fooBar(&self);
                const X: u8;
            }
        });
        let expected = [
            "a cluster service trait cannot be generic",
            "a cluster service trait cannot have a `where` clause",
            "a cluster service method must be an `async fn`",
            "a cluster service method takes `&self`: ",
            "a cluster service method takes `&self`: ",
            "a cluster service method takes `&self` as its first argument",
            "a cluster service method cannot be generic",
            "arguments of a cluster service method must be plain names",
            "references cannot cross the wire",
            "`impl Trait` cannot cross the wire",
            "a cluster service method cannot have a default body",
            "a cluster service trait may contain only `async fn` methods",
            "`new` is reserved",
            "`foo_bar` and `fooBar` both become the variant `FooBar`",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, expected) in messages.iter().zip(expected) {
            assert!(message.starts_with(expected), "{message:?} vs {expected:?}");
        }
    }

    #[test]
    fn empty_and_non_trait_input() {
        assert_eq!(
            messages(quote!(
                trait Empty {}
            )),
            ["a cluster service needs at least one method"]
        );
        assert_eq!(
            messages(quote!(
                struct NotATrait;
            )),
            ["`#[cluster_service]` applies to traits only"]
        );
    }
}
