//! What the hub knows of its members and does with their frames: the callbacks the
//! provider calls on open, message and close.
//!
//! A connection joins the typed layer at the upgrade by naming its codec (the `codec`
//! connect parameter, which every [`Member`](crate::Member) sends). Only those become
//! members; a plain consumer keeps the transport's raw semantics, its binary messages
//! left to the provider's own `on_message` callbacks.

use super::routes::{Routes, Target};
use crate::codec::CODEC_PARAMETER;
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{RpcError, RpcErrorKind};
use crate::jobs::{
    self, Queue, CANCEL_SUBJECT, DONE_SUBJECT, JOBS_PARAMETER, JOBS_SERVICE, JOB_CREDITS_PARAMETER,
    PROGRESS_SUBJECT,
};
use crate::link::Link;
use crate::options::NodeConfig;
use crate::peer::{with_frame, Answer, Forward, PeerCore};
use crate::pubsub::{check, is_reserved};
use crate::service::Services;
use cluster_transport::{close_code, CloseInfo, Connection, MessageRef, SendErrorKind};
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One member as the hub knows it.
#[derive(Clone)]
pub(super) struct HubPeer {
    pub(super) conn: Connection,
    pub(super) core: Arc<PeerCore>,
}

/// The hub's limits on its members.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemberLimits {
    /// Most subscription patterns one member holds.
    pub(super) subscriptions: usize,
    /// The largest frame the provider accepts, told to each member.
    pub(super) max_payload: usize,
}

/// State the transport's callbacks share with the hub handle.
pub(super) struct HubState {
    pub(super) config: NodeConfig,
    pub(super) services: Arc<Services>,
    pub(super) queue: Arc<Queue>,
    /// The token operator calls to the job queue need, if they are allowed.
    jobs_admin_token: Option<String>,
    pub(super) stop: CancellationToken,
    pub(super) limits: MemberLimits,
    peers: Mutex<HashMap<Uuid, HubPeer, RandomState>>,
    routes: RwLock<Routes>,
    pub(super) next_sid: AtomicU64,
    pub(super) next_pick: AtomicUsize,
    pubsub_metrics: crate::metrics::PubSubMetrics,
    /// The hub's cluster, if it joined one (set before the provider starts).
    #[cfg(feature = "nats")]
    pub(super) cluster: OnceLock<crate::cluster::Cluster>,
    /// The hub's own state, weakly (set at start): where members' calls for services the
    /// hub does not serve go.
    pub(super) me: OnceLock<Weak<HubState>>,
}

/// Passes a member's calls for services the hub does not serve to the hub.
struct HubForward(Weak<HubState>);

impl Forward for HubForward {
    fn forward(
        &self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> Option<Answer> {
        self.0
            .upgrade()?
            .forward(service, method, request, deadline)
    }
}

/// A call to a member, with a request encoded already, as an [`Answer`].
fn member_call(
    core: Arc<PeerCore>,
    service: &str,
    method: &str,
    request: &[u8],
    deadline: Duration,
) -> Answer {
    let (service, method, request) = (service.to_owned(), method.to_owned(), request.to_vec());
    Box::pin(async move {
        core.call_encoded(&service, &method, &request, deadline)
            .await
    })
}

/// An answer that is an error already.
#[cfg(feature = "nats")]
fn refused(error: RpcError) -> Answer {
    Box::pin(std::future::ready(Err(error)))
}

/// Whether a connection joined the typed layer at its upgrade (named its codec).
pub(super) fn is_member(conn: &Connection) -> bool {
    conn.parameters().get(CODEC_PARAMETER).is_some()
}

impl HubState {
    pub(super) fn new(
        config: NodeConfig,
        queue: Arc<Queue>,
        jobs_admin_token: Option<String>,
        stop: CancellationToken,
        limits: MemberLimits,
    ) -> Self {
        Self {
            services: Arc::new(config.services.clone()),
            config,
            queue,
            jobs_admin_token,
            stop,
            limits,
            peers: Mutex::default(),
            routes: RwLock::default(),
            next_sid: AtomicU64::new(1),
            next_pick: AtomicUsize::new(0),
            pubsub_metrics: crate::metrics::PubSubMetrics::new(),
            #[cfg(feature = "nats")]
            cluster: OnceLock::new(),
            me: OnceLock::new(),
        }
    }

    pub(super) fn peers(&self) -> MutexGuard<'_, HashMap<Uuid, HubPeer, RandomState>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn routes(&self) -> RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn routes_mut(&self) -> RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn peer(&self, id: Uuid) -> Option<HubPeer> {
        self.peers().get(&id).cloned()
    }

