//! The connection's one owner task: reads and decodes frames, delivers messages, writes
//! what others queued in batches, and runs the close handshake.
//!
//! Memory is the point of this design (see DESIGN.md, "What an idle connection costs"):
//! bytes are read into one buffer per worker thread, so an idle connection holds no read
//! buffer at all; only a partial frame is copied into the connection's own `partial`, and
//! the write buffer is freed once it drains.

use crate::connection::{CloseMode, CloseRequest, Connection};
use crate::deflate::{Deflate, MessageInflater};
use crate::event::{ProviderEvent, ProviderListeners};
use crate::frame::{self, FrameError, FrameHeader, OpCode};
use crate::message::{close_code, CloseInfo, MessageRef, PONG};
use crate::provider::ProviderShared;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// Size of the per-thread read buffer. One read takes at most this many bytes.
const READ_BUF_SIZE: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF_SIZE]);
}

thread_local! {
    /// Where a compressed message is inflated before it is delivered.
    static INFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A message being reassembled from fragments.
struct Fragment {
    opcode: OpCode,
    /// The fragments' payloads, still compressed when `compressed`.
    data: Vec<u8>,
    compressed: bool,
    /// For text: how far `data` is known to be valid UTF-8.
    utf8_valid: usize,
}

/// An event waiting for room in a full [`EventStream`](crate::EventStream).
struct BlockedEvent {
    event: ProviderEvent,
    /// Receivers still to get the event; the first is the one being waited for.
    senders: Vec<mpsc::Sender<ProviderEvent>>,
    reserve: Pin<Box<dyn Future<Output = Option<mpsc::OwnedPermit<ProviderEvent>>> + Send>>,
}

impl BlockedEvent {
    /// Delivers `event` to `senders` from the first; blocks on the first full one.
    fn emit(event: ProviderEvent, senders: &[mpsc::Sender<ProviderEvent>]) -> Option<Box<Self>> {
        for (i, sender) in senders.iter().enumerate() {
            if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(event.clone()) {
                let waiting = sender.clone();
                return Some(Box::new(BlockedEvent {
                    event,
                    senders: senders[i + 1..].to_vec(),
                    reserve: Box::pin(async move { waiting.reserve_owned().await.ok() }),
                }));
            }
        }
        None
    }

    /// Ready once every receiver has the event (or a new block replaced this one).
    fn poll(mut self: Box<Self>, cx: &mut Context<'_>) -> Result<Option<Box<Self>>, Box<Self>> {
        match self.reserve.as_mut().poll(cx) {
            Poll::Pending => Err(self),
            Poll::Ready(permit) => {
                if let Some(permit) = permit {
                    permit.send(self.event.clone());
                }
                Ok(Self::emit(self.event, &self.senders))
            }
        }
    }
}

/// Where the connection is in its life.
enum State {
    Open,
    /// We sent a close frame and wait for the peer's until `deadline`.
    CloseSent(CloseInfo),
    /// Flush what is queued, then end.
    Finishing(CloseInfo),
}

/// Drives one connection until it ends; returns how it ended.
pub(crate) struct Driver<S> {
    stream: S,
    conn: Connection,
    shared: Arc<ProviderShared>,
    listeners: Arc<ProviderListeners>,
    listeners_gen: u64,
    /// Bytes of a frame not yet complete; empty (and unallocated) between frames.
    partial: Vec<u8>,
    fragment: Option<Box<Fragment>>,
    /// permessage-deflate's receiving half, when negotiated.
    inflater: Option<MessageInflater>,
    /// Bytes taken from the outbox, written up to `written`.
    writing: Vec<u8>,
    written: usize,
    state: State,
    close_deadline: Option<Pin<Box<Sleep>>>,
    blocked: Option<Box<BlockedEvent>>,
    read_eof: bool,
    /// After failing the connection: send our FIN as soon as the close frame is out.
    half_close: bool,
    fin_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    pub(crate) fn new(
        stream: S,
        conn: Connection,
        shared: Arc<ProviderShared>,
        leftover: Vec<u8>,
        deflate: Option<Deflate>,
    ) -> Self {
        let (listeners, listeners_gen) = shared.listeners();
        Self {
            stream,
            conn,
            shared,
            listeners,
            listeners_gen,
            partial: leftover,
            fragment: None,
            inflater: deflate.map(|d| d.inflater()),
            writing: Vec::new(),
            written: 0,
            state: State::Open,
            close_deadline: None,
            blocked: None,
            read_eof: false,
            half_close: false,
            fin_sent: false,
        }
    }

    /// The socket (for the final FIN) and the connection.
    pub(crate) fn into_parts(self) -> (S, Connection) {
        (self.stream, self.conn)
    }

    /// Runs the connection until it ends.
    pub(crate) fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<CloseInfo> {
        loop {
            if self.shared.listeners_gen() != self.listeners_gen {
                (self.listeners, self.listeners_gen) = self.shared.listeners();
            }
            let mut progress = false;
            if let Some(blocked) = self.blocked.take() {
                match blocked.poll(cx) {
                    Ok(next) => {
                        self.blocked = next;
                        progress = true;
                    }
                    Err(still) => self.blocked = Some(still),
                }
            }
            if let Some(abort) = self.take_outbox() {
                return Poll::Ready(abort);
            }
            match self.poll_write(cx) {
                Poll::Ready(Ok(true)) => progress = true,
                Poll::Ready(Ok(false)) | Poll::Pending => {}
                Poll::Ready(Err(_)) => return Poll::Ready(self.ended_abnormally()),
            }
            let flushed = self.writing.is_empty() && self.conn.lock().buf.is_empty();
            if let State::Finishing(info) = &self.state {
                if flushed {
                    return Poll::Ready(info.clone());
                }
            }
            if self.half_close && flushed && !self.fin_sent {
                // The peer broke the protocol: our close frame is out, and a FIN right
                // behind it tells the peer to finish, so we need not wait for a timeout.
                if let Poll::Ready(result) = Pin::new(&mut self.stream).poll_shutdown(cx) {
                    self.fin_sent = true;
                    progress = true;
                    if result.is_err() {
                        return Poll::Ready(self.ended_abnormally());
                    }
                }
            }
            if let Some(deadline) = &mut self.close_deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    self.close_deadline = None;
                    return Poll::Ready(self.ended_abnormally());
                }
            }
            if self.blocked.is_none()
                && !self.read_eof
                && !matches!(self.state, State::Finishing(_))
            {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(self.ended_abnormally()),
                    Poll::Pending => {}
                }
            }
            if self.read_eof && self.writing.is_empty() {
                return Poll::Ready(self.ended_abnormally());
            }
            if progress {
                continue;
            }
            let mut outbox = self.conn.lock();
            // Queued bytes can wait while a write is pending: the socket wakes us for it.
            let nothing_to_take = outbox.buf.is_empty() || !self.writing.is_empty();
            if nothing_to_take && outbox.close.is_none() {
                outbox.waker = Some(cx.waker().clone());
                // Parked with nothing queued: hold no write buffers while idle.
                if outbox.buf.is_empty() {
                    outbox.buf = Vec::new();
                }
                drop(outbox);
                if self.writing.is_empty() {
                    self.writing = Vec::new();
                }
                return Poll::Pending;
            }
        }
    }

    /// How the connection ended when it ended without a finished close handshake.
    fn ended_abnormally(&self) -> CloseInfo {
        match &self.state {
            State::Open => CloseInfo::new(close_code::ABNORMAL, ""),
            State::CloseSent(info) | State::Finishing(info) => info.clone(),
        }
    }

    /// Takes queued bytes and close requests from the outbox. Returns `Some` to end now.
    fn take_outbox(&mut self) -> Option<CloseInfo> {
        let mut outbox = self.conn.lock();
        outbox.waker = None;
        let mut starting = None;
        if let Some(request) = outbox.close.take() {
            if request.mode == CloseMode::Abort {
                return Some(CloseInfo::new(request.code, request.reason));
            }
            if matches!(self.state, State::Open) {
                push_close_frame(&mut outbox.buf, request.code, &request.reason);
                starting = Some((CloseInfo::new(request.code, request.reason), request.mode));
            }
        }
        if self.writing.is_empty() && !outbox.buf.is_empty() {
            std::mem::swap(&mut self.writing, &mut outbox.buf);
            self.written = 0;
        }
        outbox.in_flight = self.writing.len() - self.written;
        drop(outbox);
        if let Some((info, mode)) = starting {
            self.start_close(info, mode);
        }
        None
    }

    fn start_close(&mut self, info: CloseInfo, mode: CloseMode) {
        if mode == CloseMode::Graceful {
            self.close_deadline = Some(Box::pin(tokio::time::sleep(
                self.shared.options.close_timeout,
            )));
            self.state = State::CloseSent(info);
        } else {
            self.state = State::Finishing(info);
        }
    }

    /// Writes what is taken. `Ready(Ok(true))` when everything was written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.writing.is_empty() {
            return Poll::Ready(Ok(false));
        }
        while self.written < self.writing.len() {
            let n =
                ready!(Pin::new(&mut self.stream).poll_write(cx, &self.writing[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        self.writing.clear();
        self.written = 0;
        Poll::Ready(Ok(true))
    }

    /// Reads once and handles every complete frame. `Ready(Ok(()))` means progress.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.partial.is_empty() {
            // Frames already buffered (a pipelined first frame, or left while blocked).
            let mut data = std::mem::take(&mut self.partial);
            let before = data.len();
            let consumed = self.process(&mut data);
            self.keep_partial(data, consumed);
            if consumed > 0 || self.partial.len() != before || self.blocked.is_some() {
                return Poll::Ready(Ok(()));
            }
            // Incomplete frame: read the rest into `partial` itself.
            let want = self.wanted_bytes().max(4096);
            self.partial.reserve(want);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.stream),
                cx,
                &mut self.partial
            ))?;
            if n == 0 {
                self.read_eof = true;
            }
            return Poll::Ready(Ok(()));
        }
        let shared_buf = READ_BUF.with(|cell| {
            cell.try_borrow_mut()
                .ok()
                .map(|mut b| std::mem::take(&mut *b))
        });
        let mut buf = match shared_buf {
            Some(b) if !b.is_empty() => b,
            _ => vec![0; READ_BUF_SIZE],
        };
        let result = self.read_into(cx, &mut buf);
        READ_BUF.with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut() {
                if slot.is_empty() {
                    *slot = buf;
                }
            }
        });
        result
    }

    fn read_into(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<()>> {
        let mut read_buf = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read_buf))?;
        let n = read_buf.filled().len();
        if n == 0 {
            self.read_eof = true;
            return Poll::Ready(Ok(()));
        }
        let data = &mut buf[..n];
        let consumed = self.process(data);
        if consumed < n {
            self.partial.extend_from_slice(&data[consumed..]);
        }
        Poll::Ready(Ok(()))
    }

    fn keep_partial(&mut self, mut data: Vec<u8>, consumed: usize) {
        if consumed == data.len() {
            // Between frames: hold no buffer at all.
            self.partial = Vec::new();
        } else {
            data.drain(..consumed);
            self.partial = data;
        }
    }

    /// Bytes needed to complete the frame at the start of `partial`.
    fn wanted_bytes(&self) -> usize {
        match frame::parse_header(&self.partial, self.rules(u64::MAX)) {
            Ok(Some(h)) => {
                let total = h.header_len as u64 + h.payload_len;
                usize::try_from(total)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(self.partial.len())
            }
            _ => 14,
        }
    }

    /// What a client's frame header may carry on this connection.
    fn rules(&self, max_payload: u64) -> frame::Rules {
        frame::Rules {
            rsv1: self.inflater.is_some(),
            ..frame::Rules::from_client(max_payload)
        }
    }

    /// Handles every complete frame at the start of `data`; returns the bytes consumed.
    fn process(&mut self, data: &mut [u8]) -> usize {
        let max = self.shared.options.ws.max_payload_length as u64;
        // A compressed frame may be a little longer than what it inflates to.
        let rules = self.rules(if self.inflater.is_some() {
            compressed_limit(max)
        } else {
            max
        });
        let mut pos = 0;
        while pos < data.len()
            && self.blocked.is_none()
            && !matches!(self.state, State::Finishing(_))
        {
            let rest = &mut data[pos..];
            let header = match frame::parse_header(rest, rules) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e.close_code(), e.reason());
                    return data.len();
                }
            };
            let total = header.header_len as u64 + header.payload_len;
            if (rest.len() as u64) < total {
                break;
            }
            let total = total as usize;
            let payload = &mut rest[header.header_len..total];
            if let Some(mask) = header.mask {
                frame::apply_mask(payload, mask, 0);
            }
            pos += total;
            if let Err((code, reason)) = self.handle_frame(header, payload) {
                self.fail(code, reason);
                return data.len();
            }
        }
        pos
    }

    /// Starts closing the connection because the peer broke the protocol or a limit.
    fn fail(&mut self, code: u16, reason: &str) {
        if matches!(self.state, State::Open) {
            let mut outbox = self.conn.lock();
            outbox.closing = true;
            push_close_frame(&mut outbox.buf, code, reason);
            drop(outbox);
            self.start_close(CloseInfo::new(code, reason), CloseMode::Graceful);
            self.half_close = true;
        } else {
            self.state = State::Finishing(self.ended_abnormally());
        }
        self.fragment = None;
    }

    fn handle_frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
    ) -> Result<(), (u16, &'static str)> {
        let protocol = |e: FrameError| (e.close_code(), e.reason());
        let max = self.shared.options.ws.max_payload_length;
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.fragment.is_some() {
                    return Err((close_code::PROTOCOL, "expected a continuation frame"));
                }
                if header.fin {
                    return if header.rsv1 {
                        self.deliver_compressed(header.opcode, payload)
                    } else {
                        self.deliver(header.opcode, payload)
                    };
                }
                let mut fragment = Box::new(Fragment {
                    opcode: header.opcode,
                    data: payload.to_vec(),
                    compressed: header.rsv1,
                    utf8_valid: 0,
                });
                check_utf8_prefix(&mut fragment)?;
                self.fragment = Some(fragment);
                Ok(())
            }
            OpCode::Continuation => {
                if header.rsv1 {
                    return Err((close_code::PROTOCOL, "RSV1 set on a continuation frame"));
                }
                let Some(mut fragment) = self.fragment.take() else {
                    return Err((close_code::PROTOCOL, "continuation without a message"));
                };
                let limit = if fragment.compressed {
                    compressed_limit(max as u64) as usize
                } else {
                    max
                };
                if fragment.data.len() + payload.len() > limit {
                    return Err(protocol(FrameError::TooBig));
                }
                fragment.data.extend_from_slice(payload);
                check_utf8_prefix(&mut fragment)?;
                if !header.fin {
                    self.fragment = Some(fragment);
                    Ok(())
                } else if fragment.compressed {
                    self.deliver_compressed(fragment.opcode, &fragment.data)
                } else {
                    self.deliver(fragment.opcode, &fragment.data)
                }
            }
            OpCode::Ping => {
                if matches!(self.state, State::Open) {
                    let mut outbox = self.conn.lock();
                    frame::encode_header(OpCode::Pong, payload.len(), &mut outbox.buf);
                    outbox.buf.extend_from_slice(payload);
                }
                Ok(())
            }
            OpCode::Pong => Ok(()),
            OpCode::Close => self.handle_close(payload),
        }
    }

    fn handle_close(&mut self, payload: &[u8]) -> Result<(), (u16, &'static str)> {
        let info = frame::parse_close(payload)?;
        match std::mem::replace(&mut self.state, State::Open) {
            State::Open => {
                let mut outbox = self.conn.lock();
                outbox.closing = true;
                // Echo the peer's code, as RFC 6455 asks.
                if info.code == close_code::NO_STATUS {
                    frame::encode_header(OpCode::Close, 0, &mut outbox.buf);
                } else {
                    push_close_frame(&mut outbox.buf, info.code, "");
                }
                self.state = State::Finishing(info);
            }
            State::CloseSent(ours) | State::Finishing(ours) => self.state = State::Finishing(ours),
        }
        self.close_deadline = None;
        Ok(())
    }

    /// Inflates a compressed message and delivers it.
    fn deliver_compressed(
        &mut self,
        opcode: OpCode,
        compressed: &[u8],
    ) -> Result<(), (u16, &'static str)> {
        let Some(inflater) = &mut self.inflater else {
            return Err((
                close_code::PROTOCOL,
                "compressed message without permessage-deflate",
            ));
        };
        let mut inflated = INFLATED
            .with(|cell| cell.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
            .unwrap_or_default();
        inflated.clear();
        let max = self.shared.options.ws.max_payload_length;
        let result = inflater
            .inflate(compressed, max, &mut inflated)
            .map_err(|e| e.close())
            .and_then(|()| self.deliver(opcode, &inflated));
        if inflated.capacity() <= READ_BUF_SIZE {
            INFLATED.with(|cell| {
                if let Ok(mut slot) = cell.try_borrow_mut() {
                    *slot = inflated;
                }
            });
        }
        result
    }

    fn deliver(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), (u16, &'static str)> {
        if !matches!(self.state, State::Open) {
            return Ok(());
        }
        let message = if opcode == OpCode::Text {
            let Ok(text) = std::str::from_utf8(payload) else {
                return Err((close_code::INVALID_PAYLOAD, "invalid utf-8 in text message"));
            };
            if text == PONG && self.shared.options.heartbeat.enabled {
                self.conn.mark_alive();
                return Ok(());
            }
            MessageRef::Text(text)
        } else {
            MessageRef::Binary(payload)
        };
        for callback in &self.listeners.message {
            if let Some(f) = callback.take() {
                if catch_unwind(AssertUnwindSafe(|| f(&self.conn, message))).is_err() {
                    tracing::error!(conn.id = %self.conn.id(), "message callback panicked");
                }
            }
        }
        if !self.listeners.streams.is_empty() {
            let event = ProviderEvent::Message(self.conn.clone(), message.to_owned_message());
            self.blocked = BlockedEvent::emit(event, &self.listeners.streams);
        }
        Ok(())
    }
}

