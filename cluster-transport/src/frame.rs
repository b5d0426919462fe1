//! The RFC 6455 frame codec the provider's connection core is built on: header parsing,
//! masking and header encoding. Pure functions over byte slices, no I/O.

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) fin: bool,
    /// RSV1: the message is compressed (permessage-deflate); only when [`Rules::rsv1`].
    pub(crate) rsv1: bool,
    pub(crate) opcode: OpCode,
    pub(crate) mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub(crate) payload_len: u64,
    /// Header length in bytes (2 to 14).
    pub(crate) header_len: usize,
}

/// A frame that breaks the protocol. Each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// RSV bits set without a negotiated extension.
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    UnknownOpcode,
    /// A control frame longer than 125 bytes or fragmented.
    BadControlFrame,
    /// A client frame without a mask.
    Unmasked,
    /// A server frame with a mask.
    Masked,
    /// A 64-bit length with its top bit set.
    BadLength,
    /// The payload is larger than the connection allows.
    TooBig,
}

impl FrameError {
    /// The close code this error closes the connection with.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            FrameError::TooBig => crate::close_code::TOO_BIG,
            _ => crate::close_code::PROTOCOL,
        }
    }

    /// The close reason sent with the code.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedBits => "reserved bits set",
            FrameError::UnknownOpcode => "unknown opcode",
            FrameError::BadControlFrame => "invalid control frame",
            FrameError::Unmasked => "client frame not masked",
            FrameError::Masked => "server frame masked",
            FrameError::BadLength => "invalid payload length",
            FrameError::TooBig => "message too big",
        }
    }
}

/// What a frame header may carry on one side of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Frames come from a client: every one must be masked. From a server: none may be.
    pub(crate) from_client: bool,
    /// permessage-deflate was negotiated: RSV1 may mark a data frame compressed.
    pub(crate) rsv1: bool,
    /// The largest payload length accepted, inclusive.
    pub(crate) max_payload: u64,
}

impl Rules {
    /// Rules for frames a server reads from a client, without extensions.
    pub(crate) fn from_client(max_payload: u64) -> Self {
        Self {
            from_client: true,
            rsv1: false,
            max_payload,
        }
    }
}