    /// Members that announced they serve `service`.
    pub(super) fn serving(&self, service: &str) -> Vec<HubPeer> {
        self.peers()
            .values()
            .filter(|p| super::serves(&p.conn, service))
            .cloned()
            .collect()
    }

    /// One member serving `service`, round robin.
    pub(super) fn pick_serving(&self, service: &str) -> Option<HubPeer> {
        let candidates = self.serving(service);
        let pick = self
            .next_pick
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        candidates
            .get(pick.checked_rem(candidates.len()).unwrap_or(0))
            .cloned()
    }

    /// A member's call for `service`, which the hub does not serve: to one of its
    /// members serving it, else (in a cluster) to a member serving it on another hub.
    fn forward(
        &self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> Option<Answer> {
        if let Some(peer) = self.pick_serving(service) {
            return Some(member_call(peer.core, service, method, request, deadline));
        }
        #[cfg(feature = "nats")]
        if let Some(remote) = self.cluster.get().and_then(|c| c.remote_service(service)) {
            return Some(remote.answer(service, method, request, deadline));
        }
        None
    }

    /// A connection opened (before any of its frames is read): a member is registered
    /// with its services and job names, then told it is ready.
    pub(super) fn opened(&self, conn: &Connection) {
        if !is_member(conn) {
            return;
        }
        let link: Arc<dyn Link> = Arc::new(conn.clone());
        let forward = self
            .me
            .get()
            .map(|me| Arc::new(HubForward(Weak::clone(me))) as Arc<dyn Forward>);
        let core = PeerCore::forwarding(
            Arc::clone(&link),
            self.config.codec,
            self.config.limits,
            Arc::clone(&self.services),
            forward,
        );
        {
            // Checked at the upgrade (`check_parameters`): a number, names the queue takes.
            let params = conn.parameters();
            let jobs: Vec<String> = params
                .get(JOBS_PARAMETER)
                .map(|j| super::job_names(j).map(str::to_owned).collect())
                .unwrap_or_default();
            let credits = params
                .get(JOB_CREDITS_PARAMETER)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            self.queue.worker_joined(
                conn.id(),
                Arc::clone(&link),
                &jobs,
                credits,
                params.get("name").cloned(),
            );
        }
        let peer = HubPeer {
            conn: conn.clone(),
            core,
        };
        self.peers().insert(conn.id(), peer);
        let max_payload = u32::try_from(self.limits.max_payload).unwrap_or(u32::MAX);
        let ready = move || {
            // A refusal: the connection is already closing.
            let _ = with_frame(
                |buf| Ok(Envelope::Ready { max_payload }.encode(buf)?),
                |frame| link.send_frame(frame),
            );
        };
        #[cfg(feature = "nats")]
        if let Some(cluster) = self.cluster.get() {
            // Ready once calls from other hubs can reach the member and its services.
            cluster.member_joined(conn.id(), services_of(conn));
            return cluster.after_interest(ready);
        }
        ready();
    }

    /// A connection closed: a member's calls fail, its jobs are requeued, its
    /// subscriptions dropped.
    pub(super) fn closed(&self, conn: &Connection, info: &CloseInfo) {
        let Some(peer) = self.peers().remove(&conn.id()) else {
            return;
        };
        self.queue.worker_left(conn.id());
        #[cfg(feature = "nats")]
        if let Some(cluster) = self.cluster.get() {
            cluster.member_left(conn.id(), services_of(conn));
        }
        let how = format!("closed with {} {}", info.code, info.reason);
        peer.core.disconnected(true, how.trim_end());
        self.routes_mut().remove_member(conn.id());
    }

    /// The hub is going: every call a member made is stopped.
    pub(super) fn stopped(&self) {
        self.stop.cancel();
        let peers: Vec<HubPeer> = self.peers().drain().map(|(_, peer)| peer).collect();
        for peer in peers {
            peer.core.disconnected(true, "hub stopped");
        }
    }

    /// A binary frame arrived. Only a member's frames are the hub's: a plain consumer's
    /// binary messages are left to the provider's own callbacks. Whether the sender is a
    /// member is asked only where it matters (a lookup in its parameters by a keyed hash,
    /// which every call would pay): calls go to the member's registered peer, which a
    /// plain consumer has none of.
    pub(super) fn received(&self, conn: &Connection, frame: &[u8]) {
        let envelope = match Envelope::decode(frame) {
            Ok(e) => e,
            Err(_) if !is_member(conn) => return,
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
            Envelope::Subscribe { .. }
            | Envelope::Unsubscribe { .. }
            | Envelope::Publish { .. }
                if !is_member(conn) => {}
            Envelope::Subscribe { sid, pattern } => self.subscribe(conn, sid, pattern),
            Envelope::Unsubscribe { sid } => self.routes_mut().unsubscribe(conn.id(), sid),
            Envelope::Publish { subject, payload } if is_reserved(subject) => {
                let handled = match subject {
                    DONE_SUBJECT => self.queue.answers(conn.id(), payload),
                    PROGRESS_SUBJECT => self.queue.progress(conn.id(), payload),
                    CANCEL_SUBJECT => self.queue.cancel_for(conn.id(), payload),
                    _ => {
                        tracing::warn!(conn.id = %conn.id(), subject, "publish on a reserved subject refused");
                        Ok(())
                    }
                };
                if let Err(error) = handled {
                    tracing::warn!(conn.id = %conn.id(), cause = %error, "closing");
                    conn.close(close_code::INVALID_PAYLOAD, &error.to_string());
                }
            }
            Envelope::Publish { subject, payload } => match check(subject, false) {
                Ok(()) => {
                    self.route(subject, payload);
                }
                // Members check subjects before sending: only a broken peer gets here.
                Err(why) => {
                    tracing::warn!(conn.id = %conn.id(), subject, why, "publish on an invalid subject dropped");
                }
            },
            Envelope::Request {
                id,
                service: JOBS_SERVICE,
                method,
                payload,
                ..
            } => {
                if let Some(peer) = self.peer(conn.id()) {
                    let core = Arc::clone(&peer.core);
                    let admin = self.is_jobs_admin(conn);
                    jobs::serve_member(
                        &self.queue,
                        conn.id(),
                        admin,
                        peer.core.link(),
                        method,
                        payload,
                        move |answer| core.respond(id, answer),
                    );
                }
            }
            other => {
                if let Some(peer) = self.peer(conn.id()) {
                    peer.core.handle(other);
                }
            }
        }
    }

    /// Whether `conn` presented the hub's jobs admin token (compared in constant time).
    fn is_jobs_admin(&self, conn: &Connection) -> bool {
        let (Some(token), Some(given)) = (
            self.jobs_admin_token.as_deref(),
            conn.parameters().get(jobs::JOBS_ADMIN_PARAMETER),
        ) else {
            return false;
        };
        bool::from(subtle::ConstantTimeEq::ct_eq(
            token.as_bytes(),
            given.as_bytes(),
        ))
    }

    /// A member's subscribe: added to the routes (a repeated id replaces itself), and
    /// answered either way.
    fn subscribe(&self, conn: &Connection, sid: u64, pattern: &str) {
        let added = match check(pattern, true) {
            Ok(()) => self
                .routes_mut()
                .subscribe(conn, sid, pattern, self.limits.subscriptions),
            Err(why) => Err(RpcError::new(
                RpcErrorKind::InvalidSubject,
                format!("pattern {pattern:?} is {why}"),
            )),
        };
        #[cfg(feature = "nats")]
        if let (Ok(()), Some(cluster)) = (&added, self.cluster.get()) {
            // In place once the other hubs' publications reach it too.
            let conn = conn.clone();
            cluster.after_interest(move || answer_subscribe(&conn, sid, &Ok(())));
            return;
        }
        answer_subscribe(conn, sid, &added);
    }

    /// Delivers a publication to every matching subscription (and, in a cluster, sends
    /// it to the other hubs); returns how many subscriptions of this hub took it. Never
    /// waits: a member that does not read is closed by its backpressure limit, the others
    /// go on.
    pub(super) fn route(&self, subject: &str, payload: &[u8]) -> usize {
        let mut fanout = Fanout::new(subject, payload);
        self.routes()
            .for_each_match(subject, |target| fanout.deliver(target));
        self.pubsub_metrics
            .published(fanout.delivered, fanout.dropped);
        #[cfg(feature = "nats")]
        if let Some(cluster) = self.cluster.get() {
            cluster.publish(subject, payload);
        }
        fanout.delivered
    }
}

#[cfg(feature = "nats")]
impl crate::cluster::ClusterHub for HubState {
    fn deliver_remote(&self, pattern: &str, subject: &str, payload: &[u8]) {
        if let Err(why) = check(subject, false) {
            tracing::warn!(
                subject,
                why,
                "publication from the cluster on an invalid subject dropped"
            );
            return;
        }
        let mut fanout = Fanout::new(subject, payload);
        self.routes()
            .for_each_exact(pattern, |target| fanout.deliver(target));
        self.pubsub_metrics
            .published(fanout.delivered, fanout.dropped);
    }

