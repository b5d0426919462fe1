//! The RFC 6455 state machine both roles drive, without I/O: bytes in, messages and
//! frames to write out. The provider's connections and the consumer run this same code;
//! the [`Role`] decides what differs (masking, which extensions were negotiated).
//!
//! - [`Reader`]: decodes frames from bytes a caller read (unmasking in place), reassembles
//!   fragments, checks UTF-8 and every size limit, inflates permessage-deflate messages.
//! - [`Outbox`]: what is queued for writing: frames encoded for the role, compressed when
//!   that shrinks them, at most one pending pong, the close frame, and the byte count that
//!   `max_backpressure` limits.
//! - [`Closing`]: the close handshake, from either side.
//!
//! [`Driver`](crate::driver::Driver) moves bytes between a socket and these.

mod closing;
mod outbox;

pub(crate) use closing::{CloseMode, CloseRequest, Closing};
#[cfg(test)]
pub(crate) use outbox::decode_client_frames;
pub(crate) use outbox::{lock, update, Outbox, Overflow, MAX_HINT};

use crate::deflate::MessageInflater;
use crate::frame::{self, FrameHeader, OpCode, Rules};
use crate::message::{close_code, CloseInfo, MessageRef};
use std::cell::RefCell;

/// Which end of a connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The provider: reads masked frames, writes unmasked ones.
    Server,
    /// The consumer: reads unmasked frames, masks every frame it writes.
    Client,
}

/// The peer broke the protocol or a limit: the connection fails with this close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

