//! Code generation: one function per emitted item, joined by [`Expansion`]'s `ToTokens`.
//!
//! Everything generated names items by absolute paths (`::core::…`, `::std::…`, or the
//! runtime under `<crate>::__private`) so it works under `#![no_implicit_prelude]`, and
//! local variables get `Span::mixed_site()` so they cannot collide with argument names.

use crate::attr::Args;
use crate::parse::{Method, Service};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::Ident;

/// Parses the macro's arguments and the trait, and generates the code. Errors in both are
/// reported together.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let args = syn::parse2::<Args>(args);
    let service = syn::parse2::<Service>(input);
    match (args, service) {
        (Ok(args), Ok(service)) => Ok(Expansion::new(&args, &service).into_token_stream()),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            Err(a)
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
    }
}

/// What one `#[cluster_service]` expands to.
struct Expansion<'a> {
    service: &'a Service,
    /// `<crate>::__private`, where the runtime items are.
    root: TokenStream,
    /// The `#[serde(crate = "..")]` value.
    serde_crate: String,
    request: Ident,
    response: Ident,
    server: Ident,
    client: Ident,
}

/// Names of generated local variables, hygienic so that an argument called `codec` or
/// `inner` does not shadow them.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

impl<'a> Expansion<'a> {
    fn new(args: &Args, service: &'a Service) -> Self {
        let ident = &service.ident;
        Self {
            service,
            root: args.private(),
            serde_crate: args.serde_crate(),
            request: format_ident!("{}Request", ident),
            response: format_ident!("{}Response", ident),
            server: format_ident!("{}Server", ident),
            client: format_ident!("{}Client", ident),
        }
    }

