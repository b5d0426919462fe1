//! Several hubs acting as one cluster, on NATS (feature `nats`).
//!
//! Each hub keeps serving its own members over websockets and holds one NATS connection
//! ([`HubBuilder::cluster`](crate::HubBuilder::cluster)). NATS does the routing between
//! hubs: the same `*`/`>` subjects as this crate's pub/sub, queue groups, request/reply;
//! there is no protocol of our own between hubs.
//!
//! ```no_run
//! use cluster_rpc::cluster::ClusterOptions;
//! use cluster_rpc::Hub;
//! use cluster_transport::Provider;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::builder(Provider::builder().port(8080))
//!     .cluster(ClusterOptions::new("nats://127.0.0.1:4222").hub_name("hub-a"))
//!     .start()
//!     .await?;
//! assert!(hub.cluster().is_some_and(|c| c.is_connected()));
//! # Ok(()) }
//! ```
//!
//! # Subjects
//!
//! Every NATS subject of a cluster starts with its prefix (`cluster` unless
//! [`ClusterOptions::prefix`] says otherwise), so clusters can share a NATS server.
//!
//! # Connection
//!
//! A hub that cannot reach NATS within [`ClusterOptions::connect_timeout`] does not
//! start ([`StartError::Cluster`](crate::StartError::Cluster)): a hub that silently runs
//! alone would split the cluster. Once started, it reconnects forever when NATS goes
//! away (waits growing up to [`ClusterOptions::max_reconnect_delay`]);
//! [`Cluster::is_connected`] says where it stands. The connection is `no_echo`: NATS never
//! hands a hub its own publications back.
//!
//! # Jobs
//!
//! A hub in a cluster keeps its jobs on NATS JetStream, shared by every hub, on a
//! connection of their own to the same servers and under the same prefix
//! ([`ClusterOptions::jobs`]; see [`jobs::store::jetstream`](crate::jobs::store::jetstream)):
//! a job submitted on any hub runs on a worker of any hub, and its outcome reaches its
//! submitter on whichever hub it is connected to. [`ClusterOptions::local_jobs`] keeps a
//! hub's jobs to itself.

mod calls;
mod gather;
mod interest;
mod options;
mod pubsub;

pub(crate) use calls::Remote;
pub(crate) use gather::{HubAnswer, MemberOutcome};
pub(crate) use interest::Interest;
pub use options::{ClusterOptions, DEFAULT_MAX_PENDING_BYTES, DEFAULT_PREFIX};

use calls::CallBridge;
use interest::{Command, Key};
use pubsub::Outbox;

use crate::peer::Answer;
use async_nats::{ConnectOptions, Event, ServerAddr};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a cluster hands to its hub.
pub(crate) trait ClusterHub: Send + Sync + 'static {
    /// A publication on `subject` from another hub, for the hub's subscriptions of
    /// exactly `pattern`.
    fn deliver_remote(&self, pattern: &str, subject: &str, payload: &[u8]);

    /// A call from another hub, to member `member` of this hub, or (`None`) to whoever
    /// serves `service` here: the hub itself, else one of its members.
    fn serve_remote(
        &self,
        member: Option<Uuid>,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> Answer;

    /// A broadcast from another hub: every member of this hub serving `service` is
    /// called, and all their outcomes come back together.
    fn gather_local(
        &self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> futures_util::future::BoxFuture<'static, Vec<MemberOutcome>>;
}

/// The NATS subjects of one hub in its cluster.
pub(crate) struct Subjects {
    /// `{prefix}.ps.`, followed by a pub/sub subject or pattern.
    pubsub: String,
    /// `{prefix}.svc.`, followed by a service name.
    service: String,
    /// `{prefix}.conn.`, followed by a member id.
    member: String,
    /// `{prefix}.reply.{hub id}.`, followed by a call id.
    replies: String,
    /// `{prefix}.cancel`
    cancels: String,
    /// `{prefix}.barrier.{hub id}`, which nobody holds.
    barrier: String,
    /// `{prefix}.hello`
    presence: String,
    /// `{prefix}.gather`
    gathers: String,
}

impl Subjects {
    fn new(prefix: &str, hub_id: Uuid) -> Self {
        Self {
            pubsub: format!("{prefix}.ps."),
            service: format!("{prefix}.svc."),
            member: format!("{prefix}.conn."),
            replies: format!("{prefix}.reply.{}.", hub_id.simple()),
            cancels: format!("{prefix}.cancel"),
            barrier: format!("{prefix}.barrier.{}", hub_id.simple()),
            presence: format!("{prefix}.hello"),
            gathers: format!("{prefix}.gather"),
        }
    }

    /// The subject (or pattern) of a subscription.
    fn of(&self, key: &Key) -> String {
        match key {
            Key::Pattern(pattern) => format!("{}{pattern}", self.pubsub),
            Key::Service(service) => self.service(service),
            Key::Member(id) => self.member(*id),
            Key::Replies => format!("{}*", self.replies),
            Key::Cancels => self.cancels.clone(),
            Key::Presence => self.presence.clone(),
            Key::Gathers => self.gathers.clone(),
        }
    }

    fn service(&self, service: &str) -> String {
        format!("{}{service}", self.service)
    }

    fn member(&self, id: Uuid) -> String {
        format!("{}{}", self.member, id.simple())
    }

    fn reply(&self, id: u64) -> String {
        format!("{}{id}", self.replies)
    }

    fn cancels(&self) -> String {
        self.cancels.clone()
    }

    fn barrier(&self) -> String {
        self.barrier.clone()
    }

    fn presence(&self) -> String {
        self.presence.clone()
    }

    fn gathers(&self) -> String {
        self.gathers.clone()
    }

    /// The call id of one of this hub's reply subjects.
    fn reply_id(&self, subject: &str) -> Option<u64> {
        subject.strip_prefix(&self.replies)?.parse().ok()
    }

    /// The pub/sub subject of a publication's NATS subject.
    fn published_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(&self.pubsub)
    }
}

