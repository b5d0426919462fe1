//! The consumer's websocket: the client side of RFC 6455 (and permessage-deflate) on the
//! crate's own frame codec, over TCP or TLS.
//!
//! Reading is cancel-safe (the only await is one read into the buffer), so the session
//! can `select!` on it. Control frames are answered through a small pending buffer the
//! session writes out with its next batch ([`Socket::write_pending`]); data frames are
//! encoded by [`encode_message`] into the consumer's outbox at `send` time.

use crate::deflate::{Deflate, MessageDeflater, MessageInflater};
use crate::frame::{self, OpCode, Rules};
use crate::message::{close_code, CloseInfo};
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest message the consumer accepts from a provider (tungstenite's default).
pub(crate) const MAX_INCOMING: usize = 64 << 20;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 32 * 1024;
/// Buffers grown past this for one large message are freed once it is handled.
const KEEP_CAPACITY: usize = 1 << 20;

/// TCP, or TLS over TCP.
#[derive(Debug)]
pub(crate) enum ClientStream {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A message from the provider, borrowed from the socket's buffers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    /// The provider closed; our reply is pending ([`Socket::write_pending`]).
    Close(CloseInfo),
}

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed or ended.
    Io(io::Error),
    /// The provider broke the protocol: close with this code.
    Protocol(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Where a complete message's payload is.
enum Payload {
    /// In the read buffer.
    Buffer(Range<usize>),
    /// Reassembled from fragments.
    Fragments,
    /// Inflated.
    Inflated,
}

/// A complete message or a close, found in the buffer.
enum Ready {
    Data(OpCode, Payload),
    Close(CloseInfo),
}

/// A message being reassembled from fragments.
#[derive(Debug, Default)]
struct Fragments {
    opcode: Option<OpCode>,
    compressed: bool,
    data: Vec<u8>,
}

/// One websocket connection to a provider, after the upgrade.
#[derive(Debug)]
pub(crate) struct Socket {
    stream: ClientStream,
    /// Bytes read; `buf[start..]` are not handled yet.
    buf: Vec<u8>,
    start: usize,
    fragments: Fragments,
    inflater: Option<MessageInflater>,
    inflated: Vec<u8>,
    deflate: Option<Deflate>,
    /// Control frames to send: pongs and the close reply.
    pending: Vec<u8>,
    /// A close frame was received or sent: no more data frames are handled.
    closing: bool,
}

impl Socket {
    /// A socket after the upgrade; `leftover` holds bytes read past the response head.
    pub(crate) fn new(stream: ClientStream, leftover: Vec<u8>, deflate: Option<Deflate>) -> Self {
        Self {
            stream,
            buf: leftover,
            start: 0,
            fragments: Fragments::default(),
            inflater: deflate.as_ref().map(Deflate::inflater),
            inflated: Vec::new(),
            deflate,
            pending: Vec::new(),
            closing: false,
        }
    }

    /// permessage-deflate, if negotiated: the outbox compresses what is sent with it.
    pub(crate) fn deflate(&self) -> Option<Deflate> {
        self.deflate
    }

    /// The next message, reading as needed. Cancel-safe. Pings are answered (see
    /// [`write_pending`](Self::write_pending)), pongs dropped.
    pub(crate) async fn read(&mut self) -> Result<Incoming<'_>, ReadError> {
        loop {
            if let Some(ready) = self.parse()? {
                return self.message(ready);
            }
            self.fill().await?;
        }
    }

    /// The next message if one is already complete in the buffer, without reading.
    pub(crate) fn read_buffered(&mut self) -> Option<Result<Incoming<'_>, ReadError>> {
        match self.parse() {
            Ok(Some(ready)) => Some(self.message(ready)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Whether control frames wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes pending control frames (pongs, the close reply).
    pub(crate) async fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.stream.write_all(&pending).await?;
        self.stream.flush().await
    }

    /// Writes encoded frames ([`encode_message`]), after any pending control frames.
    pub(crate) async fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(frames);
            return self.write_pending().await;
        }
        self.stream.write_all(frames).await?;
        self.stream.flush().await
    }

    /// Starts the close handshake with `code`, waits (up to the caller's timeout) for the
    /// provider's close frame or the end of the stream.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if !self.closing {
            self.closing = true;
            push_close(&mut self.pending, code, reason);
        }
        if self.write_pending().await.is_err() {
            return;
        }
        loop {
            match self.read().await {
                Ok(Incoming::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = self.write_pending().await;
        let _ = self.stream.shutdown().await;
    }

    /// Fails the connection: a close frame with `code`, then our FIN.
    pub(crate) async fn fail(&mut self, code: u16, reason: &str) {
        if !self.closing {
            self.closing = true;
            push_close(&mut self.pending, code, reason);
        }
        if self.write_pending().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }

    /// Reads more bytes into the buffer.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.start > 0 {
            // Only a partial frame is left: move it to the front.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // A large message's buffers are not kept for the small ones that follow.
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        if self.inflated.capacity() > KEEP_CAPACITY {
            self.inflated = Vec::new();
        }
        if self.fragments.opcode.is_none() && self.fragments.data.capacity() > KEEP_CAPACITY {
            self.fragments.data = Vec::new();
        }
        let want = self.missing().max(READ_CHUNK);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// Bytes still needed to complete the frame at the front of the buffer.
    fn missing(&self) -> usize {
        match frame::parse_header(&self.buf[self.start..], self.rules()) {
            Ok(Some(h)) => (h.header_len as u64 + h.payload_len)
                .saturating_sub((self.buf.len() - self.start) as u64)
                .try_into()
                .unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    fn rules(&self) -> Rules {
        Rules {
            from_client: false,
            rsv1: self.inflater.is_some(),
            max_payload: MAX_INCOMING as u64,
        }
    }

    /// Handles complete frames at the front of the buffer until one completes a message
    /// or a close; `None` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Ready>, ReadError> {
        let protocol = |e: frame::FrameError| ReadError::Protocol(e.close_code(), e.reason());
        loop {
            let data = &self.buf[self.start..];
            let Some(header) = frame::parse_header(data, self.rules()).map_err(protocol)? else {
                return Ok(None);
            };
            let total = header.header_len as u64 + header.payload_len;
            if (data.len() as u64) < total {
                return Ok(None);
            }
            let payload = self.start + header.header_len..self.start + total as usize;
            self.start = payload.end;
            match header.opcode {
                OpCode::Text | OpCode::Binary => {
                    if self.fragments.opcode.is_some() {
                        return Err(ReadError::Protocol(
                            close_code::PROTOCOL,
                            "expected a continuation frame",
                        ));
                    }
                    if self.closing {
                        continue;
                    }
                    if header.fin && !header.rsv1 {
                        return Ok(Some(Ready::Data(header.opcode, Payload::Buffer(payload))));
                    }
                    if header.fin {
                        inflate(&mut self.inflater, &self.buf[payload], &mut self.inflated)?;
                        return Ok(Some(Ready::Data(header.opcode, Payload::Inflated)));
                    }
                    self.fragments.opcode = Some(header.opcode);
                    self.fragments.compressed = header.rsv1;
                    self.fragments.data.clear();
                    self.fragments.data.extend_from_slice(&self.buf[payload]);
                }
                OpCode::Continuation => {
                    if header.rsv1 {
                        return Err(ReadError::Protocol(
                            close_code::PROTOCOL,
                            "RSV1 set on a continuation frame",
                        ));
                    }
                    let Some(opcode) = self.fragments.opcode else {
                        return Err(ReadError::Protocol(
                            close_code::PROTOCOL,
                            "continuation without a message",
                        ));
                    };
                    if self.fragments.data.len() + payload.len() > MAX_INCOMING {
                        return Err(protocol(frame::FrameError::TooBig));
                    }
                    self.fragments.data.extend_from_slice(&self.buf[payload]);
                    if !header.fin {
                        continue;
                    }
                    self.fragments.opcode = None;
                    if self.closing {
                        continue;
                    }
                    if !self.fragments.compressed {
                        return Ok(Some(Ready::Data(opcode, Payload::Fragments)));
                    }
                    inflate(&mut self.inflater, &self.fragments.data, &mut self.inflated)?;
                    return Ok(Some(Ready::Data(opcode, Payload::Inflated)));
                }
                OpCode::Ping => {
                    if !self.closing {
                        let body = payload.clone();
                        encode_control(OpCode::Pong, &self.buf[body], &mut self.pending);
                    }
                }
                OpCode::Pong => {}
                OpCode::Close => return self.close_received(payload).map(Some),
            }
        }
    }

    /// A close frame from the provider: checks it and queues our reply.
    fn close_received(&mut self, payload: Range<usize>) -> Result<Ready, ReadError> {
        let info = frame::parse_close(&self.buf[payload])
            .map_err(|(code, reason)| ReadError::Protocol(code, reason))?;
        if !self.closing {
            self.closing = true;
            // Echo the provider's code, as RFC 6455 asks.
            if info.code == close_code::NO_STATUS {
                encode_control(OpCode::Close, &[], &mut self.pending);
            } else {
                push_close(&mut self.pending, info.code, "");
            }
        }
        Ok(Ready::Close(info))
    }

    /// Borrows a complete message; text is checked for UTF-8 here, once.
    fn message(&self, ready: Ready) -> Result<Incoming<'_>, ReadError> {
        let (opcode, payload) = match ready {
            Ready::Close(info) => return Ok(Incoming::Close(info)),
            Ready::Data(opcode, payload) => (opcode, payload),
        };
        let bytes = match payload {
            Payload::Buffer(range) => &self.buf[range],
            Payload::Fragments => &self.fragments.data[..],
            Payload::Inflated => &self.inflated[..],
        };
        if opcode == OpCode::Text {
            std::str::from_utf8(bytes).map(Incoming::Text).map_err(|_| {
                ReadError::Protocol(close_code::INVALID_PAYLOAD, "invalid utf-8 in text message")
            })
        } else {
            Ok(Incoming::Binary(bytes))
        }
    }
}

/// Inflates a compressed message into `out`.
fn inflate(
    inflater: &mut Option<MessageInflater>,
    compressed: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let Some(inflater) = inflater else {
        return Err(ReadError::Protocol(close_code::PROTOCOL, "unexpected RSV1"));
    };
    out.clear();
    inflater
        .inflate(compressed, MAX_INCOMING, out)
        .map_err(|e| {
            let (code, reason) = e.close();
            ReadError::Protocol(code, reason)
        })
}

/// Appends a masked data frame carrying `payload` to `out`, compressed when `deflater` is
/// set and compressing pays; `scratch` is where compression happens.
pub(crate) fn encode_message(
    opcode: OpCode,
    payload: &[u8],
    deflater: Option<&mut MessageDeflater>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    scratch.clear();
    let compressed = deflater.is_some_and(|d| d.compress(payload, scratch));
    let body = if compressed { &scratch[..] } else { payload };
    encode_masked(opcode, compressed, body, out);
}

/// Appends a masked control frame to `out`.
fn encode_control(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    encode_masked(opcode, false, payload, out);
}

fn encode_masked(opcode: OpCode, rsv1: bool, payload: &[u8], out: &mut Vec<u8>) {
    // Client frames are masked with a key from a strong source of entropy (RFC 6455 5.3).
    let mask: [u8; 4] = rand::random();
    frame::encode_header_with(true, rsv1, opcode, payload.len(), Some(mask), out);
    let start = out.len();
    out.extend_from_slice(payload);
    frame::apply_mask(&mut out[start..], mask, 0);
}

/// Appends a masked close frame with a code and a reason cut to fit a control frame.
fn push_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    encode_control(OpCode::Close, &frame::close_payload(code, reason), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes what a client wrote, as a server would: (opcode, rsv1, payload) per frame.
    fn decode_client_frames(mut bytes: &[u8]) -> Vec<(OpCode, bool, Vec<u8>)> {
        let mut out = Vec::new();
        let rules = Rules {
            rsv1: true,
            ..Rules::from_client(u64::MAX)
        };
        while let Ok(Some(h)) = frame::parse_header(bytes, rules) {
            let end = h.header_len + h.payload_len as usize;
            let mut payload = bytes[h.header_len..end].to_vec();
            frame::apply_mask(&mut payload, h.mask.unwrap(), 0);
            out.push((h.opcode, h.rsv1, payload));
            bytes = &bytes[end..];
        }
        assert!(bytes.is_empty());
        out
    }

    #[test]
    fn client_frames_are_masked_and_compressed_when_negotiated() {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        encode_message(OpCode::Text, b"hello", None, &mut scratch, &mut out);
        let deflate = Deflate {
            compress_bits: 15,
            compress_takeover: true,
            inflate_takeover: true,
        };
        let mut deflater = deflate.deflater();
        let long = "abc".repeat(100);
        encode_message(
            OpCode::Text,
            long.as_bytes(),
            Some(&mut deflater),
            &mut scratch,
            &mut out,
        );
        let frames = decode_client_frames(&out);
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
        let mut out = Vec::new();
        push_close(&mut out, 1000, &"é".repeat(100));
        let frames = decode_client_frames(&out);
        assert_eq!(frames[0].0, OpCode::Close);
        assert!(frames[0].2.len() <= 125);
        assert!(std::str::from_utf8(&frames[0].2[2..]).is_ok());
    }
}
