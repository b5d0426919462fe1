//! The HTTP side of a connection: reading the upgrade request within limits, answering
//! plain requests (`GET /alive`, 404) and rejections, and the 101 switch.

use crate::auth::{parameters_match, AuthHandler, UpgradeCheck, UpgradeRequest};
use crate::deflate::{self, Deflate};
use crate::http::{self, BodyError, Exchange, HttpRequest, HttpRoutes};
use crate::options::{HandshakeOptions, ProviderOptions};
use crate::query::decode_query;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A request line and headers, parsed and copied out of the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedRequest {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl ParsedRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// An HTTP answer that ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    BadRequest,
    Unauthorized,
    NotFound,
    UriTooLong,
    HeadersTooLarge,
    UpgradeRequired,
    /// A route's request body over [`MAX_HTTP_BODY_BYTES`](crate::MAX_HTTP_BODY_BYTES).
    PayloadTooLarge,
    /// A route's request body sent chunked: only `Content-Length` is read.
    LengthRequired,
}

impl Reject {
    fn status_line(self) -> &'static str {
        match self {
            Reject::BadRequest => "400 Bad Request",
            Reject::Unauthorized => "403 Forbidden",
            Reject::NotFound => "404 Not Found",
            Reject::UriTooLong => "414 URI Too Long",
            Reject::HeadersTooLarge => "431 Request Header Fields Too Large",
            Reject::UpgradeRequired => "426 Upgrade Required",
            Reject::PayloadTooLarge => "413 Content Too Large",
            Reject::LengthRequired => "411 Length Required",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Reject::BadRequest => "Bad Request",
            // The original's exact body, which its consumers may match on.
            Reject::Unauthorized => "Unauthorized",
            Reject::NotFound => "Not Found",
            Reject::UriTooLong => "URI Too Long",
            Reject::HeadersTooLarge => "Request Header Fields Too Large",
            Reject::UpgradeRequired => "Upgrade Required",
            Reject::PayloadTooLarge => "Content Too Large",
            Reject::LengthRequired => "Length Required",
        }
    }

    fn response(self) -> String {
        let extra = match self {
            Reject::UpgradeRequired => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        http_response(self.status_line(), extra, self.body())
    }
}

fn http_response(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        406 => "Not Acceptable",
        409 => "Conflict",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Refused",
    }
}

/// Parses a request head from `buf`. `Ok(None)` means more bytes are needed.
/// On success also returns how many bytes the head took.
pub(crate) fn parse_request(
    buf: &[u8],
    limits: &HandshakeOptions,
) -> Result<Option<(ParsedRequest, usize)>, Reject> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers.max(1)];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_request_bytes {
                return Err(Reject::HeadersTooLarge);
            }
            // Refuse an endless request line early, before the whole limit is spent on it.
            if !buf.contains(&b'\n') && buf.len() > limits.max_target_bytes + 32 {
                return Err(Reject::UriTooLong);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(_) => return Err(Reject::BadRequest),
    };
    if consumed > limits.max_request_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(Reject::BadRequest);
    };
    if target.len() > limits.max_target_bytes {
        return Err(Reject::UriTooLong);
    }
    let headers = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Some((
        ParsedRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
        },
        consumed,
    )))
}

/// What the provider does with a parsed request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /alive`.
    Alive,
    /// Any other request that is not an upgrade: an HTTP route's, or 404.
    Plain { path: String, query: String },
    /// A valid websocket upgrade on the provider's path.
    Upgrade {
        key: String,
        path: String,
        query: String,
    },
    /// Anything else: answer and close.
    Reject(Reject),
}

