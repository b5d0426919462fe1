//! The `#[cluster_service]` macro of network-cluster: turns a trait into a typed RPC
//! service. Use it through `network_cluster::cluster_service`; see [`cluster_service`].

#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use proc_macro::TokenStream;

mod attr;
mod expand;
mod parse;

/// Turns a trait into an RPC service: a server that answers calls with an implementation
/// of the trait, and a typed client that makes them.
///
/// ```
/// use cluster_rpc::{Codec, CodecKind, Service};
/// # use cluster_macros::cluster_service;
///
/// /// Hashes data.
/// #[cluster_service(crate = "cluster_rpc")] // `#[cluster_service]` through network_cluster
/// pub trait Hasher {
///     /// 64-bit FNV-1a.
///     async fn fnv(&self, data: Vec<u8>) -> u64;
///     /// `a / b`, an error when `b` is zero.
///     async fn div(&self, a: u32, b: u32) -> Result<u32, DivByZero>;
/// }
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// pub struct DivByZero;
///
/// struct Fnv;
///
/// impl Hasher for Fnv {
///     async fn fnv(&self, data: Vec<u8>) -> u64 {
///         data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
///             (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
///         })
///     }
///
///     async fn div(&self, a: u32, b: u32) -> Result<u32, DivByZero> {
///         a.checked_div(b).ok_or(DivByZero)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // What a node does with each call to the service: decode, run, encode.
/// let server = HasherServer::new(Fnv);
/// let codec = CodecKind::MessagePack;
/// let mut request = Vec::new();
/// codec.encode(&HasherRequest::Div { a: 7, b: 0 }, &mut request)?;
/// let response = server.call("div", &request, codec)?.await?;
/// let response: HasherResponse = codec.decode(&response)?;
/// assert!(matches!(response, HasherResponse::Div(Err(DivByZero))));
/// # Ok(())
/// # }
/// ```
///
/// On the calling side, a node hands out a `HasherClient` (it implements `ServiceClient`),
/// and `client.div(7, 0).await` returns `Ok(Err(DivByZero))`; the outer `Result` carries
/// the `RpcError`s of the call itself: deadline, disconnect, decoding.
///
/// # What it generates
///
/// For a trait `Hasher`, in the trait's module and with its visibility:
///
/// - the trait itself, with `Send + Sync + 'static` added to its supertraits and each
///   `async fn` rewritten to `fn .. -> impl Future<Output = ..> + Send`, so the server can
///   run calls on any thread. Implementations still write `async fn`.
/// - `HasherRequest`, an enum with one variant per method (the method name in CamelCase)
///   holding its arguments as named fields, and `HasherResponse`, one variant per method
///   holding its return value. Both are serde types.
/// - `HasherServer<S>`, built with `new(service)` or `from_arc(Arc<S>)`, which implements
///   `Service` for any `S: Hasher`.
/// - `HasherClient`, which implements `ServiceClient`, has `with_deadline(Duration)` and
///   one `async fn` per method returning `Result<T, RpcError>` for a method returning `T`.
///
/// Doc comments and `#[cfg]` attributes on a method are repeated on its client method and
/// enum variants.
///
/// # Arguments
///
/// `#[cluster_service(crate = "path")]` names the crate whose hidden `__private` module
/// generated code uses: `::network_cluster` by default, `"cluster_rpc"` for users of
/// cluster-rpc on its own.
///
/// # Rules
///
/// Each of these is a compile error at the offending token, and all of them are reported
/// at once:
///
/// - every method is an `async fn` taking `&self`, with no body, generics or `where` clause,
///   and is not `const`, `unsafe` or `extern`;
/// - arguments are plain names without attributes (no patterns such as `(a, b): (u8, u8)`);
/// - argument and return types are concrete owned types: no `impl Trait`, no references;
/// - argument types implement `Serialize + DeserializeOwned + Send`, return types
///   `Serialize + DeserializeOwned` (rustc reports a missing trait at the type);
/// - the trait has at least one method, nothing but methods, no generics, no `where`
///   clause, and is not `unsafe`;
/// - no method is named `new`, `with_deadline`, `from_caller` or `clone` (names the
///   generated types use), and no two methods share a CamelCase variant name.
///
/// # Debugging
///
/// Set `CLUSTER_MACROS_DEBUG=1` while building to print each expansion to stderr.
#[proc_macro_attribute]
pub fn cluster_service(args: TokenStream, input: TokenStream) -> TokenStream {
    output(expand::expand(args.into(), input.into()))
}

/// Turns the expansion into tokens: the generated code, or every error as
/// `compile_error!`. Prints it when `CLUSTER_MACROS_DEBUG` is set.
fn output(result: syn::Result<proc_macro2::TokenStream>) -> TokenStream {
    let tokens = result.unwrap_or_else(syn::Error::into_compile_error);
    if std::env::var_os("CLUSTER_MACROS_DEBUG").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("{tokens}");
    }
    tokens.into()
}
