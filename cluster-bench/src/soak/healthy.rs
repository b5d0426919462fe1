//! The healthy consumer: one `cluster_transport::Consumer` on a thread and runtime of its
//! own, echoing a message through the provider every [`ECHO_EVERY`] for the whole soak.
//! Each phase takes the round trips, disconnects and unanswered echoes of its window.

use cluster_transport::{Consumer, ConsumerEvent, EventStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time between two echoes.
const ECHO_EVERY: Duration = Duration::from_millis(10);
/// An echo not back by then counts as missed.
pub(crate) const ECHO_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for the first connect.
const CONNECT_WAIT: Duration = Duration::from_secs(20);

/// What the healthy consumer saw in one window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    /// Round trips that came back.
    pub(crate) round_trips: Vec<Duration>,
    /// Times the connection dropped.
    pub(crate) disconnects: u32,
    /// Echoes that did not come back within [`ECHO_WAIT`].
    pub(crate) missed: u32,
}

#[derive(Debug, Default)]
struct Shared {
    window: Mutex<Window>,
    stop: AtomicBool,
    /// Told after each round trip.
    measured: tokio::sync::Notify,
}

impl Shared {
    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The healthy consumer, running.
#[derive(Debug)]
pub(crate) struct Healthy {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Healthy {
    /// Connects to the provider on `port` presenting `key=<key>`, then echoes until
    /// dropped.
    ///
    /// # Errors
    ///
    /// The first connect failed.
    pub(crate) async fn start(port: u16, key: &str) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let consumer = Consumer::builder()
            .host("127.0.0.1")
            .port(port)
            .parameter("key", key)
            .build();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("healthy-consumer".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = ready_tx.send(Err(anyhow::Error::from(error)));
                            return;
                        }
                    };
                    runtime.block_on(echo_loop(consumer, shared, ready_tx));
                })?
        };
        tokio::time::timeout(CONNECT_WAIT, ready_rx)
            .await
            .map_err(|_| anyhow::anyhow!("the healthy consumer did not connect in time"))?
            .map_err(|_| anyhow::anyhow!("the healthy consumer's thread ended"))??;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Returns once the current window holds at least `n` round trips, or after `limit`
    /// (a provider that stopped answering leaves the window short, and the phase fails).
    /// A phase over in less than an echo's interval would otherwise measure nothing.
    pub(crate) async fn until_round_trips(&self, n: usize, limit: Duration) {
        let enough = async {
            loop {
                let measured = self.shared.measured.notified();
                tokio::pin!(measured);
                measured.as_mut().enable();
                if self.shared.window().round_trips.len() >= n {
                    return;
                }
                measured.await;
            }
        };
        let _ = tokio::time::timeout(limit, enough).await;
    }

    /// What it saw since the last call, and starts a new window.
    pub(crate) fn take_window(&self) -> Window {
        std::mem::take(&mut *self.shared.window())
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects, says so on `ready`, then echoes until told to stop.
async fn echo_loop(
    consumer: Consumer,
    shared: Arc<Shared>,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) {
    let mut events = consumer.events();
    if let Err(error) = consumer.connect().await {
        let _ = ready.send(Err(error.into()));
        return;
    }
    let _ = ready.send(Ok(()));
    let mut ticks = tokio::time::interval(ECHO_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        seq += 1;
        let text = format!("healthy {seq}");
        let sent = Instant::now();
        if consumer.send(text.as_str()).is_err() {
            // Not connected (it reconnects by itself): the drop was counted already.
            shared.window().missed += 1;
            continue;
        }
        match tokio::time::timeout(ECHO_WAIT, echo_of(&text, &mut events, &shared)).await {
            Ok(true) => {
                shared.window().round_trips.push(sent.elapsed());
                shared.measured.notify_waiters();
            }
            Ok(false) | Err(_) => shared.window().missed += 1,
        }
    }
    consumer.shutdown().await;
}

/// Waits for the echo of `text`; counts a disconnect on the way. `false` when the
/// connection dropped first.
async fn echo_of(text: &str, events: &mut EventStream<ConsumerEvent>, shared: &Shared) -> bool {
    while let Some(event) = events.recv().await {
        match event {
            ConsumerEvent::Message(message) if message.as_text() == Some(text) => return true,
            ConsumerEvent::Disconnect(_) => {
                shared.window().disconnects += 1;
                return false;
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider on a free port that echoes (`echo` on) or stays silent.
    async fn provider(echo: bool) -> cluster_transport::Provider {
        cluster_transport::Provider::builder()
            .host("127.0.0.1")
            .port(0)
            .auth_parameter("key", "K")
            .on_message(move |conn, message| {
                if echo {
                    let _ = conn.send(message);
                }
            })
            .bind()
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_waits_for_its_round_trips_and_no_longer_than_its_limit() {
        let echoing = provider(true).await;
        let healthy = Healthy::start(echoing.port(), "K").await.unwrap();
        healthy.take_window();
        let started = Instant::now();
        healthy.until_round_trips(3, Duration::from_secs(10)).await;
        assert!(healthy.take_window().round_trips.len() >= 3);
        // Woken by the round trips, not by the limit.
        assert!(started.elapsed() < Duration::from_secs(5));

        // Nobody answers: the wait ends at its limit with the window short.
        let silent = provider(false).await;
        let unanswered = Healthy::start(silent.port(), "K").await.unwrap();
        let started = Instant::now();
        unanswered
            .until_round_trips(1, Duration::from_millis(300))
            .await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(unanswered.take_window().round_trips.is_empty());
    }
}
