//! The consumer's one task: connect, run a session, and decide from how it ended whether
//! to reconnect (the reconnect policy of the original, with 401/403 fatal), and where:
//! with several hosts, each in turn (see [`hosts`](super::hosts)).

use super::buffer;
use super::hosts::{self, Endpoint};
use super::upgrade::{self, ClientStream, TlsConnector, Upgraded};
use super::{ConsumerListeners, ConsumerShared, ConsumerState};
use crate::connection::now_millis;
use crate::driver::{Driver, Handler};
use crate::error::{ConnectError, ConnectErrorKind};
use crate::event::{Cached, ConsumerEvent};
use crate::message::{close_code, CloseInfo, MessageRef, PING, PONG, PROVIDER_HEARTBEAT_PREFIX};
use crate::protocol::{self, CloseMode, CloseRequest, Outbox, Overflow, Reader, Role};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

/// How long a close the consumer starts (destroy, `reconnect`) waits for the provider's
/// close frame, and how long a destroy may take in all.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session ended.
enum ExitReason {
    /// The connection dropped or the provider closed it: reconnect.
    Disconnected(CloseInfo),
    /// `destroy()` was called: stop.
    Destroyed,
}

/// The whole life of a consumer after `connect()`.
pub(super) async fn run(shared: Arc<ConsumerShared>) {
    let setup = match hosts::endpoints(&shared.options) {
        Ok(endpoints) => tls_connector(&shared).await.map(|tls| (endpoints, tls)),
        Err(error) => Err(error),
    };
    let end = match setup {
        Ok((endpoints, connector)) => connect_loop(&shared, &endpoints, connector.as_ref()).await,
        Err(error) => {
            tracing::warn!(cause = %error, "consumer setup failed");
            shared.error(&error);
            error
        }
    };
    // Nothing is kept for a connection that will never come.
    let dropped = {
        let _outbox = protocol::lock(&shared.outbox);
        buffer::lock(&shared.buffer).close()
    };
    if dropped > 0 {
        tracing::warn!(
            messages = dropped,
            "consumer closed for good; buffered messages dropped"
        );
    }
    shared.set_state(ConsumerState::Closed(end));
    shared.emit(ConsumerEvent::Close);
}

/// The TLS configuration for `ssl`, built once per consumer (it reads files: the CA file
/// or the system's roots) on a blocking thread.
#[cfg(feature = "tls")]
async fn tls_connector(shared: &ConsumerShared) -> Result<Option<TlsConnector>, ConnectError> {
    if !shared.options.ssl {
        return Ok(None);
    }
    let ca = shared.options.ca.clone();
    let config = tokio::task::spawn_blocking(move || crate::tls::client_config(ca.as_deref()))
        .await
        .map_err(|e| {
            ConnectError::new(ConnectErrorKind::Tls)
                .with_detail("loading root certificates failed")
                .with_source(e)
        })??;
    Ok(Some(config))
}

/// Without the `tls` feature, options asking for TLS fail the connect for good.
#[cfg(not(feature = "tls"))]
async fn tls_connector(shared: &ConsumerShared) -> Result<Option<TlsConnector>, ConnectError> {
    if shared.options.ssl {
        return Err(ConnectError::new(ConnectErrorKind::Tls)
            .with_detail("ssl is set, but cluster-transport was built without its `tls` feature"));
    }
    Ok(None)
}

