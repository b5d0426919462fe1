//! A consumer's connection as the provider sees it: identity, heartbeat state, and a cheap
//! handle for sending that never touches the socket itself.
//!
//! Sends encode the frame into the connection's [`Outbox`] under a short std mutex and
//! wake the connection's one owner task ([`Driver`](crate::driver::Driver)), which writes
//! everything queued in one batch. Bytes queued and not yet taken by the kernel count
//! against `max_backpressure`.

use crate::deflate::MessageDeflater;
use crate::error::{SendError, SendErrorKind};
use crate::frame::{self, OpCode};
use crate::message::{close_code, is_reserved, MessageRef};
use crate::protocol::{self, CloseMode, CloseRequest, Outbox, Overflow, Role};
use crate::query::Parameters;
use crate::stats::{Kind, TransportStats};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A connected consumer, as the provider's events hand it out. Cheap to clone.
///
/// Sending never waits: the message is queued and written by the connection's task.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<ConnectionShared>,
}

struct ConnectionShared {
    id: Uuid,
    ip: IpAddr,
    parameters: Parameters,
    /// When the upgrade completed, in ms since the Unix epoch.
    connected_at: u64,
    last_ping: AtomicU64,
    strikes: AtomicU32,
    alive: AtomicBool,
    /// Set by [`Connection::close`] and [`Connection::terminate`]: the application ended it.
    closed_here: AtomicBool,
    /// The provider's traffic counters.
    stats: Arc<TransportStats>,
    /// Whether `PING`/`PONG`/`PROVIDER_HEARTBEAT|…` are protocol here (heartbeat enabled).
    reserves_texts: bool,
    /// How a broadcast reaches it: fixed at the upgrade, read without the outbox's lock.
    send_path: SendPath,
    outbox: Mutex<Outbox>,
}

impl Connection {
    /// A connection of the provider's; `deflater` compresses what it sends, when
    /// permessage-deflate was negotiated.
    pub(crate) fn new(
        ip: IpAddr,
        parameters: Parameters,
        max_backpressure: usize,
        reserves_texts: bool,
        deflater: Option<MessageDeflater>,
        stats: Arc<TransportStats>,
    ) -> Self {
        let send_path = match &deflater {
            None => SendPath::Plain,
            Some(MessageDeflater::Shared(bits)) => SendPath::SharedDeflate(*bits),
            Some(MessageDeflater::Own(_)) => SendPath::OwnDeflate,
        };
        Self {
            shared: Arc::new(ConnectionShared {
                id: Uuid::new_v4(),
                ip,
                parameters,
                connected_at: now_millis(),
                last_ping: AtomicU64::new(0),
                strikes: AtomicU32::new(0),
                alive: AtomicBool::new(true),
                closed_here: AtomicBool::new(false),
                stats,
                reserves_texts,
                send_path,
                outbox: Mutex::new(Outbox::new(
                    Role::Server,
                    Overflow::Close,
                    max_backpressure,
                    deflater,
                )),
            }),
        }
    }

    /// The connection's unique id (UUID v4). Never sent to the consumer.
    pub fn id(&self) -> Uuid {
        self.shared.id
    }

    /// The consumer's IP address.
    pub fn ip(&self) -> IpAddr {
        self.shared.ip
    }

    /// The consumer's decoded URL parameters (auth values and metadata).
    pub fn parameters(&self) -> &Parameters {
        &self.shared.parameters
    }

    /// When the connection was opened (its upgrade completed).
    pub fn connected_at(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(self.shared.connected_at)
    }

    /// When the last heartbeat `PING` was sent, in ms since the Unix epoch (0: none yet).
    pub fn last_ping(&self) -> u64 {
        self.shared.last_ping.load(Ordering::Relaxed)
    }

    /// Heartbeat cycles missed in a row.
    pub fn strikes(&self) -> u32 {
        self.shared.strikes.load(Ordering::Relaxed)
    }

    /// Bytes queued for this connection and not yet taken by the kernel, control frames
    /// included.
    pub fn backpressure(&self) -> usize {
        protocol::lock(&self.shared.outbox).queued()
    }

    /// Whether the connection is still open for sending.
    pub fn is_open(&self) -> bool {
        !protocol::lock(&self.shared.outbox).is_closing()
    }

