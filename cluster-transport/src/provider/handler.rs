//! What the provider does with each message of a connection: a `PONG` answers the
//! heartbeat, everything else goes to the callbacks and the event streams.

use super::shared::ConnectionContext;
use crate::connection::Connection;
use crate::driver::Handler;
use crate::event::{fire, Cached, ProviderEvent, ProviderListeners};
use crate::message::{MessageRef, PONG};
use crate::protocol::Outbox;
use crate::stats::{self, Kind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The provider's side of one connection's driver.
pub(crate) struct ConnectionHandler {
    conn: Connection,
    context: Arc<ConnectionContext>,
    /// The listeners as of the last message, refreshed when they change.
    listeners: Cached<ProviderListeners>,
}

impl ConnectionHandler {
    pub(crate) fn new(conn: Connection, context: Arc<ConnectionContext>) -> Self {
        let listeners = context.listeners.cached();
        Self {
            conn,
            context,
            listeners,
        }
    }

    /// The connection this handler serves.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Handler for ConnectionHandler {
    fn outbox(&self) -> &Mutex<Outbox> {
        self.conn.outbox()
    }

    fn close_timeout(&self) -> Duration {
        self.context.close_timeout
    }

    fn message(&mut self, message: MessageRef<'_>) {
        if message == MessageRef::Text(PONG) && self.conn.speaks_heartbeat() {
            self.conn.mark_alive();
            if let Some(rtt) = self.context.pinged.since_ping() {
                self.context.heartbeat_rtt.record(rtt.as_secs_f64());
            }
            return;
        }
        stats::count_received(Kind::of(message), message.len());
        self.context.listeners.refresh(&mut self.listeners);
        let conn = &self.conn;
        if fire(&self.listeners.0.message, |f| f(conn, message)) {
            tracing::error!(conn.id = %conn.id(), "message callback panicked");
        }
        if self.context.events.is_watched() {
            self.context.events.emit(ProviderEvent::Message(
                conn.clone(),
                message.to_owned_message(),
            ));
        }
    }

    fn read_done(&mut self) {
        self.context.stats.add_received();
    }
}