    fn serve_remote(
        &self,
        member: Option<Uuid>,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> Answer {
        if let Some(id) = member {
            return match self.peer(id) {
                Some(peer) => member_call(peer.core, service, method, request, deadline),
                None => refused(RpcError::new(
                    RpcErrorKind::NotConnected,
                    format!("no member {id}"),
                )),
            };
        }
        if let Some(served) = self.services.get(service) {
            use futures_util::FutureExt;
            use std::panic::AssertUnwindSafe;
            return match served.service.call(method, request, self.config.codec) {
                Ok(handler) => Box::pin(AssertUnwindSafe(handler).catch_unwind().map(|outcome| {
                    outcome.unwrap_or_else(|panic| {
                        Err(RpcError::new(
                            RpcErrorKind::Panicked,
                            crate::peer::panic_message(panic.as_ref()),
                        ))
                    })
                })),
                Err(error) => refused(error),
            };
        }
        match self.pick_serving(service) {
            Some(peer) => member_call(peer.core, service, method, request, deadline),
            None => refused(RpcError::new(RpcErrorKind::NoPeer, service)),
        }
    }

    fn gather_local(
        &self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> futures_util::future::BoxFuture<'static, Vec<crate::cluster::MemberOutcome>> {
        let calls: Vec<_> = self
            .serving(service)
            .into_iter()
            .map(|peer| {
                let id = peer.conn.id();
                let call = member_call(peer.core, service, method, request, deadline);
                async move { (id, call.await) }
            })
            .collect();
        Box::pin(futures_util::future::join_all(calls))
    }
}

/// The services a member named at its upgrade.
#[cfg(feature = "nats")]
fn services_of(conn: &Connection) -> impl Iterator<Item = &str> {
    conn.parameters()
        .get(super::SERVICES_PARAMETER)
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
}

/// One publication on its way to subscriptions, counting who took it.
struct Fanout<'a> {
    subject: &'a str,
    payload: &'a [u8],
    /// The message envelope, encoded once; only the subscription id (bytes 2..10)
    /// differs per subscriber.
    frame: Vec<u8>,
    delivered: usize,
    dropped: usize,
}

impl<'a> Fanout<'a> {
    fn new(subject: &'a str, payload: &'a [u8]) -> Self {
        Self {
            subject,
            payload,
            frame: Vec::new(),
            delivered: 0,
            dropped: 0,
        }
    }

