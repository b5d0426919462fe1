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

use crate::broadcast::Broadcast;
use crate::codec::{Codec, CodecKind, CODEC_PARAMETER};
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::RpcError;
use crate::jobs::{Jobs, JobsService, Queue, QueueOptions, JOBS_PARAMETER, JOB_CREDITS_PARAMETER};
use crate::link::Link;
use crate::options::NodeConfig;
use crate::peer::{Caller, PeerCore};
use crate::pubsub::{
    is_valid_pattern, is_valid_subject, LocalSink, SubjectTable, Subscription, Unsubscribe,
};
use crate::service::{Service, ServiceClient};
use cluster_transport::{
    close_code, BindError, Connection, MessageRef, Provider, ProviderBuilder, Refusal,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use uuid::Uuid;

/// The connect parameter in which members list the services they serve.
pub const SERVICES_PARAMETER: &str = "services";

/// One member as the hub knows it.
#[derive(Clone)]
struct HubPeer {
    conn: Connection,
    core: Arc<PeerCore>,
}

/// A subscriber of the hub's routing table.
#[derive(Clone)]
enum Target {
    Member { conn: Connection, sid: u64 },
    Local { sid: u64, sink: LocalSink },
}

/// State the transport's callbacks share with the hub handle.
struct HubState {
    config: NodeConfig,
    queue: Arc<Queue>,
    stop: tokio_util::sync::CancellationToken,
    services: Arc<crate::service::Services>,
    peers: Mutex<HashMap<Uuid, HubPeer>>,
    routes: RwLock<SubjectTable<Target>>,
    next_sid: AtomicU64,
    next_pick: AtomicUsize,
}

impl HubState {
    fn peer(&self, id: Uuid) -> Option<HubPeer> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn opened(&self, conn: &Connection) {
        let core = PeerCore::new(
            Arc::new(conn.clone()) as Arc<dyn Link>,
            self.config.codec,
            self.config.limits,
            Arc::clone(&self.services),
        );
        let peer = HubPeer {
            conn: conn.clone(),
            core,
        };
        {
            let params = conn.parameters();
            let jobs: Vec<String> = params
                .get(JOBS_PARAMETER)
                .map(|j| {
                    j.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let credits = params
                .get(JOB_CREDITS_PARAMETER)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            self.queue.worker_joined(
                conn.id(),
                Arc::clone(peer.core.link()),
                jobs,
                credits,
                params.get("name").cloned(),
            );
        }
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn.id(), peer);
    }

    fn closed(&self, conn: &Connection) {
        let peer = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn.id());
        self.queue.worker_left(conn.id());
        if let Some(peer) = peer {
            peer.core.disconnected(true);
        }
        let id = conn.id();
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| !matches!(t, Target::Member { conn, .. } if conn.id() == id));
    }

    fn received(&self, conn: &Connection, frame: &[u8]) {
        let envelope = match Envelope::decode(frame) {
            Ok(e) => e,
            Err(error) => {
                let code = match error {
                    EnvelopeError::UnknownVersion(_) => close_code::UNSUPPORTED_DATA,
                    _ => close_code::INVALID_PAYLOAD,
                };
                tracing::warn!(conn.id = %conn.id(), cause = %error, "undecodable envelope; closing");
                conn.close(code, &error.to_string());
                return;
            }
        };
        match envelope {
            Envelope::Subscribe { sid, pattern } => {
                if is_valid_pattern(pattern) {
                    let target = Target::Member {
                        conn: conn.clone(),
                        sid,
                    };
                    self.routes
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(pattern, target);
                }
            }
            Envelope::Unsubscribe { sid } => {
                let id = conn.id();
                self.routes.write().unwrap_or_else(|p| p.into_inner()).retain(
                    |t| !matches!(t, Target::Member { conn, sid: s } if conn.id() == id && *s == sid),
                );
            }
            Envelope::Publish { subject, payload } if subject == crate::jobs::DONE_SUBJECT => {
                if let Err(error) = self.queue.answers(conn.id(), payload) {
                    tracing::warn!(conn.id = %conn.id(), cause = %error, "closing");
                    conn.close(close_code::INVALID_PAYLOAD, &error.to_string());
                }
            }
            Envelope::Publish { subject, payload } if subject == crate::jobs::PROGRESS_SUBJECT => {
                if let Ok((id, value)) = self.config.codec.decode::<(u128, f64)>(payload) {
                    self.queue.progress(id, value);
                }
            }
            Envelope::Publish { subject, payload } => {
                if is_valid_subject(subject) {
                    self.route(subject, payload);
                }
            }
            other => {
                if let Some(peer) = self.peer(conn.id()) {
                    peer.core.handle(other);
                }
            }
        }
    }

    /// Delivers a publication to every matching subscription. Never waits: a member that
    /// does not read is closed by its backpressure limit, the others go on.
    fn route(&self, subject: &str, payload: &[u8]) -> usize {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        // Encoded once; only the subscription id (bytes 2..10) differs per subscriber.
        let mut frame = Vec::new();
        routes.for_each_match(subject, |target| match target {
            Target::Member { conn, sid } => {
                if frame.is_empty() {
                    Envelope::Message {
                        sid: *sid,
                        subject,
                        payload,
                    }
                    .encode(&mut frame);
                }
                frame[2..10].copy_from_slice(&sid.to_le_bytes());
                if conn.send(MessageRef::Binary(&frame)).is_ok() {
                    delivered += 1;
                }
            }
            Target::Local { sink, .. } => {
                sink.deliver(subject, payload);
                delivered += 1;
            }
        });
        delivered
    }
}