    /// The trait, rewritten so that each method returns a `Send` future: implementations
    /// still write `async fn`.
    fn trait_service(&self) -> TokenStream {
        let Service {
            attrs,
            vis,
            trait_token,
            ident,
            supertraits,
            methods,
        } = self.service;
        let methods = methods.iter().map(|method| {
            let Method {
                attrs,
                fn_token,
                ident,
                output,
                ..
            } = method;
            let args = method.args.iter().map(|arg| {
                let (ident, ty) = (&arg.ident, &arg.ty);
                quote!(#ident: #ty)
            });
            quote! {
                #(#attrs)*
                #fn_token #ident(&self, #(#args),*)
                    -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
            }
        });
        quote! {
            #(#attrs)*
            #vis #trait_token #ident:
                #(#supertraits +)* ::core::marker::Send + ::core::marker::Sync + 'static
            {
                #(#methods)*
            }
        }
    }

    /// `{Trait}Request`: one variant per method, its arguments as named fields.
    fn enum_request(&self) -> TokenStream {
        let Self {
            service, request, ..
        } = self;
        let trait_name = service.name();
        let doc = format!(
            "A call to the [`{trait_name}`] service: one variant per method, holding its \
             arguments. What [`{}`] sends and [`{}`] decodes.",
            self.client, self.server,
        );
        let variants = service.methods.iter().map(|method| {
            let cfgs = method.cfgs();
            let docs = self.docs_or(
                method,
                &format!("Arguments of [`{trait_name}::{}`].", method.name()),
            );
            let variant = &method.variant;
            let fields = method.args.iter().map(|arg| {
                let (ident, ty) = (&arg.ident, &arg.ty);
                let doc = format!("The `{}` argument.", arg.ident);
                let bytes = self.bytes_attr(ty);
                quote!(#[doc = #doc] #bytes #ident: #ty)
            });
            quote!(#(#cfgs)* #docs #variant { #(#fields),* })
        });
        let debug_arms = service.methods.iter().map(|method| {
            let cfgs = method.cfgs();
            let variant = &method.variant;
            let name = format!("{request}::{variant}");
            quote!(#(#cfgs)* Self::#variant { .. } => #name)
        });
        let vis = &service.vis;
        let root = &self.root;
        let serde_crate = &self.serde_crate;
        quote! {
            #[doc = #doc]
            #[derive(#root::serde::Serialize, #root::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
            #vis enum #request {
                #(#variants),*
            }

            impl ::core::fmt::Debug for #request {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    // The arguments need not be `Debug`, so only the method is shown.
                    let name = match *self { #(#debug_arms),* };
                    f.write_str(name)?;
                    f.write_str(" { .. }")
                }
            }
        }
    }

    /// `{Trait}Response`: one variant per method, its return value inside.
    /// `#[serde(with = "serde_bytes")]` for a `Vec<u8>`, so it travels as one binary blob
    /// (MessagePack `bin`) instead of an array of small integers.
    fn bytes_attr(&self, ty: &syn::Type) -> TokenStream {
        if !is_byte_vec(ty) {
            return TokenStream::new();
        }
        let path = format!("{}::serde_bytes", self.root).replace(' ', "");
        quote!(#[serde(with = #path)])
    }

    fn enum_response(&self) -> TokenStream {
        let Self {
            service, response, ..
        } = self;
        let trait_name = service.name();
        let doc = format!(
            "The answer of the [`{trait_name}`] service: one variant per method, holding its \
             return value. What [`{}`] sends and [`{}`] decodes.",
            self.server, self.client,
        );
        let variants = service.methods.iter().map(|method| {
            let cfgs = method.cfgs();
            let docs = self.docs_or(
                method,
                &format!("Return value of [`{trait_name}::{}`].", method.name()),
            );
            let (variant, output) = (&method.variant, &method.output);
            let bytes = self.bytes_attr(output);
            quote!(#(#cfgs)* #docs #variant(#bytes #output))
        });
        let debug_arms = service.methods.iter().map(|method| {
            let cfgs = method.cfgs();
            let variant = &method.variant;
            let name = format!("{response}::{variant}");
            quote!(#(#cfgs)* Self::#variant(..) => #name)
        });
        let vis = &service.vis;
        let root = &self.root;
        let serde_crate = &self.serde_crate;
        quote! {
            #[doc = #doc]
            #[derive(#root::serde::Serialize, #root::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
            #vis enum #response {
                #(#variants),*
            }

            impl ::core::fmt::Debug for #response {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    // The return values need not be `Debug`, so only the method is shown.
                    let name = match *self { #(#debug_arms),* };
                    f.write_str(name)?;
                    f.write_str("(..)")
                }
            }
        }
    }

    /// `{Trait}Server<S>`: wraps an implementation so a node can serve it.
    fn struct_server(&self) -> TokenStream {
        let Self {
            service, server, ..
        } = self;
        let trait_ident = &service.ident;
        let trait_name = service.name();
        let vis = &service.vis;
        let doc = format!(
            "Serves a [`{trait_name}`] implementation: give it to a node and the node answers \
             calls to the `{trait_name}` service with it. Cheap to clone: clones share the one \
             implementation."
        );
        let new_doc = format!("Serves `service`, the [`{trait_name}`] implementation.");
        let from_arc_doc = format!(
            "Serves a [`{trait_name}`] implementation that is already shared, for callers \
             that keep a handle to it."
        );
        let name_str = server.to_string();
        quote! {
            #[doc = #doc]
            #vis struct #server<S> {
                inner: ::std::sync::Arc<S>,
            }

            impl<S: #trait_ident> #server<S> {
                #[doc = #new_doc]
                #vis fn new(service: S) -> Self {
                    Self { inner: ::std::sync::Arc::new(service) }
                }

                #[doc = #from_arc_doc]
                #vis fn from_arc(service: ::std::sync::Arc<S>) -> Self {
                    Self { inner: service }
                }
            }

            impl<S> ::core::clone::Clone for #server<S> {
                fn clone(&self) -> Self {
                    Self { inner: ::core::clone::Clone::clone(&self.inner) }
                }
            }

