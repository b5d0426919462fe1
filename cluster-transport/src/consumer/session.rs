//! The consumer's one task: connect, run a session, and decide from how it ended whether
//! to reconnect (the reconnect policy of the original, with 401/403 fatal).

use super::{ConsumerShared, ConsumerState};
use crate::connection::now_millis;
use crate::error::{ConnectError, ConnectErrorKind};
use crate::event::ConsumerEvent;
use crate::message::{close_code, CloseInfo, MessageRef, PING, PONG, PROVIDER_HEARTBEAT_PREFIX};
use crate::query::encode_query;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
async fn tls_connector(shared: &ConsumerShared) -> Result<Option<Connector>, ConnectError> {
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
    Ok(Some(Connector::Rustls(config)))
}

/// Connects, runs sessions and reconnects per the policy; returns why it stopped for good.
async fn connect_loop(shared: &ConsumerShared, connector: Option<&Connector>) -> ConnectError {
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
                shared.set_state(ConsumerState::Connected);
                shared.debug(|| "connected".to_owned());
                shared.emit(ConsumerEvent::Open).await;
                let exit = session(shared, socket).await;
                {
                    let mut outbox = shared.outbox();
                    outbox.queue.clear();
                    outbox.bytes = 0;
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

/// The URL the original consumer would connect to.
pub(crate) fn url(options: &crate::ConsumerOptions, scheme: &str) -> String {
    let host = if options.host.contains(':') && !options.host.starts_with('[') {
        format!("[{}]", options.host)
    } else {
        options.host.clone()
    };
    format!(
        "{scheme}://{host}:{}{}{}",
        options.port,
        options.path,
        encode_query(&options.parameters)
    )
}

async fn connect_once(
    shared: &ConsumerShared,
    connector: Option<&Connector>,
) -> Result<Socket, ConnectError> {
    let options = &shared.options;
    let scheme = if connector.is_some() { "wss" } else { "ws" };
    let request = url(options, scheme).into_client_request().map_err(|e| {
        ConnectError::new(ConnectErrorKind::Io)
            .with_detail("invalid url")
            .with_source(e)
    })?;
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 32 * 1024;
    // Frames queued together go out in one write (flushed at the end of each batch).
    config.write_buffer_size = 64 * 1024;
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(connector.cloned().unwrap_or(Connector::Plain)),
    );
    match tokio::time::timeout(options.connect_timeout, connecting).await {
        Err(_) => Err(ConnectError::new(ConnectErrorKind::TimedOut)),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(error)) => Err(classify(error, connector.is_some())),
    }
}

/// Maps a tungstenite handshake error to a connect error kind.
fn classify(error: tungstenite::Error, tls: bool) -> ConnectError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            // 401/403 (auth) and the refusals of an upgrade check (other 4xx but a
            // timeout or a rate limit) cannot be fixed by trying again.
            let code = status.as_u16();
            let fatal = (400..500).contains(&code) && code != 404 && code != 408 && code != 429;
            let kind = if fatal {
                ConnectErrorKind::Rejected
            } else {
                ConnectErrorKind::Io
            };
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .filter(|b| !b.is_empty() && code != 401 && code != 403);
            let detail = match body {
                Some(body) => format!("unexpected server response: {status}: {body}"),
                None => format!("unexpected server response: {status}"),
            };
            ConnectError::new(kind).with_detail(detail)
        }
        tungstenite::Error::Io(e) => match crate::tls::rustls_error(&e) {
            Some(tls) => crate::tls::handshake_error(tls),
            None => ConnectError::new(ConnectErrorKind::Io)
                .with_detail(e.to_string())
                .with_source(e),
        },
        tungstenite::Error::Tls(e) => ConnectError::new(ConnectErrorKind::Tls)
            .with_detail(e.to_string())
            .with_source(e),
        // What a plaintext request gets from a TLS port: a TLS alert where HTTP should be.
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::HttparseError(_))
            if !tls =>
        {
            ConnectError::new(ConnectErrorKind::Io)
                .with_detail(format!(
                    "{error} (is the provider serving TLS? then connect with ssl)"
                ))
                .with_source(error)
        }
        other => ConnectError::new(ConnectErrorKind::Io)
            .with_detail(other.to_string())
            .with_source(other),
    }
}

