//! The hub: the provider side of the typed layer. It serves services to its members,
//! calls the services each member serves (one, any, or all by broadcast) and routes
//! pub/sub.
//!
//! ```
//! use cluster_rpc::{Hub, Member};
//! use cluster_transport::{Consumer, Provider};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(0)).start().await?;
//! let member = Member::builder(Consumer::builder().host("127.0.0.1").port(hub.provider().port()))
//!     .connect()
//!     .await?;
//! let mut orders = hub.subscribe::<String>("orders.>")?;
//! member.publish("orders.eu.created", &"order 1".to_owned())?;
//! let got = orders.recv().await.unwrap()?;
//! assert_eq!((got.subject.as_str(), got.value.as_str()), ("orders.eu.created", "order 1"));
//! # member.shutdown().await; hub.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A hub owns everything it starts: dropping the last [`Hub`] handle (or
//! [`shutdown`](Hub::shutdown)) stops its provider, its job dispatcher and every call
//! its members made.

#[cfg(feature = "admin")]
pub(crate) use inspect::WeakHub;

mod inspect;
mod routes;
mod state;

use crate::broadcast::Broadcast;
use crate::codec::{Codec, CodecKind, CODEC_PARAMETER};
use crate::error::{RpcError, RpcErrorKind};
use crate::jobs::{
    self, JobStore, Jobs, LogOptions, LogStore, Queue, QueueOptions, StoreError, JOBS_PARAMETER,
    JOB_CREDITS_PARAMETER,
};
use crate::options::{NodeConfig, DEFAULT_MAX_SUBSCRIPTIONS};
use crate::peer::Caller;
use crate::pubsub::{check, Subscription, Unsubscribe};
use crate::service::{Service, ServiceClient};
use cluster_transport::{
    BindError, Connection, MessageRef, Parameters, Provider, ProviderBuilder, Refusal,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use state::{HubPeer, HubState, MemberLimits};
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The connect parameter in which members list the services they serve.
pub const SERVICES_PARAMETER: &str = "services";

/// Why a hub did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The provider could not listen.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The job store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hub could not join its cluster (options it cannot run with, NATS unreachable).
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Builds a [`Hub`] on a provider builder.
#[must_use]
pub struct HubBuilder {
    provider: ProviderBuilder,
    config: NodeConfig,
    queue: QueueOptions,
    max_subscriptions: usize,
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::AdminOptions>,
    store: Option<Arc<dyn JobStore>>,
    storage: Option<(std::path::PathBuf, LogOptions)>,
    jobs_admin_token: Option<String>,
    #[cfg(feature = "nats")]
    cluster: Option<crate::cluster::ClusterOptions>,
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("provider", &self.provider)
            .field("services", &self.config.services)
            .finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// Serves `service` to members (a `{Trait}Server` from `#[cluster_service]`). A hub may
    /// serve several services; calls are addressed by service name.
    pub fn serve(mut self, service: impl Service) -> Self {
        self.config.serve(service);
        self
    }

    /// The codec members must speak. Default: MessagePack. A member naming another is
    /// refused at connect time with 406 and a body that says which codec to use.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.config.codec = codec;
        self
    }

    /// Deadline of a call that does not set its own. Default: 30 s.
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.config.limits.default_deadline = deadline;
        self
    }

    /// Most calls from one member running at once; more are refused
    /// [`Overloaded`](RpcErrorKind::Overloaded) before their handler starts.
    /// Default: 1024.
    pub fn max_concurrent_calls(mut self, max: usize) -> Self {
        self.config.limits.max_concurrent_calls = max;
        self
    }

    /// Most subscription patterns one member holds; a subscribe past it is refused
    /// [`TooManySubscriptions`](RpcErrorKind::TooManySubscriptions). Default: 10,000.
    pub fn max_subscriptions_per_member(mut self, max: usize) -> Self {
        self.max_subscriptions = max;
        self
    }

    /// Limits and defaults of the job queue. Default: [`QueueOptions::default`].
    pub fn job_queue(mut self, options: QueueOptions) -> Self {
        self.queue = options;
        self
    }

    /// Serves the admin page at `/admin` on the hub's port, for clients with one of its
    /// tokens (see [`admin`](crate::admin)). Off unless set.
    #[cfg(feature = "admin")]
    #[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
    pub fn admin(mut self, options: crate::admin::AdminOptions) -> Self {
        self.admin = Some(options);
        self
    }

    /// Keeps the job queue's state in `store` (see [`jobs::store`](crate::jobs::store)).
    /// Default: a [`MemoryStore`](crate::jobs::MemoryStore), which keeps nothing past the
    /// hub's life.
    pub fn jobs_store(mut self, store: impl JobStore) -> Self {
        self.store = Some(Arc::new(store));
        self.storage = None;
        self
    }

    /// Keeps the job queue's state in the data directory `dir`, in a
    /// [`LogStore`](crate::jobs::LogStore) with its default options (group commit): jobs
    /// accepted, their attempts, dead letters and kept results survive a restart, a crash
    /// or `kill -9`. The directory is created if missing, and locked while the hub runs.
    pub fn jobs_storage(self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.jobs_storage_with(dir, LogOptions::default())
    }

    /// [`jobs_storage`](Self::jobs_storage) with [`LogOptions`] (fsync policy, segment
    /// and compaction sizes, a size limit).
    pub fn jobs_storage_with(
        mut self,
        dir: impl Into<std::path::PathBuf>,
        options: LogOptions,
    ) -> Self {
        self.storage = Some((dir.into(), options));
        self.store = None;
        self
    }

    /// Lets members that connect with `token` in the
    /// [`JOBS_ADMIN_PARAMETER`](crate::jobs::JOBS_ADMIN_PARAMETER) connect parameter make
    /// operator calls on the job queue: look jobs up and list them, requeue and delete
    /// dead letters, cancel any job ([`MemberJobs::job`](crate::MemberJobs::job) and the
    /// rest; `cluster jobs`). Default: none (operator calls are refused).
    pub fn jobs_admin_token(mut self, token: impl Into<String>) -> Self {
        self.jobs_admin_token = Some(token.into());
        self
    }

    /// Joins the cluster of hubs on NATS that `options` names (see
    /// [`cluster`](crate::cluster)). Off unless set: a hub alone. The hub's jobs go on
    /// NATS JetStream too, shared by every hub, unless the options say
    /// [`local_jobs`](crate::cluster::ClusterOptions::local_jobs) or a store is given
    /// ([`jobs_store`](Self::jobs_store), [`jobs_storage`](Self::jobs_storage)).
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    pub fn cluster(mut self, options: crate::cluster::ClusterOptions) -> Self {
        self.cluster = Some(options);
        self
    }

    /// Binds the provider and starts serving; the job queue first takes back what its
    /// store kept.
    ///
    /// # Errors
    /// As [`ProviderBuilder::bind`], and [`StartError::Store`] when the job store cannot
    /// be read. With a cluster, `StartError::Cluster` when its options cannot work or
    /// NATS cannot be reached in time.
    pub async fn start(self) -> Result<Hub, StartError> {
        #[cfg(feature = "nats")]
        let (cluster, jetstream) = match self.cluster {
            Some(options) => {
                let jetstream = options.jetstream(&self.queue);
                (
                    Some(crate::cluster::Cluster::connect(options).await?),
                    jetstream,
                )
            }
            None => (None, None),
        };
        let config = self.config;
        let stop = tokio_util::sync::CancellationToken::new();
        #[cfg(feature = "nats")]
        let (store, jetstream) = match (self.store, &self.storage, jetstream) {
            (None, None, Some(options)) => {
                let jobs = crate::jobs::store::JetStreamStore::connect(options).await?;
                (
                    Some(Arc::new(jobs.clone()) as Arc<dyn JobStore>),
                    Some(jobs),
                )
            }
            (store, _, _) => (store, None),
        };
        #[cfg(not(feature = "nats"))]
        let store = self.store;
        let store: Arc<dyn JobStore> = match (store, self.storage) {
            (Some(store), _) => store,
            (None, Some((dir, options))) => {
                let opened = tokio::task::spawn_blocking(move || LogStore::open(dir, options))
                    .await
                    .map_err(|e| StoreError::Io(format!("opening the job store: {e}")))??;
                Arc::new(opened)
            }
            (None, None) => Arc::new(jobs::MemoryStore::new()),
        };
        let queue = Queue::start(self.queue, config.codec, stop.child_token(), store)?;
        let limits = MemberLimits {
            subscriptions: self.max_subscriptions,
            max_payload: self.provider.options().ws.max_payload_length,
        };
        let state = Arc::new(HubState::new(
            config,
            queue,
            self.jobs_admin_token,
            stop,
            limits,
        ));
        let _ = state.me.set(Arc::downgrade(&state));
        #[cfg(feature = "nats")]
        if let Some(cluster) = cluster {
            let hub: std::sync::Weak<HubState> = Arc::downgrade(&state);
            let interest = cluster.attach(hub, &state.services.names_list(), &state.stop);
            state.routes_mut().set_interest(interest);
            if let Some(jobs) = jetstream {
                cluster.set_jobs_store(jobs);
            }
            let _ = state.cluster.set(cluster);
        }
        let codec = state.config.codec;
        let (on_open, on_message, on_close) =
            (Arc::clone(&state), Arc::clone(&state), Arc::clone(&state));
        let provider = self.provider;
        #[cfg(feature = "admin")]
        let (provider, admin) = match self.admin {
            Some(options) => {
                let (provider, admin) = crate::admin::install(provider, options);
                (provider, Some(admin))
            }
            None => (provider, None),
        };
        let provider = provider
            .on_metrics_flush(crate::metrics::flush_calls)
            .upgrade_check(move |request| check_parameters(request.parameters(), codec))
            .on_open(move |conn| on_open.opened(conn))
            .on_message(move |conn, message| {
                if let MessageRef::Binary(frame) = message {
                    on_message.received(conn, frame);
                }
            })
            .on_close(move |conn, info| on_close.closed(conn, info))
            .bind()
            .await?;
        // Ends with the hub: its stop token is cancelled when the hub stops or is dropped.
        tokio::spawn(crate::metrics::publish_queue(
            Arc::downgrade(&state.queue),
            state.stop.clone(),
        ));
        let hub = Hub {
            inner: Arc::new(HubInner { state, provider }),
        };
        #[cfg(feature = "admin")]
        if let Some(admin) = admin {
            admin.attach(&hub);
        }
        #[cfg(feature = "nats")]
        if let Some(cluster) = hub.cluster() {
            cluster.announce_joined().await;
        }
        Ok(hub)
    }
}