/// Whether `service` can be a service's subject token: not empty, no wildcards, dots or
/// whitespace (members name their services in a connect parameter).
fn is_service_token(service: &str) -> bool {
    !service.is_empty()
        && service.len() <= 255
        && !service.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

/// What runs once the hub is attached.
struct Attached {
    outbox: Outbox,
    calls: Arc<CallBridge>,
    commands: mpsc::UnboundedSender<Command>,
    /// Services and members held here, counted.
    own: Mutex<Interest>,
}

/// Why a hub could not join its cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The [`ClusterOptions`] cannot work (the detail says why).
    #[error("invalid cluster options: {0}")]
    Options(String),
    /// NATS could not be reached or refused the connection.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// A hub's place in its cluster: its id and name, and its NATS connection. Cheap to
/// clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

struct ClusterInner {
    client: async_nats::Client,
    hub_id: Uuid,
    hub_name: String,
    options: ClusterOptions,
    connected: Arc<AtomicBool>,
    /// The same, to wait on.
    changes: Arc<tokio::sync::watch::Sender<bool>>,
    subjects: Arc<Subjects>,
    /// Set once the hub is attached.
    attached: OnceLock<Attached>,
    /// The hub's jobs on JetStream, unless they are local.
    jobs: OnceLock<crate::jobs::store::JetStreamStore>,
}

impl Cluster {
    /// Connects to NATS with `options`.
    pub(crate) async fn connect(options: ClusterOptions) -> Result<Self, ClusterError> {
        options.validate()?;
        let hub_id = Uuid::new_v4();
        let hub_name = options
            .hub_name
            .clone()
            .unwrap_or_else(|| hub_id.to_string());
        let addrs = options
            .servers
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>()
                    .map_err(|e| ClusterError::Options(format!("NATS server {url:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let connected = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(tokio::sync::watch::Sender::new(false));
        let flag = Arc::clone(&connected);
        let watchers = Arc::clone(&changes);
        let max_delay = options.max_reconnect_delay;
        let name = hub_name.clone();
        let nats = ConnectOptions::new()
            .name(format!("network-cluster hub {hub_name}"))
            .no_echo()
            .connection_timeout(options.connect_timeout)
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
            .event_callback(move |event| {
                let (flag, watchers, name) =
                    (Arc::clone(&flag), Arc::clone(&watchers), name.clone());
                async move { on_event(&flag, &watchers, &name, event) }
            });
        let servers = options.servers.join(", ");
        let client = tokio::time::timeout(options.connect_timeout, nats.connect(addrs))
            .await
            .map_err(|_| {
                ClusterError::Connect(format!(
                    "{servers}: no connection within {:?}",
                    options.connect_timeout
                ))
            })?
            .map_err(|e| ClusterError::Connect(format!("{servers}: {e}")))?;
        connected.store(true, Ordering::Relaxed);
        changes.send_replace(true);
        let options_prefix = options.prefix.clone();
        tracing::info!(hub = %hub_name, %servers, "joined the cluster on NATS");
        Ok(Self {
            inner: Arc::new(ClusterInner {
                client,
                hub_id,
                hub_name,
                options,
                connected,
                changes,
                subjects: Arc::new(Subjects::new(&options_prefix, hub_id)),
                attached: OnceLock::new(),
                jobs: OnceLock::new(),
            }),
        })
    }

    /// Starts the cluster's side of the hub: publications and calls from other hubs go
    /// to `hub`, which serves `services` itself; its routes count their patterns in the
    /// returned [`Interest`]. Everything started ends with `stop`.
    pub(crate) fn attach(
        &self,
        hub: Weak<dyn ClusterHub>,
        services: &[&str],
        stop: &CancellationToken,
    ) -> Interest {
        let attached = self.inner.attached.get_or_init(|| {
            let client = self.inner.client.clone();
            let subjects = Arc::clone(&self.inner.subjects);
            let (commands, rx) = mpsc::unbounded_channel();
            let calls = Arc::new(CallBridge::new(
                client.clone(),
                Arc::clone(&subjects),
                Weak::clone(&hub),
                Arc::clone(&self.inner.connected),
                (self.inner.hub_id, self.inner.hub_name.clone()),
                self.inner.options.presence_interval,
            ));
            let (outbox, publishing) = Outbox::new(
                client.clone(),
                subjects.pubsub.clone(),
                self.inner.options.max_pending_bytes,
            );
            tokio::spawn(stop.clone().run_until_cancelled_owned(publishing));
            let holding = interest::hold(client, subjects, rx, hub, Arc::clone(&calls));
            tokio::spawn(stop.clone().run_until_cancelled_owned(holding));
            let mut own = Interest::new(commands.clone());
            own.up(Key::Replies);
            own.up(Key::Cancels);
            own.up(Key::Presence);
            own.up(Key::Gathers);
            // Hello every interval (the first at start: `announce_joined`).
            let (presence, interval) = (Arc::clone(&calls), self.inner.options.presence_interval);
            tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
                let start = tokio::time::Instant::now() + interval;
                let mut ticks = tokio::time::interval_at(start, interval);
                loop {
                    ticks.tick().await;
                    presence.announce(true).await;
                }
            }));
            for service in services.iter().filter(|s| is_service_token(s)) {
                own.up(Key::Service((*service).into()));
            }
            Attached {
                outbox,
                calls,
                commands,
                own: Mutex::new(own),
            }
        });
        Interest::new(attached.commands.clone())
    }

    fn own(&self) -> Option<std::sync::MutexGuard<'_, Interest>> {
        let attached = self.inner.attached.get()?;
        Some(attached.own.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A member joined this hub, serving `services`: calls for it and for them may come.
    pub(crate) fn member_joined<'a>(&self, id: Uuid, services: impl Iterator<Item = &'a str>) {
        if let Some(mut own) = self.own() {
            own.up(Key::Member(id));
            for service in services.filter(|s| is_service_token(s)) {
                own.up(Key::Service(service.into()));
            }
        }
    }

    /// A member that joined with `services` left.
    pub(crate) fn member_left<'a>(&self, id: Uuid, services: impl Iterator<Item = &'a str>) {
        if let Some(mut own) = self.own() {
            own.down(Key::Member(id));
            for service in services.filter(|s| is_service_token(s)) {
                own.down(Key::Service(service.into()));
            }
        }
    }

    /// Sends a publication made at this hub to the other hubs.
    pub(crate) fn publish(&self, subject: &str, payload: &[u8]) {
        if let Some(attached) = self.inner.attached.get() {
            attached.outbox.publish(subject, payload);
        }
    }

    /// Runs `then` once NATS holds every subscription this hub asked for so far (at
    /// once when the hub is not attached or is stopping).
    pub(crate) fn after_interest(&self, then: impl FnOnce() + Send + 'static) {
        let Some(attached) = self.inner.attached.get() else {
            return then();
        };
        if let Err(mpsc::error::SendError(Command::Confirm(then))) =
            attached.commands.send(Command::Confirm(Box::new(then)))
        {
            then();
        }
    }

    /// Where calls to any member serving `service` go, on whichever hub.
    pub(crate) fn remote_service(&self, service: &str) -> Option<Remote> {
        let attached = self.inner.attached.get()?;
        is_service_token(service).then(|| Remote::service(&attached.calls, service))
    }

    /// Where calls to member `id` go, on whichever hub it is connected to.
    pub(crate) fn remote_member(&self, id: Uuid) -> Option<Remote> {
        let attached = self.inner.attached.get()?;
        Some(Remote::member(&attached.calls, id))
    }

    /// Sends a broadcast to the other hubs and gathers their members' outcomes: each
    /// hub's answer, and the names of the hubs that did not answer by `deadline`.
    pub(crate) async fn gather(
        &self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> (Vec<HubAnswer>, Vec<String>) {
        match self.inner.attached.get() {
            Some(attached) => {
                attached
                    .calls
                    .gather(service, method, request, deadline)
                    .await
            }
            None => (Vec::new(), Vec::new()),
        }
    }

    /// Once NATS holds the hub's subscriptions, tells the other hubs it is here, and
    /// returns once the server has the hello (bounded by the connect timeout).
    pub(crate) async fn announce_joined(&self) {
        let Some(attached) = self.inner.attached.get() else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_interest(move || {
            let _ = tx.send(());
        });
        let joined = async {
            let _ = rx.await;
            attached.calls.announce(true).await;
            interest::round_trip(&self.inner.client, &self.inner.subjects).await;
        };
        let _ = tokio::time::timeout(self.inner.options.connect_timeout, joined).await;
    }

    /// Tells the other hubs this one is leaving (they stop waiting for it).
    pub(crate) async fn leave(&self) {
        if let Some(attached) = self.inner.attached.get() {
            attached.calls.announce(false).await;
            let _ = self.inner.client.flush().await;
        }
    }

    /// Publications this hub dropped instead of sending them to the other hubs, because
    /// [`ClusterOptions::max_pending_bytes`] were queued already (NATS slow or away).
    pub fn dropped_publications(&self) -> u64 {
        self.inner.attached.get().map_or(0, |a| a.outbox.dropped())
    }

    /// This hub's id in the cluster (new at each start).
    pub fn hub_id(&self) -> Uuid {
        self.inner.hub_id
    }

    /// This hub's name ([`ClusterOptions::hub_name`], else its id).
    pub fn hub_name(&self) -> &str {
        &self.inner.hub_name
    }

    /// The options the hub joined with.
    pub fn options(&self) -> &ClusterOptions {
        &self.inner.options
    }

    /// The cluster's subject prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.options.prefix
    }

    /// Whether the hub's NATS connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Watches whether the hub's NATS connection is up (for health checks, or to wait
    /// for it after an outage).
    ///
    /// ```no_run
    /// # async fn demo(cluster: cluster_rpc::cluster::Cluster) {
    /// let mut up = cluster.connection();
    /// let _ = up.wait_for(|up| *up).await;
    /// # }
    /// ```
    pub fn connection(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.changes.subscribe()
    }

    /// The store of the hub's jobs on JetStream ([`ClusterOptions::jobs`]): `None` when
    /// the hub keeps its jobs to itself ([`ClusterOptions::local_jobs`], or a store given
    /// to the hub).
    pub fn jobs_store(&self) -> Option<&crate::jobs::store::JetStreamStore> {
        self.inner.jobs.get()
    }

    pub(crate) fn set_jobs_store(&self, store: crate::jobs::store::JetStreamStore) {
        let _ = self.inner.jobs.set(store);
    }

    /// The hub's NATS client (a `no_echo` connection: it never receives what it
    /// published itself).
    pub fn nats(&self) -> &async_nats::Client {
        &self.inner.client
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("hub_id", &self.inner.hub_id)
            .field("hub_name", &self.inner.hub_name)
            .field("prefix", &self.inner.options.prefix)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// The wait before reconnect attempt `attempts`: 50 ms doubling, up to `max`.
fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    let doublings = u32::try_from(attempts.min(16)).unwrap_or(16);
    Duration::from_millis(50)
        .saturating_mul(1 << doublings)
        .min(max)
}

fn on_event(
    connected: &AtomicBool,
    changes: &tokio::sync::watch::Sender<bool>,
    hub: &str,
    event: Event,
) {
    let up = match event {
        Event::Connected => {
            tracing::info!(hub, "NATS connection up");
            true
        }
        Event::Disconnected => {
            tracing::warn!(hub, "NATS connection lost; reconnecting");
            false
        }
        Event::Closed => false,
        other => {
            tracing::warn!(hub, event = %other, "NATS");
            return;
        }
    };
    connected.store(up, Ordering::Relaxed);
    changes.send_replace(up);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_to_the_cap() {
        let max = Duration::from_secs(2);
        assert_eq!(reconnect_delay(0, max), Duration::from_millis(50));
        assert_eq!(reconnect_delay(2, max), Duration::from_millis(200));
        assert_eq!(reconnect_delay(10, max), max);
        assert_eq!(reconnect_delay(usize::MAX, max), max);
    }
}
