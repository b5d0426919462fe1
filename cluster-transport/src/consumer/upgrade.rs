//! The consumer's side of the opening handshake: TCP (and TLS), the HTTP upgrade request
//! the original's consumer sends, and the checks on the provider's answer.

use super::hosts::Endpoint;
use crate::deflate;
use crate::error::{ConnectError, ConnectErrorKind};
use crate::handshake::accept_key;
use crate::query::encode_query;
use crate::ConsumerOptions;
use base64::Engine;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest response head accepted from a provider.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest body of a refusal kept for the error message.
const MAX_REFUSAL_BODY: usize = 1024;
/// Most headers in a response.
const MAX_RESPONSE_HEADERS: usize = 32;

/// What connects with TLS: rustls' client configuration with the `tls` feature, and a
/// type with no values without it (so `Option<&TlsConnector>` is always `None`).
#[cfg(feature = "tls")]
pub(super) type TlsConnector = std::sync::Arc<rustls::ClientConfig>;
/// What connects with TLS: nothing can, without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(super) type TlsConnector = std::convert::Infallible;

/// TCP, or TLS over TCP.
#[derive(Debug)]
pub(super) enum ClientStream {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A completed upgrade: the stream, the bytes read past the response head (the start of
/// the provider's first frames), and permessage-deflate if negotiated.
#[derive(Debug)]
pub(super) struct Upgraded {
    pub(super) stream: ClientStream,
    pub(super) leftover: Vec<u8>,
    pub(super) deflate: Option<deflate::Deflate>,
}

/// Connects to the provider at `endpoint` and completes the upgrade; `tls` is set for
/// `wss://`.
pub(super) async fn connect(
    options: &ConsumerOptions,
    endpoint: &Endpoint,
    tls: Option<&TlsConnector>,
) -> Result<Upgraded, ConnectError> {
    let host = endpoint.host.as_str();
    let tcp = TcpStream::connect((host, endpoint.port))
        .await
        .map_err(io_error)?;
    // Small frames go out at once, as tungstenite and ws do.
    tcp.set_nodelay(true).map_err(io_error)?;
    let mut stream = match tls {
        None => ClientStream::Plain(tcp),
        Some(config) => tls_handshake(host, tcp, config).await?,
    };
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = request(options, endpoint, &key);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_error)?;
    let mut buf = Vec::with_capacity(1024);
    let (deflate, consumed) = loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(io_error)?;
        if n == 0 {
            return Err(ConnectError::new(ConnectErrorKind::Io)
                .with_detail("the provider closed the connection during the handshake"));
        }
        buf.extend_from_slice(&chunk[..n]);
        match check_response(&buf, &key, tls.is_some())? {
            Head::Incomplete if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(ConnectError::new(ConnectErrorKind::Io)
                    .with_detail("the provider's response head is too large"));
            }
            Head::Incomplete => {}
            Head::Upgraded { deflate, consumed } => break (deflate, consumed),
            Head::Refused {
                status,
                reason,
                body_at,
                length,
            } => {
                let body = read_body(&mut stream, &mut buf, body_at, length).await;
                return Err(refusal(status, &reason, &body));
            }
        }
    };
    buf.drain(..consumed);
    Ok(Upgraded {
        stream,
        leftover: buf,
        deflate,
    })
}

fn io_error(e: std::io::Error) -> ConnectError {
    ConnectError::new(ConnectErrorKind::Io)
        .with_detail(e.to_string())
        .with_source(e)
}

/// The TLS handshake with the provider, verifying its certificate for `host`.
#[cfg(feature = "tls")]
async fn tls_handshake(
    host: &str,
    tcp: TcpStream,
    config: &TlsConnector,
) -> Result<ClientStream, ConnectError> {
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
        ConnectError::new(ConnectErrorKind::Tls)
            .with_detail(format!("invalid server name {host:?}"))
            .with_source(e)
    })?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config));
    let tls =
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| match crate::tls::rustls_error(&e) {
                Some(error) => crate::tls::handshake_error(error),
                None => io_error(e),
            })?;
    Ok(ClientStream::Tls(Box::new(tls)))
}

/// Without the `tls` feature there is no TLS configuration to connect with.
#[cfg(not(feature = "tls"))]
async fn tls_handshake(
    _host: &str,
    _tcp: TcpStream,
    config: &TlsConnector,
) -> Result<ClientStream, ConnectError> {
    match *config {}
}

/// The upgrade request, as the original's consumer (Node `ws`) sends it.
fn request(options: &ConsumerOptions, endpoint: &Endpoint, key: &str) -> String {
    let extensions = if options.compression {
        format!("Sec-WebSocket-Extensions: {}\r\n", deflate::CLIENT_OFFER)
    } else {
        String::new()
    };
    format!(
        "GET {}{} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extensions}\r\n",
        options.path,
        encode_query(&options.parameters),
    )
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Incomplete,
    /// A valid 101: the extension negotiated and where the frames start.
    Upgraded {
        deflate: Option<deflate::Deflate>,
        consumed: usize,
    },
    /// Any other status: the body starts at `body_at`, `length` bytes if announced.
    Refused {
        status: u16,
        reason: String,
        body_at: usize,
        length: Option<usize>,
    },
}