/// The provider side of the typed layer. Cheap to clone; dropping the last clone stops
/// the hub (as [`Provider::destroy`] and [`shutdown`](Self::shutdown) without the wait).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    state: Arc<HubState>,
    provider: Provider,
}

impl Drop for HubInner {
    fn drop(&mut self) {
        self.provider.destroy();
        self.state.stopped();
    }
}

impl Hub {
    /// A hub on top of a provider builder (auth, limits and callbacks stay yours).
    pub fn builder(provider: ProviderBuilder) -> HubBuilder {
        HubBuilder {
            provider,
            config: NodeConfig::default(),
            queue: QueueOptions::default(),
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            #[cfg(feature = "admin")]
            admin: None,
            store: None,
            storage: None,
            jobs_admin_token: None,
            #[cfg(feature = "nats")]
            cluster: None,
        }
    }

    /// The provider underneath: raw text messages, events, and the raw binary messages
    /// of consumers that are not members keep working beside the typed layer.
    pub fn provider(&self) -> &Provider {
        &self.inner.provider
    }

    /// The hub's place in its cluster, if it joined one ([`HubBuilder::cluster`]).
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.inner.state.cluster.get()
    }

    /// Whether `conn` joined the typed layer at its upgrade (it named a codec, as every
    /// [`Member`](crate::Member) does): its binary messages are envelopes the hub handles.
    /// Other connections keep raw binary semantics.
    pub fn is_member(conn: &Connection) -> bool {
        state::is_member(conn)
    }

    /// The codec this hub speaks.
    pub fn codec(&self) -> CodecKind {
        self.inner.state.config.codec
    }

    /// A client of the service member `id` serves. In a cluster, a member of another
    /// hub is reached through NATS; if no hub has it, its calls fail
    /// [`NotConnected`](RpcErrorKind::NotConnected).
    ///
    /// # Errors
    /// [`RpcErrorKind::NotConnected`] if no such member is connected (to this hub, when
    /// it is not in a cluster).
    pub fn client<C: ServiceClient>(&self, id: Uuid) -> Result<C, RpcError> {
        if let Some(peer) = self.inner.state.peer(id) {
            return Ok(C::from_caller(Caller::new(peer.core)));
        }
        #[cfg(feature = "nats")]
        if let Some(remote) = self.cluster().and_then(|c| c.remote_member(id)) {
            return Ok(C::from_caller(self.remote_caller(remote)));
        }
        Err(RpcError::new(
            RpcErrorKind::NotConnected,
            format!("no member {id}"),
        ))
    }

    #[cfg(feature = "nats")]
    fn remote_caller(&self, remote: crate::cluster::Remote) -> Caller {
        let config = &self.inner.state.config;
        Caller::remote(remote, config.codec, config.limits.default_deadline)
    }

    /// Members that announced they serve `service`, by connection.
    pub fn members_serving(&self, service: &str) -> Vec<Connection> {
        self.serving(service).into_iter().map(|p| p.conn).collect()
    }

    fn serving(&self, service: &str) -> Vec<HubPeer> {
        self.inner.state.serving(service)
    }

    /// A client of one member serving `C`'s service, picked round robin among this
    /// hub's members. A member is here once its
    /// [`connect`](crate::MemberBuilder::connect) has returned. In a cluster, when no
    /// member of this hub serves it, the client's calls go to a member serving it on
    /// another hub (NATS picks the hub per call); if none does, they fail
    /// [`NoPeer`](RpcErrorKind::NoPeer).
    ///
    /// # Errors
    /// [`RpcErrorKind::NoPeer`] when no connected member serves it (on this hub, when it
    /// is not in a cluster).
    pub fn any<C: ServiceClient>(&self) -> Result<C, RpcError> {
        if let Some(peer) = self.inner.state.pick_serving(C::SERVICE) {
            return Ok(C::from_caller(Caller::new(peer.core)));
        }
        #[cfg(feature = "nats")]
        if let Some(remote) = self.cluster().and_then(|c| c.remote_service(C::SERVICE)) {
            return Ok(C::from_caller(self.remote_caller(remote)));
        }
        Err(RpcError::new(RpcErrorKind::NoPeer, C::SERVICE))
    }

    /// Calls `call` with a client of every member serving `C`'s service, all at once; the
    /// outcomes arrive keyed by connection id, failures and timeouts included (a member
    /// that disconnects mid-call reports [`RpcErrorKind::Disconnected`]).
    ///
    /// ```
    /// # use cluster_rpc::{Hub, RpcError};
    /// # async fn demo<C: cluster_rpc::ServiceClient + Clone + Send + 'static>(hub: Hub, ping: impl Fn(C) -> futures_util::future::BoxFuture<'static, Result<u64, RpcError>> + Send + Sync + 'static) {
    /// let outcomes = hub.broadcast(ping).collect().await; // HashMap<Uuid, Result<u64, RpcError>>
    /// # }
    /// ```
    pub fn broadcast<C, F, Fut, T>(&self, call: F) -> Broadcast<T>
    where
        C: ServiceClient,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, RpcError>> + Send + 'static,
        T: Send + 'static,
    {
        self.broadcast_where(|_| true, call)
    }

    /// [`broadcast`](Self::broadcast) to the members serving `C`'s service that `filter`
    /// accepts (by their connect parameters, say).
    ///
    /// ```
    /// # use cluster_rpc::{Hub, RpcError};
    /// # async fn demo<C: cluster_rpc::ServiceClient + Clone + Send + 'static>(hub: Hub, ping: impl Fn(C) -> futures_util::future::BoxFuture<'static, Result<u64, RpcError>> + Send + Sync + 'static) {
    /// let workers = hub.broadcast_where(|conn| conn.parameters().get("role").map(String::as_str) == Some("worker"), ping);
    /// let outcomes = workers.collect().await;
    /// # }
    /// ```
    pub fn broadcast_where<C, F, Fut, T>(
        &self,
        filter: impl Fn(&Connection) -> bool,
        call: F,
    ) -> Broadcast<T>
    where
        C: ServiceClient,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, RpcError>> + Send + 'static,
        T: Send + 'static,
    {
        let peers = self.serving(C::SERVICE);
        Broadcast::new(
            peers
                .into_iter()
                .filter(|p| filter(&p.conn))
                .map(|p| (p.conn.id(), call(C::from_caller(Caller::new(p.core))))),
        )
    }

    /// [`broadcast`](Self::broadcast) to every member serving `C`'s service on every hub
    /// of the cluster. Each other hub calls its own members and answers once with all
    /// their outcomes; the result names the hubs that did not answer by the deadline
    /// ([`Gathered::missing`](crate::Gathered::missing)) instead of leaving them out.
    ///
    /// `call` makes one call on the client it is given (as with `broadcast`); for the
    /// other hubs' members it runs again on that call's answer, so whatever it does with
    /// the answer applies to them too. The call's deadline (the client's, or the hub's
    /// default) bounds the whole broadcast; the other hubs give their members a tenth
    /// less (at most 250 ms), for their answers' way back. The hubs waited for are those
    /// heard from within three
    /// [`presence_interval`s](crate::cluster::ClusterOptions::presence_interval).
    ///
    /// ```no_run
    /// # use cluster_rpc::{Hub, RpcError};
    /// # async fn demo<C: cluster_rpc::ServiceClient + Clone + Send + 'static>(hub: Hub, ping: impl Fn(C) -> futures_util::future::BoxFuture<'static, Result<u64, RpcError>> + Send + Sync + 'static) {
    /// let gathered = hub.broadcast_cluster(ping).await;
    /// if !gathered.is_complete() {
    ///     eprintln!("no answer from {:?}", gathered.missing);
    /// }
    /// # }
    /// ```
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    pub async fn broadcast_cluster<C, F, Fut, T>(&self, call: F) -> crate::Gathered<T>
    where
        C: ServiceClient,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, RpcError>> + Send + 'static,
        T: Send + 'static,
    {
        let local = self.broadcast(&call).collect();
        let mut answered = vec![self
            .cluster()
            .map_or_else(String::new, |c| c.hub_name().to_owned())];
        let (Some(cluster), Some(recorded)) = (self.cluster(), self.record(&call).await) else {
            let outcomes = local.await;
            return crate::Gathered {
                outcomes,
                answered,
                missing: Vec::new(),
            };
        };
        let remote = cluster.gather(
            recorded.service,
            recorded.method,
            &recorded.request,
            recorded.deadline,
        );
        let (mut outcomes, (answers, missing)) = tokio::join!(local, remote);
        let codec = self.codec();
        for answer in answers {
            answered.push(answer.name);
            for (id, reply) in answer.outcomes {
                let replayed = Caller::replay(reply, codec, recorded.deadline);
                outcomes.insert(id, call(C::from_caller(replayed)).await);
            }
        }
        crate::Gathered {
            outcomes,
            answered,
            missing,
        }
    }

    /// The call `call` makes on a client, without making it.
    #[cfg(feature = "nats")]
    async fn record<C, F, Fut, T>(&self, call: &F) -> Option<crate::peer::Recorded>
    where
        C: ServiceClient,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, RpcError>> + Send + 'static,
    {
        let slot = Arc::new(std::sync::Mutex::new(None));
        let limits = self.inner.state.config.limits;
        let recorder = Caller::record(Arc::clone(&slot), self.codec(), limits.default_deadline);
        let mut probe = std::pin::pin!(call(C::from_caller(recorder)));
        let take = || slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        std::future::poll_fn(|cx| {
            let done = probe.as_mut().poll(cx).is_ready();
            match take() {
                Some(recorded) => std::task::Poll::Ready(Some(recorded)),
                None if done => std::task::Poll::Ready(None),
                None => std::task::Poll::Pending,
            }
        })
        .await
    }

    /// Publishes `value` on `subject` to every matching subscription; returns how many
    /// of this hub's subscriptions took it (in a cluster, the other hubs' subscribers get
    /// it through NATS and are not counted).
    ///
    /// # Errors
    /// [`RpcErrorKind::InvalidSubject`] for a subject that is not valid (or reserved),
    /// [`RpcErrorKind::Encode`] for a value the codec cannot encode.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<usize, RpcError> {
        check(subject, false).map_err(|why| invalid("subject", subject, why))?;
        let mut payload = Vec::new();
        self.codec()
            .encode(value, &mut payload)
            .map_err(|e| RpcError::new(RpcErrorKind::Encode, e.to_string()))?;
        Ok(self.inner.state.route(subject, &payload))
    }

    /// Subscribes the hub itself to subjects matching `pattern`; in place when this
    /// returns.
    ///
    /// # Errors
    /// [`RpcErrorKind::InvalidSubject`] for a pattern that is not valid (or reserved).
    pub fn subscribe<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<Subscription<T>, RpcError> {
        check(pattern, true).map_err(|why| invalid("pattern", pattern, why))?;
        let state = Arc::downgrade(&self.inner.state);
        let sid = self.inner.state.next_sid.fetch_add(1, Ordering::Relaxed);
        let unsubscribe = Unsubscribe::new(move || {
            if let Some(state) = state.upgrade() {
                state.routes_mut().unsubscribe_local(sid);
            }
        });
        let (subscription, sink) = Subscription::new(self.codec(), unsubscribe);
        self.inner
            .state
            .routes_mut()
            .subscribe_local(sid, pattern, sink);
        Ok(subscription)
    }

    /// Number of subscriptions in the routing table (members' and the hub's own).
    pub fn subscription_count(&self) -> usize {
        self.inner.state.routes().len()
    }

    /// The job queue: submit jobs, read statistics and dead letters.
    pub fn jobs(&self) -> Jobs {
        Jobs::new(Arc::clone(&self.inner.state.queue))
    }

    /// Stops gracefully: see [`Provider::shutdown`]. Calls in flight fail `Disconnected`,
    /// jobs still queued resolve with an error (a durable store keeps them for the next
    /// start), and the job store is closed once what it buffered is written.
    pub async fn shutdown(&self) {
        #[cfg(feature = "nats")]
        if let Some(cluster) = self.cluster() {
            cluster.leave().await;
        }
        self.inner.provider.shutdown().await;
        self.inner.state.stopped();
        let queue = Arc::clone(&self.inner.state.queue);
        let _ = tokio::task::spawn_blocking(move || queue.close_store()).await;
    }
}

