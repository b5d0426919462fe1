//! What one connection has queued for writing, shared between its owner task (which
//! writes) and every task that sends (which queues), under a short std mutex.
//!
//! Every byte queued counts against `max_backpressure`, control frames included: the
//! frames in `buf`, the bytes the owner task took and the kernel has not accepted yet,
//! and the pending pong. There is at most one pending pong (RFC 6455, 5.5.3 allows
//! answering only the latest ping), so a peer that floods pings and never reads makes no
//! queue grow.

use super::{CloseMode, CloseRequest, Role};
use crate::deflate::MessageDeflater;
use crate::error::{SendError, SendErrorKind};
use crate::frame::{self, OpCode};
use crate::message::{close_code, MessageRef};
use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

/// What a send that would take the queue past `max_backpressure` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Refuse it and close the connection (1008): the provider's policy, so a consumer
    /// that stops reading cannot make the provider's memory grow.
    Close,
    /// Refuse it and keep the connection: the consumer's policy (its caller may retry).
    Refuse,
}

/// Room a building batch grows by at least (see [`Outbox::grow`]).
const BATCH: usize = 4096;

/// The most a building batch reserves at once for the size of the one before it, and
/// the largest written batch whose buffer is kept for the next one.
pub(crate) const MAX_HINT: usize = 64 * 1024;