/// Decides what a request is, without looking at auth.
pub(crate) fn route(req: &ParsedRequest, ws_path: &str) -> Route {
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.target.as_str(), ""),
    };
    let is_upgrade = req.header_has_token("upgrade", "websocket");
    if !is_upgrade {
        return if req.method == "GET" && path == "/alive" {
            Route::Alive
        } else {
            Route::Plain {
                path: path.to_owned(),
                query: query.to_owned(),
            }
        };
    }
    if path != ws_path {
        return Route::Reject(Reject::NotFound);
    }
    if req.method != "GET" || !req.header_has_token("connection", "upgrade") {
        return Route::Reject(Reject::BadRequest);
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Route::Reject(Reject::UpgradeRequired);
    }
    match req.header("sec-websocket-key").map(str::trim) {
        Some(key) if !key.is_empty() => Route::Upgrade {
            key: key.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
        },
        _ => Route::Reject(Reject::BadRequest),
    }
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub(crate) fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Why a handshake ended without a connection.
#[derive(Debug)]
pub(crate) enum HandshakeEnd {
    /// A plain HTTP request was answered (alive, 404, 400, 403 …).
    Answered(Reject),
    /// `GET /alive` was answered.
    Alive,
    /// A request for an HTTP route, read whole: answered outside the time limit.
    Http(Box<Exchange>),
    /// An upgrade check refused the request with this status.
    Refused(u16),
    /// The client went away or the socket failed.
    Io(std::io::Error),
}

/// A completed upgrade: the request and any bytes the client sent after it.
pub(crate) struct Upgraded {
    pub(crate) request: UpgradeRequest,
    pub(crate) leftover: Vec<u8>,
    /// permessage-deflate, when negotiated.
    pub(crate) deflate: Option<Deflate>,
}

/// What a handshake checks a request against: the provider's options, its auth, and
/// the plain HTTP routes beside the upgrade.
#[derive(Clone, Copy)]
pub(crate) struct Gate<'a> {
    pub(crate) options: &'a ProviderOptions,
    pub(crate) auth_handler: Option<&'a AuthHandler>,
    pub(crate) upgrade_check: Option<&'a UpgradeCheck>,
    pub(crate) http: &'a HttpRoutes,
}

/// Reads the request, answers it, and on a valid, authorised upgrade sends the 101.
pub(crate) async fn accept<S>(
    stream: &mut S,
    ip: IpAddr,
    gate: Gate<'_>,
) -> Result<Upgraded, HandshakeEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &gate.options.handshake;
    let mut buf = Vec::with_capacity(1024);
    let (parsed, consumed) = loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(limits.max_request_bytes));
        }
        let n = stream.read_buf(&mut buf).await.map_err(HandshakeEnd::Io)?;
        if n == 0 {
            return Err(HandshakeEnd::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        match parse_request(&buf, limits) {
            Ok(Some(done)) => break done,
            Ok(None) => continue,
            Err(reject) => return Err(answer(stream, reject).await),
        }
    };
    let (key, path, query) = match route(&parsed, &gate.options.path) {
        Route::Upgrade { key, path, query } => (key, path, query),
        Route::Alive => {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let body = format!("Hello World @ {millis}");
            write_and_close(stream, http_response("200 OK", "", &body).as_bytes()).await;
            return Err(HandshakeEnd::Alive);
        }
        Route::Plain { path, query } => {
            let Some(handler) = gate.http.find(&path) else {
                return Err(answer(stream, Reject::NotFound).await);
            };
            let request = HttpRequest::new(ip, parsed.method, path, query, parsed.headers);
            let body = buf.split_off(consumed);
            return match http::read_exchange(stream, request, handler, body).await {
                Ok(exchange) => Err(HandshakeEnd::Http(Box::new(exchange))),
                Err(BodyError::Io(error)) => Err(HandshakeEnd::Io(error)),
                Err(BodyError::TooLarge) => Err(answer(stream, Reject::PayloadTooLarge).await),
                Err(BodyError::LengthRequired) => Err(answer(stream, Reject::LengthRequired).await),
                Err(BodyError::BadLength) => Err(answer(stream, Reject::BadRequest).await),
            };
        }
        Route::Reject(reject) => return Err(answer(stream, reject).await),
    };
    let request = UpgradeRequest {
        ip,
        path,
        parameters: decode_query(&query),
        headers: parsed.headers,
    };
    if !authorised(&request, gate).await {
        return Err(answer(stream, Reject::Unauthorized).await);
    }
    if let Some(check) = gate.upgrade_check {
        if let Err(refusal) = check(&request) {
            let status = format!("{} {}", refusal.status, reason_phrase(refusal.status));
            let response = http_response(&status, "", &refusal.body);
            write_and_close(stream, response.as_bytes()).await;
            return Err(HandshakeEnd::Refused(refusal.status));
        }
    }
    // permessage-deflate only when the compressor is on; other offers are ignored. With no
    // extension accepted the 101 carries no Sec-WebSocket-Extensions header.
    let offers: Vec<&str> = request
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|(_, value)| value.as_str())
        .collect();
    let negotiated = deflate::accept(&offers, gate.options.ws.compressor);
    let extension = negotiated
        .as_ref()
        .map(|(_, header)| format!("Sec-WebSocket-Extensions: {header}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extension}\r\n",
        accept_key(&key)
    );
    stream
        .write_all(response.as_bytes())
        .await
        .map_err(HandshakeEnd::Io)?;
    let leftover = buf.split_off(consumed);
    Ok(Upgraded {
        request,
        leftover,
        deflate: negotiated.map(|(deflate, _)| deflate),
    })
}

