//! permessage-deflate (RFC 7692): the offer and response of the upgrade, and the codec that
//! compresses and inflates whole messages.
//!
//! A message is compressed with a sync flush and sent without the trailing
//! `00 00 ff ff`; the receiver appends it back before inflating. Without context takeover
//! each message starts from an empty window, so one compressor (and one decompressor) per
//! thread serves every connection; with it, each connection keeps its own.

mod quick;

use crate::compressor::Compressor;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The extension's token in `Sec-WebSocket-Extensions`.
const EXTENSION: &str = "permessage-deflate";
/// What a sync flush ends with; not sent on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Messages shorter than this are sent uncompressed: deflate cannot make them smaller.
pub(crate) const MIN_COMPRESS_LEN: usize = 16;
/// What our consumer offers: first what the original's does, then the same without
/// context takeover on our side, for a provider that prefers to ask for that (RFC 7692
/// lists offers in order of preference; the Autobahn suite's 13.2, 13.5 and 13.6 cases
/// accept only such an offer).
pub(crate) const CLIENT_OFFER: &str = "permessage-deflate; client_max_window_bits, \
     permessage-deflate; client_no_context_takeover; client_max_window_bits";

/// The parameters of one `permessage-deflate` offer or response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) server_no_context_takeover: bool,
    pub(crate) client_no_context_takeover: bool,
    pub(crate) server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value (allowed in offers only).
    pub(crate) client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    /// Parses the parameters after the extension token; `None` if any is unknown,
    /// repeated or out of range.
    fn parse<'a>(params: impl Iterator<Item = &'a str>) -> Option<Self> {
        let mut out = Params::default();
        for param in params {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (param.trim(), None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) if !out.server_no_context_takeover => {
                    out.server_no_context_takeover = true;
                }
                ("client_no_context_takeover", None) if !out.client_no_context_takeover => {
                    out.client_no_context_takeover = true;
                }
                ("server_max_window_bits", Some(v)) if out.server_max_window_bits.is_none() => {
                    out.server_max_window_bits = Some(window_bits(v)?);
                }
                ("client_max_window_bits", v) if out.client_max_window_bits.is_none() => {
                    out.client_max_window_bits = Some(match v {
                        Some(v) => Some(window_bits(v)?),
                        None => None,
                    });
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// The response header value that accepts these parameters.
    fn header(&self) -> String {
        let mut out = String::from(EXTENSION);
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            out.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if let Some(Some(bits)) = self.client_max_window_bits {
            out.push_str(&format!("; client_max_window_bits={bits}"));
        }
        out
    }
}

/// A window size in bits, 8 to 15, written as plain digits.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// The offers in one or more `Sec-WebSocket-Extensions` header values, in order:
/// `Some(params)` for each `permessage-deflate` offer, `None` for a malformed one.
fn offers<'a>(values: &'a [&'a str]) -> impl Iterator<Item = Option<Params>> + 'a {
    values
        .iter()
        .flat_map(|value| value.split(','))
        .filter_map(|offer| {
            let mut parts = offer.split(';');
            let name = parts.next()?.trim();
            name.eq_ignore_ascii_case(EXTENSION)
                .then(|| Params::parse(parts))
        })
}

/// How one side of one connection compresses and inflates, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The window this side compresses with (9 to 15).
    pub(crate) compress_bits: u8,
    /// This side keeps its compression context between messages.
    pub(crate) compress_takeover: bool,
    /// The peer keeps its context: our decompressor must keep its window too.
    pub(crate) inflate_takeover: bool,
}

/// The server's side: picks the first acceptable offer. Returns how this connection
/// compresses and the `Sec-WebSocket-Extensions` value of the 101, or `None` to decline
/// every offer (the 101 then carries no extension header).
pub(crate) fn accept(offers_header: &[&str], compressor: Compressor) -> Option<(Deflate, String)> {
    if !compressor.is_enabled() {
        return None;
    }
    let (bits, takeover) = compressor.window();
    offers(offers_header).flatten().next().map(|offer| {
        let compress_bits = offer
            .server_max_window_bits
            .map_or(bits, |limit| bits.min(limit));
        let response = Params {
            server_no_context_takeover: !takeover || offer.server_no_context_takeover,
            // A shared decompressor needs every message to stand alone.
            client_no_context_takeover: !takeover || offer.client_no_context_takeover,
            server_max_window_bits: offer.server_max_window_bits.map(|_| compress_bits),
            client_max_window_bits: None,
        };
        let deflate = Deflate {
            compress_bits,
            compress_takeover: !response.server_no_context_takeover,
            inflate_takeover: !response.client_no_context_takeover,
        };
        (deflate, response.header())
    })
}

/// The client's side: checks the server's answer to [`CLIENT_OFFER`]. `Ok(None)` when the
/// server declined; `Err` when it answered with something we did not offer.
pub(crate) fn check_response(values: &[&str]) -> Result<Option<Deflate>, &'static str> {
    let mut responses = offers(values);
    let Some(first) = responses.next() else {
        if values.iter().any(|v| !v.trim().is_empty()) {
            return Err("the provider accepted an extension we did not offer");
        }
        return Ok(None);
    };
    if responses.next().is_some() {
        return Err("the provider accepted permessage-deflate twice");
    }
    let params = first.ok_or("invalid permessage-deflate response")?;
    let compress_bits = match params.client_max_window_bits {
        Some(None) => return Err("client_max_window_bits without a value in the response"),
        Some(Some(bits)) => bits,
        None => 15,
    };
    Ok(Some(Deflate {
        compress_bits,
        compress_takeover: !params.client_no_context_takeover,
        inflate_takeover: !params.server_no_context_takeover,
    }))
}

/// Compresses whole messages.
pub(crate) struct Deflater {
    inner: Compress,
    takeover: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("takeover", &self.takeover)
            .finish_non_exhaustive()
    }
}