/// Connects, runs sessions and reconnects per the policy; returns why it stopped for good.
///
/// Attempts go in rounds: each host once, in order, back to back, until one opens. The
/// reconnect policy's wait comes after a drop and after a round in which every host
/// failed, and `max_attempts` counts failed rounds (with one host, a round is one
/// attempt: the seed's policy). After a drop, the next round starts with the host after
/// the one that dropped.
async fn connect_loop(
    shared: &ConsumerShared,
    endpoints: &[Endpoint],
    connector: Option<&TlsConnector>,
) -> ConnectError {
    let reconnect = &shared.options.reconnect;
    // Failed rounds in a row, for `max_attempts`.
    let mut failures = 0u32;
    // Waits since the last open; the backoff grows with them, so the first wait after a
    // drop or a failed first connect is at most one interval.
    let mut waits = 0u32;
    // The host to try next.
    let mut next = 0usize;
    loop {
        let mut last_error = None;
        for _ in 0..endpoints.len() {
            let Some(endpoint) = endpoints.get(next) else {
                break;
            };
            next = (next + 1) % endpoints.len();
            shared.in_flight.store(true, Ordering::Relaxed);
            let attempt = tokio::select! {
                _ = shared.stop.cancelled() => Err(ConnectError::new(ConnectErrorKind::Destroyed)),
                attempt = connect_once(shared, endpoint, connector) => attempt,
            };
            shared.in_flight.store(false, Ordering::Relaxed);
            match attempt {
                Ok(upgraded) => {
                    failures = 0;
                    waits = 0;
                    last_error = None;
                    match session(shared, endpoint, upgraded).await {
                        ExitReason::Destroyed => {
                            return ConnectError::new(ConnectErrorKind::Destroyed)
                        }
                        ExitReason::Disconnected(info) => {
                            shared.set_state(ConsumerState::Connecting);
                            shared.debug(|| {
                                format!(
                                    "disconnected from {endpoint}: {} {}",
                                    info.code, info.reason
                                )
                            });
                            shared.emit(ConsumerEvent::Disconnect(info));
                        }
                    }
                    break;
                }
                Err(error) if error.kind() == ConnectErrorKind::Destroyed => return error,
                Err(error) if error.is_fatal() => {
                    tracing::warn!(server = %endpoint, cause = %error, "connection refused for good");
                    shared.error(&error);
                    return error;
                }
                Err(error) => {
                    tracing::debug!(server = %endpoint, cause = %error, failures, "connect attempt failed");
                    shared.error(&error);
                    shared.emit(ConsumerEvent::Disconnect(CloseInfo::new(
                        close_code::ABNORMAL,
                        error.to_string(),
                    )));
                    last_error = Some(error);
                }
            }
        }
        if let Some(error) = last_error {
            failures = failures.saturating_add(1);
            if failures > reconnect.max_attempts {
                return ConnectError::new(ConnectErrorKind::MaxAttempts)
                    .with_detail(format!("{failures} attempts, last: {error}"))
                    .with_source(error);
            }
        }
        waits = waits.saturating_add(1);
        let wait = reconnect.delay(waits);
        tokio::select! {
            _ = shared.stop.cancelled() => return ConnectError::new(ConnectErrorKind::Destroyed),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn connect_once(
    shared: &ConsumerShared,
    endpoint: &Endpoint,
    tls: Option<&TlsConnector>,
) -> Result<Upgraded, ConnectError> {
    let connecting = upgrade::connect(&shared.options, endpoint, tls);
    match tokio::time::timeout(shared.options.connect_timeout, connecting).await {
        Err(_) => Err(ConnectError::new(ConnectErrorKind::TimedOut)
            .with_detail(format!("connecting to {endpoint}"))),
        Ok(result) => result,
    }
}

/// One connection, from the open event until it drops or the consumer is destroyed.
async fn session(shared: &ConsumerShared, endpoint: &Endpoint, upgraded: Upgraded) -> ExitReason {
    let Upgraded {
        stream,
        leftover,
        deflate,
    } = upgraded;
    // Before `send` can see the connection: with context takeover, every compressed
    // frame must come from this connection's compressor. What was buffered while
    // reconnecting goes first, under the same lock, so no new send can pass it.
    let flushed = {
        let mut outbox = protocol::lock(&shared.outbox);
        *outbox = Outbox::new(
            Role::Client,
            Overflow::Refuse,
            shared.options.max_backpressure,
            deflate.map(|d| d.deflater()),
        );
        buffer::lock(&shared.buffer).flush_into(&mut outbox)
    };
    shared.set_connected(endpoint);
    tracing::debug!(server = %endpoint, buffered = flushed, "consumer connected");
    shared.debug(|| format!("connected to {endpoint}"));
    shared.emit(ConsumerEvent::Open);
    let reader = Reader::new(
        Role::Client,
        shared.options.max_payload_length,
        deflate.map(|d| d.inflater()),
    );
    let handler = SessionHandler {
        shared,
        listeners: shared.listeners.cached(),
        watchdog: None,
    };
    let mut driver = Driver::new(stream, handler, reader, leftover);
    let exit = drive(shared, &mut driver).await;
    // Sends between now and the next connection are refused.
    *protocol::lock(&shared.outbox) = shared.closed_outbox();
    let (mut stream, _) = driver.into_parts();
    // The FIN: best effort, the provider may be gone already.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    exit
}

type SessionDriver<'a> = Driver<ClientStream, SessionHandler<'a>>;

/// Runs the connection until it ends, the heartbeat watchdog fires, or the consumer is
/// destroyed (then closes it, within [`CLOSE_TIMEOUT`] in all).
async fn drive(shared: &ConsumerShared, driver: &mut SessionDriver<'_>) -> ExitReason {
    // One timer for the whole session, moved when a PING arrives (not one per frame).
    let mut silence = Box::pin(tokio::time::sleep(Duration::from_secs(86_400)));
    let mut destroyed: Option<Pin<Box<Sleep>>> = None;
    let stopped = shared.stop.cancelled();
    tokio::pin!(stopped);
    poll_fn(|cx| loop {
        if let Poll::Ready(info) = driver.poll_drive(cx) {
            return Poll::Ready(match destroyed {
                Some(_) => ExitReason::Destroyed,
                None => ExitReason::Disconnected(info),
            });
        }
        match &mut destroyed {
            Some(deadline) => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(ExitReason::Destroyed);
                }
            }
            None => {
                if stopped.as_mut().poll(cx).is_ready() {
                    // What was sent before the destroy still goes out, then the close frame.
                    let request = CloseRequest::new(
                        close_code::NORMAL,
                        "consumer destroyed",
                        CloseMode::Graceful,
                    );
                    protocol::update(&shared.outbox, |outbox| outbox.request_close(request));
                    destroyed = Some(Box::pin(tokio::time::sleep(CLOSE_TIMEOUT)));
                    continue;
                }
            }
        }
        if let Some(at) = driver.handler().watchdog {
            if silence.deadline() != at {
                silence.as_mut().reset(at);
            }
            if silence.as_mut().poll(cx).is_ready() {
                tracing::warn!("no heartbeat from the provider; reconnecting");
                return Poll::Ready(ExitReason::Disconnected(CloseInfo::new(
                    close_code::ABNORMAL,
                    crate::message::close_reason::HEARTBEAT_TIMEOUT,
                )));
            }
        }
        return Poll::Pending;
    })
    .await
}

/// The consumer's side of the connection's driver: answers the heartbeat, delivers the
/// rest.
struct SessionHandler<'a> {
    shared: &'a ConsumerShared,
    listeners: Cached<ConsumerListeners>,
    /// When the watchdog fires if no `PING` comes first.
    watchdog: Option<Instant>,
}

