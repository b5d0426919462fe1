//! Handshake flood: many upgrade requests with the wrong key from a crowd of concurrent
//! clients. Every one must be answered 403.

use super::wire;
use super::Check;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;

/// The key every flood request presents (the provider's is different).
const WRONG_KEY: &str = "WRONG";

/// How the phase runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flood {
    /// Upgrade requests in all.
    pub(crate) upgrades: usize,
    /// Clients sending them, each one request at a time.
    pub(crate) clients: usize,
}

/// What the flood's answers were.
#[derive(Debug, Default)]
struct Answers {
    next: AtomicUsize,
    forbidden: AtomicUsize,
    other: AtomicUsize,
    first_other: Mutex<Option<String>>,
}

impl Flood {
    /// Runs the phase against the provider on `port`.
    pub(crate) async fn run(self, port: u16) -> anyhow::Result<Vec<Check>> {
        let answers = Arc::new(Answers::default());
        let request = Arc::new(wire::upgrade_request(WRONG_KEY));
        let mut clients = JoinSet::new();
        for _ in 0..self.clients {
            let (answers, request) = (Arc::clone(&answers), Arc::clone(&request));
            clients.spawn(async move {
                while answers.next.fetch_add(1, Ordering::Relaxed) < self.upgrades {
                    match one(port, &request).await {
                        Ok(()) => answers.forbidden.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            let mut first = answers
                                .first_other
                                .lock()
                                .unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert_with(|| format!("{error:#}"));
                            answers.other.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        while clients.join_next().await.is_some() {}
        let forbidden = answers.forbidden.load(Ordering::Relaxed);
        let other = answers.other.load(Ordering::Relaxed);
        let first_other = answers
            .first_other
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(vec![Check::new(
            "every wrong-key upgrade answered 403",
            forbidden == self.upgrades,
            match first_other {
                None => format!("{forbidden} of {} answered 403", self.upgrades),
                Some(first) => format!(
                    "{forbidden} of {} answered 403, {other} not (first: {first})",
                    self.upgrades
                ),
            },
        )])
    }
}

/// One wrong-key upgrade; `Ok` when it was answered 403.
async fn one(port: u16, request: &str) -> anyhow::Result<()> {
    let mut stream = wire::connect(port).await?;
    let (head, _) = wire::exchange(&mut stream, request).await?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.starts_with("HTTP/1.1 403"), "answered {status:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_wrong_key_is_answered_403() {
        let provider = cluster_transport::Provider::builder()
            .host("127.0.0.1")
            .port(0)
            .auth_parameter("key", "RIGHT")
            .bind()
            .await
            .unwrap();
        let checks = Flood {
            upgrades: 100,
            clients: 8,
        }
        .run(provider.port())
        .await
        .unwrap();
        assert_eq!(checks[0].ok, Some(true), "{}", checks[0].detail);
        assert_eq!(checks[0].detail, "100 of 100 answered 403");
        // A provider without auth upgrades them instead: the check fails.
        let open = cluster_transport::Provider::builder()
            .host("127.0.0.1")
            .port(0)
            .bind()
            .await
            .unwrap();
        let checks = Flood {
            upgrades: 4,
            clients: 2,
        }
        .run(open.port())
        .await
        .unwrap();
        assert_eq!(checks[0].ok, Some(false));
        assert!(checks[0].detail.contains("101"), "{}", checks[0].detail);
    }
}
