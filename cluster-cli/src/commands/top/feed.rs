//! The hub's admin feed over HTTP: `GET /admin/api/feed` with the token in a header, read
//! as server-sent events, each a [`Snapshot`].

use anyhow::{bail, Context};
use cluster_rpc::admin::view::Snapshot;
use cluster_transport::encode_uri_component;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest event accepted: a snapshot is a page of rows plus capped lists.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Which connections to ask for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pub(crate) page: usize,
    pub(crate) per_page: usize,
    pub(crate) filter: String,
}

/// An open feed.
#[derive(Debug)]
pub(crate) struct Feed {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Feed {
    /// Opens the feed of the hub at `host:port`.
    ///
    /// # Errors
    /// When the hub cannot be reached, or refuses the token (401) or the request.
    pub(crate) async fn open(
        host: &str,
        port: u16,
        token: &str,
        query: &Query,
    ) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot reach {host}:{port}"))?;
        let _ = stream.set_nodelay(true);
        let request = format!(
            "GET /admin/api/feed?page={}&per_page={}&filter={} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
            query.page,
            query.per_page,
            encode_uri_component(&query.filter),
        );
        stream.write_all(request.as_bytes()).await?;
        let mut feed = Self {
            stream,
            buffer: Vec::with_capacity(64 * 1024),
        };
        let head = feed.until(b"\r\n\r\n").await?;
        let head = String::from_utf8_lossy(&head);
        let status = head.split(' ').nth(1).unwrap_or("");
        match status {
            "200" => Ok(feed),
            "401" => bail!("the hub refused the token (401): pass the admin or read-only token"),
            "404" => bail!("no admin page on {host}:{port} (start the hub with --admin-token)"),
            other => bail!(
                "the hub answered {other}: {}",
                head.lines().next().unwrap_or("")
            ),
        }
    }

    /// The next snapshot.
    ///
    /// # Errors
    /// When the feed ends (the hub stopped) or sends something that is not a snapshot.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Snapshot> {
        loop {
            let event = self.until(b"\n\n").await?;
            let event = String::from_utf8_lossy(&event);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if !data.is_empty() {
                return serde_json::from_str(&data.join("\n")).context("not a snapshot");
            }
        }
    }

    async fn until(&mut self, end: &[u8]) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(at) = self.buffer.windows(end.len()).position(|w| w == end) {
                let item = self.buffer[..at].to_vec();
                self.buffer.drain(..at + end.len());
                return Ok(item);
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                bail!("an event larger than {MAX_EVENT_BYTES} bytes");
            }
            let n = self.stream.read_buf(&mut self.buffer).await?;
            if n == 0 {
                bail!("the hub closed the feed");
            }
        }
    }
}