    fn deliver(&mut self, target: &Target) {
        match target {
            Target::Member { conn, sid } => {
                if self.frame.is_empty() {
                    // One allocation: version, kind, sid and the subject's length take 12
                    // bytes before the subject and the payload.
                    self.frame
                        .reserve_exact(12 + self.subject.len() + self.payload.len());
                    let message = Envelope::Message {
                        sid: *sid,
                        subject: self.subject,
                        payload: self.payload,
                    };
                    if message.encode(&mut self.frame).is_err() {
                        return;
                    }
                }
                if let Some(id) = self.frame.get_mut(2..10) {
                    id.copy_from_slice(&sid.to_le_bytes());
                }
                match conn.send(MessageRef::Binary(&self.frame)) {
                    Ok(()) => self.delivered += 1,
                    Err(e) if e.kind() == SendErrorKind::Backpressure => self.dropped += 1,
                    Err(_) => {}
                }
            }
            Target::Local { sink, .. } => {
                if sink.deliver(self.subject, self.payload) {
                    self.delivered += 1;
                } else {
                    self.dropped += 1;
                }
            }
        }
    }
}

/// Answers a member's subscribe: in place, or why not.
fn answer_subscribe(conn: &Connection, sid: u64, added: &Result<(), RpcError>) {
    let (code, message) = match added {
        Ok(()) => (0, ""),
        Err(error) => (error.code(), error.detail()),
    };
    let answer = Envelope::Subscribed { sid, code, message };
    // A refusal: the connection is closing, and the subscription goes with it.
    let _ = with_frame(
        |buf| Ok(answer.encode(buf)?),
        |frame| conn.send(MessageRef::Binary(frame)),
    );
}

impl std::fmt::Debug for HubState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubState")
            .field("members", &self.peers().len())
            .field("subscriptions", &self.routes().len())
            .finish_non_exhaustive()
    }
}
