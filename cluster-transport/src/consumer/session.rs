//! The consumer's one task: connect, run a session, and decide from how it ended whether
//! to reconnect (the reconnect policy of the original, with 401/403 fatal).

use super::socket::{self, Incoming, ReadError, Socket};
use super::upgrade;
use super::{ConsumerShared, ConsumerState};
use crate::connection::now_millis;
use crate::error::{ConnectError, ConnectErrorKind};
use crate::event::ConsumerEvent;
use crate::frame::OpCode;
use crate::message::{close_code, CloseInfo, MessageRef, PING, PONG, PROVIDER_HEARTBEAT_PREFIX};
use rustls::ClientConfig;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Why a session ended.
enum ExitReason {
    /// The connection dropped or the provider closed it: reconnect.
    Disconnected(CloseInfo),
    /// `destroy()` was called: stop.
    Destroyed,
}

/// The whole life of a consumer after `connect()`.
pub(super) async fn run(shared: Arc<ConsumerShared>) {
    let end = match tls_connector(&shared).await {
        Ok(connector) => connect_loop(&shared, connector.as_ref()).await,
        Err(error) => {
            tracing::warn!(cause = %error, "tls setup failed");
            shared.error(&error);
            error
        }
    };
    shared.set_state(ConsumerState::Closed(end));
    shared.emit(ConsumerEvent::Close).await;
}

