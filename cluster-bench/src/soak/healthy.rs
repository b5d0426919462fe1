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
const ECHO_WAIT: Duration = Duration::from_secs(2);
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
            Ok(true) => shared.window().round_trips.push(sent.elapsed()),
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
