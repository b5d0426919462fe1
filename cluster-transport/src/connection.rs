//! A consumer's connection as the provider sees it: identity, heartbeat state, and a cheap
//! handle for sending that never touches the socket itself.
//!
//! Sends encode the frame into the connection's outbox under a short std mutex and wake
//! the connection's one owner task, which writes everything queued in one batch. Bytes
//! queued and not yet taken by the kernel count against `max_backpressure`.

pub(crate) mod driver;

use crate::deflate::{Deflate, MessageDeflater};
use crate::error::{SendError, SendErrorKind};
use crate::frame::{self, OpCode};
use crate::message::{close_code, is_reserved, MessageRef};
use crate::query::Parameters;
use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A connected consumer, as the provider's events hand it out. Cheap to clone.
///
/// Sending never waits: the message is queued and written by the connection's task.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<ConnectionShared>,
}

pub(crate) struct ConnectionShared {
    id: Uuid,
    ip: IpAddr,
    parameters: Parameters,
    last_ping: AtomicU64,
    strikes: AtomicU32,
    alive: AtomicBool,
    max_backpressure: usize,
    /// Whether `PING`/`PONG`/`PROVIDER_HEARTBEAT|…` are protocol here (heartbeat enabled).
    reserves_texts: bool,
    /// How a broadcast reaches it: fixed at the upgrade, read without the outbox's lock.
    send_path: SendPath,
    outbox: Mutex<Outbox>,
}

/// What other tasks hand the connection's owner task.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Encoded frames waiting for the owner task.
    pub(crate) buf: Vec<u8>,
    /// Bytes the owner task took but the kernel has not accepted yet.
    pub(crate) in_flight: usize,
    /// The owner task, parked until there is something to write.
    pub(crate) waker: Option<Waker>,
    /// A close someone asked for, not yet acted on.
    pub(crate) close: Option<CloseRequest>,
    /// Set once a close was requested or the connection ended: sends are refused.
    pub(crate) closing: bool,
    /// permessage-deflate's sending half, when negotiated.
    pub(crate) deflater: Option<MessageDeflater>,
}

/// How to end a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) mode: CloseMode,
}

/// What happens after the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseMode {
    /// Wait (up to the close timeout) for the peer's close frame, then FIN.
    Graceful,
    /// FIN as soon as the close frame is written: the peer is not answering.
    Immediate,
    /// Drop the socket now, without writing anything more.
    Abort,
}

