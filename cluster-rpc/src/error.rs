//! Errors of the typed layer: a kind to match on and the detail that says what happened.
//! The same value crosses the wire (a kind code and the detail text), as tarpc's
//! `ServerError { kind, detail }` does.

use cluster_transport::{SendError, SendErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a call, publish or subscribe did not succeed.
///
/// A method that returns `Result<T, E>` reports its own `E` inside `Ok(Err(e))`; this is
/// for everything around the method: deadlines, connections, limits, decoding, panics.
/// Match on [`kind`](Self::kind); [`detail`](Self::detail) says more (a name, a size, a
/// cause).
///
/// ```
/// use cluster_rpc::{RpcError, RpcErrorKind};
/// let error = RpcError::new(RpcErrorKind::NoSuchService, "Whoami");
/// assert_eq!(error.kind(), RpcErrorKind::NoSuchService);
/// assert_eq!(error.to_string(), "no such service: Whoami");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    kind: RpcErrorKind,
    detail: String,
}

/// What kind of failure an [`RpcError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcErrorKind {
    /// The deadline passed before the answer came; the far side was told to stop.
    Timeout,
    /// The connection dropped while the call was in flight (the detail says how, when
    /// known).
    Disconnected,
    /// The call was cancelled (its future dropped, or the node shut down).
    Cancelled,
    /// The far side serves no service of this name.
    NoSuchService,
    /// The service has no method of this name.
    NoSuchMethod,
    /// A request, response or message could not be decoded.
    Decode,
    /// A request, response or message could not be encoded.
    Encode,
    /// The handler panicked; the connection stays up.
    Panicked,
    /// The far side has too many of our calls running already; this one never started.
    Overloaded,
    /// No connection to send on.
    NotConnected,
    /// No connected peer serves this service.
    NoPeer,
    /// A frame is larger than a limit on its way (the sender's or the receiver's payload
    /// limit): refused, the connection stays up.
    TooLarge,
    /// The connection's send queue is full (the peer does not read fast enough), or a
    /// member's reconnect buffer is full while it reconnects.
    Backpressure,
    /// A subject or pattern is not valid: empty tokens, wildcards in a subject, too long,
    /// or reserved (first token starting with `__`).
    InvalidSubject,
    /// A service or method name is longer than the envelope carries (255 bytes).
    InvalidName,
    /// The hub's limit of subscription patterns per member is reached.
    TooManySubscriptions,
    /// A kind this version does not know, from a newer peer (the detail holds its code).
    Unknown,
}

impl RpcErrorKind {
    /// Every kind and its code on the wire.
    const CODES: [(RpcErrorKind, u8); 17] = [
        (RpcErrorKind::Timeout, 1),
        (RpcErrorKind::Disconnected, 2),
        (RpcErrorKind::Cancelled, 3),
        (RpcErrorKind::NoSuchService, 4),
        (RpcErrorKind::NoSuchMethod, 5),
        (RpcErrorKind::Decode, 6),
        (RpcErrorKind::Encode, 7),
        (RpcErrorKind::Panicked, 8),
        (RpcErrorKind::Overloaded, 9),
        (RpcErrorKind::NotConnected, 10),
        (RpcErrorKind::NoPeer, 11),
        (RpcErrorKind::TooLarge, 12),
        (RpcErrorKind::Backpressure, 13),
        (RpcErrorKind::InvalidSubject, 14),
        (RpcErrorKind::InvalidName, 15),
        (RpcErrorKind::TooManySubscriptions, 16),
        (RpcErrorKind::Unknown, 255),
    ];

    /// The kind's code on the wire.
    pub(crate) fn code(self) -> u8 {
        Self::CODES
            .iter()
            .find(|(kind, _)| *kind == self)
            .map_or(255, |(_, code)| *code)
    }

