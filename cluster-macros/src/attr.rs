//! The macro's arguments: `#[cluster_service]` or `#[cluster_service(crate = "path")]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitStr, Path, Token};

/// The crate generated code reaches the runtime through, when none is given.
const DEFAULT_CRATE: &str = "network_cluster";

/// The arguments of one `#[cluster_service(..)]`.
#[derive(Debug)]
pub(crate) struct Args {
    /// The crate that has a `__private` module re-exporting what generated code needs:
    /// `::network_cluster` by default, `::cluster_rpc` for users of cluster-rpc alone.
    krate: Path,
}

impl Args {
    /// The path generated code names runtime items under: `<crate>::__private`.
    pub(crate) fn private(&self) -> TokenStream {
        let krate = &self.krate;
        quote!(#krate::__private)
    }

    /// The same path as a string, for serde's `#[serde(crate = "..")]`.
    pub(crate) fn serde_crate(&self) -> String {
        format!("{}::__private::serde", path_to_string(&self.krate))
    }
}

impl Default for Args {
    fn default() -> Self {
        Self {
            krate: absolute(Path::from(Ident::new(DEFAULT_CRATE, Span::call_site()))),
        }
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut krate: Option<Path> = None;
        while !input.is_empty() {
            // `crate` is a keyword, so read any identifier and compare.
            let key = input.call(Ident::parse_any)?;
            if key != "crate" {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!("unknown argument `{key}`: the only argument is `crate = \"path\"`"),
                ));
            }
            if krate.is_some() {
                return Err(syn::Error::new_spanned(&key, "duplicate `crate` argument"));
            }
            input.parse::<Token![=]>()?;
            let lit: LitStr = input.parse().map_err(|e| {
                syn::Error::new(e.span(), "expected a string: `crate = \"cluster_rpc\"`")
            })?;
            let path = lit.parse_with(Path::parse_mod_style).map_err(|_| {
                syn::Error::new_spanned(&lit, format!("`{}` is not a path to a crate", lit.value()))
            })?;
            krate = Some(absolute(path));
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(krate.map_or_else(Self::default, |krate| Self { krate }))
    }
}

/// Makes a bare crate name absolute (`cluster_rpc` becomes `::cluster_rpc`), so it resolves
/// even under `#![no_implicit_prelude]` and when a local item shadows the crate's name.
/// Paths that start with `crate`, `self`, `super` or `::` are left as they are.
fn absolute(mut path: Path) -> Path {
    let relative = path
        .segments
        .first()
        .is_some_and(|s| s.ident == "crate" || s.ident == "self" || s.ident == "super");
    if path.leading_colon.is_none() && !relative {
        path.leading_colon = Some(Default::default());
    }
    path
}

/// `::a::b` for a path without generic arguments (what `parse_mod_style` accepts).
fn path_to_string(path: &Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let leading = if path.leading_colon.is_some() {
        "::"
    } else {
        ""
    };
    format!("{leading}{}", segments.join("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(tokens: TokenStream) -> syn::Result<Args> {
        syn::parse2(tokens)
    }

    #[test]
    fn default_is_the_facade() {
        let args = parse(quote!()).unwrap();
        assert_eq!(
            args.private().to_string(),
            ":: network_cluster :: __private"
        );
        assert_eq!(args.serde_crate(), "::network_cluster::__private::serde");
    }

    #[test]
    fn crate_argument_is_made_absolute() {
        let args = parse(quote!(crate = "cluster_rpc")).unwrap();
        assert_eq!(args.serde_crate(), "::cluster_rpc::__private::serde");
        let args = parse(quote!(crate = "::a::b",)).unwrap();
        assert_eq!(args.serde_crate(), "::a::b::__private::serde");
        let args = parse(quote!(crate = "crate::rpc")).unwrap();
        assert_eq!(args.serde_crate(), "crate::rpc::__private::serde");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let message = |tokens| parse(tokens).unwrap_err().to_string();
        assert!(message(quote!(krate = "x")).starts_with("unknown argument `krate`"));
        assert_eq!(
            message(quote!(crate = "a", crate = "b")),
            "duplicate `crate` argument"
        );
        assert!(message(quote!(crate = cluster_rpc)).starts_with("expected a string"));
        assert_eq!(
            message(quote!(crate = "a<T>")),
            "`a<T>` is not a path to a crate"
        );
    }
}
