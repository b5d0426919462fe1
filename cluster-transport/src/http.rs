//! Plain HTTP on the provider's port: routes of your own beside the websocket upgrade.
//!
//! The provider answers requests that are not websocket upgrades itself (`GET /alive`,
//! 404). A route registered with [`ProviderBuilder::http_route`](crate::ProviderBuilder::http_route)
//! takes the plain requests under its path prefix instead: a metrics endpoint, an admin
//! page, a JSON API, a live feed.
//!
//! - The request (line, headers and a body of at most [`MAX_HTTP_BODY_BYTES`] announced by
//!   `Content-Length`) must arrive within the handshake time limit, as an upgrade must.
//!   Once the handler has it, no time limit applies: a streaming response (server-sent
//!   events, say) lasts until its stream ends, the client goes away, or the provider
//!   stops. Each chunk must be taken by the client within the handshake time limit, so a
//!   client that stops reading cannot hold a task forever.
//! - Such a request is not a consumer: it gets no [`Connection`](crate::Connection), no
//!   events, and does not count in [`Provider::connection_count`](crate::Provider::connection_count).
//!   While it lasts it holds one of the `max_connections` slots, as every socket does.
//! - Every response ends with `Connection: close`.
//!
//! ```
//! use cluster_transport::{HttpResponse, Provider};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Provider::builder()
//!     .host("127.0.0.1")
//!     .port(0)
//!     .http_route("/hello", |request| async move {
//!         HttpResponse::text(200, format!("hello {}", request.ip()))
//!     })
//!     .bind()
//!     .await?;
//! // GET http://127.0.0.1:{port}/hello answers "hello 127.0.0.1".
//! # provider.shutdown().await;
//! # Ok(()) }
//! ```

use crate::query::{decode_query, Parameters};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Largest request body a route accepts; a larger `Content-Length` is answered 413.
pub const MAX_HTTP_BODY_BYTES: usize = 64 * 1024;

/// A plain HTTP request, as a route's handler sees it.
pub struct HttpRequest {
    ip: IpAddr,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    pub(crate) fn new(
        ip: IpAddr,
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
    ) -> Self {
        Self {
            ip,
            method,
            path,
            query,
            headers,
            body: Vec::new(),
        }
    }

    /// The client's IP address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The method (`GET`, `POST`, …).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query (after `?`, still percent-encoded; empty when there is none).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The query, decoded as [`decode_query`] does.
    pub fn parameters(&self) -> Parameters {
        decode_query(&self.query)
    }

    /// Every header as sent, in order (name, value).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// The body (at most [`MAX_HTTP_BODY_BYTES`]; empty without `Content-Length`).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The query and headers may hold tokens: names only.
        f.debug_struct("HttpRequest")
            .field("ip", &self.ip)
            .field("method", &self.method)
            .field("path", &self.path)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A route's answer: a status, headers, and a body given whole or streamed.
pub struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Full(Vec<u8>),
    Stream(BoxStream<'static, Vec<u8>>),
}

impl HttpResponse {
    /// A response with a whole body of this content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Full(body.into()),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// A response whose body is written chunk by chunk as `body` yields them, until it
    /// ends (the end of the body is the end of the connection). For server-sent events,
    /// use `text/event-stream` and yield one event per item.
    pub fn stream(
        status: u16,
        content_type: &str,
        body: impl Stream<Item = Vec<u8>> + Send + 'static,
    ) -> Self {
        Self {
            status,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                ("Cache-Control".into(), "no-store".into()),
            ],
            body: Body::Stream(body.boxed()),
        }
    }

    /// Adds a header. A name or value holding a line break (which would split the
    /// response) is left out.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        if is_header_safe(&name) && is_header_safe(&value) && !name.is_empty() {
            self.headers.push((name, value));
        } else {
            tracing::debug!(header = %name.escape_debug(), "unsafe response header left out");
        }
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The status line, the headers and the blank line.
    fn head(&self) -> String {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        if let Body::Full(body) = &self.body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        head
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("streamed", &matches!(self.body, Body::Stream(_)))
            .finish_non_exhaustive()
    }
}

fn is_header_safe(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

type Handler = Arc<dyn Fn(HttpRequest) -> BoxFuture<'static, HttpResponse> + Send + Sync>;

/// The routes of one provider, by path prefix, first match wins.
#[derive(Clone, Default)]
pub(crate) struct HttpRoutes {
    routes: Vec<(String, Handler)>,
}

impl HttpRoutes {
    pub(crate) fn add<F, Fut>(&mut self, prefix: String, handler: F)
    where
        F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        self.routes.push((prefix, handler));
    }

    /// Adds a route tried before every other.
    #[cfg(feature = "prometheus")]
    pub(crate) fn add_first<F, Fut>(&mut self, prefix: String, handler: F)
    where
        F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        self.add(prefix, handler);
        self.routes.rotate_right(1);
    }

    /// The first prefix that is not a path, if any (checked when the provider binds).
    pub(crate) fn invalid_prefix(&self) -> Option<&str> {
        self.routes
            .iter()
            .map(|(p, _)| p.as_str())
            .find(|p| !p.starts_with('/'))
    }

    /// The handler of `path`: a route whose prefix is the path, or a parent of it.
    pub(crate) fn find(&self, path: &str) -> Option<Handler> {
        self.routes
            .iter()
            .find(|(prefix, _)| {
                let prefix = prefix.trim_end_matches('/');
                match path.strip_prefix(prefix) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            })
            .map(|(_, h)| Arc::clone(h))
    }
}