/// Parses and checks the provider's response head.
fn check_response(buf: &[u8], key: &str, tls: bool) -> Result<Head, ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let consumed = match response.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(Head::Incomplete),
        Ok(httparse::Status::Complete(n)) => n,
        Err(e) => {
            let hint = if tls {
                ""
            } else {
                " (is the provider serving TLS? then connect with ssl)"
            };
            return Err(ConnectError::new(ConnectErrorKind::Io)
                .with_detail(format!(
                    "invalid HTTP response from the provider: {e}{hint}"
                ))
                .with_source(e));
        }
    };
    let status = response.code.unwrap_or(0);
    let headers = &*response.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    if status != 101 {
        let length = header("content-length")
            .next()
            .and_then(|v| v.trim().parse().ok());
        return Ok(Head::Refused {
            status,
            reason: response.reason.unwrap_or_default().to_owned(),
            body_at: consumed,
            length,
        });
    }
    let invalid = |what: &str| {
        ConnectError::new(ConnectErrorKind::Io)
            .with_detail(format!("invalid upgrade response: {what}"))
    };
    if !header("upgrade").any(|v| v.trim().eq_ignore_ascii_case("websocket")) {
        return Err(invalid("no `Upgrade: websocket`"));
    }
    if !header("connection").any(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    }) {
        return Err(invalid("no `Connection: Upgrade`"));
    }
    if header("sec-websocket-accept").next().map(str::trim) != Some(accept_key(key).as_str()) {
        return Err(invalid("wrong Sec-WebSocket-Accept"));
    }
    let extensions: Vec<&str> = header("sec-websocket-extensions").collect();
    let deflate = deflate::check_response(&extensions).map_err(invalid)?;
    Ok(Head::Upgraded { deflate, consumed })
}

/// Reads what there is of a refusal's body (bounded), for the error message.
async fn read_body(
    stream: &mut ClientStream,
    buf: &mut Vec<u8>,
    body_at: usize,
    length: Option<usize>,
) -> Vec<u8> {
    let want = length.unwrap_or(MAX_REFUSAL_BODY).min(MAX_REFUSAL_BODY);
    while buf.len() - body_at < want {
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf.len().min(body_at + want);
    buf[body_at..end].to_vec()
}

/// The error for a provider that answered with `status` instead of 101.
fn refusal(status: u16, reason: &str, body: &[u8]) -> ConnectError {
    // 401/403 (auth) and the refusals of an upgrade check (other 4xx but a timeout or a
    // rate limit) cannot be fixed by trying again.
    let fatal = (400..500).contains(&status) && !matches!(status, 404 | 408 | 429);
    let kind = if fatal {
        ConnectErrorKind::Rejected
    } else {
        ConnectErrorKind::Io
    };
    let body = String::from_utf8_lossy(body);
    let detail = if body.is_empty() || matches!(status, 401 | 403) {
        format!("unexpected server response: {status} {reason}")
    } else {
        format!("unexpected server response: {status} {reason}: {body}")
    };
    ConnectError::new(kind).with_detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgraded(key: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
            accept_key(key)
        )
    }

    #[test]
    fn request_like_the_original() {
        let mut options = ConsumerOptions::default();
        let mut endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port: 9000,
        };
        options.parameters.insert("key".into(), "a b".into());
        let r = request(&options, &endpoint, "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(
            r.starts_with("GET /connect?key=a%20b HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"),
            "{r}"
        );
        assert!(r.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, \
                 permessage-deflate; client_no_context_takeover; client_max_window_bits\r\n"
        ));
        assert!(r.ends_with("\r\n\r\n"));
        options.compression = false;
        assert!(!request(&options, &endpoint, "k").contains("Extensions"));
        endpoint.host = "::1".into();
        assert!(request(&options, &endpoint, "k").contains("\r\nHost: [::1]:9000\r\n"));
    }

    #[test]
    fn responses_are_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = upgraded(key, "");
        assert_eq!(
            check_response(ok.as_bytes(), key, false).unwrap(),
            Head::Upgraded {
                deflate: None,
                consumed: ok.len()
            }
        );
        assert_eq!(
            check_response(&ok.as_bytes()[..20], key, false).unwrap(),
            Head::Incomplete
        );
        let deflated = upgraded(
            key,
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n",
        );
        assert!(matches!(
            check_response(deflated.as_bytes(), key, false).unwrap(),
            Head::Upgraded {
                deflate: Some(_),
                ..
            }
        ));
        assert!(check_response(upgraded("other", "").as_bytes(), key, false).is_err());
        let bad_ext = upgraded(key, "Sec-WebSocket-Extensions: x-foo\r\n");
        assert!(check_response(bad_ext.as_bytes(), key, false).is_err());
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\r\nUnauthorized";
        assert_eq!(
            check_response(refused, key, false).unwrap(),
            Head::Refused {
                status: 403,
                reason: "Forbidden".into(),
                body_at: refused.len() - 12,
                length: Some(12)
            }
        );
        let tls_alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];
        let err = check_response(&tls_alert, key, false).unwrap_err();
        assert!(err.to_string().contains("serving TLS"), "{err}");
    }

    #[test]
    fn refusals_are_fatal_where_retrying_cannot_help() {
        let forbidden = refusal(403, "Forbidden", b"Unauthorized");
        assert_eq!(forbidden.kind(), ConnectErrorKind::Rejected);
        assert!(forbidden.to_string().contains("403"), "{forbidden}");
        assert_eq!(refusal(404, "Not Found", b"").kind(), ConnectErrorKind::Io);
        assert_eq!(refusal(503, "Busy", b"busy").kind(), ConnectErrorKind::Io);
        assert!(refusal(418, "", b"teapot").to_string().contains("teapot"));
    }
}
