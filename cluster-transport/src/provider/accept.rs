//! Accepting: the accept loop and the life of one connection, handshake to cleanup.
//!
//! A TLS connection runs the same path on the TLS stream, after a TLS handshake that
//! shares the upgrade's time limit: an unauthenticated client gets `handshake.timeout`
//! in all, TLS and HTTP upgrade together, before it has a connection or is dropped.

use crate::connection::driver::Driver;
use crate::connection::Connection;
use crate::handshake::{self, HandshakeEnd, Upgraded};
use crate::message::CloseInfo;
use crate::provider::ProviderShared;
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
                if shared.tls.is_some() {
                    shared
                        .tracker
                        .spawn(serve_tls(stream, ip, conn_shared, permit));
                } else {
                    // Plain connections run exactly the task they ran before TLS existed.
                    shared
                        .tracker
                        .spawn(serve_connection(stream, ip, conn_shared, permit));
                }
            }
            Err(error) => {
                tracing::warn!(cause = %error, "accept failed; retrying");
                let (listeners, _) = shared.listeners();
                listeners.error(&error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracing::debug!("accept loop stopped");
}

/// One connection from its first byte to its cleanup. Generic over the stream, so plain
/// TCP, TLS and in-memory pipes share this path.
///
/// This future lives as long as the connection, so it is kept small: the handshake and
/// the cleanup run in boxed futures of their own and only the driver stays inline.
pub(crate) async fn serve_connection<S>(
    stream: S,
    ip: IpAddr,
    shared: Arc<ProviderShared>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some(mut driver) = Box::pin(open(stream, ip, &shared, None)).await else {
        return;
    };
    let info = poll_fn(|cx| driver.poll_drive(cx)).await;
    drop(permit);
    Box::pin(finish(driver, &shared, info)).await;
}

/// A TLS connection: the TLS handshake, then the same path as [`serve_connection`] on
/// the TLS stream. A separate function, so that plain connections do not carry the
/// (larger) TLS stream type in their tasks.
async fn serve_tls(
    stream: TcpStream,
    ip: IpAddr,
    shared: Arc<ProviderShared>,
    permit: OwnedSemaphorePermit,
) {
    let Some(mut driver) = Box::pin(open_tls(stream, ip, &shared)).await else {
        return;
    };
    let info = poll_fn(|cx| driver.poll_drive(cx)).await;
    drop(permit);
    Box::pin(finish(driver, &shared, info)).await;
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The TLS handshake within the handshake time limit, then [`open`] with what is left.
async fn open_tls(
    stream: TcpStream,
    ip: IpAddr,
    shared: &Arc<ProviderShared>,
) -> Option<Driver<TlsStream>> {
    let acceptor = shared.tls.clone()?;
    let deadline = Instant::now() + shared.options.handshake.timeout;
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // Plaintext clients, scanners and clients that distrust our certificate end
            // here; only they are affected, so this is not worth more than a debug line.
            tracing::debug!(peer.ip = %ip, cause = %error, "tls handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(peer.ip = %ip, "tls handshake timed out");
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
    shared: &Arc<ProviderShared>,
    deadline: Option<Instant>,
) -> Option<Driver<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let deadline = deadline.unwrap_or_else(|| Instant::now() + shared.options.handshake.timeout);
    let upgraded =
        match tokio::time::timeout_at(deadline, handshake::accept(&mut stream, ip, shared)).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(end)) => {
                log_handshake_end(shared, ip, &end);
                return None;
            }
            Err(_) => {
                tracing::debug!(peer.ip = %ip, "handshake timed out");
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
        deflate,
    );
    tracing::debug!(conn.id = %conn.id(), peer.ip = %ip, "connection open");
    shared.register(&conn);
    shared.emit_open(&conn).await;
    Some(Driver::new(
        stream,
        conn,
        Arc::clone(shared),
        leftover,
        deflate,
    ))
}

/// Unregisters, sends the FIN and emits the close event.
async fn finish<S>(driver: Driver<S>, shared: &ProviderShared, info: CloseInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut stream, conn) = driver.into_parts();
    conn.lock().closing = true;
    shared.unregister(&conn);
    // The FIN: best effort, the peer may be gone already.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    drop(stream);
    tracing::debug!(conn.id = %conn.id(), code = info.code, "connection closed");
    shared.emit_close(&conn, info).await;
}

fn log_handshake_end(shared: &ProviderShared, ip: IpAddr, end: &HandshakeEnd) {
    match end {
        HandshakeEnd::Answered(handshake::Reject::Unauthorized) => {
            tracing::warn!(peer.ip = %ip, "consumer rejected: unauthorized");
            let (listeners, _) = shared.listeners();
            listeners.debug(|| format!("rejected unauthorized upgrade from {ip}"));
        }
        HandshakeEnd::Answered(reject) => {
            tracing::debug!(peer.ip = %ip, ?reject, "http request answered")
        }
        HandshakeEnd::Alive => tracing::trace!(peer.ip = %ip, "alive answered"),
        HandshakeEnd::Refused(status) => {
            tracing::warn!(peer.ip = %ip, status, "upgrade refused by check");
        }
        HandshakeEnd::Io(error) => {
            tracing::debug!(peer.ip = %ip, cause = %error, "handshake failed")
        }
    }
}
