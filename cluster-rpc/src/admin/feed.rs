//! The live feed: a server-sent event stream of one snapshot a second for one viewer.

use super::auth::Role;
use super::snapshot::ConnectionQuery;
use super::{Admin, TICK};
use cluster_transport::HttpResponse;
use std::sync::Arc;
use tokio::time::{Interval, MissedTickBehavior};

/// `event: snapshot` with the viewer's snapshot as JSON, at once and then every second,
/// until the hub stops or the viewer goes away (the transport ends the response then).
pub(super) fn stream(admin: Arc<Admin>, query: ConnectionQuery, role: Role) -> HttpResponse {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold(
        (admin, query, role, tick),
        |(admin, query, role, mut tick): (Arc<Admin>, ConnectionQuery, Role, Interval)| async move {
            tick.tick().await;
            let hub = admin.hub()?;
            let snapshot = admin.snapshot(&hub, &query, role);
            let json = serde_json::to_string(&snapshot).ok()?;
            let event = format!("event: snapshot\ndata: {json}\n\n").into_bytes();
            Some((event, (admin, query, role, tick)))
        },
    );
    HttpResponse::stream(200, "text/event-stream", events).header("X-Accel-Buffering", "no")
}
