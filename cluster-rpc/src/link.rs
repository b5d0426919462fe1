//! The transport seen from the RPC layer: something that sends one binary frame to one
//! peer. Implemented for the provider's [`Connection`] and for a [`Consumer`]; tests can
//! plug in anything else.

use cluster_transport::{Connection, Consumer, MessageRef, SendError};

/// Sends binary frames to one peer.
pub trait Link: Send + Sync + 'static {
    /// Queues one binary frame.
    ///
    /// # Errors
    /// When the transport refuses it (not connected, backpressure, too large).
    fn send_frame(&self, frame: &[u8]) -> Result<(), SendError>;

    /// Closes the connection because the peer sent something unreadable.
    fn close_for(&self, code: u16, reason: &str);
}

impl Link for Connection {
    fn send_frame(&self, frame: &[u8]) -> Result<(), SendError> {
        self.send(MessageRef::Binary(frame))
    }

    fn close_for(&self, code: u16, reason: &str) {
        self.close(code, reason);
    }
}

impl Link for Consumer {
    fn send_frame(&self, frame: &[u8]) -> Result<(), SendError> {
        self.send(frame.to_vec())
    }

    fn close_for(&self, code: u16, reason: &str) {
        self.reconnect(code, reason);
    }
}
