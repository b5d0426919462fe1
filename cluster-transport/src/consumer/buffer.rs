//! What a consumer is sent while it reconnects: kept in order, bounded in messages and
//! bytes, and queued on the next connection before anything sent after it.
//!
//! The buffer sits behind its own mutex, always taken under the outbox's: `send` looks at
//! the outbox, finds it closed and buffers, all under the outbox lock, and the session
//! installs the next connection's outbox and moves the buffer into it under that same
//! lock. So a message is either in the buffer before the move, or sent on the new
//! connection after it: never reordered, never left behind.

use crate::error::{SendError, SendErrorKind};
use crate::message::{Message, MessageRef};
use crate::options::ConsumerOptions;
use crate::protocol::Outbox;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// Bytes a buffered message counts beyond its payload: the largest header of a frame a
/// client sends (2 + 8 length bytes + 4 mask bytes). Compression never makes a payload
/// larger (an outbox compresses only when that shrinks it), so a buffer within
/// `max_backpressure` always fits in the next connection's empty outbox.
const FRAME_OVERHEAD: usize = 14;

/// Messages waiting for the next connection.
#[derive(Debug)]
pub(super) struct ReconnectBuffer {
    messages: VecDeque<Message>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// The consumer closed for good: nothing is kept any more.
    closed: bool,
}

impl ReconnectBuffer {
    /// An empty buffer with the limits of `options` (bytes at most `max_backpressure`).
    pub(super) fn new(options: &ConsumerOptions) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            max_messages: options.reconnect.buffer_messages,
            max_bytes: options.reconnect.buffer_bytes.min(options.max_backpressure),
            closed: false,
        }
    }

    /// Keeps `message` for the next connection.
    ///
    /// # Errors
    /// [`NotConnected`](SendErrorKind::NotConnected) when buffering is off or the consumer
    /// closed for good; [`BufferFull`](SendErrorKind::BufferFull) when the message does not
    /// fit in what is left.
    pub(super) fn push(&mut self, message: MessageRef<'_>) -> Result<(), SendError> {
        if self.closed || self.max_messages == 0 || self.max_bytes == 0 {
            return Err(SendError::new(SendErrorKind::NotConnected));
        }
        let cost = message.len().saturating_add(FRAME_OVERHEAD);
        let fits = self.messages.len() < self.max_messages
            && self.bytes.saturating_add(cost) <= self.max_bytes;
        if !fits {
            return Err(SendError::new(SendErrorKind::BufferFull));
        }
        self.messages.push_back(message.to_owned_message());
        self.bytes += cost;
        Ok(())
    }

    /// Queues every buffered message on `outbox`, in the order sent, and frees the buffer.
    /// Returns how many went.
    pub(super) fn flush_into(&mut self, outbox: &mut Outbox) -> usize {
        let count = self.messages.len();
        for message in std::mem::take(&mut self.messages) {
            // Cannot fail on a fresh outbox (see FRAME_OVERHEAD); if it ever did, say so.
            if let Err(error) = outbox.push_message(message.as_ref()) {
                tracing::error!(cause = %error, "a buffered message could not be queued");
            }
        }
        self.bytes = 0;
        count
    }

    /// The consumer closed for good: drops what is buffered and refuses from now on.
    /// Returns how many messages were dropped.
    pub(super) fn close(&mut self) -> usize {
        self.closed = true;
        self.bytes = 0;
        std::mem::take(&mut self.messages).len()
    }
}

/// Locks the buffer (a panic elsewhere leaves it usable: it is only ever pushed to,
/// drained or cleared, each of which leaves it consistent).
pub(super) fn lock(buffer: &Mutex<ReconnectBuffer>) -> MutexGuard<'_, ReconnectBuffer> {
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Overflow, Role};

    fn buffer(messages: usize, bytes: usize) -> ReconnectBuffer {
        let mut options = ConsumerOptions::default();
        options.reconnect.buffer_messages = messages;
        options.reconnect.buffer_bytes = bytes;
        options.max_backpressure = 1000;
        ReconnectBuffer::new(&options)
    }

    #[test]
    fn off_by_default_as_the_seed() {
        let mut off = ReconnectBuffer::new(&ConsumerOptions::default());
        let error = off.push(MessageRef::Text("a")).unwrap_err();
        assert_eq!(error.kind(), SendErrorKind::NotConnected);
    }

    #[test]
    fn bounded_in_messages_and_bytes() {
        let mut by_count = buffer(2, 1000);
        by_count.push(MessageRef::Text("a")).unwrap();
        by_count.push(MessageRef::Binary(b"b")).unwrap();
        let full = by_count.push(MessageRef::Text("c")).unwrap_err();
        assert_eq!(full.kind(), SendErrorKind::BufferFull);

        // 2 x (10 + 14) = 48 bytes fit in 50; a third does not.
        let mut by_bytes = buffer(100, 50);
        by_bytes.push(MessageRef::Text("0123456789")).unwrap();
        by_bytes.push(MessageRef::Text("0123456789")).unwrap();
        let full = by_bytes.push(MessageRef::Text("0")).unwrap_err();
        assert_eq!(full.kind(), SendErrorKind::BufferFull);

        // Never more than max_backpressure (1000 here), whatever buffer_bytes says.
        let mut clamped = buffer(100, usize::MAX);
        assert_eq!(clamped.max_bytes, 1000);
        let big = "x".repeat(1000 - FRAME_OVERHEAD + 1);
        let full = clamped.push(MessageRef::Text(&big)).unwrap_err();
        assert_eq!(full.kind(), SendErrorKind::BufferFull);
    }

    #[test]
    fn a_full_buffer_fits_a_fresh_outbox_in_order() {
        let mut buffered = buffer(1000, 1000);
        let mut sent = 0;
        while buffered.push(MessageRef::Text(&format!("m{sent}"))).is_ok() {
            sent += 1;
        }
        let mut outbox = Outbox::new(Role::Client, Overflow::Refuse, 1000, None);
        assert_eq!(buffered.flush_into(&mut outbox), sent);
        assert!(outbox.queued() <= 1000);
        assert_eq!(buffered.bytes, 0);
        let frames: Vec<Vec<u8>> = crate::protocol::decode_client_frames(outbox.buffered())
            .into_iter()
            .map(|(_, _, payload)| payload)
            .collect();
        let expected: Vec<Vec<u8>> = (0..sent).map(|n| format!("m{n}").into_bytes()).collect();
        assert_eq!(frames, expected);
    }

    #[test]
    fn the_overhead_covers_the_largest_client_header() {
        assert_eq!(crate::frame::header_len(usize::MAX, true), FRAME_OVERHEAD);
    }

    #[test]
    fn closing_drops_and_refuses() {
        let mut buffered = buffer(10, 1000);
        buffered.push(MessageRef::Text("a")).unwrap();
        assert_eq!(buffered.close(), 1);
        let error = buffered.push(MessageRef::Text("b")).unwrap_err();
        assert_eq!(error.kind(), SendErrorKind::NotConnected);
    }
}