impl Deflater {
    /// A compressor with a window of `bits`. zlib has no 256-byte raw window: 8 means 9,
    /// as in every zlib-based peer (inflaters take the larger window in practice).
    pub(crate) fn new(bits: u8, takeover: bool) -> Self {
        Self {
            inner: Compress::new_with_window_bits(Compression::fast(), false, bits.clamp(9, 15)),
            takeover,
        }
    }

    /// Appends `input` compressed as one message to `out`. On an error (which a healthy
    /// zlib never returns) `out` is left as it was, and the caller sends uncompressed.
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let before = self.inner.total_in();
        loop {
            out.reserve(input.len() / 2 + 64);
            let consumed = (self.inner.total_in() - before) as usize;
            let rest = input.get(consumed..).unwrap_or_default();
            if self
                .inner
                .compress_vec(rest, out, FlushCompress::Sync)
                .is_err()
            {
                return self.fail(out, start);
            }
            // All input taken and room left over: the flush is complete.
            let done = (self.inner.total_in() - before) as usize == input.len();
            if done && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        } else if out.len() == start {
            // Nothing new to flush (an empty message right after another): an empty
            // stored block, which the receiver completes with the tail it appends.
            out.push(0x00);
        } else {
            return self.fail(out, start);
        }
        if !self.takeover {
            self.inner.reset();
        }
        true
    }

    /// Undoes a failed compression: `out` as it was, a fresh context.
    fn fail(&mut self, out: &mut Vec<u8>, start: usize) -> bool {
        self.reset();
        out.truncate(start);
        false
    }

    /// Forgets every earlier message: the next one refers to nothing before it.
    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the connection's payload limit.
    TooBig,
    /// It is not a valid deflate stream.
    Invalid,
}

impl InflateError {
    /// The close code and reason this error closes the connection with.
    pub(crate) fn close(self) -> (u16, &'static str) {
        match self {
            InflateError::TooBig => (crate::close_code::TOO_BIG, "message too big"),
            InflateError::Invalid => (
                crate::close_code::INVALID_PAYLOAD,
                "invalid compressed message",
            ),
        }
    }
}

/// Inflates whole messages.
pub(crate) struct Inflater {
    inner: Decompress,
    takeover: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("takeover", &self.takeover)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// A decompressor with the largest window, which reads every peer's stream.
    pub(crate) fn new(takeover: bool) -> Self {
        Self {
            inner: Decompress::new_with_window_bits(false, 15),
            takeover,
        }
    }