impl fmt::Debug for HttpRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(p, _)| p))
            .finish()
    }
}

/// A request for a route, read whole, and the handler that answers it.
pub(crate) struct Exchange {
    pub(crate) request: HttpRequest,
    handler: Handler,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// Why a route's request could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// `Transfer-Encoding` instead of `Content-Length`: not supported (411).
    LengthRequired,
    /// More than [`MAX_HTTP_BODY_BYTES`] (413).
    TooLarge,
    /// A `Content-Length` that is not a number (400).
    BadLength,
    /// The client went away.
    Io(std::io::Error),
}

/// Reads the body announced by the request's `Content-Length`, starting from the bytes
/// already read after the head.
pub(crate) async fn read_exchange<S>(
    stream: &mut S,
    mut request: HttpRequest,
    handler: Handler,
    mut body: Vec<u8>,
) -> Result<Exchange, BodyError>
where
    S: AsyncRead + Unpin,
{
    if request.header("transfer-encoding").is_some() {
        return Err(BodyError::LengthRequired);
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(value) => value
            .trim()
            .parse::<usize>()
            .map_err(|_| BodyError::BadLength)?,
    };
    if length > MAX_HTTP_BODY_BYTES {
        return Err(BodyError::TooLarge);
    }
    body.truncate(length);
    while body.len() < length {
        body.reserve(length - body.len());
        let n = stream.read_buf(&mut body).await.map_err(BodyError::Io)?;
        if n == 0 {
            return Err(BodyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    body.truncate(length);
    request.body = body;
    Ok(Exchange { request, handler })
}

/// Runs the handler and writes its response, until the body ends, the client stops
/// taking it for `write_timeout`, or `stop` is cancelled.
pub(crate) async fn respond<S>(
    stream: &mut S,
    exchange: Exchange,
    stop: &CancellationToken,
    write_timeout: Duration,
) where
    S: AsyncWrite + Unpin,
{
    let Exchange { request, handler } = exchange;
    let response = tokio::select! {
        _ = stop.cancelled() => return,
        response = handler(request) => response,
    };
    let head = response.head();
    let HttpResponse { body, .. } = response;
    if !write_within(stream, head.as_bytes(), write_timeout, stop).await {
        return;
    }
    match body {
        Body::Full(bytes) => {
            if !write_within(stream, &bytes, write_timeout, stop).await {
                return;
            }
        }
        Body::Stream(mut chunks) => loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => break,
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else { break };
            if !write_within(stream, &chunk, write_timeout, stop).await {
                return;
            }
        },
    }
    let _ = tokio::time::timeout(write_timeout, stream.shutdown()).await;
}

/// Writes and flushes `bytes`; false when the client went away, did not take them in
/// time, or the provider stopped.
async fn write_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
    stop: &CancellationToken,
) -> bool {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        done = tokio::time::timeout(timeout, write) => matches!(done, Ok(Ok(()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> HttpRoutes {
        let mut routes = HttpRoutes::default();
        routes.add("/admin".into(), |_| async {
            HttpResponse::text(200, "admin")
        });
        routes.add("/metrics/".into(), |_| async {
            HttpResponse::text(200, "metrics")
        });
        routes
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let routes = routes();
        assert!(routes.find("/admin").is_some());
        assert!(routes.find("/admin/api/feed").is_some());
        assert!(routes.find("/administrator").is_none());
        assert!(routes.find("/metrics").is_some());
        assert!(routes.find("/metricsx").is_none());
        assert!(routes.find("/").is_none());
        assert_eq!(routes.invalid_prefix(), None);
        let mut bad = HttpRoutes::default();
        bad.add("admin".into(), |_| async { HttpResponse::text(200, "") });
        assert_eq!(bad.invalid_prefix(), Some("admin"));
    }

    #[test]
    fn bearer_tokens() {
        let request = |value: &str| {
            HttpRequest::new(
                IpAddr::from([127, 0, 0, 1]),
                "GET".into(),
                "/".into(),
                String::new(),
                vec![("Authorization".into(), value.into())],
            )
        };
        assert_eq!(request("Bearer abc").bearer_token(), Some("abc"));
        assert_eq!(request("bearer  abc ").bearer_token(), Some("abc"));
        assert_eq!(request("Basic abc").bearer_token(), None);
        assert_eq!(request("Bearer ").bearer_token(), None);
    }

    #[test]
    fn responses_never_carry_injected_headers() {
        let response = HttpResponse::text(200, "hi")
            .header("X-Ok", "yes")
            .header("X-Bad", "a\r\nSet-Cookie: x")
            .header("X\nBad", "b");
        let head = response.head();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("X-Ok: yes\r\n"));
        assert!(!head.contains("Set-Cookie"));
        assert!(!head.contains("X-Bad"));
        assert!(head.contains("Content-Length: 2\r\n"));
        assert!(head.ends_with("Connection: close\r\n\r\n"));
        let streamed =
            HttpResponse::stream(200, "text/event-stream", futures_util::stream::empty());
        assert!(!streamed.head().contains("Content-Length"));
    }
}
