//! Messages: text frames are the seed's string messages, binary frames carry bytes.

use bytes::Bytes;
use std::fmt;

/// Text the provider sends as its first frame, followed by the heartbeat interval in ms.
pub const PROVIDER_HEARTBEAT_PREFIX: &str = "PROVIDER_HEARTBEAT|";
/// The provider's heartbeat probe (a text frame).
pub const PING: &str = "PING";
/// The consumer's answer to [`PING`] (a text frame).
pub const PONG: &str = "PONG";

/// Whether `text` is reserved by the protocol and so cannot be sent as an application message.
///
/// ```
/// use cluster_transport::is_reserved;
/// assert!(is_reserved("PING"));
/// assert!(is_reserved("PROVIDER_HEARTBEAT|10"));
/// assert!(!is_reserved("PINGS"));
/// ```
pub fn is_reserved(text: &str) -> bool {
    text == PING || text == PONG || text.starts_with(PROVIDER_HEARTBEAT_PREFIX)
}

/// An owned message: text (the seed's string messages) or binary bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame, always valid UTF-8.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl Message {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }

    /// Borrows this message.
    pub fn as_ref(&self) -> MessageRef<'_> {
        match self {
            Message::Text(t) => MessageRef::Text(t),
            Message::Binary(b) => MessageRef::Binary(b),
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes.into())
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Message::Binary(bytes)
    }
}

/// A borrowed message, as callbacks receive it: no allocation per message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MessageRef<'a> {
    /// A text frame, always valid UTF-8.
    Text(&'a str),
    /// A binary frame.
    Binary(&'a [u8]),
}

impl<'a> MessageRef<'a> {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&'a str> {
        match *self {
            MessageRef::Text(t) => Some(t),
            MessageRef::Binary(_) => None,
        }
    }

    /// The raw payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            MessageRef::Text(t) => t.as_bytes(),
            MessageRef::Binary(b) => b,
        }
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, MessageRef::Binary(_))
    }

    /// Copies the message into an owned [`Message`].
    pub fn to_owned_message(&self) -> Message {
        match *self {
            MessageRef::Text(t) => Message::Text(t.to_owned()),
            MessageRef::Binary(b) => Message::Binary(Bytes::copy_from_slice(b)),
        }
    }
}

impl fmt::Debug for MessageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageRef::Text(t) => f.debug_tuple("Text").field(t).finish(),
            MessageRef::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

impl<'a> From<&'a str> for MessageRef<'a> {
    fn from(text: &'a str) -> Self {
        MessageRef::Text(text)
    }
}

impl<'a> From<&'a String> for MessageRef<'a> {
    fn from(text: &'a String) -> Self {
        MessageRef::Text(text)
    }
}

impl<'a> From<&'a [u8]> for MessageRef<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        MessageRef::Binary(bytes)
    }
}

impl<'a> From<&'a Message> for MessageRef<'a> {
    fn from(message: &'a Message) -> Self {
        message.as_ref()
    }
}

/// How a connection ended: the close code and reason.
///
/// Codes follow RFC 6455: 1000 normal, 1001 going away (shutdown), 1005 closed without a
/// code, 1006 dropped without a close frame, 1008 policy (heartbeat timeout, backpressure),
/// 1009 message too big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code.
    pub code: u16,
    /// The close reason, possibly empty.
    pub reason: String,
}

impl CloseInfo {
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// The reasons in the close frames the transport sends itself, which the metrics tell
/// apart by.
pub(crate) mod close_reason {
    /// A consumer that missed `max_strikes` heartbeat cycles (1008).
    pub(crate) const HEARTBEAT_TIMEOUT: &str = "heartbeat timeout";
    /// A connection over `max_backpressure` (1008).
    pub(crate) const BACKPRESSURE_EXCEEDED: &str = "backpressure limit exceeded";
    /// [`Provider::shutdown`](crate::Provider::shutdown) (1001).
    pub(crate) const SHUTTING_DOWN: &str = "provider shutting down";
    /// [`Provider::destroy`](crate::Provider::destroy) (1001).
    pub(crate) const DESTROYED: &str = "provider destroyed";
}

/// Named close codes used by this crate.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (graceful shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Data of a kind the endpoint cannot accept (an unknown envelope version).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A close frame without a status code.
    pub const NO_STATUS: u16 = 1005;
    /// The connection dropped without a close frame.
    pub const ABNORMAL: u16 = 1006;
    /// A text message that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy violation: missed heartbeats, backpressure exceeded.
    pub const POLICY: u16 = 1008;
    /// A message larger than `max_payload_length`.
    pub const TOO_BIG: u16 = 1009;
    /// An unexpected condition on the server.
    pub const INTERNAL: u16 = 1011;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_messages() {
        assert!(is_reserved("PING"));
        assert!(is_reserved("PONG"));
        assert!(is_reserved("PROVIDER_HEARTBEAT|"));
        assert!(!is_reserved("ping"));
        assert!(!is_reserved("PROVIDER_HEARTBEAT"));
        assert!(!is_reserved(""));
    }

    #[test]
    fn owned_and_borrowed_agree() {
        let m = Message::from("héllo");
        assert_eq!(m.as_ref().to_owned_message(), m);
        assert_eq!(m.len(), 6);
        let b = Message::from(vec![1u8, 2, 3]);
        assert!(b.as_ref().is_binary());
        assert_eq!(b.as_text(), None);
    }
}