/// One connection, until it drops or the consumer is destroyed.
async fn session(shared: &ConsumerShared, mut socket: Socket) -> ExitReason {
    let mut watchdog: Option<Instant> = None;
    // One timer for the whole session, moved when a PING arrives (not one per frame).
    let silence = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(silence);
    let mut listeners = shared.cached_listeners();
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
                let _ = tokio::time::timeout(Duration::from_secs(1), flush_outbox(shared, &mut socket)).await;
                close(&mut socket).await;
                return ExitReason::Destroyed;
            }
            _ = shared.outbox_ready.notified() => {
                let dropping = shared.drop_request.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(info) = dropping {
                    let frame = CloseFrame {
                        code: CloseCode::from(info.code),
                        reason: info.reason.as_str().into(),
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
                    return ExitReason::Disconnected(info);
                }
                // Let other tasks queue more first: one write for many sends.
                tokio::task::yield_now().await;
                if let Err(e) = flush_outbox(shared, &mut socket).await {
                    return ExitReason::Disconnected(CloseInfo::new(close_code::ABNORMAL, e.to_string()));
                }
            }
            frame = socket.next() => {
                // Handle every frame already read before going back to the select: one
                // pass through it per batch, not per frame (bounded, for fairness).
                let mut frame = Some(frame);
                let mut handled = 0;
                while let Some(next) = frame.take() {
                    let message = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return ExitReason::Disconnected(fail(&mut socket, e).await),
                        None => return ExitReason::Disconnected(CloseInfo::new(close_code::ABNORMAL, "")),
                    };
                    if let Some(exit) = handle(shared, &mut socket, &mut listeners, &mut watchdog, message).await {
                        return exit;
                    }
                    handled += 1;
                    if handled < 64 {
                        frame = futures_util::FutureExt::now_or_never(socket.next());
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

/// Handles one frame from the provider; `Some` ends the session.
async fn handle(
    shared: &ConsumerShared,
    socket: &mut Socket,
    listeners: &mut (std::sync::Arc<super::ConsumerListeners>, u64),
    watchdog: &mut Option<Instant>,
    message: WsMessage,
) -> Option<ExitReason> {
    match message {
        WsMessage::Text(text) => {
            let text = text.as_str();
            if text == PING {
                shared.last_heartbeat.store(now_millis(), Ordering::Relaxed);
                *watchdog = watchdog_deadline(shared.heartbeat_duration.load(Ordering::Relaxed));
                if let Err(e) = socket.send(WsMessage::text(PONG)).await {
                    return Some(ExitReason::Disconnected(CloseInfo::new(
                        close_code::ABNORMAL,
                        e.to_string(),
                    )));
                }
            } else if let Some(ms) = text.strip_prefix(PROVIDER_HEARTBEAT_PREFIX) {
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
        WsMessage::Binary(bytes) => {
            shared.refresh(listeners);
            shared
                .emit_message(&listeners.0, MessageRef::Binary(&bytes))
                .await;
        }
        WsMessage::Close(frame) => {
            let info = frame.map_or_else(
                || CloseInfo::new(close_code::NO_STATUS, ""),
                |f| CloseInfo::new(u16::from(f.code), f.reason.as_str()),
            );
            // Finish the close handshake; tungstenite queued the reply.
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.flush()).await;
            return Some(ExitReason::Disconnected(info));
        }
        // tungstenite answers pings itself (the original's uWebSockets sends them).
        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
    }
    None
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

/// Writes everything queued in one batch.
async fn flush_outbox(
    shared: &ConsumerShared,
    socket: &mut Socket,
) -> Result<(), tungstenite::Error> {
    loop {
        let batch: Vec<_> = {
            let mut outbox = shared.outbox();
            outbox.bytes = 0;
            outbox.queue.drain(..).collect()
        };
        if batch.is_empty() {
            return socket.flush().await;
        }
        for message in batch {
            let frame = match message {
                crate::Message::Text(t) => WsMessage::text(t),
                crate::Message::Binary(b) => WsMessage::binary(b),
            };
            socket.feed(frame).await?;
        }
    }
}

/// Fails the connection after a read error: a close frame with the code that says why
/// (invalid UTF-8 1007, protocol 1002, too big 1009) when the socket still takes one.
async fn fail(socket: &mut Socket, error: tungstenite::Error) -> CloseInfo {
    let code = match &error {
        tungstenite::Error::Utf8(_) => CloseCode::Invalid,
        tungstenite::Error::Protocol(_) => CloseCode::Protocol,
        tungstenite::Error::Capacity(_) => CloseCode::Size,
        _ => return CloseInfo::new(close_code::ABNORMAL, error.to_string()),
    };
    let reason = error.to_string();
    let frame = CloseFrame {
        code,
        reason: reason.as_str().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
    CloseInfo::new(u16::from(code), reason)
}

async fn close(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "consumer destroyed".into(),
    };
    let closing = async {
        socket.close(Some(frame)).await?;
        // Wait for the provider's close frame so the close handshake completes.
        while socket.next().await.is_some() {}
        Ok::<(), tungstenite::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
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

    #[test]
    fn url_like_the_original() {
        let mut options = crate::ConsumerOptions {
            port: 9000,
            ..Default::default()
        };
        assert_eq!(url(&options, "ws"), "ws://127.0.0.1:9000/connect");
        assert_eq!(url(&options, "wss"), "wss://127.0.0.1:9000/connect");
        options.parameters.insert("key".into(), "a b&c/é".into());
        options.host = "::1".into();
        assert_eq!(
            url(&options, "ws"),
            "ws://[::1]:9000/connect?key=a%20b%26c%2F%C3%A9"
        );
    }
}