impl Violation {
    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

impl From<frame::FrameError> for Violation {
    fn from(e: frame::FrameError) -> Self {
        Violation::new(e.close_code(), e.reason())
    }
}

impl From<(u16, &'static str)> for Violation {
    fn from((code, reason): (u16, &'static str)) -> Self {
        Violation::new(code, reason)
    }
}

const INVALID_UTF8: Violation =
    Violation::new(close_code::INVALID_PAYLOAD, "invalid utf-8 in text message");

/// What a complete frame means for the caller of [`Reader::read`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A whole message (reassembled and inflated as needed), text checked for UTF-8.
    Message(MessageRef<'a>),
    /// A ping: answer it with a pong carrying the same payload.
    Ping(&'a [u8]),
}

/// How far one call to [`Reader::read`] got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Every complete frame was handled; this many bytes were consumed (the rest is the
    /// start of a frame still incomplete).
    Consumed(usize),
    /// The peer's close frame arrived; nothing after it is read.
    Close(CloseInfo),
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Fragment {
    opcode: OpCode,
    /// The fragments' payloads, still compressed when `compressed`.
    data: Vec<u8>,
    compressed: bool,
    /// For uncompressed text: how far `data` is known to be valid UTF-8.
    utf8_valid: usize,
}

thread_local! {
    /// Where a compressed message is inflated before it is handed out: one buffer per
    /// thread, so a connection holds none between messages.
    static INFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Inflate buffers grown past this for one large message are not kept for the next.
const KEEP_INFLATED: usize = 64 * 1024;

/// The receiving half of the protocol for one connection.
#[derive(Debug)]
pub(crate) struct Reader {
    role: Role,
    /// Largest message accepted, inclusive (after inflation).
    max_payload: usize,
    /// permessage-deflate's receiving half, when negotiated.
    inflater: Option<MessageInflater>,
    fragment: Option<Box<Fragment>>,
}

impl Reader {
    /// A reader for `role` that accepts messages up to `max_payload` bytes.
    pub(crate) fn new(role: Role, max_payload: usize, inflater: Option<MessageInflater>) -> Self {
        Self {
            role,
            max_payload,
            inflater,
            fragment: None,
        }
    }

    /// What a frame header from the peer may carry. A compressed frame may be a little
    /// longer than what it inflates to, so its limit is the compressed bound.
    fn rules(&self) -> Rules {
        let max = self.max_payload as u64;
        Rules {
            from_client: self.role == Role::Server,
            rsv1: self.inflater.is_some(),
            max_payload: if self.inflater.is_some() {
                compressed_limit(max)
            } else {
                max
            },
        }
    }

    /// Bytes still needed to complete the frame at the start of `partial` (an estimate
    /// of 14 while its header is incomplete).
    pub(crate) fn wanted(&self, partial: &[u8]) -> usize {
        match frame::parse_header(partial, self.rules()) {
            Ok(Some(h)) => usize::try_from(h.header_len as u64 + h.payload_len)
                .unwrap_or(usize::MAX)
                .saturating_sub(partial.len()),
            _ => 14,
        }
    }

    /// Decodes every complete frame at the start of `data` (unmasking it in place), handing
    /// messages and pings to `on_frame`; pongs are dropped. Stops at a close frame.
    ///
    /// # Errors
    /// The [`Violation`] the connection fails with; the reader is then done.
    pub(crate) fn read(
        &mut self,
        data: &mut [u8],
        on_frame: &mut impl FnMut(Frame<'_>),
    ) -> Result<Decoded, Violation> {
        let rules = self.rules();
        let mut pos = 0;
        while let Some(rest) = data.get_mut(pos..) {
            let Some((header, total)) = frame::unmask_next(rest, rules)? else {
                break;
            };
            let payload = &rest[header.header_len..total];
            pos += total;
            if header.opcode == OpCode::Close {
                self.fragment = None;
                return Ok(Decoded::Close(frame::parse_close(payload)?));
            }
            self.frame(header, payload, on_frame)?;
        }
        Ok(Decoded::Consumed(pos))
    }

    fn frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        on_frame: &mut impl FnMut(Frame<'_>),
    ) -> Result<(), Violation> {
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.fragment.is_some() {
                    return Err(Violation::new(
                        close_code::PROTOCOL,
                        "expected a continuation frame",
                    ));
                }
                if header.fin {
                    return self.deliver(header.opcode, header.rsv1, payload, on_frame);
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
                    return Err(Violation::new(
                        close_code::PROTOCOL,
                        "RSV1 set on a continuation frame",
                    ));
                }
                let Some(mut fragment) = self.fragment.take() else {
                    return Err(Violation::new(
                        close_code::PROTOCOL,
                        "continuation without a message",
                    ));
                };
                let limit = if fragment.compressed {
                    compressed_limit(self.max_payload as u64)
                } else {
                    self.max_payload as u64
                };
                if (fragment.data.len() + payload.len()) as u64 > limit {
                    return Err(frame::FrameError::TooBig.into());
                }
                fragment.data.extend_from_slice(payload);
                check_utf8_prefix(&mut fragment)?;
                if header.fin {
                    self.deliver(
                        fragment.opcode,
                        fragment.compressed,
                        &fragment.data,
                        on_frame,
                    )
                } else {
                    self.fragment = Some(fragment);
                    Ok(())
                }
            }
            OpCode::Ping => {
                on_frame(Frame::Ping(payload));
                Ok(())
            }
            OpCode::Pong => Ok(()),
            // Handled by `read`, which stops there.
            OpCode::Close => Ok(()),
        }
    }

    /// Hands out a whole message, inflating it first when `compressed`.
    fn deliver(
        &mut self,
        opcode: OpCode,
        compressed: bool,
        payload: &[u8],
        on_frame: &mut impl FnMut(Frame<'_>),
    ) -> Result<(), Violation> {
        if !compressed {
            return emit(opcode, payload, on_frame);
        }
        let Some(inflater) = &mut self.inflater else {
            return Err(Violation::new(
                close_code::PROTOCOL,
                "compressed message without permessage-deflate",
            ));
        };
        let mut inflated = INFLATED
            .with(|cell| cell.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
            .unwrap_or_default();
        inflated.clear();
        let result = inflater
            .inflate(payload, self.max_payload, &mut inflated)
            .map_err(|e| Violation::from(e.close()))
            .and_then(|()| emit(opcode, &inflated, on_frame));
        if inflated.capacity() <= KEEP_INFLATED {
            INFLATED.with(|cell| {
                if let Ok(mut slot) = cell.try_borrow_mut() {
                    *slot = inflated;
                }
            });
        }
        result
    }
}

fn emit(
    opcode: OpCode,
    payload: &[u8],
    on_frame: &mut impl FnMut(Frame<'_>),
) -> Result<(), Violation> {
    let message = if opcode == OpCode::Text {
        MessageRef::Text(std::str::from_utf8(payload).map_err(|_| INVALID_UTF8)?)
    } else {
        MessageRef::Binary(payload)
    };
    on_frame(Frame::Message(message));
    Ok(())
}

/// Checks that a fragmented text message is valid UTF-8 so far (fail fast), allowing a
/// character cut at the end.
fn check_utf8_prefix(fragment: &mut Fragment) -> Result<(), Violation> {
    if fragment.opcode != OpCode::Text || fragment.compressed {
        return Ok(());
    }
    let rest = fragment.data.get(fragment.utf8_valid..).unwrap_or_default();
    match std::str::from_utf8(rest) {
        Ok(_) => fragment.utf8_valid = fragment.data.len(),
        Err(e) if e.error_len().is_none() => fragment.utf8_valid += e.valid_up_to(),
        Err(_) => return Err(INVALID_UTF8),
    }
    Ok(())
}

/// The most compressed bytes accepted for a message that may inflate to `max`: deflate
/// adds at most 5 bytes per 16 KB block to incompressible data, plus a little framing.
/// (Our own senders never send a compressed message larger than the original.)
fn compressed_limit(max: u64) -> u64 {
    max.saturating_add(max / 1024).saturating_add(64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::Deflate;

    fn client_frame(fin: bool, rsv1: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_header_with(
            fin,
            rsv1,
            opcode,
            payload.len(),
            Some([7, 1, 9, 3]),
            &mut out,
        );
        let start = out.len();
        out.extend_from_slice(payload);
        frame::apply_mask(&mut out[start..], [7, 1, 9, 3], 0);
        out
    }

    /// Reads `bytes` as a server would; returns the messages, the pings, and the outcome.
    fn read_all(
        reader: &mut Reader,
        bytes: &[u8],
    ) -> (Vec<String>, usize, Result<Decoded, Violation>) {
        let mut data = bytes.to_vec();
        let mut messages = Vec::new();
        let mut pings = 0;
        let result = reader.read(&mut data, &mut |frame| match frame {
            Frame::Message(MessageRef::Text(t)) => messages.push(t.to_owned()),
            Frame::Message(MessageRef::Binary(b)) => messages.push(format!("{b:?}")),
            Frame::Ping(_) => pings += 1,
        });
        (messages, pings, result)
    }

    #[test]
    fn messages_fragments_and_pings() {
        let mut reader = Reader::new(Role::Server, 100, None);
        let mut bytes = client_frame(true, false, OpCode::Text, b"one");
        bytes.extend(client_frame(false, false, OpCode::Text, b"tw"));
        bytes.extend(client_frame(true, false, OpCode::Ping, b"p"));
        bytes.extend(client_frame(true, false, OpCode::Continuation, b"o"));
        bytes.extend(client_frame(true, false, OpCode::Pong, b""));
        let (messages, pings, result) = read_all(&mut reader, &bytes);
        assert_eq!(messages, ["one", "two"]);
        assert_eq!(pings, 1);
        assert_eq!(result, Ok(Decoded::Consumed(bytes.len())));
    }

    #[test]
    fn an_incomplete_frame_is_left_for_later() {
        let mut reader = Reader::new(Role::Server, 100, None);
        let whole = client_frame(true, false, OpCode::Binary, &[1, 2, 3]);
        let (_, _, result) = read_all(&mut reader, &whole[..whole.len() - 1]);
        assert_eq!(result, Ok(Decoded::Consumed(0)));
        assert_eq!(reader.wanted(&whole[..whole.len() - 1]), 1);
    }

    #[test]
    fn limits_and_violations() {
        let mut reader = Reader::new(Role::Server, 4, None);
        let (_, _, result) = read_all(
            &mut reader,
            &client_frame(true, false, OpCode::Text, b"12345"),
        );
        assert_eq!(result.unwrap_err().code, close_code::TOO_BIG);
        let mut reader = Reader::new(Role::Server, 4, None);
        let mut bytes = client_frame(false, false, OpCode::Binary, b"123");
        bytes.extend(client_frame(true, false, OpCode::Continuation, b"45"));
        assert_eq!(
            read_all(&mut reader, &bytes).2.unwrap_err().code,
            close_code::TOO_BIG
        );
        let mut reader = Reader::new(Role::Server, 100, None);
        let bad = client_frame(true, false, OpCode::Text, &[0xff]);
        assert_eq!(read_all(&mut reader, &bad).2.unwrap_err(), INVALID_UTF8);
        // A client reads unmasked frames only.
        let mut reader = Reader::new(Role::Client, 100, None);
        let masked = client_frame(true, false, OpCode::Text, b"x");
        assert_eq!(
            read_all(&mut reader, &masked).2.unwrap_err().code,
            close_code::PROTOCOL
        );
    }

    #[test]
    fn a_close_frame_stops_reading() {
        let mut reader = Reader::new(Role::Server, 100, None);
        let mut bytes = client_frame(true, false, OpCode::Close, &[0x03, 0xE8, b'b', b'y']);
        bytes.extend(client_frame(true, false, OpCode::Text, b"after"));
        let (messages, _, result) = read_all(&mut reader, &bytes);
        assert!(messages.is_empty());
        assert_eq!(result, Ok(Decoded::Close(CloseInfo::new(1000, "by"))));
    }

    #[test]
    fn compressed_messages_inflate_within_the_limit() {
        let deflate = Deflate {
            compress_bits: 15,
            compress_takeover: false,
            inflate_takeover: false,
        };
        let text = "abc".repeat(40);
        let mut wire = Vec::new();
        assert!(deflate.deflater().compress(text.as_bytes(), &mut wire));
        let bytes = client_frame(true, true, OpCode::Text, &wire);
        let mut reader = Reader::new(Role::Server, 120, Some(deflate.inflater()));
        assert_eq!(read_all(&mut reader, &bytes).0, [text]);
        let mut small = Reader::new(Role::Server, 119, Some(deflate.inflater()));
        assert_eq!(
            read_all(&mut small, &bytes).2.unwrap_err().code,
            close_code::TOO_BIG
        );
        let mut plain = Reader::new(Role::Server, 120, None);
        assert_eq!(
            read_all(&mut plain, &bytes).2.unwrap_err().code,
            close_code::PROTOCOL
        );
    }
}