async fn authorised(request: &UpgradeRequest, gate: Gate<'_>) -> bool {
    if !parameters_match(&gate.options.auth.parameters, &request.parameters) {
        return false;
    }
    match gate.auth_handler {
        Some(handler) => handler(request.clone()).await,
        None => true,
    }
}

async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, reject: Reject) -> HandshakeEnd {
    write_and_close(stream, reject.response().as_bytes()).await;
    HandshakeEnd::Answered(reject)
}

async fn write_and_close<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    // The client may already be gone; there is nobody left to tell about a failure.
    if stream.write_all(bytes).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UPGRADE: &str = "GET /connect?key=a%20b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(s: &str) -> ParsedRequest {
        parse_request(s.as_bytes(), &HandshakeOptions::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(&parse(UPGRADE), "/connect"),
            Route::Upgrade {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                path: "/connect".into(),
                query: "key=a%20b".into()
            }
        );
        assert_eq!(
            route(&parse(UPGRADE), "/other"),
            Route::Reject(Reject::NotFound)
        );
        assert_eq!(
            route(&parse("GET /alive HTTP/1.1\r\n\r\n"), "/connect"),
            Route::Alive
        );
        assert_eq!(
            route(&parse("GET /x?a=1 HTTP/1.1\r\n\r\n"), "/connect"),
            Route::Plain {
                path: "/x".into(),
                query: "a=1".into()
            }
        );
        assert_eq!(
            route(&parse("POST /alive HTTP/1.1\r\n\r\n"), "/connect"),
            Route::Plain {
                path: "/alive".into(),
                query: String::new()
            }
        );
        let old = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(
            route(&parse(&old), "/connect"),
            Route::Reject(Reject::UpgradeRequired)
        );
        let no_key = UPGRADE.replace("Sec-WebSocket-Key", "X-Key");
        assert_eq!(
            route(&parse(&no_key), "/connect"),
            Route::Reject(Reject::BadRequest)
        );
    }

    #[test]
    fn limits() {
        let limits = HandshakeOptions::default();
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n", &limits), Ok(None));
        assert_eq!(
            parse_request(b"\x00\x01garbage\r\n\r\n", &limits),
            Err(Reject::BadRequest)
        );
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
        assert_eq!(
            parse_request(long_target.as_bytes(), &limits),
            Err(Reject::UriTooLong)
        );
        let endless_line = format!("GET /{}", "a".repeat(5000));
        assert_eq!(
            parse_request(endless_line.as_bytes(), &limits),
            Err(Reject::UriTooLong)
        );
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(40));
        assert_eq!(
            parse_request(many.as_bytes(), &limits),
            Err(Reject::HeadersTooLarge)
        );
        let big = format!("GET / HTTP/1.1\r\nA: {}", "b".repeat(9000));
        assert_eq!(
            parse_request(big.as_bytes(), &limits),
            Err(Reject::HeadersTooLarge)
        );
    }

    #[test]
    fn unauthorized_matches_the_original() {
        let r = Reject::Unauthorized.response();
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(r.contains("Content-Length: 12\r\n"));
        assert!(r.ends_with("\r\n\r\nUnauthorized"));
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic(data: Vec<u8>) {
            let limits = HandshakeOptions::default();
            if let Ok(Some((req, n))) = parse_request(&data, &limits) {
                prop_assert!(n <= data.len());
                let _ = route(&req, "/connect");
            }
        }
    }
}