            impl<S> ::core::fmt::Debug for #server<S> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(#name_str).finish_non_exhaustive()
                }
            }
        }
    }

    /// `impl Service for {Trait}Server<S>`: method names, and dispatch from bytes to the
    /// implementation and back.
    fn impl_service(&self) -> TokenStream {
        let Self {
            service,
            root,
            request,
            response,
            server,
            ..
        } = self;
        let trait_ident = &service.ident;
        let service_name = service.name();
        let (method, bytes, codec, request_value, inner, out, e) = (
            local("method"),
            local("bytes"),
            local("codec"),
            local("request"),
            local("inner"),
            local("out"),
            local("e"),
        );
        let names = service.methods.iter().map(|m| {
            let cfgs = m.cfgs();
            let name = m.name();
            quote!(#(#cfgs)* #name)
        });
        let known_arms = service.methods.iter().map(|m| {
            let cfgs = m.cfgs();
            let name = m.name();
            quote!(#(#cfgs)* #name => {})
        });
        let dispatch_arms = service.methods.iter().map(|m| {
            let cfgs = m.cfgs();
            let name = m.name();
            let (ident, variant) = (&m.ident, &m.variant);
            let args: Vec<_> = m.args.iter().map(|a| &a.ident).collect();
            quote! {
                #(#cfgs)*
                (#name, #request::#variant { #(#args),* }) => {
                    ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                        let #out = #response::#variant(
                            <S as #trait_ident>::#ident(&*#inner, #(#args),*).await,
                        );
                        #root::encode_response(#codec, &#out)
                    }))
                }
            }
        });
        quote! {
            impl<S: #trait_ident> #root::Service for #server<S> {
                fn name(&self) -> &'static str {
                    #service_name
                }

                fn methods(&self) -> &'static [&'static str] {
                    &[#(#names),*]
                }

                #[allow(deprecated)]
                fn call(
                    &self,
                    #method: &str,
                    #bytes: &[u8],
                    #codec: #root::CodecKind,
                ) -> ::core::result::Result<
                    #root::BoxFuture<
                        'static,
                        ::core::result::Result<::std::vec::Vec<u8>, #root::RpcError>,
                    >,
                    #root::RpcError,
                > {
                    // An unknown method is its own error, reported before decoding.
                    match #method {
                        #(#known_arms)*
                        _ => {
                            return ::core::result::Result::Err(#root::RpcError::new(#root::RpcErrorKind::NoSuchMethod,
                                ::std::borrow::ToOwned::to_owned(#method),
                            ));
                        }
                    }
                    let #request_value: #request = #root::Codec::decode(&#codec, #bytes).map_err(|#e| {
                        #root::RpcError::new(#root::RpcErrorKind::Decode, ::std::string::ToString::to_string(&#e))
                    })?;
                    let #inner = ::core::clone::Clone::clone(&self.inner);
                    match (#method, #request_value) {
                        #(#dispatch_arms)*
                        #[allow(unreachable_patterns)]
                        (#method, _) => ::core::result::Result::Err(#root::RpcError::new(#root::RpcErrorKind::Decode,
                            ::std::format!(
                                "the request is not a call of {}::{}",
                                #service_name,
                                #method,
                            ),
                        )),
                    }
                }
            }
        }
    }

    /// `{Trait}Client`: one `async fn` per method that sends the request through a `Caller`.
    fn struct_client(&self) -> TokenStream {
        let Self {
            service,
            root,
            request,
            response,
            client,
            ..
        } = self;
        let vis = &service.vis;
        let trait_name = service.name();
        let doc = format!(
            "Calls a remote [`{trait_name}`] service. Get one from a node; it implements \
             `ServiceClient`. Each method sends one call and awaits its answer; dropping the \
             future cancels the call. Cheap to clone."
        );
        let deadline_doc = "This client with a deadline for each of its calls: a call that \
                            takes longer fails with `RpcErrorKind::Timeout`, and the far side is \
                            told to stop.";
        let (response_value, value, deadline) =
            (local("response"), local("value"), local("deadline"));
        let name_str = client.to_string();
        let methods = service.methods.iter().map(|m| {
            let cfgs = m.cfgs();
            let docs = self.docs_or(
                m,
                &format!(
                    "Calls [`{trait_name}::{}`] on the remote service.",
                    m.name()
                ),
            );
            let errors_doc = "\n# Errors\n\nAn `RpcError` when the call does not complete: \
                              the deadline passes, the connection drops, or no peer serves \
                              this service.";
            let (ident, variant, output) = (&m.ident, &m.variant, &m.output);
            let name = m.name();
            let unexpected = format!("unexpected response to {trait_name}::{name}");
            let params = m.args.iter().map(|a| {
                let (ident, ty) = (&a.ident, &a.ty);
                quote!(#ident: #ty)
            });
            let args = m.args.iter().map(|a| &a.ident);
            quote! {
                #(#cfgs)*
                #docs
                #[doc = #errors_doc]
                #vis async fn #ident(&self, #(#params),*)
                    -> ::core::result::Result<#output, #root::RpcError>
                {
                    let #response_value = self
                        .caller
                        .call::<#request, #response>(
                            #trait_name,
                            #name,
                            &#request::#variant { #(#args),* },
                        )
                        .await?;
                    match #response_value {
                        #response::#variant(#value) => ::core::result::Result::Ok(#value),
                        #[allow(unreachable_patterns)]
                        _ => ::core::result::Result::Err(#root::RpcError::new(#root::RpcErrorKind::Decode,
                            ::std::borrow::ToOwned::to_owned(#unexpected),
                        )),
                    }
                }
            }
        });
        quote! {
            #[doc = #doc]
            #[derive(::core::clone::Clone)]
            #vis struct #client {
                caller: #root::Caller,
            }

            impl #root::ServiceClient for #client {
                const SERVICE: &'static str = #trait_name;

                fn from_caller(caller: #root::Caller) -> Self {
                    Self { caller }
                }
            }

            impl ::core::fmt::Debug for #client {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(#name_str).finish_non_exhaustive()
                }
            }

            impl #client {
                #[doc = #deadline_doc]
                #[must_use]
                #vis fn with_deadline(self, #deadline: ::core::time::Duration) -> Self {
                    Self { caller: self.caller.with_deadline(#deadline) }
                }

                #(#methods)*
            }
        }
    }

    /// Checks that argument and return types have the serde traits (and arguments are
    /// `Send`), spanned on each type so that rustc points at the user's type rather than
    /// deep inside the generated code.
    fn assert_bounds(&self) -> TokenStream {
        let root = &self.root;
        let checks = self.service.methods.iter().map(|m| {
            let cfgs = m.cfgs();
            let args = m.args.iter().map(|a| {
                let ty = &a.ty;
                quote_spanned! {ty.span()=>
                    __serialize::<#ty>();
                    __deserialize::<#ty>();
                    __send::<#ty>();
                }
            });
            let ty = &m.output;
            let output = quote_spanned! {ty.span()=>
                __serialize::<#ty>();
                __deserialize::<#ty>();
            };
            quote! {
                #(#cfgs)*
                {
                    #(#args)*
                    #output
                }
            }
        });
        quote! {
            #[allow(dead_code, clippy::all)]
            const _: () = {
                fn __serialize<T: #root::serde::Serialize>() {}
                fn __deserialize<T: #root::serde::de::DeserializeOwned>() {}
                fn __send<T: ::core::marker::Send>() {}
                fn __check() {
                    #(#checks)*
                }
            };
        }
    }

    /// The method's doc comment, or `fallback` as its doc when it has none.
    fn docs_or(&self, method: &Method, fallback: &str) -> TokenStream {
        if method.has_docs() {
            let docs = method.docs();
            quote!(#(#docs)*)
        } else {
            quote!(#[doc = #fallback])
        }
    }
}

impl ToTokens for Expansion<'_> {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend([
            // First, so that rustc reports a type's missing trait here before it reports
            // the same problem from inside the serde derives.
            self.assert_bounds(),
            self.trait_service(),
            self.enum_request(),
            self.enum_response(),
            self.struct_server(),
            self.impl_service(),
            self.struct_client(),
        ]);
    }
}

