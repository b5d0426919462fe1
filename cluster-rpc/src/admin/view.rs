//! What the admin API answers: one [`Snapshot`] of the hub per second on the feed, and
//! the rows it is made of. Plain serde types, so a client (`cluster top`) reads them typed.
//!
//! Lists that grow with the hub are bounded: connections come a page at a time, filtered
//! on the server; subjects, workers, dead letters and each service's members are capped,
//! with their full counts alongside.

use serde::{Deserialize, Serialize};

/// The hub as the admin page shows it, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// When it was taken, in ms since the Unix epoch.
    pub time_ms: u64,
    /// What the viewer's token may do: `"admin"` or `"read-only"`.
    pub role: String,
    /// Counts of the whole hub.
    pub hub: HubSummary,
    /// Rates over the last second.
    pub rates: Rates,
    /// Rates per second over the last minutes, oldest first.
    pub history: History,
    /// One page of the connections that match the viewer's filter.
    pub connections: ConnectionPage,
    /// Services: the hub's own and those members announce.
    pub services: Vec<ServiceRow>,
    /// Subscription patterns, most subscribed first.
    pub subjects: SubjectList,
    /// The job queue.
    pub jobs: JobsView,
}

/// Counts of the whole hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HubSummary {
    /// Connections open (raw consumers and members).
    pub connections: usize,
    /// Of those, members of the typed layer.
    pub members: usize,
    /// Subscriptions in the routing table.
    pub subscriptions: usize,
    /// Seconds since the admin page's sampler started (the hub's start).
    pub uptime_s: u64,
    /// Messages received since the start.
    pub messages_received: u64,
    /// Messages sent since the start.
    pub messages_sent: u64,
}

/// Rates over the last second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Rates {
    /// Messages received per second.
    pub messages_in: f64,
    /// Messages sent per second.
    pub messages_out: f64,
    /// Payload bytes received per second.
    pub bytes_in: f64,
    /// Payload bytes sent per second.
    pub bytes_out: f64,
    /// Jobs completed per second.
    pub jobs_completed: f64,
    /// Job attempts failed per second.
    pub jobs_failed: f64,
}

/// Per-second rates, oldest first, one entry per second (at most [`HISTORY_SECONDS`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct History {
    /// Messages received per second.
    pub messages_in: Vec<f64>,
    /// Messages sent per second.
    pub messages_out: Vec<f64>,
    /// Jobs completed per second.
    pub jobs_completed: Vec<f64>,
    /// Job attempts failed per second.
    pub jobs_failed: Vec<f64>,
}

/// How far back [`History`] goes: five minutes.
pub const HISTORY_SECONDS: usize = 300;

/// One page of connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionPage {
    /// Connections open.
    pub total: usize,
    /// Of those, the ones matching the filter.
    pub matching: usize,
    /// This page's number, from 0.
    pub page: usize,
    /// Rows per page.
    pub per_page: usize,
    /// The filter applied (empty: none).
    pub filter: String,
    /// The page, oldest connection first.
    pub rows: Vec<ConnectionRow>,
}

/// One connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionRow {
    /// Its id.
    pub id: String,
    /// The consumer's IP address.
    pub ip: String,
    /// Its URL parameters, sorted by key; auth values show as `"<redacted>"`.
    pub parameters: Vec<(String, String)>,
    /// Whether it negotiated permessage-deflate.
    pub compressed: bool,
    /// Bytes queued for it and not yet taken by the kernel.
    pub backpressure: usize,
    /// Heartbeat cycles missed in a row.
    pub strikes: u32,
    /// When it connected, in ms since the Unix epoch.
    pub connected_ms: u64,
    /// Whether it joined the typed layer (a member).
    pub member: bool,
}

/// A service and the members that serve it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceRow {
    /// Its name.
    pub name: String,
    /// Whether the hub serves it itself.
    pub on_hub: bool,
    /// How many members serve it.
    pub members: usize,
    /// Some of them (at most [`SAMPLE_MEMBERS`]).
    pub sample: Vec<MemberRef>,
}

/// How many members of a service are listed by name.
pub const SAMPLE_MEMBERS: usize = 20;

/// A member, by connection id and `name` parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberRef {
    /// Its connection id.
    pub id: String,
    /// Its `name` connect parameter, if any.
    pub name: Option<String>,
}

/// Subscription patterns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubjectList {
    /// Distinct patterns.
    pub total: usize,
    /// The most subscribed (at most [`MAX_ROWS`]).
    pub rows: Vec<SubjectRow>,
}

/// One pattern.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubjectRow {
    /// The pattern (`orders.*`, `orders.>`, …).
    pub pattern: String,
    /// How many subscriptions use it.
    pub subscribers: usize,
}

/// Most rows of a capped list (subjects, workers, dead letters).
pub const MAX_ROWS: usize = 100;

/// The job queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobsView {
    /// Ready to run, waiting for a worker.
    pub waiting: usize,
    /// Delayed or backing off.
    pub delayed: usize,
    /// Running on a worker.
    pub active: usize,
    /// Completed since the start.
    pub completed: u64,
    /// Attempts failed since the start.
    pub failed: u64,
    /// In the dead letters (in cluster mode: of those read, see `dead_more`).
    pub dead: usize,
    /// More dead letters than `dead`: in cluster mode the page reads only the oldest
    /// [`MAX_ROWS`] of the cluster's dead-letter stream.
    #[serde(default)]
    pub dead_more: bool,
    /// Workers connected.
    pub workers_total: usize,
    /// The busiest workers (at most [`MAX_ROWS`]).
    pub workers: Vec<WorkerRow>,
    /// Dead letters, newest first, at most [`MAX_ROWS`]: the hub's newest, or in cluster
    /// mode the oldest in the cluster's dead-letter stream (read at most every 5 s).
    pub dead_letters: Vec<DeadRow>,
}

/// One worker's credits and load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerRow {
    /// Its connection id.
    pub id: String,
    /// Its `name` parameter, if any.
    pub name: Option<String>,
    /// Jobs it may run at once.
    pub credits: usize,
    /// Jobs it runs now (credits in use).
    pub active: usize,
    /// Jobs it finished.
    pub completed: u64,
    /// Jobs it finished per second since it joined.
    pub per_second: f64,
}

/// One dead letter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadRow {
    /// The job's id.
    pub id: String,
    /// Its job name.
    pub name: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: String,
}