impl Handler for SessionHandler<'_> {
    fn outbox(&self) -> &Mutex<Outbox> {
        &self.shared.outbox
    }

    fn close_timeout(&self) -> Duration {
        CLOSE_TIMEOUT
    }

    fn message(&mut self, message: MessageRef<'_>) {
        let shared = self.shared;
        match message {
            MessageRef::Text(PING) => {
                shared.last_heartbeat.store(now_millis(), Ordering::Relaxed);
                self.watchdog =
                    watchdog_deadline(shared.heartbeat_duration.load(Ordering::Relaxed));
                // The owner task queues its own reply: no one to wake.
                if let Err(error) =
                    protocol::lock(&shared.outbox).push_message(MessageRef::Text(PONG))
                {
                    tracing::debug!(cause = %error, "heartbeat PONG not queued");
                }
            }
            MessageRef::Text(text) if text.starts_with(PROVIDER_HEARTBEAT_PREFIX) => {
                let ms = text
                    .get(PROVIDER_HEARTBEAT_PREFIX.len()..)
                    .unwrap_or_default();
                if let Ok(ms) = ms.parse::<u64>() {
                    shared.heartbeat_duration.store(ms, Ordering::Relaxed);
                    shared.last_heartbeat.store(now_millis(), Ordering::Relaxed);
                    self.watchdog = watchdog_deadline(ms);
                }
            }
            message => {
                shared.listeners.refresh(&mut self.listeners);
                shared.emit_message(&self.listeners.0, message);
            }
        }
    }
}

/// When the watchdog fires if no `PING` comes: twice the interval the provider announced
/// (`PROVIDER_HEARTBEAT|<ms>`). The number comes from the network, and `Instant + Duration`
/// panics where the sum does not fit (sooner on platforms with a narrower `Instant` than
/// Linux's): a deadline that cannot be represented means no watchdog.
fn watchdog_deadline(heartbeat_ms: u64) -> Option<Instant> {
    match heartbeat_ms {
        0 => None,
        ms => Instant::now().checked_add(Duration::from_millis(ms).saturating_mul(2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any interval a provider announces gives a deadline or none, never a panic.
    #[tokio::test]
    async fn any_heartbeat_interval_gives_a_deadline_or_none() {
        assert!(watchdog_deadline(0).is_none());
        assert!(watchdog_deadline(1000).is_some());
        for ms in [u64::MAX, u64::MAX / 2 + 1, u64::MAX / 1000] {
            let _ = watchdog_deadline(ms);
        }
    }
}
