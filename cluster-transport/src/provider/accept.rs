//! Accepting: the accept loop and the life of one connection, handshake to cleanup.
//!
//! A TLS connection runs the same path on the TLS stream, after a TLS handshake that
//! shares the upgrade's time limit: an unauthenticated client gets `handshake.timeout`
//! in all, TLS and HTTP upgrade together, before it has a connection or is dropped.

use super::handler::ConnectionHandler;
use super::refusals::Refusal;
use super::shared::ProviderShared;
use crate::connection::Connection;
use crate::driver::Driver;
use crate::handshake::{self, HandshakeEnd, Upgraded};
use crate::message::close_reason::{
    BACKPRESSURE_EXCEEDED, DESTROYED, HEARTBEAT_TIMEOUT, SHUTTING_DOWN,
};
use crate::message::{close_code, CloseInfo};
use crate::protocol::{self, Reader, Role};
use crate::stats::{ConnectResult, DisconnectReason};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Accepts until the provider stops. A failed accept (out of file descriptors, say) is
/// retried with backoff; it never ends the provider.
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<ProviderShared>) {
    let slots = Arc::new(Semaphore::new(shared.options.max_connections));
    let mut backoff = Duration::from_millis(1);
    loop {
        let permit = tokio::select! {
            _ = shared.stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(1);
                // Small frames go out at once; batching happens in the outbox instead.
                let _ = stream.set_nodelay(true);
                let ip = addr.ip().to_canonical();
                // No span per connection: a span costs bytes for the connection's whole
                // life; events carry `conn.id` and `peer.ip` fields instead.
                let conn_shared = Arc::clone(&shared);
                match &shared.tls {
                    #[cfg(feature = "tls")]
                    Some(_) => {
                        shared
                            .tracker
                            .spawn(serve_tls(stream, ip, conn_shared, permit));
                    }
                    #[cfg(not(feature = "tls"))]
                    Some(never) => match *never {},
                    // Plain connections run a task without any TLS in its type.
                    None => {
                        shared
                            .tracker
                            .spawn(serve_connection(stream, ip, conn_shared, permit));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(cause = %error, "accept failed; retrying");
                shared.listeners().error(&error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracing::debug!("accept loop stopped");
}

/// One connection from its first byte to its cleanup, as a task: the handshake, the
/// driver, then the cleanup. Generic over the stream, so plain TCP, TLS and in-memory
/// pipes share this path.
///
/// A future written by hand rather than an `async fn`: it lives as long as the
/// connection, and while the connection lives it holds only the driver and what cleanup
/// needs (an `async fn` kept about 110 bytes more per connection, which put the task in a
/// larger allocation class). The handshake and the cleanup are boxed futures of their own.
struct ServeConnection<S> {
    stage: Stage<S>,
}

type BoxedFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

enum Stage<S> {
    /// The TLS and HTTP handshakes, registration and the open event.
    Opening {
        open: BoxedFuture<Option<ConnectionDriver<S>>>,
        shared: Arc<ProviderShared>,
        permit: OwnedSemaphorePermit,
    },
    /// The connection's life.
    Driving {
        driver: ConnectionDriver<S>,
        shared: Arc<ProviderShared>,
        /// Holds the connection's slot under `max_connections` until it ends.
        _permit: OwnedSemaphorePermit,
    },
    /// Unregistering, the FIN and the close event.
    Finishing(BoxedFuture<()>),
    Done,
}

impl<S> ServeConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(
        open: BoxedFuture<Option<ConnectionDriver<S>>>,
        shared: Arc<ProviderShared>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            stage: Stage::Opening {
                open,
                shared,
                permit,
            },
        }
    }
}

/// A plain connection (or any stream that needs no handshake of its own).
fn serve_connection<S>(
    stream: S,
    ip: IpAddr,
    shared: Arc<ProviderShared>,
    permit: OwnedSemaphorePermit,
) -> ServeConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = Box::pin(open(stream, ip, Arc::clone(&shared), None));
    ServeConnection::new(open, shared, permit)
}

/// A TLS connection: the TLS handshake, then the same path as [`serve_connection`] on
/// the TLS stream. Plain connections do not carry the (larger) TLS stream type.
#[cfg(feature = "tls")]
fn serve_tls(
    stream: tokio::net::TcpStream,
    ip: IpAddr,
    shared: Arc<ProviderShared>,
    permit: OwnedSemaphorePermit,
) -> ServeConnection<TlsStream> {
    let open = Box::pin(open_tls(stream, ip, Arc::clone(&shared)));
    ServeConnection::new(open, shared, permit)
}

impl<S> Future for ServeConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stage = &mut self.stage;
        loop {
            match stage {
                Stage::Opening { open, .. } => {
                    let opened = ready!(open.as_mut().poll(cx));
                    let Stage::Opening { shared, permit, .. } =
                        std::mem::replace(stage, Stage::Done)
                    else {
                        return Poll::Ready(());
                    };
                    match opened {
                        Some(driver) => {
                            *stage = Stage::Driving {
                                driver,
                                shared,
                                _permit: permit,
                            }
                        }
                        None => return Poll::Ready(()),
                    }
                }
                Stage::Driving { driver, .. } => {
                    let info = ready!(driver.poll_drive(cx));
                    let Stage::Driving { driver, shared, .. } =
                        std::mem::replace(stage, Stage::Done)
                    else {
                        return Poll::Ready(());
                    };
                    // The permit goes with the connection, before its cleanup.
                    *stage = Stage::Finishing(Box::pin(finish(driver, shared, info)));
                }
                Stage::Finishing(finishing) => {
                    ready!(finishing.as_mut().poll(cx));
                    *stage = Stage::Done;
                }
                Stage::Done => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(feature = "tls")]
type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// A connection's driver on the provider's side.
type ConnectionDriver<S> = Driver<S, ConnectionHandler>;

/// The TLS handshake within the handshake time limit, then [`open`] with what is left.
#[cfg(feature = "tls")]
async fn open_tls(
    stream: tokio::net::TcpStream,
    ip: IpAddr,
    shared: Arc<ProviderShared>,
) -> Option<ConnectionDriver<TlsStream>> {
    let acceptor = shared.tls.clone()?;
    let deadline = Instant::now() + shared.options.handshake.timeout;
    let stats = &shared.context.stats;
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            stats.tls_handshake(true);
            stream
        }
        Ok(Err(error)) => {
            // Plaintext clients, scanners and clients that distrust our certificate end
            // here; only they are affected, so this is not worth more than a debug line.
            tracing::debug!(peer.ip = %ip, cause = %error, "tls handshake failed");
            stats.tls_handshake(false);
            return None;
        }
        Err(_) => {
            tracing::debug!(peer.ip = %ip, "tls handshake timed out");
            stats.tls_handshake(false);
            stats.connect(ConnectResult::TimedOut);
            return None;
        }
    };
    open(stream, ip, shared, Some(deadline)).await
}

/// Handshake, registration and the open event; `None` when no connection came of it.
/// The upgrade must be done by `deadline`, else within `handshake.timeout` from now.
async fn open<S>(
    mut stream: S,
    ip: IpAddr,
    shared: Arc<ProviderShared>,
    deadline: Option<Instant>,
) -> Option<ConnectionDriver<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let deadline = deadline.unwrap_or_else(|| Instant::now() + shared.options.handshake.timeout);
    let accepting = handshake::accept(&mut stream, ip, shared.gate());
    let upgraded = match tokio::time::timeout_at(deadline, accepting).await {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(HandshakeEnd::Http(exchange))) => {
            // Outside the time limit: a streamed answer lasts as long as it lasts.
            let timeout = shared.options.handshake.timeout;
            crate::http::respond(&mut stream, *exchange, &shared.stop, timeout).await;
            return None;
        }
        Ok(Err(end)) => {
            log_handshake_end(&shared, ip, &end);
            return None;
        }
        Err(_) => {
            tracing::debug!(peer.ip = %ip, "handshake timed out");
            shared.context.stats.connect(ConnectResult::TimedOut);
            return None;
        }
    };
    // Keep only the parameters: headers and path are dropped here, not at close.
    let Upgraded {
        request,
        leftover,
        deflate,
    } = upgraded;
    let options = &shared.options;
    let conn = Connection::new(
        ip,
        request.into_parameters(),
        options.ws.max_backpressure,
        options.heartbeat.enabled,
        deflate.map(|d| d.deflater()),
        Arc::clone(&shared.context.stats),
    );
    shared.context.stats.connect(ConnectResult::Accepted);
    tracing::debug!(conn.id = %conn.id(), peer.ip = %ip, "connection open");
    shared.register(&conn);
    shared.emit_open(&conn);
    let reader = Reader::new(
        Role::Server,
        options.ws.max_payload_length,
        deflate.map(|d| d.inflater()),
    );
    let handler = ConnectionHandler::new(conn, Arc::clone(&shared.context));
    Some(Driver::new(stream, handler, reader, leftover))
}

