//! Raw websocket bytes for the soak's hostile clients: upgrade requests, masked client
//! frames (well-formed or broken on purpose), and the server's frames read back.

use anyhow::Context;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The mask key of every frame the soak builds (any key will do; the server unmasks).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Longest response head the soak reads.
const MAX_HEAD: usize = 4096;
/// Longest wait for a response head or a frame.
pub(crate) const IO_WAIT: Duration = Duration::from_secs(15);

/// The opcodes the soak sends.
pub(crate) mod opcode {
    /// A text frame.
    pub(crate) const TEXT: u8 = 0x1;
    /// A binary frame.
    pub(crate) const BINARY: u8 = 0x2;
    /// A reserved (undefined) data opcode.
    pub(crate) const RESERVED: u8 = 0x3;
    /// A close frame.
    pub(crate) const CLOSE: u8 = 0x8;
    /// A control ping.
    pub(crate) const PING: u8 = 0x9;
}

/// The upgrade request of a consumer presenting `key=<key>` on `/connect`.
pub(crate) fn upgrade_request(key: &str) -> String {
    format!(
        "GET /connect?key={key} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Connects to the provider on 127.0.0.1:`port`.
pub(crate) async fn connect(port: u16) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(IO_WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .context("connect timed out")?
        .context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `request` and reads the response head; returns it with the bytes read past it.
pub(crate) async fn exchange(
    stream: &mut TcpStream,
    request: &str,
) -> anyhow::Result<(String, Vec<u8>)> {
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        anyhow::ensure!(buf.len() < MAX_HEAD, "response head over {MAX_HEAD} bytes");
        let n = tokio::time::timeout(IO_WAIT, stream.read(&mut chunk))
            .await
            .context("no response in time")??;
        anyhow::ensure!(n > 0, "connection closed before a response");
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let rest = buf.split_off(end);
    Ok((String::from_utf8_lossy(&buf).into_owned(), rest))
}

/// A connection that completed the upgrade with `key`, and what the server sent after it.
pub(crate) async fn upgraded(port: u16, key: &str) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut stream = connect(port).await?;
    let (head, rest) = exchange(&mut stream, &upgrade_request(key)).await?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 101"),
        "upgrade refused: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok((stream, rest))
}

/// A client frame: the first byte as given (FIN, RSV bits, opcode), the length encoded as
/// RFC 6455 says, the payload masked.
pub(crate) fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(first);
    push_length(&mut frame, 0x80, payload.len() as u64);
    frame.extend_from_slice(&MASK);
    frame.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    frame
}

/// Appends the second header byte (`mask_bit` plus the length code) and any extended length.
pub(crate) fn push_length(frame: &mut Vec<u8>, mask_bit: u8, len: u64) {
    match len {
        0..=125 => frame.push(mask_bit | len as u8),
        126..=0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// A final frame of `opcode` with `payload`, masked.
pub(crate) fn final_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(0x80 | opcode, payload)
}

/// Reads server frames (starting with `pending`, bytes already read) until a close frame;
/// returns its status code (1005 when it has none), or `None` when the connection ended
/// without one.
pub(crate) async fn close_code(
    stream: &mut TcpStream,
    mut pending: Vec<u8>,
) -> anyhow::Result<Option<u16>> {
    let mut chunk = [0u8; 1024];
    loop {
        while let Some((opcode, payload, used)) = server_frame(&pending)? {
            if opcode == opcode::CLOSE {
                return Ok(Some(match payload.get(..2) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                    _ => 1005,
                }));
            }
            pending.drain(..used);
        }
        let n = match tokio::time::timeout(IO_WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            // A reset after the close counts as the end, as EOF does.
            Ok(Err(_)) => 0,
            Err(_) => anyhow::bail!("no close frame within {IO_WAIT:?}"),
        };
        if n == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// One whole unmasked server frame at the start of `buf`: its opcode, payload and length
/// on the wire; `None` when more bytes are needed.
fn server_frame(buf: &[u8]) -> anyhow::Result<Option<(u8, &[u8], usize)>> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    anyhow::ensure!(b1 & 0x80 == 0, "the server masked a frame");
    let (len, header): (u64, usize) = match b1 & 0x7F {
        126 => match rest.get(..2) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(be) => (u64::from_be_bytes(be), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).context("server frame length")?;
    let Some(end) = header.checked_add(len) else {
        anyhow::bail!("server frame length overflows");
    };
    Ok(buf
        .get(header..end)
        .map(|payload| (b0 & 0x0F, payload, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_with_rfc_lengths() {
        let frame = final_frame(opcode::TEXT, b"hi");
        assert_eq!(frame[..2], [0x81, 0x82]);
        assert_eq!(frame[6] ^ MASK[0], b'h');
        assert_eq!(frame.len(), 2 + 4 + 2);
        let long = final_frame(opcode::BINARY, &[0; 300]);
        assert_eq!(long[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([long[2], long[3]]), 300);
        let mut huge = Vec::new();
        push_length(&mut huge, 0x80, 1 << 63);
        assert_eq!(huge[0], 0x80 | 127);
        assert_eq!(huge[1], 0x80);
    }

    #[test]
    fn server_frames_are_read_whole_or_not_at_all() {
        let close = [0x88, 0x02, 0x03, 0xEA];
        assert_eq!(
            server_frame(&close).unwrap(),
            Some((opcode::CLOSE, &close[2..], 4))
        );
        assert_eq!(server_frame(&close[..3]).unwrap(), None);
        let mut text = vec![0x81, 126, 0, 200];
        text.extend([b'x'; 200]);
        assert_eq!(server_frame(&text).unwrap().unwrap().2, 204);
        assert!(server_frame(&[0x81, 0x81, 0, 0, 0, 0, 0]).is_err());
    }
}
