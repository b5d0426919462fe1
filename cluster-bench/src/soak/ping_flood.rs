//! The ping flood: one upgraded connection sends control pings as fast as it can and never
//! reads. The provider must neither queue a pong per ping nor grow past its limits; it
//! may keep one pending pong or close the connection (1008).

use super::wire::{self, opcode};
use super::Check;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Bytes of each ping's payload: the most a control frame may carry.
const PING_PAYLOAD: usize = 125;
/// Pings written per `write_all`.
const PINGS_PER_WRITE: usize = 256;
/// Longest a single write may block before the flood counts as stalled by the provider.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// How the phase runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PingFlood {
    /// How long the flood lasts.
    pub(crate) duration: Duration,
}

impl PingFlood {
    /// Runs the phase against the provider on `port`.
    pub(crate) async fn run(self, port: u16, key: &str) -> anyhow::Result<Vec<Check>> {
        let (mut stream, _) = wire::upgraded(port, key).await?;
        let ping = wire::final_frame(opcode::PING, &[b'p'; PING_PAYLOAD]);
        let batch = ping.repeat(PINGS_PER_WRITE);
        let start = Instant::now();
        let mut pings = 0u64;
        let ended = loop {
            if start.elapsed() >= self.duration {
                break "still open when the flood ended".to_owned();
            }
            match tokio::time::timeout(WRITE_WAIT, stream.write_all(&batch)).await {
                Ok(Ok(())) => pings += PINGS_PER_WRITE as u64,
                Ok(Err(error)) => {
                    break format!(
                        "closed by the provider after {:.1} s ({error})",
                        start.elapsed().as_secs_f64()
                    )
                }
                Err(_) => {
                    break format!("the provider stopped reading for {WRITE_WAIT:?}");
                }
            }
        };
        let mb = (pings * ping.len() as u64) as f64 / 1e6;
        Ok(vec![Check::new(
            "ping flood sent",
            pings > 0,
            format!(
                "{pings} pings ({mb:.0} MB) in {:.1} s, never read; {ended}",
                start
                    .elapsed()
                    .as_secs_f64()
                    .min(self.duration.as_secs_f64())
            ),
        )])
    }
}