/// Whether `ty` is spelled `Vec<u8>` (or `std::vec::Vec<u8>`).
fn is_byte_vec(ty: &syn::Type) -> bool {
    let syn::Type::Path(path) = ty else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    if last.ident != "Vec" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    matches!(
        args.args.first(),
        Some(syn::GenericArgument::Type(syn::Type::Path(inner)))
            if args.args.len() == 1 && inner.path.is_ident("u8")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> String {
        expand(
            quote!(crate = "cluster_rpc"),
            quote! {
                /// Hashes data.
                pub trait Hasher {
                    /// 64-bit FNV-1a.
                    async fn fnv(&self, data: Vec<u8>) -> u64;
                    async fn div(&self, a: u32, b: u32) -> Result<u32, DivError>;
                    async fn ping(&self);
                }
            },
        )
        .unwrap()
        .to_string()
    }

    #[test]
    fn generates_every_item() {
        let out = hasher();
        for expected in [
            "pub trait Hasher",
            "pub enum HasherRequest",
            "Fnv { # [doc = \"The `data` argument.\"] # [serde (with = \"::cluster_rpc::__private::serde_bytes\")] data : Vec < u8 > }",
            "Ping { }",
            "pub enum HasherResponse",
            "Ping (())",
            "Div (Result < u32 , DivError >)",
            "pub struct HasherServer < S >",
            "impl < S : Hasher > :: cluster_rpc :: __private :: Service for HasherServer < S >",
            "pub struct HasherClient",
            "pub async fn div (& self , a : u32 , b : u32) -> :: core :: result :: Result < \
             Result < u32 , DivError > , :: cluster_rpc :: __private :: RpcError >",
            "# [serde (crate = \"::cluster_rpc::__private::serde\")]",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
    }

    #[test]
    fn trait_methods_return_send_futures() {
        let out = hasher();
        assert!(out.contains(
            "fn fnv (& self , data : Vec < u8 >) -> impl :: core :: future :: Future < Output \
             = u64 > + :: core :: marker :: Send ;"
        ));
        assert!(out.contains(
            "pub trait Hasher : :: core :: marker :: Send + :: core :: marker :: Sync + 'static"
        ));
    }

    #[test]
    fn argument_and_trait_errors_are_combined() {
        let errors = expand(
            quote!(krate = "x"),
            quote!(
                trait T {
                    fn f(&self);
                }
            ),
        )
        .unwrap_err()
        .into_iter()
        .count();
        assert_eq!(errors, 2);
    }
}
