//! The transport seen from the typed layer: something that sends one binary frame to one
//! peer. The hub's side is a provider [`Connection`]; a member's is its [`Consumer`],
//! held to the hub's payload limit as well as its own.

use crate::error::{RpcError, RpcErrorKind};
use cluster_transport::{Connection, Consumer, MessageRef};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Sends binary frames to one peer.
pub(crate) trait Link: Send + Sync + 'static {
    /// Queues one binary frame.
    ///
    /// # Errors
    /// When it cannot go: not connected ([`RpcErrorKind::NotConnected`]), larger than a
    /// payload limit on its way ([`RpcErrorKind::TooLarge`]), or the send queue is full
    /// ([`RpcErrorKind::Backpressure`]).
    fn send_frame(&self, frame: &[u8]) -> Result<(), RpcError>;

    /// Closes the connection (the peer sent something unreadable, or an answer cannot be
    /// delivered); a member reconnects afterwards.
    fn close_for(&self, code: u16, reason: &str);
}

impl Link for Connection {
    fn send_frame(&self, frame: &[u8]) -> Result<(), RpcError> {
        Ok(self.send(MessageRef::Binary(frame))?)
    }

    fn close_for(&self, code: u16, reason: &str) {
        self.close(code, reason);
    }
}

/// A member's link to its hub: its consumer, refusing frames over the hub's payload limit
/// (which the hub announces when it confirms the member) instead of letting the hub close
/// the connection over one.
#[derive(Debug)]
pub(crate) struct HubLink {
    consumer: Consumer,
    hub_limit: AtomicUsize,
}

impl HubLink {
    pub(crate) fn new(consumer: Consumer) -> Self {
        Self {
            consumer,
            hub_limit: AtomicUsize::new(usize::MAX),
        }
    }

    /// The consumer underneath.
    pub(crate) fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The hub accepts frames up to `bytes`.
    pub(crate) fn set_hub_limit(&self, bytes: usize) {
        self.hub_limit.store(bytes, Ordering::Relaxed);
    }
}

impl Link for HubLink {
    fn send_frame(&self, frame: &[u8]) -> Result<(), RpcError> {
        let limit = self.hub_limit.load(Ordering::Relaxed);
        if frame.len() > limit {
            return Err(RpcError::new(
                RpcErrorKind::TooLarge,
                format!(
                    "a frame of {} bytes is over the hub's payload limit of {limit}",
                    frame.len()
                ),
            ));
        }
        Ok(self.consumer.send(frame.to_vec())?)
    }

    fn close_for(&self, code: u16, reason: &str) {
        self.consumer.reconnect(code, reason);
    }
}