    /// Queues a message (text or binary) for this consumer.
    ///
    /// # Errors
    /// [`Reserved`](SendErrorKind::Reserved) for a protocol text (`PING`, `PONG`,
    /// `PROVIDER_HEARTBEAT|…`); [`NotConnected`](SendErrorKind::NotConnected) once the
    /// connection is closing; [`PayloadTooLarge`](SendErrorKind::PayloadTooLarge) for a
    /// message bigger than `max_backpressure` on its own; and
    /// [`Backpressure`](SendErrorKind::Backpressure) when the queue would exceed
    /// `max_backpressure`, in which case the connection is closed (1008): a consumer that
    /// does not read can never make the provider's memory grow without bound.
    pub fn send<'a>(&self, message: impl Into<MessageRef<'a>>) -> Result<(), SendError> {
        let message = message.into();
        if self.is_reserved(message) {
            return Err(SendError::new(SendErrorKind::Reserved));
        }
        self.send_frame(message)
    }

    /// Queues a frame without the reserved-text check (the heartbeat's own messages).
    pub(crate) fn send_frame(&self, message: MessageRef<'_>) -> Result<(), SendError> {
        let wire = protocol::update(&self.shared.outbox, |outbox| {
            outbox.push_message_sized(message)
        })?;
        let stats = &self.shared.stats;
        let raw = message.len() as u64;
        stats.sent(Kind::of(message), raw);
        if self.shared.send_path != SendPath::Plain {
            stats.deflated(raw, wire as u64);
        }
        Ok(())
    }

    /// The provider's traffic counters.
    pub(crate) fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// Whether the application closed (or terminated) the connection.
    pub(crate) fn closed_here(&self) -> bool {
        self.shared.closed_here.load(Ordering::Relaxed)
    }

    /// Whether this connection negotiated permessage-deflate (the provider's
    /// [`Compressor`](crate::Compressor) is on and the consumer offered it).
    pub fn is_compressed(&self) -> bool {
        self.shared.send_path != SendPath::Plain
    }

    /// How a broadcast reaches this connection.
    pub(crate) fn send_path(&self) -> SendPath {
        self.shared.send_path
    }

    /// Queues a frame encoded once for many connections ([`encode_frame`]).
    pub(crate) fn send_encoded(&self, frame: &[u8]) -> Result<(), SendError> {
        protocol::update(&self.shared.outbox, |outbox| outbox.push_encoded(frame))
    }

    /// Whether `message` is protocol text on this connection.
    pub(crate) fn is_reserved(&self, message: MessageRef<'_>) -> bool {
        self.shared.reserves_texts && matches!(message, MessageRef::Text(t) if is_reserved(t))
    }

    /// Whether `PING`/`PONG` are the heartbeat's on this connection.
    pub(crate) fn speaks_heartbeat(&self) -> bool {
        self.shared.reserves_texts
    }

    /// The queue the connection's owner task writes from.
    pub(crate) fn outbox(&self) -> &Mutex<Outbox> {
        &self.shared.outbox
    }

    /// Closes the connection gracefully: sends a close frame with `code` and `reason`, waits
    /// for the consumer's close frame (up to the provider's `close_timeout`), then ends the
    /// TCP connection. Does nothing if the connection is already closing.
    pub fn close(&self, code: u16, reason: &str) {
        self.shared.closed_here.store(true, Ordering::Relaxed);
        self.request_close(CloseRequest::new(code, reason, CloseMode::Graceful));
    }

    /// Ends the connection at once, without a close handshake.
    pub fn terminate(&self) {
        self.shared.closed_here.store(true, Ordering::Relaxed);
        self.request_close(CloseRequest::new(
            close_code::ABNORMAL,
            "",
            CloseMode::Abort,
        ));
    }

    pub(crate) fn request_close(&self, request: CloseRequest) {
        protocol::update(&self.shared.outbox, |outbox| outbox.request_close(request));
    }

    /// Heartbeat: a `PONG` arrived.
    pub(crate) fn mark_alive(&self) {
        self.shared.alive.store(true, Ordering::Relaxed);
        self.shared.strikes.store(0, Ordering::Relaxed);
    }

    /// Heartbeat: one cycle of the provider-wide cycle for this connection.
    pub(crate) fn heartbeat(&self, max_strikes: u32) -> HeartbeatStep {
        if self.shared.alive.swap(false, Ordering::Relaxed) {
            self.shared.last_ping.store(now_millis(), Ordering::Relaxed);
            return HeartbeatStep::Ping;
        }
        let strikes = self.shared.strikes.load(Ordering::Relaxed);
        if strikes < max_strikes {
            self.shared.strikes.store(strikes + 1, Ordering::Relaxed);
            HeartbeatStep::Strike
        } else {
            HeartbeatStep::Kill
        }
    }
}