    /// Appends the inflated message to `out`, at most `max` bytes.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let start = out.len();
        let result = self
            .feed(input, max, start, out)
            .and_then(|ended| match ended {
                // A final block ends the stream: the tail must not follow it.
                true => Ok(true),
                false => self.feed(&TAIL, max, start, out),
            });
        if result.is_err() || !self.takeover || result == Ok(true) {
            self.inner.reset(false);
        }
        result.map(|_| ())
    }

    /// Inflates `input` completely. `Ok(true)` if the deflate stream ended (BFINAL).
    fn feed(
        &mut self,
        input: &[u8],
        max: usize,
        start: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, InflateError> {
        let before = self.inner.total_in();
        loop {
            let produced = out.len() - start;
            if out.len() == out.capacity() {
                // Room up to one byte past the limit, to tell "at" from "over".
                let allowed = max.saturating_add(1).saturating_sub(produced);
                if allowed == 0 {
                    return Err(InflateError::TooBig);
                }
                out.reserve(allowed.min(input.len().saturating_mul(4).max(4096)));
            }
            let consumed = (self.inner.total_in() - before) as usize;
            let rest = input.get(consumed..).unwrap_or_default();
            let out_before = out.len();
            let status = self
                .inner
                .decompress_vec(rest, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            if out.len() - start > max {
                return Err(InflateError::TooBig);
            }
            let consumed_now = (self.inner.total_in() - before) as usize;
            if status == Status::StreamEnd {
                return if consumed_now == input.len() {
                    Ok(true)
                } else {
                    Err(InflateError::Invalid)
                };
            }
            let input_done = consumed_now == input.len();
            if input_done && out.len() < out.capacity() {
                return Ok(false);
            }
            if consumed_now == consumed && out.len() == out_before && out.len() < out.capacity() {
                // No progress with room to spare: a truncated or broken stream.
                return Err(InflateError::Invalid);
            }
        }
    }
}

thread_local! {
    /// Compressors without context takeover, one per window size (9 to 15).
    static SHARED_DEFLATERS: RefCell<[Option<Box<Deflater>>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
    /// The decompressor for peers without context takeover.
    static SHARED_INFLATER: RefCell<Option<Box<Inflater>>> = const { RefCell::new(None) };
}

/// Compresses one message on its own (no context takeover): small ones with the quick
/// encoder, larger ones with this thread's shared zlib compressor for a window of `bits`.
/// `false` when the message goes uncompressed instead.
pub(crate) fn compress_shared(bits: u8, input: &[u8], out: &mut Vec<u8>) -> bool {
    if input.len() <= quick::MAX_INPUT {
        return quick::compress(input, bits, out);
    }
    let slot = usize::from(bits.clamp(9, 15) - 9);
    SHARED_DEFLATERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut deflaters) => deflaters[slot]
            .get_or_insert_with(|| Box::new(Deflater::new(bits, false)))
            .compress(input, out),
        Err(_) => Deflater::new(bits, false).compress(input, out),
    })
}

/// The quick encoder on its own (see [`quick::compress`]), for messages it takes; `false`
/// for longer ones. For the fuzz target that checks it.
pub(crate) fn quick_compress(input: &[u8], bits: u8, out: &mut Vec<u8>) -> bool {
    input.len() <= quick::MAX_INPUT && quick::compress(input, bits, out)
}

/// Inflates one message that does not depend on earlier ones, with this thread's
/// shared decompressor.
pub(crate) fn inflate_shared(
    input: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    SHARED_INFLATER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut inflater) => inflater
            .get_or_insert_with(|| Box::new(Inflater::new(false)))
            .inflate(input, max, out),
        Err(_) => Inflater::new(false).inflate(input, max, out),
    })
}

/// The sending half of one connection's compression: its own compressor (context
/// takeover) or this thread's shared one for a window size.
#[derive(Debug)]
pub(crate) enum MessageDeflater {
    /// Each message stands alone: [`compress_shared`] with this window.
    Shared(u8),
    /// The connection's own compressor, keeping its context.
    Own(Box<Deflater>),
}

impl MessageDeflater {
    /// Appends `input` compressed to `out`; `false` (and `out` as it was) when it goes
    /// uncompressed instead: when it is short, or when compressing would not make it
    /// smaller. A message is never sent larger than it is, so a receiver's limit on
    /// compressed frames never refuses a message within its limit.
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        if input.len() < MIN_COMPRESS_LEN {
            return false;
        }
        let start = out.len();
        let compressed = match self {
            MessageDeflater::Shared(bits) => compress_shared(*bits, input, out),
            MessageDeflater::Own(deflater) => deflater.compress(input, out),
        };
        if compressed && out.len() - start < input.len() {
            return true;
        }
        out.truncate(start);
        if let MessageDeflater::Own(deflater) = self {
            // The peer's decompressor never sees this message, so ours must forget it
            // too: starting over is always allowed, as the peer's window only ever holds
            // more than our next message refers to.
            deflater.reset();
        }
        false
    }
}