/// Parses a frame header from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed.
pub(crate) fn parse_header(buf: &[u8], rules: Rules) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !rules.rsv1) {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode)?;
    if rsv1 && opcode.is_control() {
        return Err(FrameError::ReservedBits);
    }
    let masked = b1 & 0x80 != 0;
    if rules.from_client && !masked {
        return Err(FrameError::Unmasked);
    }
    if !rules.from_client && masked {
        return Err(FrameError::Masked);
    }
    let short_len = b1 & 0x7F;
    if opcode.is_control() && (!fin || short_len > 125) {
        return Err(FrameError::BadControlFrame);
    }
    let (payload_len, len_bytes) = match short_len {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if payload_len > rules.max_payload {
        return Err(FrameError::TooBig);
    }
    let mask = if masked {
        match rest.get(len_bytes..len_bytes + 4) {
            Some(m) => Some([m[0], m[1], m[2], m[3]]),
            None => return Ok(None),
        }
    } else {
        None
    };
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    Ok(Some(FrameHeader {
        fin,
        rsv1,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// The whole frame at the start of `buf`, its payload unmasked in place: its header and
/// its length (header and payload). `Ok(None)` when more bytes are needed.
#[inline]
pub(crate) fn unmask_next(
    buf: &mut [u8],
    rules: Rules,
) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let Some(header) = parse_header(buf, rules)? else {
        return Ok(None);
    };
    // Both terms are bounded: the header by 14, the payload by the rules' limit (< 2^63).
    let total = usize::try_from(header.header_len as u64 + header.payload_len)
        .map_err(|_| FrameError::TooBig)?;
    let Some(payload) = buf.get_mut(header.header_len..total) else {
        return Ok(None);
    };
    if let Some(mask) = header.mask {
        apply_mask(payload, mask, 0);
    }
    Ok(Some((header, total)))
}

/// XORs `buf` with `mask`, starting at mask byte `offset % 4`.
pub(crate) fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut rotated = [0u8; 4];
    for (i, b) in rotated.iter_mut().enumerate() {
        *b = mask[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(rotated);
    let wide = (u64::from(word) << 32) | u64::from(word);
    let wide = wide.to_ne_bytes();
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut v = [0u8; 8];
        v.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(v) ^ u64::from_ne_bytes(wide);
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// Appends an unmasked frame header (server to client) for a final frame to `out`.
pub(crate) fn encode_header(opcode: OpCode, payload_len: usize, out: &mut Vec<u8>) {
    encode_header_with(true, false, opcode, payload_len, None, out);
}

/// Appends a frame header with every field chosen by the caller; `rsv1` marks the first
/// frame of a compressed message. Inline: every queued frame goes through it.
#[inline(always)]
pub(crate) fn encode_header_with(
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) {
    let b0 = if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(b0);
    if payload_len < 126 {
        out.push(mask_bit | payload_len as u8);
    } else if let Ok(len) = u16::try_from(payload_len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// The bytes a whole frame with this payload length takes on the wire, unmasked.
pub(crate) fn frame_len(payload_len: usize) -> usize {
    payload_len + header_len(payload_len, false)
}

/// The bytes of a frame header for this payload length.
#[inline]
pub(crate) fn header_len(payload_len: usize, masked: bool) -> usize {
    let len = match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    if masked {
        len + 4
    } else {
        len
    }
}

/// A close frame's payload as a peer sent it: its code and reason, or why it is invalid
/// (the code and reason to fail the connection with).
pub(crate) fn parse_close(payload: &[u8]) -> Result<crate::CloseInfo, (u16, &'static str)> {
    use crate::close_code;
    match payload {
        [] => Ok(crate::CloseInfo::new(close_code::NO_STATUS, "")),
        [_] => Err((close_code::PROTOCOL, "invalid close frame")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err((close_code::PROTOCOL, "invalid close code"));
            }
            let Ok(reason) = std::str::from_utf8(reason) else {
                return Err((close_code::INVALID_PAYLOAD, "invalid utf-8 in close reason"));
            };
            Ok(crate::CloseInfo::new(code, reason))
        }
    }
}

/// The payload of a close frame with `code` and `reason`, the reason cut on a character
/// boundary to fit a control frame (125 bytes).
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Whether a close code received from a peer is one RFC 6455 allows on the wire.
pub(crate) fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header_with(fin, false, opcode, payload.len(), Some(mask), &mut out);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], mask, 0);
        out
    }

    #[test]
    fn parses_small_masked_text() {
        let f = masked_frame(true, OpCode::Text, b"hello", [1, 2, 3, 4]);
        let h = parse_header(&f, Rules::from_client(1 << 20))
            .unwrap()
            .unwrap();
        assert_eq!(h.opcode, OpCode::Text);
        assert!(h.fin);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.header_len, 6);
        let mut p = f[h.header_len..].to_vec();
        apply_mask(&mut p, h.mask.unwrap(), 0);
        assert_eq!(p, b"hello");
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let f = masked_frame(true, OpCode::Binary, &[0u8; 70_000], [9, 9, 9, 9]);
        for cut in 0..14 {
            assert_eq!(
                parse_header(&f[..cut], Rules::from_client(u64::MAX)),
                Ok(None),
                "cut {cut}"
            );
        }
        assert!(parse_header(&f[..14], Rules::from_client(u64::MAX))
            .unwrap()
            .is_some());
    }

    #[test]
    fn protocol_violations() {
        assert_eq!(
            parse_header(&[0xC1, 0x80], Rules::from_client(10)),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            parse_header(&[0x83, 0x80], Rules::from_client(10)),
            Err(FrameError::UnknownOpcode)
        );
        assert_eq!(
            parse_header(&[0x81, 0x00], Rules::from_client(10)),
            Err(FrameError::Unmasked)
        );
        assert_eq!(
            parse_header(&[0x09, 0x80], Rules::from_client(10)),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            parse_header(&[0x89, 0xFE], Rules::from_client(10)),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            parse_header(
                &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                Rules::from_client(u64::MAX)
            ),
            Err(FrameError::BadLength)
        );
    }

    #[test]
    fn payload_limit_is_inclusive() {
        let at = masked_frame(true, OpCode::Text, &[b'a'; 32768], [0; 4]);
        let over = masked_frame(true, OpCode::Text, &[b'a'; 32769], [0; 4]);
        assert!(parse_header(&at, Rules::from_client(32768))
            .unwrap()
            .is_some());
        assert_eq!(
            parse_header(&over, Rules::from_client(32768)),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1011, 3000, 4999] {
            assert!(is_valid_close_code(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000] {
            assert!(!is_valid_close_code(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn header_round_trip(fin: bool, op in 0usize..3, len in 0usize..200_000, mask: [u8; 4]) {
            let opcode = [OpCode::Continuation, OpCode::Text, OpCode::Binary][op];
            let mut out = Vec::new();
            encode_header_with(fin, false, opcode, len, Some(mask), &mut out);
            let h = parse_header(&out, Rules::from_client(u64::MAX)).unwrap().unwrap();
            prop_assert_eq!(h.fin, fin);
            prop_assert_eq!(h.opcode, opcode);
            prop_assert_eq!(h.payload_len, len as u64);
            prop_assert_eq!(h.mask, Some(mask));
            prop_assert_eq!(h.header_len, out.len());
            prop_assert_eq!(frame_len(len) + 4, out.len() + len);
        }

        #[test]
        fn mask_is_an_involution(data: Vec<u8>, mask: [u8; 4], offset in 0usize..8) {
            let mut buf = data.clone();
            apply_mask(&mut buf, mask, offset);
            for (i, (a, b)) in buf.iter().zip(&data).enumerate() {
                prop_assert_eq!(*a, b ^ mask[(offset + i) % 4]);
            }
            apply_mask(&mut buf, mask, offset);
            prop_assert_eq!(buf, data);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data: Vec<u8>, max in 0u64..100_000) {
            if let Ok(Some(h)) = parse_header(&data, Rules::from_client(max)) {
                prop_assert!(h.header_len <= 14);
                prop_assert!(h.payload_len <= max);
            }
        }
    }
}