    /// The kind with this wire code, if this version knows it.
    fn from_code(code: u8) -> Option<Self> {
        Self::CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(kind, _)| *kind)
    }

    fn describe(self) -> &'static str {
        match self {
            RpcErrorKind::Timeout => "deadline exceeded",
            RpcErrorKind::Disconnected => "connection lost before the call completed",
            RpcErrorKind::Cancelled => "cancelled",
            RpcErrorKind::NoSuchService => "no such service",
            RpcErrorKind::NoSuchMethod => "no such method",
            RpcErrorKind::Decode => "decode error",
            RpcErrorKind::Encode => "encode error",
            RpcErrorKind::Panicked => "remote handler panicked",
            RpcErrorKind::Overloaded => "peer is overloaded: too many calls in flight",
            RpcErrorKind::NotConnected => "not connected",
            RpcErrorKind::NoPeer => "no connected peer serves the service",
            RpcErrorKind::TooLarge => "frame too large",
            RpcErrorKind::Backpressure => "send queue full",
            RpcErrorKind::InvalidSubject => "invalid subject",
            RpcErrorKind::InvalidName => "invalid name",
            RpcErrorKind::TooManySubscriptions => "too many subscriptions",
            RpcErrorKind::Unknown => "unknown error",
        }
    }
}

impl fmt::Display for RpcErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl RpcError {
    /// An error of `kind`, with `detail` (may be empty).
    pub fn new(kind: RpcErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> RpcErrorKind {
        self.kind
    }

    /// What happened, in words (a name, a size, a cause); may be empty.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The error's kind code on the wire.
    pub(crate) fn code(&self) -> u8 {
        self.kind.code()
    }

    /// Rebuilds an error from its wire code and detail; a code this version does not know
    /// becomes [`RpcErrorKind::Unknown`] with the code in the detail.
    pub(crate) fn from_wire(code: u8, detail: &str) -> Self {
        match RpcErrorKind::from_code(code) {
            Some(kind) => Self::new(kind, detail),
            None => Self::new(RpcErrorKind::Unknown, format!("code {code}: {detail}")),
        }
    }
}

impl From<RpcErrorKind> for RpcError {
    fn from(kind: RpcErrorKind) -> Self {
        Self::new(kind, "")
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.detail)
        }
    }
}

impl std::error::Error for RpcError {}

impl From<SendError> for RpcError {
    fn from(error: SendError) -> Self {
        let kind = match error.kind() {
            SendErrorKind::NotConnected => RpcErrorKind::NotConnected,
            SendErrorKind::PayloadTooLarge => RpcErrorKind::TooLarge,
            SendErrorKind::Backpressure | SendErrorKind::BufferFull => RpcErrorKind::Backpressure,
            _ => RpcErrorKind::Unknown,
        };
        Self::new(kind, error.to_string())
    }
}

impl From<crate::envelope::EnvelopeError> for RpcError {
    fn from(error: crate::envelope::EnvelopeError) -> Self {
        use crate::envelope::EnvelopeError;
        let kind = match error {
            EnvelopeError::TooLong {
                field: "subject", ..
            } => RpcErrorKind::InvalidSubject,
            EnvelopeError::TooLong { .. } => RpcErrorKind::InvalidName,
            _ => RpcErrorKind::Decode,
        };
        Self::new(kind, error.to_string())
    }
}

impl From<crate::codec::CodecError> for RpcError {
    fn from(error: crate::codec::CodecError) -> Self {
        Self::new(RpcErrorKind::Decode, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        for (kind, code) in RpcErrorKind::CODES {
            let error = RpcError::new(kind, "detail");
            assert_eq!(error.code(), code);
            if kind != RpcErrorKind::Unknown {
                assert_eq!(RpcError::from_wire(error.code(), error.detail()), error);
            }
        }
        let newer = RpcError::from_wire(200, "x");
        assert_eq!(newer.kind(), RpcErrorKind::Unknown);
        assert_eq!(newer.detail(), "code 200: x");
    }

    #[test]
    fn messages_name_the_kind_then_the_detail() {
        assert_eq!(
            RpcError::from(RpcErrorKind::Timeout).to_string(),
            "deadline exceeded"
        );
        assert_eq!(
            RpcError::new(RpcErrorKind::TooLarge, "reply of 40000 bytes").to_string(),
            "frame too large: reply of 40000 bytes"
        );
    }
}
