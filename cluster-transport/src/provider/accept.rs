//! Accepting: the accept loop and the life of one connection, handshake to cleanup.

use crate::connection::driver::Driver;
use crate::connection::Connection;
use crate::handshake::{self, HandshakeEnd};
use crate::provider::ProviderShared;
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

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
                let span = tracing::debug_span!("conn", peer.addr = %addr);
                shared.tracker.spawn(
                    serve_connection(stream, ip, Arc::clone(&shared), permit).instrument(span),
                );
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
pub(crate) async fn serve_connection<S>(
    mut stream: S,
    ip: IpAddr,
    shared: Arc<ProviderShared>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Boxed: the handshake's state is large and must not stay in this future for the
    // connection's whole life.
    let limit = shared.options.handshake.timeout;
    let handshake = Box::pin(tokio::time::timeout(
        limit,
        handshake::accept(&mut stream, ip, &shared),
    ))
    .await;
    let upgraded = match handshake {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(end)) => {
            log_handshake_end(&shared, ip, &end);
            return;
        }
        Err(_) => {
            tracing::debug!(peer.ip = %ip, "handshake timed out");
            return;
        }
    };
    let options = &shared.options;
    let conn = Connection::new(
        ip,
        upgraded.request.parameters,
        options.ws.max_backpressure,
        options.heartbeat.enabled,
    );
    shared.register(&conn);
    Box::pin(shared.emit_open(&conn)).await;
    let mut driver = Driver::new(stream, conn.clone(), Arc::clone(&shared), upgraded.leftover);
    let info = poll_fn(|cx| driver.poll_drive(cx)).await;
    conn.lock().closing = true;
    shared.unregister(&conn);
    drop(permit);
    let mut stream = driver.into_stream();
    // The FIN: best effort, the peer may be gone already.
    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), stream.shutdown())).await;
    drop(stream);
    tracing::debug!(conn.id = %conn.id(), code = info.code, "connection closed");
    Box::pin(shared.emit_close(&conn, info)).await;
}

fn log_handshake_end(shared: &ProviderShared, ip: IpAddr, end: &HandshakeEnd) {
    match end {
        HandshakeEnd::Answered(handshake::Reject::Unauthorized) => {
            tracing::warn!(peer.ip = %ip, "consumer rejected: unauthorized");
            let (listeners, _) = shared.listeners();
            listeners.debug(|| format!("rejected unauthorized upgrade from {ip}"));
        }
        HandshakeEnd::Answered(reject) => tracing::debug!(peer.ip = %ip, ?reject, "http request answered"),
        HandshakeEnd::Alive => tracing::trace!(peer.ip = %ip, "alive answered"),
        HandshakeEnd::Io(error) => tracing::debug!(peer.ip = %ip, cause = %error, "handshake failed"),
    }
}