fn encode_parts(message: MessageRef<'_>) -> (OpCode, &[u8]) {
    match message {
        MessageRef::Text(t) => (OpCode::Text, t.as_bytes()),
        MessageRef::Binary(b) => (OpCode::Binary, b),
    }
}

/// Encodes a whole server frame once, for sending to many connections.
pub(crate) fn encode_frame(message: MessageRef<'_>) -> Vec<u8> {
    let (opcode, payload) = encode_parts(message);
    let mut out = Vec::with_capacity(frame::frame_len(payload.len()));
    frame::encode_header(opcode, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// A frame compressed once for many connections, and its compressed payload's size.
pub(crate) type SharedFrame = (Vec<u8>, u64);

/// Encodes `message` compressed on its own with a window of `bits`, once for every
/// connection on [`SendPath::SharedDeflate`], with the compressed payload's size; `None`
/// when it goes uncompressed.
pub(crate) fn encode_shared_deflate_frame(
    message: MessageRef<'_>,
    bits: u8,
) -> Option<SharedFrame> {
    let (opcode, payload) = encode_parts(message);
    let mut compressed = Vec::new();
    if !MessageDeflater::Shared(bits).compress(payload, &mut compressed) {
        return None;
    }
    let mut out = Vec::with_capacity(frame::frame_len(compressed.len()));
    frame::encode_header_with(true, true, opcode, compressed.len(), None, &mut out);
    out.extend_from_slice(&compressed);
    Some((out, compressed.len() as u64))
}

/// How a message reaches a connection, for a broadcast that encodes once per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendPath {
    /// Uncompressed frames.
    Plain,
    /// Messages compressed on their own with this window: one copy serves them all.
    SharedDeflate(u8),
    /// The connection's own compressor: each message compressed for it alone.
    OwnDeflate,
}

/// What the heartbeat cycle does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeartbeatStep {
    Ping,
    Strike,
    Kill,
}

pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Connection {}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameter values may be secrets: keys only.
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("ip", &self.shared.ip)
            .field(
                "parameters",
                &self.shared.parameters.keys().collect::<Vec<_>>(),
            )
            .field("strikes", &self.strikes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(max_backpressure: usize) -> Connection {
        Connection::new(
            IpAddr::from([127, 0, 0, 1]),
            Parameters::new(),
            max_backpressure,
            true,
            None,
            Arc::default(),
        )
    }

    #[test]
    fn reserved_and_limits() {
        let c = conn(100);
        assert_eq!(c.send("PING").unwrap_err().kind(), SendErrorKind::Reserved);
        c.send_frame(MessageRef::Text("PING")).unwrap();
        c.send("x".repeat(90).as_str()).unwrap();
        assert_eq!(c.backpressure(), 6 + 92);
        assert_eq!(
            c.send("x".repeat(10).as_str()).unwrap_err().kind(),
            SendErrorKind::Backpressure
        );
        assert!(!c.is_open());
        assert_eq!(
            c.send("late").unwrap_err().kind(),
            SendErrorKind::NotConnected
        );
    }

    #[test]
    fn heartbeat_steps() {
        let c = conn(100);
        assert_eq!(c.heartbeat(2), HeartbeatStep::Ping);
        assert!(c.last_ping() > 0);
        assert_eq!(c.heartbeat(2), HeartbeatStep::Strike);
        assert_eq!(c.heartbeat(2), HeartbeatStep::Strike);
        assert_eq!(c.heartbeat(2), HeartbeatStep::Kill);
        c.mark_alive();
        assert_eq!(c.strikes(), 0);
        assert_eq!(c.heartbeat(2), HeartbeatStep::Ping);
    }
}
