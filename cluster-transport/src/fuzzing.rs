//! Entry points for the cargo-fuzz targets in `fuzz/`: thin wrappers that feed arbitrary
//! bytes to every decoder that reads the network. Each one must return for any input;
//! a panic is a bug. Not a public API: re-exported as the hidden `__fuzz` module, with no
//! stability promise.

use crate::compressor::Compressor;
use crate::deflate::{self, Deflate, Deflater, MessageDeflater};
use crate::driver::{Driver, Handler};
use crate::frame::{self, OpCode};
use crate::handshake::{self, Gate, Upgraded};
use crate::http::HttpRoutes;
use crate::message::MessageRef;
use crate::options::{HandshakeOptions, ProviderOptions, DEFAULT_PATH};
use crate::protocol::{self, Outbox, Overflow, Reader, Role};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The upgrade-request parser: parses `data` as an HTTP request head, routes it, decodes
/// its query, then runs the provider's whole handshake on it over an in-memory stream and,
/// when that upgrades, the connection core on whatever bytes follow the request.
pub fn upgrade_request(data: &[u8]) {
    let limits = HandshakeOptions::default();
    if let Ok(Some((request, consumed))) = handshake::parse_request(data, &limits) {
        assert!(consumed <= data.len(), "consumed more than was given");
        if let handshake::Route::Upgrade { query, .. } = handshake::route(&request, DEFAULT_PATH) {
            let _ = crate::query::decode_query(&query);
        }
    }
    // Compression on, so the extension offer parser runs too.
    let options = fuzz_options(Compressor::Dedicated4Kb);
    let http = HttpRoutes::default();
    let gate = Gate {
        options: &options,
        auth_handler: None,
        upgrade_check: None,
        http: &http,
    };
    let mut stream = Script::new(data);
    let accepted = {
        let accept = handshake::accept(&mut stream, IpAddr::V4(Ipv4Addr::LOCALHOST), gate);
        poll_to_end(accept)
    };
    if let Some(Ok(Upgraded {
        leftover, deflate, ..
    })) = accepted
    {
        // What the client sent after its request is the start of its first frame.
        drive(Role::Server, Script::new(&[]), leftover, deflate);
    }
}

/// The frame decoder: first the pure header parser and unmasking over `data` frame by
/// frame, then the connection core (fragments, UTF-8, control and close frames, the
/// pending pong, the payload limit) reading the rest of `data` as a peer's byte stream,
/// in reads of a size the first byte's low 7 bits pick; its top bit picks the role (clear:
/// the provider reading a client's frames; set: the consumer reading a server's).
pub fn frames(data: &[u8]) {
    let mut buf = data.to_vec();
    let mut pos = 0;
    while let Some(rest) = buf.get_mut(pos..) {
        match frame::unmask_next(rest, frame::Rules::from_client(1 << 20)) {
            Ok(Some((_, total))) => pos += total,
            _ => break,
        }
    }
    let (role, chunk, stream) = match data.split_first() {
        Some((first, rest)) => {
            let role = if first & 0x80 == 0 {
                Role::Server
            } else {
                Role::Client
            };
            (role, usize::from(first & 0x7F).max(1), rest)
        }
        None => (Role::Server, 1, data),
    };
    drive(role, Script::new(stream).chunked(chunk), Vec::new(), None);
}

/// The frame decoder with permessage-deflate negotiated. The first byte picks the read
/// size and which side keeps its context. With its top bit clear the rest is a raw client
/// byte stream (RSV1 frames with arbitrary compressed bytes); with it set, the rest is
/// split at `0xFF` into messages that are compressed for real, framed (some fragmented)
/// and then corrupted at one byte the second input byte picks, so inflation runs deep.
pub fn frames_deflate(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let deflate = Deflate {
        compress_bits: 9 + (mode & 0x07).min(6),
        compress_takeover: mode & 0x08 != 0,
        inflate_takeover: mode & 0x10 != 0,
    };
    let chunk = usize::from(mode & 0x60) * 8 + 1;
    let stream = if mode & 0x80 == 0 {
        rest.to_vec()
    } else {
        compressed_stream(rest, deflate.inflate_takeover)
    };
    drive(
        Role::Server,
        Script::new(&stream).chunked(chunk),
        Vec::new(),
        Some(deflate),
    );
}