/// Builds a [`Hub`] on a provider builder.
#[must_use]
pub struct HubBuilder {
    provider: ProviderBuilder,
    config: NodeConfig,
    queue: QueueOptions,
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

    /// Most calls from one member running at once; more are refused `Overloaded`.
    /// Default: 1024.
    pub fn max_concurrent_calls(mut self, max: usize) -> Self {
        self.config.limits.max_concurrent_calls = max;
        self
    }

    /// Limits and defaults of the job queue. Default: [`QueueOptions::default`].
    pub fn job_queue(mut self, options: QueueOptions) -> Self {
        self.queue = options;
        self
    }

    /// Binds the provider and starts serving.
    ///
    /// # Errors
    /// As [`ProviderBuilder::bind`].
    pub async fn start(self) -> Result<Hub, BindError> {
        let mut config = self.config;
        let stop = tokio_util::sync::CancellationToken::new();
        let state = Arc::new_cyclic(|weak: &std::sync::Weak<HubState>| {
            let router = weak.clone();
            let sink: crate::jobs::queue::ProgressSink = Arc::new(move |subject, payload| {
                if let Some(state) = router.upgrade() {
                    state.route(subject, payload);
                }
            });
            let queue = Queue::start(self.queue, config.codec, stop.child_token(), sink);
            config.serve(JobsService {
                queue: Arc::clone(&queue),
            });
            HubState {
                services: Arc::new(config.services.clone()),
                config,
                queue,
                stop,
                peers: Mutex::new(HashMap::new()),
                routes: RwLock::new(SubjectTable::default()),
                next_sid: AtomicU64::new(1),
                next_pick: AtomicUsize::new(0),
            }
        });
        let codec = state.config.codec;
        let (on_open, on_message, on_close) =
            (Arc::clone(&state), Arc::clone(&state), Arc::clone(&state));
        let provider = self
            .provider
            .upgrade_check(
                move |request| match request.parameters().get(CODEC_PARAMETER) {
                    None => Ok(()),
                    Some(name) if name == codec.name() => Ok(()),
                    Some(name) => Err(Refusal::new(
                        406,
                        format!("unsupported codec {name:?}: this hub speaks {codec}"),
                    )),
                },
            )
            .on_open(move |conn| on_open.opened(conn))
            .on_message(move |conn, message| {
                if let MessageRef::Binary(frame) = message {
                    on_message.received(conn, frame);
                }
            })
            .on_close(move |conn, _| on_close.closed(conn))
            .bind()
            .await?;
        Ok(Hub {
            inner: Arc::new(HubInner { state, provider }),
        })
    }
}

/// The provider side of the typed layer. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    state: Arc<HubState>,
    provider: Provider,
}

impl Hub {
    /// A hub on top of a provider builder (auth, limits and callbacks stay yours).
    pub fn builder(provider: ProviderBuilder) -> HubBuilder {
        HubBuilder {
            provider,
            config: NodeConfig::default(),
            queue: QueueOptions::default(),
        }
    }

    /// The provider underneath: raw text messages and events keep working beside RPC.
    pub fn provider(&self) -> &Provider {
        &self.inner.provider
    }

    /// The codec this hub speaks.
    pub fn codec(&self) -> CodecKind {
        self.inner.state.config.codec
    }

