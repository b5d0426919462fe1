//! The provider-wide heartbeat: one cycle every interval over all connections, as the
//! original does (PROTOCOL.md, section 3.2).

use crate::connection::HeartbeatStep;
use crate::message::{close_code, MessageRef, PING};
use crate::protocol::{CloseMode, CloseRequest};
use crate::provider::shared::ProviderShared;
use std::sync::Arc;
use tokio::time::MissedTickBehavior;

/// Runs cycles until the provider stops.
pub(crate) async fn run(shared: Arc<ProviderShared>) {
    let options = &shared.options.heartbeat;
    let mut interval = tokio::time::interval(options.interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick completes at once; connections start alive, so skip it.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        shared.context.pinged.pinging();
        for conn in shared.snapshot() {
            match conn.heartbeat(options.max_strikes) {
                HeartbeatStep::Ping => {
                    // A full queue closes the connection by itself; nothing else to do.
                    let _ = conn.send_frame(MessageRef::Text(PING));
                }
                HeartbeatStep::Strike => {}
                // Killed in an earlier cycle: its close is under way, bounded by the close
                // timeout; kill and log once.
                HeartbeatStep::Kill if !conn.is_open() => {}
                HeartbeatStep::Kill => {
                    tracing::warn!(conn.id = %conn.id(), "heartbeat missed; closing");
                    conn.request_close(CloseRequest::new(
                        close_code::POLICY,
                        crate::message::close_reason::HEARTBEAT_TIMEOUT,
                        CloseMode::Immediate,
                    ));
                }
            }
        }
    }
}
