//! Slowloris: many connections each sending a valid upgrade request one byte at a time,
//! never finishing it. The provider's handshake time limit must cut every one of them.

use super::wire;
use super::Check;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 200;

/// How the phase runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slowloris {
    /// Connections.
    pub(crate) conns: usize,
    /// Time between two bytes of a request.
    pub(crate) byte_every: Duration,
    /// Longest wait for the provider to cut them all.
    pub(crate) limit: Duration,
}

impl Slowloris {
    /// Runs the phase against the provider on `port`.
    pub(crate) async fn run(self, port: u16, key: &str) -> anyhow::Result<Vec<Check>> {
        let request = wire::upgrade_request(key);
        let start = Instant::now();
        let streams: Vec<_> = futures_util::stream::iter(0..self.conns)
            .map(|_| wire::connect(port))
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
        let mut cut = JoinSet::new();
        let mut refused = 0usize;
        for stream in streams {
            match stream {
                Ok(stream) => {
                    cut.spawn(trickle(
                        stream,
                        request.clone().into_bytes(),
                        self.byte_every,
                    ));
                }
                Err(_) => refused += 1,
            }
        }
        let deadline = tokio::time::sleep(self.limit);
        tokio::pin!(deadline);
        let mut times = Vec::with_capacity(self.conns);
        let mut finished = 0usize;
        loop {
            tokio::select! {
                done = cut.join_next() => match done {
                    Some(Ok(Some(at))) => times.push(at.duration_since(start)),
                    Some(Ok(None)) => finished += 1,
                    Some(Err(_)) => {}
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let still_open = cut.len();
        cut.abort_all();
        times.sort_unstable();
        let median = crate::common::percentile(&times, 500);
        Ok(vec![Check::new(
            "every slowloris connection cut",
            times.len() == self.conns,
            format!(
                "{} of {} cut by the provider (median after {:.1} s); {still_open} still \
                 open after {:?}, {finished} finished their request, {refused} refused at \
                 connect",
                times.len(),
                self.conns,
                median.as_secs_f64(),
                self.limit
            ),
        )])
    }
}

/// Sends `request` one byte every `every` until the provider closes the connection;
/// returns when it did, or `None` if the whole request went out first.
async fn trickle(
    mut stream: tokio::net::TcpStream,
    request: Vec<u8>,
    every: Duration,
) -> Option<Instant> {
    let mut ticks = tokio::time::interval(every);
    let mut buf = [0u8; 256];
    let mut sent = 0;
    loop {
        tokio::select! {
            // The provider answering anything (408, or nothing and a close) ends it.
            _ = stream.read(&mut buf) => return Some(Instant::now()),
            _ = ticks.tick() => {
                let byte = request.get(sent..=sent)?;
                if stream.write_all(byte).await.is_err() {
                    return Some(Instant::now());
                }
                sent += 1;
                if sent == request.len() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_handshake_time_limit_cuts_every_slow_request() {
        let provider = cluster_transport::Provider::builder()
            .host("127.0.0.1")
            .port(0)
            .auth_parameter("key", "K")
            .handshake_timeout(Duration::from_millis(300))
            .bind()
            .await
            .unwrap();
        let checks = Slowloris {
            conns: 20,
            byte_every: Duration::from_millis(50),
            limit: Duration::from_secs(10),
        }
        .run(provider.port(), "K")
        .await
        .unwrap();
        assert_eq!(checks[0].ok, Some(true), "{}", checks[0].detail);
        assert!(
            checks[0].detail.starts_with("20 of 20 cut"),
            "{}",
            checks[0].detail
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_finishes_in_time_is_not_cut() {
        let provider = cluster_transport::Provider::builder()
            .host("127.0.0.1")
            .port(0)
            .auth_parameter("key", "K")
            .bind()
            .await
            .unwrap();
        let checks = Slowloris {
            conns: 2,
            byte_every: Duration::from_micros(100),
            limit: Duration::from_secs(10),
        }
        .run(provider.port(), "K")
        .await
        .unwrap();
        assert_eq!(checks[0].ok, Some(false));
        assert!(
            checks[0].detail.contains("2 finished their request"),
            "{}",
            checks[0].detail
        );
    }
}