/// The receiving half: its own decompressor (the peer keeps its context) or this
/// thread's shared one.
#[derive(Debug)]
pub(crate) enum MessageInflater {
    /// Each message stands alone: [`inflate_shared`].
    Shared,
    /// The connection's own decompressor, keeping its window.
    Own(Box<Inflater>),
}

impl MessageInflater {
    /// Appends the inflated message to `out`, at most `max` bytes.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        match self {
            MessageInflater::Shared => inflate_shared(input, max, out),
            MessageInflater::Own(inflater) => inflater.inflate(input, max, out),
        }
    }
}

impl Deflate {
    /// The sending half; allocates a compressor only with context takeover.
    pub(crate) fn deflater(&self) -> MessageDeflater {
        if self.compress_takeover {
            MessageDeflater::Own(Box::new(Deflater::new(self.compress_bits, true)))
        } else {
            MessageDeflater::Shared(self.compress_bits)
        }
    }

    /// The receiving half; allocates a decompressor only with context takeover.
    pub(crate) fn inflater(&self) -> MessageInflater {
        if self.inflate_takeover {
            MessageInflater::Own(Box::new(Inflater::new(true)))
        } else {
            MessageInflater::Shared
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(tx: &mut MessageDeflater, rx: &mut MessageInflater, msg: &[u8]) {
        let mut wire = Vec::new();
        if !tx.compress(msg, &mut wire) {
            // Sent uncompressed: short, or it would not shrink.
            assert!(wire.is_empty());
            return;
        }
        assert!(wire.len() < msg.len());
        let mut back = Vec::new();
        rx.inflate(&wire, usize::MAX, &mut back).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn negotiation_follows_the_compressor() {
        let node = ["permessage-deflate; client_max_window_bits"];
        assert_eq!(accept(&node, Compressor::Disabled), None);
        let (d, header) = accept(&node, Compressor::Shared).unwrap();
        assert_eq!(
            header,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(!d.compress_takeover && !d.inflate_takeover);
        let (d, header) = accept(&node, Compressor::Dedicated4Kb).unwrap();
        assert_eq!(header, "permessage-deflate");
        assert_eq!(
            d,
            Deflate {
                compress_bits: 9,
                compress_takeover: true,
                inflate_takeover: true
            }
        );
    }

    #[test]
    fn offers_are_honoured_or_declined() {
        let offer = ["permessage-deflate; server_no_context_takeover; server_max_window_bits=10"];
        let (d, header) = accept(&offer, Compressor::Dedicated256Kb).unwrap();
        assert_eq!(
            header,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
        );
        assert_eq!(d.compress_bits, 10);
        assert!(!d.compress_takeover && d.inflate_takeover);
        // The first acceptable offer wins; bad ones are skipped.
        let offers = ["permessage-deflate; foo=1, x-webkit-deflate-frame, permessage-deflate"];
        assert_eq!(
            accept(&offers, Compressor::Shared).unwrap().1,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=1 0",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
            "x-other",
        ] {
            assert_eq!(accept(&[bad], Compressor::Shared), None, "{bad}");
        }
        assert!(accept(
            &[r#"permessage-deflate; client_max_window_bits="10""#],
            Compressor::Shared
        )
        .is_some());
    }

    #[test]
    fn client_checks_the_response() {
        assert_eq!(check_response(&[]), Ok(None));
        let d = check_response(&[
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            d,
            Deflate {
                compress_bits: 10,
                compress_takeover: true,
                inflate_takeover: false
            }
        );
        assert!(check_response(&["x-other"]).is_err());
        assert!(check_response(&["permessage-deflate; bogus"]).is_err());
        assert!(check_response(&["permessage-deflate, permessage-deflate"]).is_err());
        assert!(check_response(&["permessage-deflate; client_max_window_bits"]).is_err());
    }

    #[test]
    fn takeover_streams_round_trip_and_shrink() {
        for deflate in [
            Deflate {
                compress_bits: 15,
                compress_takeover: true,
                inflate_takeover: true,
            },
            Deflate {
                compress_bits: 9,
                compress_takeover: true,
                inflate_takeover: true,
            },
            Deflate {
                compress_bits: 15,
                compress_takeover: false,
                inflate_takeover: false,
            },
        ] {
            let mut tx = deflate.deflater();
            let mut rx = Deflate {
                inflate_takeover: deflate.compress_takeover,
                ..deflate
            }
            .inflater();
            let msg = b"{\"type\":\"tick\",\"symbol\":\"ABC\",\"price\":101.25}".repeat(4);
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let mut wire = Vec::new();
                assert!(tx.compress(&msg, &mut wire));
                sizes.push(wire.len());
                let mut back = Vec::new();
                rx.inflate(&wire, msg.len(), &mut back).unwrap();
                assert_eq!(back, msg);
            }
            assert!(sizes[0] < msg.len() / 2, "{sizes:?}");
            if deflate.compress_takeover {
                assert!(sizes[1] < sizes[0], "context takeover pays off: {sizes:?}");
            } else {
                assert_eq!(sizes[1], sizes[0]);
            }
        }
    }

    #[test]
    fn inflate_limit_is_inclusive_and_bombs_stop_early() {
        let mut wire = Vec::new();
        assert!(Deflater::new(15, false).compress(&[b'a'; 32768], &mut wire));
        let mut out = Vec::new();
        assert_eq!(inflate_shared(&wire, 32768, &mut out), Ok(()));
        assert_eq!(out.len(), 32768);
        let mut bomb = Vec::new();
        assert!(Deflater::new(15, false).compress(&vec![0; 10 << 20], &mut bomb));
        let mut out = Vec::new();
        assert_eq!(
            inflate_shared(&bomb, 32768, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= 64 * 1024, "{}", out.capacity());
        // The shared inflater works again after a failure.
        let mut out = Vec::new();
        assert_eq!(inflate_shared(&wire, 32768, &mut out), Ok(()));
    }

    #[test]
    fn empty_messages_round_trip_with_and_without_context() {
        for takeover in [true, false] {
            let mut deflater = Deflater::new(15, takeover);
            let mut inflater = Inflater::new(takeover);
            for msg in [&b""[..], b"", b"hello hello hello hello", b"", b"x"] {
                let mut wire = Vec::new();
                assert!(deflater.compress(msg, &mut wire));
                let mut back = Vec::new();
                inflater.inflate(&wire, 1024, &mut back).unwrap();
                assert_eq!(back, msg);
            }
        }
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        let mut out = Vec::new();
        assert_eq!(
            inflate_shared(&[0xff, 0xff, 0xff, 0xff], 1024, &mut out),
            Err(InflateError::Invalid)
        );
    }

    /// Bytes without repeats, in the range fixed Huffman codes take 9 bits for.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_u32;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                0x90 + (state % 0x70) as u8
            })
            .collect()
    }

    #[test]
    fn a_message_that_would_grow_goes_uncompressed_and_streams_stay_in_step() {
        for (bits, takeover) in [(15, true), (9, true), (15, false)] {
            let deflate = Deflate {
                compress_bits: bits,
                compress_takeover: takeover,
                inflate_takeover: takeover,
            };
            let (mut tx, mut rx) = (deflate.deflater(), deflate.inflater());
            let text = b"{\"type\":\"tick\",\"symbol\":\"ABC\",\"price\":101.25}".repeat(4);
            roundtrip(&mut tx, &mut rx, &text);
            for len in [1024, 20_000] {
                let mut wire = b"before".to_vec();
                assert!(
                    !tx.compress(&noise(len), &mut wire),
                    "{len} bytes, {bits} bits"
                );
                assert_eq!(wire, b"before");
            }
            // The receiver never saw the uncompressed ones; the next message still inflates.
            let mut wire = Vec::new();
            assert!(tx.compress(&text, &mut wire));
            let mut back = Vec::new();
            rx.inflate(&wire, text.len(), &mut back).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn short_messages_stay_uncompressed() {
        let mut state = MessageDeflater::Shared(15);
        let mut out = Vec::new();
        assert!(!state.compress(b"PING", &mut out));
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn any_message_round_trips(msgs in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..3000), 1..5), takeover: bool) {
            let deflate = Deflate { compress_bits: 10, compress_takeover: takeover, inflate_takeover: takeover };
            let mut tx = deflate.deflater();
            let mut rx = deflate.inflater();
            for msg in &msgs {
                roundtrip(&mut tx, &mut rx, msg);
            }
        }

        #[test]
        fn any_input_inflates_or_fails_cleanly(data: Vec<u8>, takeover: bool) {
            let mut inflater = Inflater::new(takeover);
            let mut out = Vec::new();
            let _ = inflater.inflate(&data, 4096, &mut out);
            prop_assert!(out.len() <= 4096);
        }
    }
}