/// The deflate encoders, as the provider and the consumer send with them: `data` after
/// its first byte is one message, compressed with the quick encoder (short messages) or
/// zlib, with or without context takeover and with the window the first byte picks,
/// three times in a row. Each time, a message compressed must come out smaller than it
/// went in and inflate back to itself; one sent uncompressed must leave the stream in
/// step for the next.
pub fn deflate_encoder(data: &[u8]) {
    let Some((&mode, message)) = data.split_first() else {
        return;
    };
    let bits = 8 + (mode & 0x07);
    let takeover = mode & 0x08 != 0;
    let quick_window = mode & 0x10 != 0;
    if quick_window {
        // The quick encoder alone, with a 256-byte window zlib cannot inflate: check the
        // result against an inflater with the smallest window it has.
        let mut out = Vec::new();
        if deflate::quick_compress(message, bits, &mut out) {
            assert!(
                out.len() < message.len(),
                "the quick encoder grew a message"
            );
            let mut back = Vec::new();
            deflate::Inflater::new(false)
                .inflate(&out, message.len(), &mut back)
                .expect("what the quick encoder writes inflates");
            assert_eq!(back, message, "the quick encoder changed a message");
        } else {
            assert!(out.is_empty(), "a refused message left bytes behind");
        }
    }
    let negotiated = Deflate {
        compress_bits: bits.max(9),
        compress_takeover: takeover,
        inflate_takeover: takeover,
    };
    let mut deflater: MessageDeflater = negotiated.deflater();
    let mut inflater = negotiated.inflater();
    for _ in 0..3 {
        let mut wire = Vec::new();
        if !deflater.compress(message, &mut wire) {
            assert!(
                wire.is_empty(),
                "a message sent uncompressed left bytes behind"
            );
            continue;
        }
        assert!(wire.len() < message.len(), "a compressed message grew");
        let mut back = Vec::new();
        inflater
            .inflate(&wire, message.len(), &mut back)
            .expect("what we compress inflates within its own length");
        assert_eq!(
            back, message,
            "a message changed on its way through deflate"
        );
    }
}

/// Client frames carrying `data`'s `0xFF`-separated pieces, each compressed (the first
/// byte, if any, is the position of one corrupted byte).
fn compressed_stream(data: &[u8], takeover: bool) -> Vec<u8> {
    let Some((&corrupt_at, messages)) = data.split_first() else {
        return Vec::new();
    };
    let mut deflater = Deflater::new(15, takeover);
    let mut out = Vec::new();
    for (i, message) in messages.split(|b| *b == 0xFF).enumerate() {
        let mut compressed = Vec::new();
        if !deflater.compress(message, &mut compressed) {
            continue;
        }
        let opcode = if i % 2 == 0 {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        // Every third message in two fragments; only the first carries RSV1.
        let cut = if i % 3 == 2 {
            compressed.len() / 2
        } else {
            compressed.len()
        };
        let (first, second) = compressed.split_at(cut);
        frame::encode_header_with(
            second.is_empty(),
            true,
            opcode,
            first.len(),
            Some([1, 2, 3, 4]),
            &mut out,
        );
        let start = out.len();
        out.extend_from_slice(first);
        frame::apply_mask(&mut out[start..], [1, 2, 3, 4], 0);
        if !second.is_empty() {
            frame::encode_header_with(
                true,
                false,
                OpCode::Continuation,
                second.len(),
                Some([0; 4]),
                &mut out,
            );
            out.extend_from_slice(second);
        }
    }
    if let Some(byte) = out.get_mut(usize::from(corrupt_at) * 7) {
        *byte ^= 0x5A;
    }
    out
}

/// The query decoder: `data` as a URL query, and as the request target around it.
pub fn query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parameters = crate::query::decode_query(&text);
    for (key, value) in &parameters {
        let _ = crate::query::encode_uri_component(key);
        let _ = crate::query::encode_uri_component(value);
    }
    let target = format!("/connect?{text}");
    if let Some((_, q)) = target.split_once('?') {
        let _ = crate::query::decode_query(q);
    }
}