/// The TLS configuration for `ssl`, built once per consumer (it reads files: the CA file
/// or the system's roots) on a blocking thread.
async fn tls_connector(shared: &ConsumerShared) -> Result<Option<Arc<ClientConfig>>, ConnectError> {
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

/// Connects, runs sessions and reconnects per the policy; returns why it stopped for good.
async fn connect_loop(
    shared: &ConsumerShared,
    connector: Option<&Arc<ClientConfig>>,
) -> ConnectError {
    let reconnect = shared.options.reconnect.clone();
    let mut failures = 0u32;
    loop {
        shared.in_flight.store(true, Ordering::Relaxed);
        let attempt = tokio::select! {
            _ = shared.stop.cancelled() => Err(ConnectError::new(ConnectErrorKind::Destroyed)),
            attempt = connect_once(shared, connector) => attempt,
        };
        shared.in_flight.store(false, Ordering::Relaxed);
        match attempt {
            Ok(socket) => {
                failures = 0;
                // Before `send` can see the connection: with context takeover, every
                // compressed frame must come from this session's compressor.
                shared.outbox().deflater = socket.deflate().map(|d| d.deflater());
                shared.set_state(ConsumerState::Connected);
                shared.debug(|| "connected".to_owned());
                shared.emit(ConsumerEvent::Open).await;
                let exit = session(shared, socket).await;
                {
                    let mut outbox = shared.outbox();
                    outbox.frames.clear();
                    outbox.deflater = None;
                }
                match exit {
                    ExitReason::Destroyed => return ConnectError::new(ConnectErrorKind::Destroyed),
                    ExitReason::Disconnected(info) => {
                        shared.set_state(ConsumerState::Connecting);
                        shared.debug(|| format!("disconnected: {} {}", info.code, info.reason));
                        shared.emit(ConsumerEvent::Disconnect(info)).await;
                    }
                }
            }
            Err(error) if error.kind() == ConnectErrorKind::Destroyed => return error,
            Err(error) if error.is_fatal() => {
                tracing::warn!(cause = %error, "connection refused for good");
                shared.error(&error);
                return error;
            }
            Err(error) => {
                failures += 1;
                tracing::debug!(cause = %error, failures, "connect attempt failed");
                shared.error(&error);
                shared
                    .emit(ConsumerEvent::Disconnect(CloseInfo::new(
                        close_code::ABNORMAL,
                        error.to_string(),
                    )))
                    .await;
                if failures > reconnect.max_attempts {
                    return ConnectError::new(ConnectErrorKind::MaxAttempts)
                        .with_detail(format!("{failures} attempts, last: {error}"))
                        .with_source(error);
                }
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return ConnectError::new(ConnectErrorKind::Destroyed),
            _ = tokio::time::sleep(reconnect.interval) => {}
        }
    }
}

async fn connect_once(
    shared: &ConsumerShared,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Socket, ConnectError> {
    let connecting = upgrade::connect(&shared.options, tls);
    match tokio::time::timeout(shared.options.connect_timeout, connecting).await {
        Err(_) => Err(ConnectError::new(ConnectErrorKind::TimedOut)),
        Ok(result) => result,
    }
}

/// One connection, until it drops or the consumer is destroyed.
async fn session(shared: &ConsumerShared, mut socket: Socket) -> ExitReason {
    let mut watchdog: Option<Instant> = None;
    // One timer for the whole session, moved when a PING arrives (not one per frame).
    let silence = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(silence);
    let mut listeners = shared.cached_listeners();
    // The outbox's frames are swapped with this buffer to be written: two buffers, reused.
    let mut batch = Vec::new();
    loop {
        if let Some(at) = watchdog {
            if silence.deadline() != at {
                silence.as_mut().reset(at);
            }
        }
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => {
                // What was sent before the destroy still goes out, then the close frame.
                let _ = tokio::time::timeout(Duration::from_secs(1), flush_outbox(shared, &mut socket, &mut batch)).await;
                let closing = socket.close(close_code::NORMAL, "consumer destroyed");
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
                return ExitReason::Destroyed;
            }
            _ = shared.outbox_ready.notified() => {
                let dropping = shared.drop_request.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(info) = dropping {
                    let closing = socket.close(info.code, &info.reason);
                    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
                    return ExitReason::Disconnected(info);
                }
                // Let other tasks queue more first: one write for many sends.
                tokio::task::yield_now().await;
                if let Err(e) = flush_outbox(shared, &mut socket, &mut batch).await {
                    return ExitReason::Disconnected(CloseInfo::new(close_code::ABNORMAL, e.to_string()));
                }
            }
            first = socket.read() => {
                // Handle every message already read before going back to the select: one
                // pass through it per batch, not per message (bounded, for fairness).
                let mut next = Some(first);
                let mut handled = 0;
                let mut reply = false;
                while let Some(result) = next.take() {
                    let message = match result {
                        Ok(m) => m,
                        Err(e) => return ExitReason::Disconnected(fail(&mut socket, e).await),
                    };
                    match handle(shared, &mut listeners, &mut watchdog, message).await {
                        Handled::Continue => {}
                        Handled::Reply => reply = true,
                        Handled::Closed(info) => {
                            // Finish the close handshake: our reply is pending.
                            let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_pending()).await;
                            return ExitReason::Disconnected(info);
                        }
                    }
                    handled += 1;
                    if handled < 64 {
                        next = socket.read_buffered();
                    }
                }
                if reply || socket.has_pending() {
                    if let Err(e) = flush_outbox(shared, &mut socket, &mut batch).await {
                        return ExitReason::Disconnected(CloseInfo::new(close_code::ABNORMAL, e.to_string()));
                    }
                }
            }
            _ = &mut silence, if watchdog.is_some() => {
                tracing::warn!("no heartbeat from the provider; reconnecting");
                return ExitReason::Disconnected(CloseInfo::new(close_code::ABNORMAL, "heartbeat timeout"));
            }
        }
    }
}

/// What handling one message asks of the session.
enum Handled {
    Continue,
    /// A reply (`PONG`) was queued: flush.
    Reply,
    /// The provider closed the connection.
    Closed(CloseInfo),
}

/// Handles one message from the provider.
async fn handle(
    shared: &ConsumerShared,
    listeners: &mut (std::sync::Arc<super::ConsumerListeners>, u64),
    watchdog: &mut Option<Instant>,
    message: Incoming<'_>,
) -> Handled {
    match message {
        Incoming::Text(text) => {
            if text == PING {
                shared.last_heartbeat.store(now_millis(), Ordering::Relaxed);
                *watchdog = watchdog_deadline(shared.heartbeat_duration.load(Ordering::Relaxed));
                let mut outbox = shared.outbox();
                let super::Outbox {
                    frames,
                    deflater,
                    scratch,
                } = &mut *outbox;
                socket::encode_message(
                    OpCode::Text,
                    PONG.as_bytes(),
                    deflater.as_mut(),
                    scratch,
                    frames,
                );
                return Handled::Reply;
            }
            if let Some(ms) = text.strip_prefix(PROVIDER_HEARTBEAT_PREFIX) {
                if let Ok(ms) = ms.parse::<u64>() {
                    shared.heartbeat_duration.store(ms, Ordering::Relaxed);
                    shared.last_heartbeat.store(now_millis(), Ordering::Relaxed);
                    *watchdog = watchdog_deadline(ms);
                }
            } else {
                shared.refresh(listeners);
                shared
                    .emit_message(&listeners.0, MessageRef::Text(text))
                    .await;
            }
        }
        Incoming::Binary(bytes) => {
            shared.refresh(listeners);
            shared
                .emit_message(&listeners.0, MessageRef::Binary(bytes))
                .await;
        }
        Incoming::Close(info) => return Handled::Closed(info),
    }
    Handled::Continue
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

/// Writes everything queued, one write per batch, after pending control frames.
async fn flush_outbox(
    shared: &ConsumerShared,
    socket: &mut Socket,
    batch: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        batch.clear();
        std::mem::swap(&mut shared.outbox().frames, batch);
        if batch.is_empty() {
            return socket.write_pending().await;
        }
        socket.write(batch).await?;
    }
}

/// Fails the connection after a read error: a close frame with the code that says why
/// (invalid UTF-8 1007, protocol 1002, too big 1009) when the socket still takes one.
async fn fail(socket: &mut Socket, error: ReadError) -> CloseInfo {
    match error {
        ReadError::Protocol(code, reason) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.fail(code, reason)).await;
            CloseInfo::new(code, reason)
        }
        ReadError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            CloseInfo::new(close_code::ABNORMAL, "")
        }
        ReadError::Io(e) => CloseInfo::new(close_code::ABNORMAL, e.to_string()),
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
