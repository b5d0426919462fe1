//! One websocket connection's owner task, for either role: reads the socket into the
//! protocol core, hands messages to the role's [`Handler`], writes what other tasks
//! queued in the [`Outbox`] in batches, and runs the close handshake.
//!
//! Memory is the point of this design (see DESIGN.md, "What an idle connection costs"):
//! bytes are read into one buffer per worker thread, so an idle connection holds no read
//! buffer at all; only a partial frame is copied into the connection's own `partial`, and
//! the write buffers are freed once they drain.

use crate::message::{CloseInfo, MessageRef};
use crate::protocol::{
    self, CloseMode, Closing, Decoded, Frame, Outbox, Reader, Violation, MAX_HINT,
};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Size of the per-thread read buffer. One read takes at most this many bytes.
const READ_BUF_SIZE: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF_SIZE]);
    /// When this thread began handling the messages of its current read.
    static READ_STARTED: Cell<ReadClock> = const { Cell::new(ReadClock::Outside) };
}

/// Where this thread is, for [`read_started`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadClock {
    /// Not handling a read.
    Outside,
    /// Handling a read; nobody asked the time yet.
    Unread,
    /// Handling a read whose first ask took this instant.
    At(Instant),
}

/// When this thread began handling the messages of the read it is handling: the first
/// call during a read takes the clock, and every later one in the same read gets the same
/// instant (the messages of one read are handled one after another, so a later message's
/// time from then includes the earlier ones'). Outside a read: now. One clock read per
/// read instead of one per message, for cluster-rpc's call durations.
pub fn read_started() -> Instant {
    READ_STARTED.with(|cell| match cell.get() {
        ReadClock::At(instant) => instant,
        ReadClock::Unread => {
            let now = Instant::now();
            cell.set(ReadClock::At(now));
            now
        }
        ReadClock::Outside => Instant::now(),
    })
}

/// What a role does with a connection's messages.
pub(crate) trait Handler {
    /// The queue other tasks send through; the driver writes what it holds.
    fn outbox(&self) -> &Mutex<Outbox>;

    /// How long a close this side starts waits at most for the peer's close frame.
    fn close_timeout(&self) -> Duration;