/// Checks that a fragmented text message is valid UTF-8 so far (fail fast), allowing a
/// character cut at the end.
fn check_utf8_prefix(fragment: &mut Fragment) -> Result<(), (u16, &'static str)> {
    if fragment.opcode != OpCode::Text || fragment.compressed {
        return Ok(());
    }
    let rest = &fragment.data[fragment.utf8_valid..];
    match std::str::from_utf8(rest) {
        Ok(_) => fragment.utf8_valid = fragment.data.len(),
        Err(e) if e.error_len().is_none() => fragment.utf8_valid += e.valid_up_to(),
        Err(_) => return Err((close_code::INVALID_PAYLOAD, "invalid utf-8 in text message")),
    }
    Ok(())
}

/// The most compressed bytes accepted for a message that may inflate to `max`: deflate
/// adds at most 5 bytes per 16 KB block to incompressible data, plus a little framing.
fn compressed_limit(max: u64) -> u64 {
    max.saturating_add(max / 1024).saturating_add(64)
}

/// Appends a close frame with a code and a reason cut to fit a control frame.
pub(crate) fn push_close_frame(out: &mut Vec<u8>, code: u16, reason: &str) {
    let payload = frame::close_payload(code, reason);
    frame::encode_header(OpCode::Close, payload.len(), out);
    out.extend_from_slice(&payload);
}

impl CloseRequest {
    /// A close the provider starts on its own: shutdown, heartbeat kill.
    pub(crate) fn new(code: u16, reason: &str, mode: CloseMode) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            mode,
        }
    }
}