    /// A client of the service member `id` serves.
    ///
    /// # Errors
    /// [`RpcError::NotConnected`] if no such member is connected.
    pub fn client<C: ServiceClient>(&self, id: Uuid) -> Result<C, RpcError> {
        let peer = self.inner.state.peer(id).ok_or(RpcError::NotConnected)?;
        Ok(C::from_caller(Caller::new(peer.core)))
    }

    /// Members that announced they serve `service`, by connection.
    pub fn members_serving(&self, service: &str) -> Vec<Connection> {
        let peers = self
            .inner
            .state
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        peers
            .values()
            .filter(|p| serves(&p.conn, service))
            .map(|p| p.conn.clone())
            .collect()
    }

    /// A client of one member serving `C`'s service, picked round robin.
    ///
    /// # Errors
    /// [`RpcError::NoPeer`] when no connected member serves it.
    pub fn any<C: ServiceClient>(&self) -> Result<C, RpcError> {
        let candidates = self.members_serving(C::SERVICE);
        if candidates.is_empty() {
            return Err(RpcError::NoPeer(C::SERVICE.to_owned()));
        }
        let pick = self.inner.state.next_pick.fetch_add(1, Ordering::Relaxed) % candidates.len();
        self.client(candidates[pick].id())
    }

    /// Calls `call` with a client of every connected member that `filter` accepts, all at
    /// once; the outcomes arrive keyed by connection id, failures and timeouts included
    /// (a member that disconnects mid-call reports [`RpcError::Disconnected`]).
    ///
    /// ```
    /// # use cluster_rpc::{Hub, RpcError};
    /// # async fn demo<C: cluster_rpc::ServiceClient + Clone + Send + 'static>(hub: Hub, ping: impl Fn(C) -> futures_util::future::BoxFuture<'static, Result<u64, RpcError>> + Send + Sync + 'static) {
    /// let everyone = hub.broadcast(|conn| conn.parameters().get("role").map(String::as_str) == Some("worker"), ping);
    /// let outcomes = everyone.collect().await; // HashMap<Uuid, Result<u64, RpcError>>
    /// # }
    /// ```
    pub fn broadcast<C, F, Fut, T>(
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
        let peers: Vec<HubPeer> = {
            let peers = self
                .inner
                .state
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            peers
                .values()
                .filter(|p| filter(&p.conn))
                .cloned()
                .collect()
        };
        Broadcast::new(
            peers
                .into_iter()
                .map(|p| (p.conn.id(), call(C::from_caller(Caller::new(p.core))))),
        )
    }

    /// Publishes `value` on `subject` to every matching subscription; returns how many
    /// took it.
    ///
    /// # Errors
    /// [`RpcError::Encode`] for a value the codec cannot encode, [`RpcError::Send`] for an
    /// invalid subject.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<usize, RpcError> {
        if !is_valid_subject(subject) {
            return Err(RpcError::Send(format!("invalid subject {subject:?}")));
        }
        let mut payload = Vec::new();
        self.codec()
            .encode(value, &mut payload)
            .map_err(|e| RpcError::Encode(e.to_string()))?;
        Ok(self.inner.state.route(subject, &payload))
    }

    /// Subscribes the hub itself to subjects matching `pattern`.
    ///
    /// # Errors
    /// [`RpcError::Send`] for an invalid pattern.
    pub fn subscribe<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<Subscription<T>, RpcError> {
        if !is_valid_pattern(pattern) {
            return Err(RpcError::Send(format!("invalid pattern {pattern:?}")));
        }
        let state = Arc::clone(&self.inner.state);
        let sid = state.next_sid.fetch_add(1, Ordering::Relaxed);
        let unsubscribe = {
            let state = Arc::clone(&state);
            Unsubscribe::new(move || {
                state
                    .routes
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|t| !matches!(t, Target::Local { sid: s, .. } if *s == sid));
            })
        };
        let (subscription, sink) = Subscription::new(self.codec(), unsubscribe);
        state
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pattern, Target::Local { sid, sink });
        Ok(subscription)
    }

    /// Number of subscriptions in the routing table (members' and the hub's own).
    pub fn subscription_count(&self) -> usize {
        self.inner
            .state
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The job queue: submit jobs, read statistics and dead letters.
    pub fn jobs(&self) -> Jobs {
        Jobs::new(Arc::clone(&self.inner.state.queue))
    }

    /// Stops gracefully: see [`Provider::shutdown`]. Calls in flight fail `Disconnected`,
    /// jobs still queued resolve with an error.
    pub async fn shutdown(&self) {
        self.inner.provider.shutdown().await;
        self.inner.state.stop.cancel();
    }
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
            .finish()
    }
}
