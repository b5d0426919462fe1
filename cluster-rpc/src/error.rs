//! Errors of a call, one enum for every failure a caller can see.

use cluster_transport::SendError;
use serde::{Deserialize, Serialize};

/// Why a call did not produce the method's return value.
///
/// A method that returns `Result<T, E>` reports its own `E` inside `Ok(Err(e))`; this
/// enum is for everything around the method: deadlines, connections, decoding, panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcError {
    /// The deadline passed before the answer came; the far side was told to stop.
    #[error("deadline exceeded")]
    Timeout,
    /// The connection dropped while the call was in flight.
    #[error("connection lost before the call completed")]
    Disconnected,
    /// The call was cancelled (its future dropped, or the node shut down).
    #[error("call cancelled")]
    Cancelled,
    /// The far side serves no service of this name.
    #[error("no such service: {0}")]
    NoSuchService(String),
    /// The service has no method of this name.
    #[error("no such method: {0}")]
    NoSuchMethod(String),
    /// A request or response could not be decoded.
    #[error("decode error: {0}")]
    Decode(String),
    /// A request or response could not be encoded.
    #[error("encode error: {0}")]
    Encode(String),
    /// The handler panicked; the connection stays up.
    #[error("remote handler panicked: {0}")]
    Panicked(String),
    /// The far side has too many of our calls running already.
    #[error("peer is overloaded: too many calls in flight")]
    Overloaded,
    /// No connection to send the call on.
    #[error("not connected")]
    NotConnected,
    /// No connected peer serves this service.
    #[error("no connected peer serves {0}")]
    NoPeer(String),
    /// The transport refused the frame (backpressure, too large).
    #[error("send failed: {0}")]
    Send(String),
}

impl RpcError {
    /// The error's code on the wire.
    pub(crate) fn code(&self) -> u8 {
        match self {
            RpcError::Timeout => 1,
            RpcError::Disconnected => 2,
            RpcError::Cancelled => 3,
            RpcError::NoSuchService(_) => 4,
            RpcError::NoSuchMethod(_) => 5,
            RpcError::Decode(_) => 6,
            RpcError::Encode(_) => 7,
            RpcError::Panicked(_) => 8,
            RpcError::Overloaded => 9,
            RpcError::NotConnected => 10,
            RpcError::NoPeer(_) => 11,
            RpcError::Send(_) => 12,
        }
    }

    /// The detail sent along with the code.
    pub(crate) fn detail(&self) -> &str {
        match self {
            RpcError::NoSuchService(d)
            | RpcError::NoSuchMethod(d)
            | RpcError::Decode(d)
            | RpcError::Encode(d)
            | RpcError::Panicked(d)
            | RpcError::NoPeer(d)
            | RpcError::Send(d) => d,
            _ => "",
        }
    }

    /// Rebuilds an error from its wire code and detail.
    pub(crate) fn from_wire(code: u8, detail: &str) -> Self {
        let d = detail.to_owned();
        match code {
            1 => RpcError::Timeout,
            2 => RpcError::Disconnected,
            3 => RpcError::Cancelled,
            4 => RpcError::NoSuchService(d),
            5 => RpcError::NoSuchMethod(d),
            6 => RpcError::Decode(d),
            7 => RpcError::Encode(d),
            8 => RpcError::Panicked(d),
            9 => RpcError::Overloaded,
            10 => RpcError::NotConnected,
            11 => RpcError::NoPeer(d),
            _ => RpcError::Send(d),
        }
    }
}

impl From<SendError> for RpcError {
    fn from(error: SendError) -> Self {
        match error.kind() {
            cluster_transport::SendErrorKind::NotConnected => RpcError::NotConnected,
            _ => RpcError::Send(error.to_string()),
        }
    }
}

impl From<crate::codec::CodecError> for RpcError {
    fn from(error: crate::codec::CodecError) -> Self {
        RpcError::Decode(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        for e in [
            RpcError::Timeout,
            RpcError::Disconnected,
            RpcError::Cancelled,
            RpcError::NoSuchService("a".into()),
            RpcError::NoSuchMethod("b".into()),
            RpcError::Decode("c".into()),
            RpcError::Encode("d".into()),
            RpcError::Panicked("boom".into()),
            RpcError::Overloaded,
            RpcError::NotConnected,
            RpcError::NoPeer("e".into()),
            RpcError::Send("f".into()),
        ] {
            assert_eq!(RpcError::from_wire(e.code(), e.detail()), e);
        }
    }
}