thread_local! {
    /// Where a message is compressed before its frame is queued.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A connection's queue of encoded frames.
#[derive(Debug)]
pub(crate) struct Outbox {
    role: Role,
    overflow: Overflow,
    max_backpressure: usize,
    /// Encoded frames waiting for the owner task; freed whenever it drains.
    buf: Vec<u8>,
    /// Bytes the owner task took but the kernel has not accepted yet.
    in_flight: usize,
    /// The size of the last batch the owner task took (at most [`MAX_HINT`]): a building
    /// batch reserves that much at once, instead of reallocating up to it by doublings.
    last_batch: u32,
    /// The payload of the pong owed for the latest ping, not yet taken for writing.
    pong: Option<Box<[u8]>>,
    /// The owner task, parked until there is something to write.
    waker: Option<Waker>,
    /// A close someone asked for, not yet acted on.
    close: Option<Box<CloseRequest>>,
    /// Set once a close was requested or the connection ended: sends are refused.
    closing: bool,
    /// permessage-deflate's sending half, when negotiated.
    deflater: Option<MessageDeflater>,
}

impl Outbox {
    /// An empty outbox; `deflater` compresses what is sent, when negotiated.
    pub(crate) fn new(
        role: Role,
        overflow: Overflow,
        max_backpressure: usize,
        deflater: Option<MessageDeflater>,
    ) -> Self {
        Self {
            role,
            overflow,
            max_backpressure,
            buf: Vec::new(),
            in_flight: 0,
            last_batch: 0,
            pong: None,
            waker: None,
            close: None,
            closing: false,
            deflater,
        }
    }

    /// Bytes queued and not yet taken by the kernel, the pending pong included.
    pub(crate) fn queued(&self) -> usize {
        let pong = self
            .pong
            .as_ref()
            .map_or(0, |p| frame::header_len(p.len(), self.masks()) + p.len());
        self.buf.len() + self.in_flight + pong
    }

    /// Whether sends are refused now (a close was requested, or the connection ended).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Refuses every send from now on.
    pub(crate) fn set_closing(&mut self) {
        self.closing = true;
    }

    fn masks(&self) -> bool {
        self.role == Role::Client
    }

    /// Queues a data frame carrying `message`, compressed when permessage-deflate is on
    /// and compressing shrinks it.
    ///
    /// # Errors
    /// [`PayloadTooLarge`](SendErrorKind::PayloadTooLarge) for a frame larger than
    /// `max_backpressure` on its own, [`NotConnected`](SendErrorKind::NotConnected) once
    /// closing, [`Backpressure`](SendErrorKind::Backpressure) when the queue would exceed
    /// `max_backpressure` (see [`Overflow`]).
    pub(crate) fn push_message(&mut self, message: MessageRef<'_>) -> Result<(), SendError> {
        self.push_message_sized(message).map(drop)
    }

    /// As [`push_message`](Self::push_message); returns the payload's size on the wire
    /// (after compressing, when it was compressed). Inline, with the compressing path out
    /// of line: every message a connection sends comes through here.
    #[inline]
    pub(crate) fn push_message_sized(
        &mut self,
        message: MessageRef<'_>,
    ) -> Result<usize, SendError> {
        let (opcode, payload) = match message {
            MessageRef::Text(t) => (OpCode::Text, t.as_bytes()),
            MessageRef::Binary(b) => (OpCode::Binary, b),
        };
        if self.deflater.is_none() {
            return self
                .push_frame(opcode, false, payload)
                .map(|()| payload.len());
        }
        self.push_compressed(opcode, payload)
    }

    /// [`push_message_sized`](Self::push_message_sized) with permessage-deflate on.
    #[inline(never)]
    fn push_compressed(&mut self, opcode: OpCode, payload: &[u8]) -> Result<usize, SendError> {
        // Compressed under the outbox's lock: with context takeover, the order messages
        // are compressed in must be the order they go out in.
        SCRATCH.with(|cell| {
            let Ok(mut scratch) = cell.try_borrow_mut() else {
                return self
                    .push_frame(opcode, false, payload)
                    .map(|()| payload.len());
            };
            scratch.clear();
            let compressed = self
                .deflater
                .as_mut()
                .is_some_and(|d| d.compress(payload, &mut scratch));
            if compressed {
                self.push_frame(opcode, true, &scratch)
                    .map(|()| scratch.len())
            } else {
                self.push_frame(opcode, false, payload)
                    .map(|()| payload.len())
            }
        })
    }

    #[inline(always)]
    fn push_frame(&mut self, opcode: OpCode, rsv1: bool, payload: &[u8]) -> Result<(), SendError> {
        let masks = self.masks();
        let len = frame::header_len(payload.len(), masks) + payload.len();
        self.reserve(len)?;
        let mask = masks.then(rand::random::<[u8; 4]>);
        encode(&mut self.buf, rsv1, opcode, payload, mask);
        Ok(())
    }

    /// Queues a whole frame encoded once for many connections (the provider's broadcast).
    pub(crate) fn push_encoded(&mut self, frame: &[u8]) -> Result<(), SendError> {
        debug_assert_eq!(self.role, Role::Server, "shared frames are unmasked");
        self.reserve(frame.len())?;
        self.buf.extend_from_slice(frame);
        Ok(())
    }

    /// Makes room for `len` more bytes within `max_backpressure`, or says why not.
    #[inline(always)]
    fn reserve(&mut self, len: usize) -> Result<(), SendError> {
        if len > self.max_backpressure {
            return Err(SendError::new(SendErrorKind::PayloadTooLarge));
        }
        if self.closing {
            return Err(SendError::new(SendErrorKind::NotConnected));
        }
        if self.queued() + len > self.max_backpressure {
            self.overflowed();
            return Err(SendError::new(SendErrorKind::Backpressure));
        }
        if self.buf.capacity() - self.buf.len() < len {
            self.grow(len);
        }
        Ok(())
    }

    /// Room for `len` more bytes. Exactly what this frame needs when the queue starts
    /// empty (a 6-byte heartbeat `PING` takes 8 bytes, not a page). A second frame means a
    /// batch is building: room for as much as the last batch took (at most
    /// [`MAX_HINT`]), and at least a page, instead of doubling up from one frame's size
    /// (each doubling a realloc and a copy); past that it doubles. Never more room than
    /// `max_backpressure` lets fill, so a peer that reads slowly costs the provider its
    /// limit, not up to twice that in doubling slack. The buffer is freed when the
    /// connection idles either way.
    #[inline(never)]
    fn grow(&mut self, len: usize) {
        let queued = self.buf.len();
        let wanted = if queued == 0 {
            len
        } else {
            len.max(BATCH).max(self.last_batch as usize).max(queued)
        };
        // `reserve` checked that `len` fits under the limit, so the room is at least `len`.
        let room = self.max_backpressure.saturating_sub(self.queued()).max(len);
        self.buf.reserve_exact(wanted.min(room));
    }

    fn overflowed(&mut self) {
        if self.overflow == Overflow::Close {
            self.request_close(CloseRequest::new(
                close_code::POLICY,
                crate::message::close_reason::BACKPRESSURE_EXCEEDED,
                CloseMode::Abort,
            ));
        }
    }

    /// Owes the peer a pong for a ping with `payload` (at most 125 bytes).
    ///
    /// As tungstenite does, pongs are replaced only while the socket is backed up. When
    /// `socket_idle` (the kernel took everything written so far) the pong is queued in
    /// order with the other frames, so a peer that reads gets a pong for every ping.
    /// Otherwise it becomes the one pending pong, replacing an earlier one: a peer that
    /// floods pings and never reads backs the socket up, and from then on holds one
    /// pending pong however many pings it sends. Pongs count against `max_backpressure`
    /// like any frame (see [`Overflow`]; under [`Overflow::Refuse`] a pong that does not
    /// fit goes unsent).
    pub(crate) fn set_pong(&mut self, payload: &[u8], socket_idle: bool) {
        if self.closing {
            return;
        }
        if socket_idle {
            if let Some(pending) = self.pong.take() {
                if self.push_frame(OpCode::Pong, false, &pending).is_err() {
                    return;
                }
            }
            // Refused only over the limit, which `push_frame` has dealt with.
            let _ = self.push_frame(OpCode::Pong, false, payload);
            return;
        }
        self.pong = None;
        let len = frame::header_len(payload.len(), self.masks()) + payload.len();
        if self.queued() + len > self.max_backpressure {
            self.overflowed();
            return;
        }
        self.pong = Some(payload.into());
    }

    /// Queues the close frame of the close handshake (`None`: one without a code). It
    /// counts like any frame: `false` when it does not fit, and the caller ends the
    /// connection without it.
    pub(crate) fn push_close(&mut self, code: Option<u16>, reason: &str) -> bool {
        self.closing = true;
        let payload = code.map(|code| frame::close_payload(code, reason));
        let payload = payload.as_deref().unwrap_or_default();
        let masks = self.masks();
        let len = frame::header_len(payload.len(), masks) + payload.len();
        if self.queued() + len > self.max_backpressure {
            return false;
        }
        let mask = masks.then(rand::random::<[u8; 4]>);
        encode(&mut self.buf, false, OpCode::Close, payload, mask);
        true
    }

    /// Asks the owner task to close the connection. A later abort replaces an earlier,
    /// gentler request still pending; anything else after the first request is ignored.
    pub(crate) fn request_close(&mut self, request: CloseRequest) {
        let abort = request.mode == CloseMode::Abort;
        if !self.closing || (abort && self.close.is_some()) {
            self.close = Some(Box::new(request));
        }
        self.closing = true;
    }

    /// Whether a close request waits for the owner task.
    pub(crate) fn wants_close(&self) -> bool {
        self.close.is_some()
    }

    /// The owner task: the close requested, if any (taken).
    pub(crate) fn take_close(&mut self) -> Option<CloseRequest> {
        self.close.take().map(|request| *request)
    }

    /// The owner task: moves what is queued into `writing` when that is empty (the
    /// pending pong last, after the frames queued before it), and records what is still
    /// in flight.
    pub(crate) fn take(&mut self, writing: &mut Vec<u8>, written: usize) {
        if writing.is_empty() {
            if let Some(pong) = self.pong.take() {
                let mask = self.masks().then(rand::random::<[u8; 4]>);
                encode(&mut self.buf, false, OpCode::Pong, &pong, mask);
            }
            std::mem::swap(writing, &mut self.buf);
            if !writing.is_empty() {
                // At most MAX_HINT, so it fits.
                self.last_batch = writing.len().min(MAX_HINT) as u32;
            }
        }
        self.in_flight = writing.len().saturating_sub(written);
    }

    /// The owner task: whether something waits to be taken.
    pub(crate) fn has_pending(&self) -> bool {
        !self.buf.is_empty() || self.pong.is_some()
    }

    /// The owner task parks: wake it for the next send. Holds no buffer while idle.
    pub(crate) fn park(&mut self, waker: &Waker) {
        match &mut self.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// The owner task is running: nobody needs to wake it.
    pub(crate) fn unpark(&mut self) {
        self.waker = None;
    }

    /// The owner task to wake after a change, if it is parked.
    pub(crate) fn waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }

    /// The bytes waiting to be taken, for tests.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

/// Runs `change` on the outbox under its lock, then wakes its owner task (outside the
/// lock) so it writes what was queued or acts on a close.
pub(crate) fn update<R>(outbox: &Mutex<Outbox>, change: impl FnOnce(&mut Outbox) -> R) -> R {
    let mut guard = lock(outbox);
    let result = change(&mut guard);
    let waker = guard.waker();
    drop(guard);
    if let Some(waker) = waker {
        waker.wake();
    }
    result
}

/// Locks an outbox. A poisoned one only means a panic elsewhere mid-push; frames are
/// pushed whole under one guard, so carry on.
pub(crate) fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    outbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Appends a final frame: unmasked (server), or masked with `mask` (client).
#[inline(always)]
fn encode(out: &mut Vec<u8>, rsv1: bool, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    frame::encode_header_with(true, rsv1, opcode, payload.len(), mask, out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let (Some(mask), Some(body)) = (mask, out.get_mut(start..)) {
        frame::apply_mask(body, mask, 0);
    }
}

/// Decodes what a client wrote, as a server would: (opcode, rsv1, payload) per frame.
#[cfg(test)]
pub(crate) fn decode_client_frames(bytes: &[u8]) -> Vec<(OpCode, bool, Vec<u8>)> {
    let mut out = Vec::new();
    let rules = frame::Rules {
        rsv1: true,
        ..frame::Rules::from_client(u64::MAX)
    };
    let mut bytes = bytes.to_vec();
    let mut pos = 0;
    while let Ok(Some((h, total))) = frame::unmask_next(&mut bytes[pos..], rules) {
        out.push((
            h.opcode,
            h.rsv1,
            bytes[pos + h.header_len..pos + total].to_vec(),
        ));
        pos += total;
    }
    assert_eq!(pos, bytes.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::Deflate;

    fn server(max: usize) -> Outbox {
        Outbox::new(Role::Server, Overflow::Close, max, None)
    }

    #[test]
    fn frames_are_queued_and_counted() {
        let mut o = server(1024);
        o.push_message("hi".into()).unwrap();
        o.push_message(MessageRef::Binary(&[1, 2])).unwrap();
        assert_eq!(o.buffered(), b"\x81\x02hi\x82\x02\x01\x02");
        assert_eq!(o.queued(), 8);
        let mut writing = Vec::new();
        o.take(&mut writing, 3);
        assert_eq!(writing.len(), 8);
        assert_eq!(o.queued(), 5, "what the kernel has not taken counts");
    }

    #[test]
    fn overflow_closes_or_refuses_per_policy() {
        let mut o = server(100);
        assert_eq!(
            o.push_message("x".repeat(99).as_str().into())
                .unwrap_err()
                .kind(),
            SendErrorKind::PayloadTooLarge
        );
        o.push_message("x".repeat(90).as_str().into()).unwrap();
        assert_eq!(
            o.push_message("x".repeat(10).as_str().into())
                .unwrap_err()
                .kind(),
            SendErrorKind::Backpressure
        );
        assert!(o.is_closing());
        assert_eq!(
            o.take_close().map(|r| (r.code, r.mode)),
            Some((1008, CloseMode::Abort))
        );
        assert_eq!(
            o.push_message("late".into()).unwrap_err().kind(),
            SendErrorKind::NotConnected
        );

        // Masked frames: 6 bytes of header each.
        let mut consumer = Outbox::new(Role::Client, Overflow::Refuse, 100, None);
        consumer
            .push_message("x".repeat(80).as_str().into())
            .unwrap();
        assert!(consumer
            .push_message("x".repeat(10).as_str().into())
            .is_err());
        assert!(!consumer.is_closing(), "the consumer keeps its connection");
        consumer.push_message("x".into()).unwrap();
    }

    #[test]
    fn every_ping_is_answered_while_the_socket_keeps_up() {
        let mut o = server(1024);
        for i in 0..10u8 {
            o.set_pong(&[i], true);
        }
        let mut writing = Vec::new();
        o.take(&mut writing, 0);
        let all: Vec<u8> = (0..10u8).flat_map(|i| [0x8a, 0x01, i]).collect();
        assert_eq!(writing, all, "one pong per ping, in order");
    }

    #[test]
    fn only_the_latest_pong_is_kept_while_backed_up_and_it_counts() {
        let mut o = server(1024);
        for i in 0..10_000u32 {
            o.set_pong(&i.to_be_bytes(), false);
        }
        assert_eq!(
            o.queued(),
            2 + 4,
            "one pong pending, whatever the number of pings"
        );
        o.push_message("data".into()).unwrap();
        let mut writing = Vec::new();
        o.take(&mut writing, 0);
        assert_eq!(
            writing, b"\x81\x04data\x8a\x04\x00\x00\x27\x0f",
            "the pong of the last ping, after what was queued"
        );
        // A pong that does not fit is a send that does not: the provider closes.
        let mut full = server(10);
        full.push_message("12345678".into()).unwrap();
        full.set_pong(b"p", false);
        assert_eq!(full.take_close().map(|r| r.code), Some(1008));
    }

    #[test]
    fn close_frames_count_too() {
        let mut o = server(10);
        o.push_message("1234567".into()).unwrap();
        assert!(
            !o.push_close(Some(1000), ""),
            "4 more bytes do not fit in 10"
        );
        let mut roomy = server(100);
        assert!(roomy.push_close(Some(1001), "bye"));
        assert_eq!(roomy.buffered(), b"\x88\x05\x03\xe9bye");
        assert!(roomy.push_message("x".into()).is_err());
    }

    #[test]
    fn a_client_masks_and_compresses_when_negotiated() {
        let deflate = Deflate {
            compress_bits: 15,
            compress_takeover: true,
            inflate_takeover: true,
        };
        let mut o = Outbox::new(
            Role::Client,
            Overflow::Refuse,
            1 << 20,
            Some(deflate.deflater()),
        );
        o.push_message("hello".into()).unwrap();
        let long = "abc".repeat(100);
        o.push_message(long.as_str().into()).unwrap();
        o.set_pong(b"ping", true);
        let mut writing = Vec::new();
        o.take(&mut writing, 0);
        let frames = decode_client_frames(&writing);
        assert_eq!(frames[2], (OpCode::Pong, false, b"ping".to_vec()));
        assert_eq!(frames[0], (OpCode::Text, false, b"hello".to_vec()));
        let (opcode, rsv1, compressed) = &frames[1];
        assert_eq!((*opcode, *rsv1), (OpCode::Text, true));
        let mut back = Vec::new();
        deflate
            .inflater()
            .inflate(compressed, usize::MAX, &mut back)
            .unwrap();
        assert_eq!(back, long.as_bytes());
    }

    #[test]
    fn close_reasons_are_cut_on_a_char_boundary() {
        let mut o = Outbox::new(Role::Client, Overflow::Refuse, 1024, None);
        assert!(o.push_close(Some(1000), &"é".repeat(100)));
        let frames = decode_client_frames(o.buffered());
        assert_eq!(frames[0].0, OpCode::Close);
        assert!(frames[0].2.len() <= 125);
        assert!(std::str::from_utf8(&frames[0].2[2..]).is_ok());
    }

    #[test]
    fn an_idle_outbox_holds_no_buffer() {
        let mut o = server(1 << 20);
        o.push_message("PING".into()).unwrap();
        let mut writing = Vec::new();
        o.take(&mut writing, 0);
        assert!(writing.capacity() < 64, "{}", writing.capacity());
        o.park(std::task::Waker::noop());
        assert_eq!(o.buf.capacity(), 0);
    }

    #[test]
    fn a_batch_grows_by_pages_not_by_frames() {
        let mut o = server(1 << 20);
        o.push_message((&[7u8; 90][..]).into()).unwrap();
        assert!(o.buf.capacity() < 128, "{}", o.buf.capacity());
        o.push_message((&[7u8; 90][..]).into()).unwrap();
        let grown = o.buf.capacity();
        assert!(grown >= BATCH, "{grown}");
        while o.buf.len() + 92 <= grown {
            o.push_message((&[7u8; 90][..]).into()).unwrap();
        }
        assert_eq!(
            o.buf.capacity(),
            grown,
            "no reallocation within the batch's room"
        );
    }

    #[test]
    fn a_batch_reserves_what_the_last_one_took() {
        let mut o = server(1 << 20);
        let frame = &[7u8; 90][..];
        for _ in 0..200 {
            o.push_message(frame.into()).unwrap();
        }
        let mut writing = Vec::new();
        o.take(&mut writing, 0);
        let last = writing.len();
        assert!(last > 2 * BATCH, "{last}");
        o.park(std::task::Waker::noop());
        assert_eq!(o.buf.capacity(), 0, "idle: no buffer");
        o.push_message(frame.into()).unwrap();
        assert!(o.buf.capacity() < 128, "a lone frame takes its size");
        o.push_message(frame.into()).unwrap();
        assert!(o.buf.capacity() >= last, "{}", o.buf.capacity());
    }
}