impl Connection {
    pub(crate) fn new(
        ip: IpAddr,
        parameters: Parameters,
        max_backpressure: usize,
        reserves_texts: bool,
        deflate: Option<Deflate>,
    ) -> Self {
        let deflater = deflate.map(|d| d.deflater());
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
                last_ping: AtomicU64::new(0),
                strikes: AtomicU32::new(0),
                alive: AtomicBool::new(true),
                max_backpressure,
                reserves_texts,
                send_path,
                outbox: Mutex::new(Outbox {
                    deflater,
                    ..Outbox::default()
                }),
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

    /// When the last heartbeat `PING` was sent, in ms since the Unix epoch (0: none yet).
    pub fn last_ping(&self) -> u64 {
        self.shared.last_ping.load(Ordering::Relaxed)
    }

    /// Heartbeat cycles missed in a row.
    pub fn strikes(&self) -> u32 {
        self.shared.strikes.load(Ordering::Relaxed)
    }

    /// Bytes queued for this connection and not yet taken by the kernel.
    pub fn backpressure(&self) -> usize {
        let outbox = self.lock();
        outbox.buf.len() + outbox.in_flight
    }

    /// Whether the connection is still open for sending.
    pub fn is_open(&self) -> bool {
        !self.lock().closing
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
        let (opcode, payload) = encode_parts(message);
        let mut outbox = self.lock();
        if outbox.deflater.is_none() {
            return self.push(outbox, frame::frame_len(payload.len()), |buf| {
                frame::encode_header(opcode, payload.len(), buf);
                buf.extend_from_slice(payload);
            });
        }
        // Compressed under the outbox lock: with context takeover, the order messages are
        // compressed in must be the order they go out in.
        SCRATCH.with(|cell| {
            let mut scratch = cell.try_borrow_mut().ok();
            let compressed = match (&mut outbox.deflater, scratch.as_deref_mut()) {
                (Some(deflater), Some(scratch)) => {
                    scratch.clear();
                    deflater.compress(payload, scratch)
                }
                _ => false,
            };
            let (rsv1, body) = match scratch.as_deref() {
                Some(scratch) if compressed => (true, scratch.as_slice()),
                _ => (false, payload),
            };
            self.push(outbox, frame::frame_len(body.len()), |buf| {
                frame::encode_header_with(true, rsv1, opcode, body.len(), None, buf);
                buf.extend_from_slice(body);
            })
        })
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
        self.push(self.lock(), frame.len(), |buf| buf.extend_from_slice(frame))
    }

    /// Whether `message` is protocol text on this connection.
    pub(crate) fn is_reserved(&self, message: MessageRef<'_>) -> bool {
        self.shared.reserves_texts && matches!(message, MessageRef::Text(t) if is_reserved(t))
    }

    /// Appends `len` bytes written by `write` to the outbox, within `max_backpressure`.
    fn push(
        &self,
        mut outbox: MutexGuard<'_, Outbox>,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SendError> {
        if len > self.shared.max_backpressure {
            return Err(SendError::new(SendErrorKind::PayloadTooLarge));
        }
        if outbox.closing {
            return Err(SendError::new(SendErrorKind::NotConnected));
        }
        if outbox.buf.len() + outbox.in_flight + len > self.shared.max_backpressure {
            outbox.request_close(CloseRequest {
                code: close_code::POLICY,
                reason: "backpressure limit exceeded".into(),
                mode: CloseMode::Abort,
            });
            let waker = outbox.waker.take();
            drop(outbox);
            wake(waker);
            return Err(SendError::new(SendErrorKind::Backpressure));
        }
        if outbox.buf.capacity() == 0 {
            // The buffer is freed whenever the connection idles; start a batch with room
            // for many frames instead of growing it one doubling at a time.
            outbox.buf.reserve(len.max(4096));
        }
        write(&mut outbox.buf);
        let waker = outbox.waker.take();
        drop(outbox);
        wake(waker);
        Ok(())
    }

    /// Closes the connection gracefully: sends a close frame with `code` and `reason`, waits
    /// for the consumer's close frame (up to the provider's `close_timeout`), then ends the
    /// TCP connection. Does nothing if the connection is already closing.
    pub fn close(&self, code: u16, reason: &str) {
        self.request_close(CloseRequest {
            code,
            reason: reason.to_owned(),
            mode: CloseMode::Graceful,
        });
    }

    /// Ends the connection at once, without a close handshake.
    pub fn terminate(&self) {
        self.request_close(CloseRequest {
            code: close_code::ABNORMAL,
            reason: String::new(),
            mode: CloseMode::Abort,
        });
    }

    pub(crate) fn request_close(&self, request: CloseRequest) {
        let mut outbox = self.lock();
        outbox.request_close(request);
        let waker = outbox.waker.take();
        drop(outbox);
        wake(waker);
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A poisoned outbox only means a panic elsewhere mid-push; the bytes are still framed
        // whole (header and payload are pushed under one guard), so carry on.
        self.shared
            .outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Encodes `message` compressed on its own with a window of `bits`, once for every
/// connection on [`SendPath::SharedDeflate`]; `None` when it goes uncompressed.
pub(crate) fn encode_shared_deflate_frame(message: MessageRef<'_>, bits: u8) -> Option<Vec<u8>> {
    let (opcode, payload) = encode_parts(message);
    let mut compressed = Vec::new();
    if !MessageDeflater::Shared(bits).compress(payload, &mut compressed) {
        return None;
    }
    let mut out = Vec::with_capacity(frame::frame_len(compressed.len()));
    frame::encode_header_with(true, true, opcode, compressed.len(), None, &mut out);
    out.extend_from_slice(&compressed);
    Some(out)
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

thread_local! {
    /// Where a message is compressed before its frame is queued.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What the heartbeat cycle does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeartbeatStep {
    Ping,
    Strike,
    Kill,
}

impl Outbox {
    fn request_close(&mut self, request: CloseRequest) {
        let abort = request.mode == CloseMode::Abort;
        if !self.closing || (abort && self.close.is_some()) {
            self.close = Some(request);
        }
        self.closing = true;
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
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
        )
    }

    #[test]
    fn send_frames_into_the_outbox() {
        let c = conn(1024);
        c.send("hi").unwrap();
        c.send(&b"\x01\x02"[..]).unwrap();
        assert_eq!(c.lock().buf, b"\x81\x02hi\x82\x02\x01\x02");
        assert_eq!(c.backpressure(), 8);
    }

    #[test]
    fn reserved_and_limits() {
        let c = conn(100);
        assert_eq!(c.send("PING").unwrap_err().kind(), SendErrorKind::Reserved);
        assert_eq!(
            c.send("x".repeat(99).as_str()).unwrap_err().kind(),
            SendErrorKind::PayloadTooLarge
        );
        c.send("x".repeat(90).as_str()).unwrap();
        assert_eq!(
            c.send("x".repeat(10).as_str()).unwrap_err().kind(),
            SendErrorKind::Backpressure
        );
        assert!(!c.is_open());
        assert_eq!(c.lock().close.as_ref().map(|r| r.code), Some(1008));
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