    /// A message arrived. Must not wait on anything: a slow listener must never stall
    /// the connection's I/O.
    fn message(&mut self, message: MessageRef<'_>);

    /// Every message of one read was handed over (the provider counts them here, once
    /// per read rather than per message).
    fn read_done(&mut self) {}
}

/// Drives one connection until it ends; returns how it ended.
pub(crate) struct Driver<S, H> {
    stream: S,
    handler: H,
    reader: Reader,
    /// Bytes of a frame not yet complete; empty (and unallocated) between frames.
    partial: Vec<u8>,
    /// Bytes taken from the outbox, written up to `written`.
    writing: Vec<u8>,
    written: usize,
    closing: Closing,
    close_deadline: Option<Pin<Box<Sleep>>>,
    read_eof: bool,
    /// After failing the connection: send our FIN as soon as the close frame is out.
    half_close: bool,
    fin_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin, H: Handler> Driver<S, H> {
    /// A driver for an upgraded `stream`; `leftover` holds bytes read past the upgrade.
    pub(crate) fn new(stream: S, handler: H, reader: Reader, leftover: Vec<u8>) -> Self {
        Self {
            stream,
            handler,
            reader,
            partial: leftover,
            writing: Vec::new(),
            written: 0,
            closing: Closing::Open,
            close_deadline: None,
            read_eof: false,
            half_close: false,
            fin_sent: false,
        }
    }

    /// The role's handler.
    pub(crate) fn handler(&self) -> &H {
        &self.handler
    }

    /// The socket (for the final FIN) and the handler.
    pub(crate) fn into_parts(self) -> (S, H) {
        (self.stream, self.handler)
    }

    /// Runs the connection until it ends.
    pub(crate) fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<CloseInfo> {
        loop {
            let mut progress = false;
            if let Some(abort) = self.take_outbox() {
                return Poll::Ready(abort);
            }
            match self.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Pending => {}
                Poll::Ready(Err(_)) => return Poll::Ready(self.closing.ended_abnormally()),
            }
            let flushed =
                self.writing.is_empty() && !protocol::lock(self.handler.outbox()).has_pending();
            if let Closing::Done(info) = &self.closing {
                if flushed {
                    return Poll::Ready(CloseInfo::clone(info));
                }
            }
            if self.half_close && flushed && !self.fin_sent {
                // The peer broke the protocol: our close frame is out, and a FIN right
                // behind it tells the peer to finish, so we need not wait for a timeout.
                if let Poll::Ready(result) = Pin::new(&mut self.stream).poll_shutdown(cx) {
                    self.fin_sent = true;
                    progress = true;
                    if result.is_err() {
                        return Poll::Ready(self.closing.ended_abnormally());
                    }
                }
            }
            if let Some(deadline) = &mut self.close_deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    self.close_deadline = None;
                    return Poll::Ready(self.closing.ended_abnormally());
                }
            }
            if !self.read_eof && !self.closing.is_done() {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(self.closing.ended_abnormally()),
                    Poll::Pending => {}
                }
            }
            if self.read_eof && self.writing.is_empty() {
                return Poll::Ready(self.closing.ended_abnormally());
            }
            if progress {
                continue;
            }
            let mut outbox = protocol::lock(self.handler.outbox());
            // Queued bytes can wait while a write is pending: the socket wakes us for it.
            let nothing_to_take = !outbox.has_pending() || !self.writing.is_empty();
            if nothing_to_take && !outbox.wants_close() {
                outbox.park(cx.waker());
                drop(outbox);
                if self.writing.is_empty() {
                    // Parked with nothing in flight: hold no write buffer while idle.
                    self.writing = Vec::new();
                }
                return Poll::Pending;
            }
        }
    }

    /// Takes queued bytes and close requests from the outbox. Returns `Some` to end now.
    fn take_outbox(&mut self) -> Option<CloseInfo> {
        let mut outbox = protocol::lock(self.handler.outbox());
        outbox.unpark();
        let mut starting = None;
        if let Some(request) = outbox.take_close() {
            let info = CloseInfo::new(request.code, request.reason);
            if request.mode == CloseMode::Abort {
                return Some(info);
            }
            if self.closing.is_open() {
                if !outbox.push_close(Some(info.code), &info.reason) {
                    // No room even for the close frame: the peer is not reading.
                    return Some(info);
                }
                starting = Some((info, request.mode));
            }
        }
        outbox.take(&mut self.writing, self.written);
        drop(outbox);
        if let Some((info, mode)) = starting {
            self.start_close(info, mode);
        }
        None
    }

    fn start_close(&mut self, info: CloseInfo, mode: CloseMode) {
        self.arm_close_deadline();
        self.closing.start(info, mode);
    }

    /// Bounds the rest of a close, whichever side started it and in any mode: the peer's
    /// close frame and the flush of what is still queued get the close timeout together,
    /// then the socket is dropped. A peer that stopped reading cannot hold a closing
    /// connection (and its queued bytes) open.
    fn arm_close_deadline(&mut self) {
        if self.close_deadline.is_none() {
            let timeout = self.handler.close_timeout();
            self.close_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        }
    }

    /// Writes what is taken. `Ready(Ok(true))` when everything was written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.writing.is_empty() {
            return Poll::Ready(Ok(false));
        }
        while let Some(rest) = self.writing.get(self.written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        if self.writing.capacity() > MAX_HINT {
            // A backlog's buffer (a slow reader's): not kept while the next one builds.
            self.writing = Vec::new();
        } else {
            self.writing.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(true))
    }

    /// Reads once and handles every complete frame. `Ready(Ok(()))` means progress.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.partial.is_empty() {
            // Frames already buffered (bytes after the upgrade, or an incomplete frame).
            let mut data = std::mem::take(&mut self.partial);
            let before = data.len();
            let consumed = self.process(&mut data);
            self.keep_partial(data, consumed);
            if consumed > 0 || self.partial.len() != before {
                return Poll::Ready(Ok(()));
            }
            // Incomplete frame: read the rest into `partial` itself.
            let want = self.reader.wanted(&self.partial).max(4096);
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
        let Some(data) = buf.get_mut(..n) else {
            return Poll::Ready(Ok(()));
        };
        let consumed = self.process(data);
        if let Some(rest) = data.get(consumed..) {
            self.partial.extend_from_slice(rest);
        }
        Poll::Ready(Ok(()))
    }

    fn keep_partial(&mut self, mut data: Vec<u8>, consumed: usize) {
        if consumed >= data.len() {
            // Between frames: hold no buffer at all.
            self.partial = Vec::new();
        } else {
            data.drain(..consumed);
            self.partial = data;
        }
    }

    /// Handles every complete frame at the start of `data`; returns the bytes consumed.
    fn process(&mut self, data: &mut [u8]) -> usize {
        if self.closing.is_done() {
            return data.len();
        }
        // After our close frame, messages are still decoded (the peer may finish one)
        // but no longer delivered, and pings are no longer answered.
        let open = self.closing.is_open();
        // Whether the kernel took everything written so far (see `Outbox::set_pong`).
        let socket_idle = self.writing.is_empty();
        let Self {
            reader, handler, ..
        } = self;
        READ_STARTED.set(ReadClock::Unread);
        let result = reader.read(data, &mut |frame| match frame {
            Frame::Message(message) if open => handler.message(message),
            Frame::Ping(payload) if open => {
                protocol::lock(handler.outbox()).set_pong(payload, socket_idle)
            }
            Frame::Message(_) | Frame::Ping(_) => {}
        });
        READ_STARTED.set(ReadClock::Outside);
        self.handler.read_done();
        match result {
            Ok(Decoded::Consumed(n)) => n,
            Ok(Decoded::Close(info)) => {
                if let Some(echo) = self.closing.peer_closed(info) {
                    // An echo that does not fit is not sent; the connection ends anyway.
                    protocol::lock(self.handler.outbox()).push_close(echo, "");
                }
                self.arm_close_deadline();
                data.len()
            }
            Err(violation) => {
                self.fail(violation);
                data.len()
            }
        }
    }

    /// Starts closing the connection because the peer broke the protocol or a limit.
    fn fail(&mut self, violation: Violation) {
        if !self.closing.is_open() {
            self.closing.give_up();
            self.arm_close_deadline();
            return;
        }
        let fits = protocol::lock(self.handler.outbox())
            .push_close(Some(violation.code), violation.reason);
        self.start_close(
            CloseInfo::new(violation.code, violation.reason),
            if fits {
                CloseMode::Graceful
            } else {
                CloseMode::Immediate
            },
        );
        self.half_close = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, OpCode};
    use crate::protocol::{Overflow, Role};
    use tokio::io::AsyncWriteExt;

    /// Notes what `read_started` says for each message.
    struct Stamps {
        outbox: Mutex<Outbox>,
        seen: Vec<Instant>,
    }

    impl Handler for Stamps {
        fn outbox(&self) -> &Mutex<Outbox> {
            &self.outbox
        }

        fn close_timeout(&self) -> Duration {
            Duration::from_secs(5)
        }

        fn message(&mut self, _: MessageRef<'_>) {
            self.seen.push(read_started());
        }
    }

    /// A client's (masked) binary frame.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = Vec::new();
        frame::encode_header_with(
            true,
            false,
            OpCode::Binary,
            payload.len(),
            Some(mask),
            &mut out,
        );
        let start = out.len();
        out.extend_from_slice(payload);
        frame::apply_mask(&mut out[start..], mask, 0);
        out
    }

    async fn drive_until<S: AsyncRead + AsyncWrite + Unpin>(
        driver: &mut Driver<S, Stamps>,
        messages: usize,
    ) {
        std::future::poll_fn(|cx| {
            let _ = driver.poll_drive(cx);
            if driver.handler.seen.len() >= messages {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    #[tokio::test]
    async fn the_messages_of_one_read_share_the_instant_it_began() {
        let (mut client, server) = tokio::io::duplex(4096);
        let handler = Stamps {
            outbox: Mutex::new(Outbox::new(Role::Server, Overflow::Close, 4096, None)),
            seen: Vec::new(),
        };
        let reader = Reader::new(Role::Server, 4096, None);
        let mut driver = Driver::new(server, handler, reader, Vec::new());
        client
            .write_all(&[frame(b"a"), frame(b"b")].concat())
            .await
            .unwrap();
        drive_until(&mut driver, 2).await;
        assert_eq!(
            READ_STARTED.get(),
            ReadClock::Outside,
            "once the read is handled"
        );
        let between = read_started();
        assert_eq!(
            READ_STARTED.get(),
            ReadClock::Outside,
            "outside a read: now, kept nowhere"
        );
        client.write_all(&frame(b"c")).await.unwrap();
        drive_until(&mut driver, 3).await;
        let seen = &driver.handler.seen;
        assert_eq!(seen[0], seen[1], "one read, one instant");
        assert!(
            seen[0] <= between && between <= seen[2],
            "{seen:?} {between:?}"
        );
    }
}
