//! A small HTTP/1.1 client for the provider's plain routes: one request per connection
//! (the provider closes after each), and a reader of server-sent events.

use super::within;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A whole answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `method path` with `Authorization: Bearer token` when given; reads the answer.
pub async fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Response {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream
        .write_all(head(method, path, token).as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    within("an answer", stream.read_to_end(&mut raw))
        .await
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    request(addr, "GET", path, token).await
}

/// `POST path` without a body.
pub async fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    request(addr, "POST", path, token).await
}

fn head(method: &str, path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}{length}\r\n")
}

/// A server-sent event stream being read.
pub struct Events {
    stream: TcpStream,
    buffer: String,
    /// The response head.
    pub head: String,
}

impl Events {
    /// Opens `GET path` and reads the head.
    pub async fn open(addr: SocketAddr, path: &str, token: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(head("GET", path, token).as_bytes())
            .await
            .expect("write");
        let mut events = Self {
            stream,
            buffer: String::new(),
            head: String::new(),
        };
        let head = events.until("\r\n\r\n").await;
        events.head = head;
        events
    }

    /// The next event's data.
    pub async fn next_data(&mut self) -> String {
        let event = self.until("\n\n").await;
        event
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn until(&mut self, end: &str) -> String {
        within("an event", async {
            loop {
                if let Some(at) = self.buffer.find(end) {
                    let item = self.buffer[..at].to_owned();
                    self.buffer.drain(..at + end.len());
                    return item;
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the stream ended");
                self.buffer.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
        .await
    }
}

/// A writer a test's tracing subscriber logs into.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
