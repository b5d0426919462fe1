//! Generated code names everything by absolute paths: it compiles without the prelude and
//! with local items shadowing the names it uses.

#![no_implicit_prelude]
#![deny(warnings)]

// Local items with the names of everything the generated code uses.
#[allow(dead_code)]
mod shadows {
    pub struct Result;
    pub struct Ok;
    pub struct Err;
    pub struct Vec;
    pub struct Box;
    pub struct Arc;
    pub struct String;
    pub struct Send;
    pub struct Sync;
    pub struct Clone;
    pub struct Debug;
    pub struct Future;
    pub struct Duration;
    pub struct ToOwned;
    pub struct ToString;
    pub struct Serialize;
    pub struct Deserialize;
    pub struct Service;
    pub struct Codec;
    pub struct RpcError;
    pub struct RpcErrorKind;
    pub mod serde {}
    pub mod cluster_rpc {}
    pub mod core {}
    pub mod std {}
}
#[allow(unused_imports)]
use shadows::*;

// Private, so the generated items are private too: none may warn about dead code.
#[::cluster_macros::cluster_service(crate = "cluster_rpc")]
trait Plain {
    async fn echo(&self, text: ::std::string::String) -> ::std::string::String;
    async fn unit(&self);
    async fn check(&self, n: u32) -> ::core::result::Result<u32, ::std::string::String>;
}

struct Impl;

impl Plain for Impl {
    async fn echo(&self, text: ::std::string::String) -> ::std::string::String {
        text
    }

    async fn unit(&self) {}

    async fn check(&self, n: u32) -> ::core::result::Result<u32, ::std::string::String> {
        ::core::result::Result::Ok(n)
    }
}

fn main() {
    let server = PlainServer::new(Impl);
    let _ = ::cluster_rpc::Service::methods(&server);
    let _: fn(::cluster_rpc::Caller) -> PlainClient =
        <PlainClient as ::cluster_rpc::ServiceClient>::from_caller;
}