/// The provider's options for the handshake target: an auth parameter to check, a small
/// payload limit.
fn fuzz_options(compressor: Compressor) -> ProviderOptions {
    let mut options = ProviderOptions::default();
    options
        .auth
        .parameters
        .insert("key".into(), "SECRET".into());
    options.ws.max_payload_length = 4096;
    options.ws.compressor = compressor;
    options
}

/// Echoes every message back, so messages also go through the send path.
struct Echo {
    outbox: Mutex<Outbox>,
}

impl Handler for Echo {
    fn outbox(&self) -> &Mutex<Outbox> {
        &self.outbox
    }

    fn close_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn message(&mut self, message: MessageRef<'_>) {
        let _ = protocol::lock(&self.outbox).push_message(message);
    }
}

/// Runs the connection core for `role` over `stream` until it ends (the script ends with
/// EOF, so it always does), inside a runtime for its timers.
fn drive(role: Role, stream: Script, leftover: Vec<u8>, deflate: Option<Deflate>) {
    RUNTIME.with(|rt| {
        let _entered = rt.enter();
        let overflow = match role {
            Role::Server => Overflow::Close,
            Role::Client => Overflow::Refuse,
        };
        let echo = Echo {
            outbox: Mutex::new(Outbox::new(
                role,
                overflow,
                64 * 1024,
                deflate.map(|d| d.deflater()),
            )),
        };
        let reader = Reader::new(role, 4096, deflate.map(|d| d.inflater()));
        let mut driver = Driver::new(stream, echo, reader, leftover);
        let mut cx = Context::from_waker(Waker::noop());
        // Every poll reads or ends; the bound only guards the fuzzer against a livelock,
        // which would show up as a timeout instead.
        for _ in 0..100_000 {
            if driver.poll_drive(&mut cx).is_ready() {
                return;
            }
        }
        panic!("connection core did not end on a finished input");
    });
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Polls a future that never waits on anything but the in-memory stream.
fn poll_to_end<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
    }
    None
}

/// An in-memory peer: yields a script of bytes in reads of at most `chunk` bytes, then
/// EOF; takes every write and forgets it.
struct Script {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl Script {
    fn new(data: &[u8]) -> Self {
        Self {
            data: data.to_vec(),
            pos: 0,
            chunk: usize::MAX,
        }
    }

    fn chunked(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self
    }
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.remaining()).min(self.chunk);
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /connect?key=SECRET HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn entry_points_run_on_samples() {
        let mut upgrade_and_frame = UPGRADE.to_vec();
        // A masked text frame "hi", then a close frame with code 1000.
        upgrade_and_frame.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        upgrade_and_frame.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
        upgrade_request(&upgrade_and_frame);
        upgrade_request(b"GET /alive HTTP/1.1\r\n\r\n");
        upgrade_request(b"");
        frames(&upgrade_and_frame[UPGRADE.len() - 1..]);
        frames(&[3, 0x01, 0x81, 0x01, 0, 0, 0, 0, 0x80]);
        // The consumer's side: an unmasked text frame, then a ping.
        frames(&[0x81, 0x81, 0x01, b'x', 0x89, 0x00]);
        frames(&[]);
        deflate_encoder(b"\x08{\"type\":\"tick\",\"type\":\"tick\",\"type\":\"tick\"}");
        deflate_encoder(&[
            0x17, 0x90, 0xff, 0xa3, 0x91, 0xc4, 0xee, 0xb0, 0x99, 0xd1, 0xf0,
        ]);
        deflate_encoder(&[]);
        query(b"key=SECRET&name=a%20b%26c%2F%C3%A9&%FF=%");
    }

    /// Every input in the fuzz corpora runs clean (the regression tests of what the
    /// fuzzers found live there, next to the seeds).
    #[test]
    fn fuzz_corpora_run_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 5] = [
            ("upgrade_request", upgrade_request),
            ("frames", frames),
            ("frames_deflate", frames_deflate),
            ("deflate_encoder", deflate_encoder),
            ("query", query),
        ];
        for (target, run) in targets {
            let Ok(entries) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).unwrap();
                let started = std::time::Instant::now();
                run(&data);
                let took = started.elapsed();
                assert!(
                    took < std::time::Duration::from_secs(2),
                    "{} took {took:?}",
                    entry.path().display()
                );
            }
        }
    }
}