/// Unregisters, sends the FIN and emits the close event.
async fn finish<S>(driver: ConnectionDriver<S>, shared: Arc<ProviderShared>, info: CloseInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut stream, handler) = driver.into_parts();
    let conn = handler.connection();
    protocol::update(conn.outbox(), |outbox| outbox.set_closing());
    shared.unregister(conn);
    // The FIN: best effort, the peer may be gone already.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    drop(stream);
    tracing::debug!(conn.id = %conn.id(), code = info.code, "connection closed");
    shared
        .context
        .stats
        .disconnect(disconnect_reason(conn, &info));
    shared.emit_close(conn, info);
}

/// Why a connection ended, for the metrics: the provider's own closes by their code and
/// reason, the application's by its call, the rest by what the close said.
fn disconnect_reason(conn: &Connection, info: &CloseInfo) -> DisconnectReason {
    match (info.code, info.reason.as_str()) {
        (close_code::POLICY, HEARTBEAT_TIMEOUT) => DisconnectReason::Heartbeat,
        (close_code::POLICY, BACKPRESSURE_EXCEEDED) => DisconnectReason::Backpressure,
        (close_code::GOING_AWAY, SHUTTING_DOWN | DESTROYED) => DisconnectReason::Shutdown,
        _ if conn.closed_here() => DisconnectReason::Server,
        (close_code::TOO_BIG, _) => DisconnectReason::Payload,
        (close_code::PROTOCOL | close_code::INVALID_PAYLOAD | close_code::UNSUPPORTED_DATA, _) => {
            DisconnectReason::Protocol
        }
        _ => DisconnectReason::Client,
    }
}