/// The error of a subject or pattern [`check`] refused.
pub(crate) fn invalid(what: &str, text: &str, why: &str) -> RpcError {
    let shown: String = text.chars().take(64).collect();
    RpcError::new(
        RpcErrorKind::InvalidSubject,
        format!("{what} {shown:?} is {why}"),
    )
}

/// The job names of a `jobs` connect parameter.
fn job_names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').filter(|s| !s.is_empty())
}

/// Refuses, at the upgrade, a member whose parameters the hub cannot take: another codec
/// (406), job credits that are not a number, or job names the queue refuses (400). Each
/// refusal's body says why.
fn check_parameters(params: &Parameters, codec: CodecKind) -> Result<(), Refusal> {
    if let Some(name) = params.get(CODEC_PARAMETER) {
        if name != codec.name() {
            return Err(Refusal::new(
                406,
                format!("unsupported codec {name:?}: this hub speaks {codec}"),
            ));
        }
    }
    if let Some(credits) = params.get(JOB_CREDITS_PARAMETER) {
        if credits.parse::<usize>().is_err() {
            return Err(Refusal::new(
                400,
                format!("{JOB_CREDITS_PARAMETER} must be a whole number, not {credits:?}"),
            ));
        }
    }
    if let Some(list) = params.get(JOBS_PARAMETER) {
        for name in job_names(list) {
            jobs::check_job_name(name)
                .map_err(|e| Refusal::new(400, format!("{JOBS_PARAMETER}: {e}")))?;
        }
    }
    Ok(())
}

fn serves(conn: &Connection, service: &str) -> bool {
    conn.parameters()
        .get(SERVICES_PARAMETER)
        .is_some_and(|list| list.split(',').any(|s| s == service))
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("provider", &self.inner.provider)
            .field("codec", &self.codec())
            .field("state", &self.inner.state)
            .finish()
    }
}
