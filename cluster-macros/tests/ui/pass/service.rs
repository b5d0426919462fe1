//! A service with several kinds of methods, served through the generated server and checked
//! to produce the documented items. Lints are denied so generated code must be clean.

#![deny(missing_docs, missing_debug_implementations, unreachable_pub, warnings)]

use cluster_macros::cluster_service;
use cluster_rpc::{Codec, CodecKind, RpcError, RpcErrorKind, Service, ServiceClient};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a division failed.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum DivError {
    /// The divisor was zero.
    ByZero,
}

/// Hashes data and does sums.
#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher: std::fmt::Debug {
    /// 64-bit FNV-1a.
    async fn fnv(&self, data: Vec<u8>) -> u64;
    /// `a / b`.
    ///
    /// Fails on a zero `b`.
    async fn div(&self, a: u32, b: u32) -> Result<u32, DivError>;
    /// Does nothing.
    async fn ping(&self);
    /// A method behind a cfg that is never set.
    #[cfg(any())]
    async fn hidden(&self, x: NotSerde) -> NotSerde;
    /// A raw identifier as a name.
    async fn r#type(&self, mut name: String) -> String;
    /// Arguments named like the generated code's own variables.
    async fn shadow(&self, codec: u8, inner: u8, method: u8, request: u8, response: u8) -> u8;
}

#[derive(Debug)]
struct Impl;

impl Hasher for Impl {
    async fn fnv(&self, data: Vec<u8>) -> u64 {
        data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    async fn div(&self, a: u32, b: u32) -> Result<u32, DivError> {
        a.checked_div(b).ok_or(DivError::ByZero)
    }

    async fn ping(&self) {}

    async fn r#type(&self, mut name: String) -> String {
        name.push('!');
        name
    }

    async fn shadow(&self, codec: u8, inner: u8, method: u8, request: u8, response: u8) -> u8 {
        codec + inner + method + request + response
    }
}

fn assert_send<T: Send>(_: &T) {}
fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}

/// Never runs: proves the client's API and that its futures are `Send`.
#[allow(dead_code)]
async fn client_api(client: HasherClient) {
    let client = client.with_deadline(Duration::from_secs(1));
    let fnv = client.fnv(vec![1, 2]);
    assert_send(&fnv);
    let _: Result<u64, RpcError> = fnv.await;
    let _: Result<Result<u32, DivError>, RpcError> = client.div(1, 2).await;
    let _: Result<(), RpcError> = client.ping().await;
    let _: Result<String, RpcError> = client.r#type(String::new()).await;
    let _: Result<u8, RpcError> = client.shadow(1, 2, 3, 4, 5).await;
}

async fn call<T: serde::de::DeserializeOwned>(
    server: &dyn Service,
    codec: CodecKind,
    method: &str,
    request: &HasherRequest,
) -> Result<T, RpcError> {
    let mut bytes = Vec::new();
    codec.encode(request, &mut bytes).unwrap();
    let response = server.call(method, &bytes, codec)?.await?;
    Ok(codec.decode(&response).unwrap())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_traits::<HasherServer<Impl>>();
    assert_traits::<HasherClient>();
    assert_eq!(<HasherClient as ServiceClient>::SERVICE, "Hasher");

    let server = HasherServer::new(Impl);
    assert_eq!(server.name(), "Hasher");
    assert_eq!(server.methods(), ["fnv", "div", "ping", "type", "shadow"]);
    assert_eq!(format!("{server:?}"), "HasherServer { .. }");
    let server: &dyn Service = &server;

    for &codec in CodecKind::ALL {
        let request = HasherRequest::Fnv {
            data: b"a".to_vec(),
        };
        assert_eq!(format!("{request:?}"), "HasherRequest::Fnv { .. }");
        let response: HasherResponse = call(server, codec, "fnv", &request).await.unwrap();
        assert!(matches!(
            response,
            HasherResponse::Fnv(0xaf63_dc4c_8601_ec8c)
        ));
        assert_eq!(format!("{response:?}"), "HasherResponse::Fnv(..)");

        let request = HasherRequest::Div { a: 7, b: 2 };
        let response: HasherResponse = call(server, codec, "div", &request).await.unwrap();
        assert!(matches!(response, HasherResponse::Div(Ok(3))));
        let request = HasherRequest::Div { a: 7, b: 0 };
        let response: HasherResponse = call(server, codec, "div", &request).await.unwrap();
        assert!(matches!(
            response,
            HasherResponse::Div(Err(DivError::ByZero))
        ));

        let response: HasherResponse = call(server, codec, "ping", &HasherRequest::Ping {})
            .await
            .unwrap();
        assert!(matches!(response, HasherResponse::Ping(())));

        let request = HasherRequest::Type {
            name: "x".to_owned(),
        };
        let response: HasherResponse = call(server, codec, "type", &request).await.unwrap();
        assert!(matches!(response, HasherResponse::Type(s) if s == "x!"));

        let request = HasherRequest::Shadow {
            codec: 1,
            inner: 2,
            method: 3,
            request: 4,
            response: 5,
        };
        let response: HasherResponse = call(server, codec, "shadow", &request).await.unwrap();
        assert!(matches!(response, HasherResponse::Shadow(15)));

        // A method the service does not have is reported before the request is decoded.
        let error = server.call("hidden", b"not even", codec).err().unwrap();
        assert_eq!(error, RpcError::new(RpcErrorKind::NoSuchMethod, "hidden"));

        // A request for another method, and bytes that are no request at all.
        let error = call::<HasherResponse>(server, codec, "div", &HasherRequest::Ping {})
            .await
            .unwrap_err();
        assert_eq!(error.kind(), RpcErrorKind::Decode, "{error:?}");
        let error = server
            .call("div", &[0xc1, 0xff, 0x00], codec)
            .err()
            .unwrap();
        assert_eq!(error.kind(), RpcErrorKind::Decode, "{error:?}");
    }
}