fn log_handshake_end(shared: &ProviderShared, ip: IpAddr, end: &HandshakeEnd) {
    let stats = &shared.context.stats;
    match end {
        HandshakeEnd::Answered(handshake::Reject::NotFound) | HandshakeEnd::Io(_) => {}
        HandshakeEnd::Answered(handshake::Reject::Unauthorized) => {
            stats.connect(ConnectResult::Unauthorized)
        }
        HandshakeEnd::Answered(_) => stats.connect(ConnectResult::BadRequest),
        HandshakeEnd::Refused(_) => stats.connect(ConnectResult::Refused),
        HandshakeEnd::Alive | HandshakeEnd::Http(_) => {}
    }
    match end {
        HandshakeEnd::Answered(handshake::Reject::Unauthorized) => {
            // Counted and logged once per period: a flood of them must not flood the log.
            shared.refusals.record(Refusal::Unauthorized, ip);
            shared
                .listeners()
                .debug(|| format!("rejected unauthorized upgrade from {ip}"));
        }
        HandshakeEnd::Answered(reject) => {
            tracing::debug!(peer.ip = %ip, ?reject, "http request answered")
        }
        HandshakeEnd::Alive => tracing::trace!(peer.ip = %ip, "alive answered"),
        HandshakeEnd::Http(_) => tracing::trace!(peer.ip = %ip, "http route answered"),
        HandshakeEnd::Refused(status) => shared.refusals.record(Refusal::ByCheck(*status), ip),
        HandshakeEnd::Io(error) => {
            tracing::debug!(peer.ip = %ip, cause = %error, "handshake failed")
        }
    }
}
