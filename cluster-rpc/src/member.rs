//! The member: the consumer side of the typed layer. It serves services to the hub,
//! calls the hub's services, publishes and subscribes, and works and submits jobs.
//!
//! [`MemberBuilder::connect`] returns once the hub has registered the member (the hub's
//! `Ready` envelope has arrived), so the hub can call it at once; [`Member::subscribe`]
//! returns once the hub has the subscription (its `Subscribed` answer has arrived), so a
//! publication right after it is delivered. Dropping the last [`Member`] handle (or
//! [`shutdown`](Member::shutdown)) closes the connection, stops reconnecting, and stops
//! the calls and jobs it was running.
//!
//! Given several hubs ([`ConsumerBuilder::hosts`]), a member fails over: on the next hub
//! its services and job names are there at once (they are connect parameters), its
//! subscriptions are sent again before it is [`ready`](Member::ready), and its job
//! handles re-attach (they resolve if that hub knows the job: hubs sharing a job store;
//! otherwise they fail with the hub's reason). What it sends while it reconnects (calls
//! to the hub, publications) fails at once with
//! [`NotConnected`](RpcErrorKind::NotConnected), as the seed refuses such sends, unless
//! the consumer has a
//! [`reconnect_buffer`](cluster_transport::ConsumerBuilder::reconnect_buffer): then it
//! goes to the next hub first, and a call is answered there within its deadline. Calls
//! in flight when the connection drops fail with
//! [`Disconnected`](RpcErrorKind::Disconnected), buffer or not: the dead hub may or may
//! not have run them.

use crate::codec::{Codec, CodecKind, CODEC_PARAMETER};
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{RpcError, RpcErrorKind};
use crate::hub::{invalid, SERVICES_PARAMETER};
use crate::jobs::{
    BoxError, Job, JobContext, MemberJobs, Submissions, WorkerService, DROP_SUBJECT,
    JOBS_PARAMETER, JOB_CREDITS_PARAMETER, RESULT_SUBJECT, RUN_SUBJECT, UPDATE_SUBJECT,
};
use crate::link::{HubLink, Link};
use crate::options::NodeConfig;
use crate::peer::{with_frame, Caller, PeerCore};
use crate::pubsub::{check, LocalSink, Subscription, Unsubscribe};
use crate::service::{Service, ServiceClient};
use cluster_transport::{
    close_code, CloseInfo, ConnectError, ConnectErrorKind, Consumer, ConsumerBuilder,
    ConsumerState, MessageRef,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// A subscribe waiting for the hub's answer.
type PendingSubscribe = oneshot::Sender<Result<(), RpcError>>;

/// Where the member stands with its hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Not connected, or connected and not confirmed yet.
    Waiting,
    /// The hub confirmed this connection and has every subscription back.
    Ready,
    /// Closed for good.
    Closed,
}

/// What confirming the current connection still waits for.
#[derive(Debug, Default)]
struct Restore {
    /// The hub's `Ready` arrived.
    confirmed: bool,
    /// Subscriptions sent again after the (re)connect, not answered yet.
    subscriptions: HashSet<u64>,
}

/// State the consumer's callbacks share with the member handle. The callbacks hold it
/// weakly: the handle owns it, so dropping the handle ends it.
struct MemberState {
    core: Arc<PeerCore>,
    link: Arc<HubLink>,
    /// The job handlers, if this member is a worker.
    worker: WorkerService,
    /// The jobs this member submitted that have not resolved yet.
    submissions: Arc<Submissions>,
    /// Subscriptions by id, kept across reconnects to restore them.
    subscriptions: Mutex<HashMap<u64, (String, LocalSink)>>,
    /// Subscribes waiting for the hub's answer.
    pending: Mutex<HashMap<u64, PendingSubscribe>>,
    next_sid: AtomicU64,
    restore: Mutex<Restore>,
    standing: watch::Sender<Standing>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemberState {
    fn received(&self, frame: &[u8]) {
        match Envelope::decode(frame) {
            Ok(Envelope::Message {
                sid,
                subject,
                payload,
            }) => {
                if let Some((_, sink)) = lock(&self.subscriptions).get(&sid) {
                    sink.deliver(subject, payload);
                }
            }
            Ok(Envelope::Ready { max_payload }) => {
                self.link
                    .set_hub_limit(usize::try_from(max_payload).unwrap_or(usize::MAX));
                let mut restore = lock(&self.restore);
                restore.confirmed = true;
                self.settle(&restore);
            }
            Ok(Envelope::Subscribed { sid, code, message }) => {
                let answer = match code {
                    0 => Ok(()),
                    code => Err(RpcError::from_wire(code, message)),
                };
                if let Some(waiting) = lock(&self.pending).remove(&sid) {
                    let _ = waiting.send(answer);
                    return;
                }
                if let Err(error) = answer {
                    // Restored after a reconnect, and refused this time (the hub's limits
                    // changed): it gets nothing until the next reconnect.
                    tracing::warn!(sid, cause = %error, "a restored subscription was refused");
                }
                let mut restore = lock(&self.restore);
                restore.subscriptions.remove(&sid);
                self.settle(&restore);
            }
            Ok(Envelope::Publish { subject, payload }) => {
                let handled = match subject {
                    RUN_SUBJECT => self.worker.run_batch(payload),
                    DROP_SUBJECT => self.worker.drop_batch(payload),
                    RESULT_SUBJECT => self.submissions.results(payload, self.core.codec()),
                    UPDATE_SUBJECT => self.submissions.updates(payload),
                    _ => Ok(()),
                };
                if let Err(error) = handled {
                    tracing::warn!(cause = %error, "bad job frame from the hub; reconnecting");
                    self.link
                        .close_for(close_code::INVALID_PAYLOAD, &error.to_string());
                }
            }
            Ok(other) => self.core.handle(other),
            Err(error) => {
                let code = match error {
                    EnvelopeError::UnknownVersion(_) => close_code::UNSUPPORTED_DATA,
                    _ => close_code::INVALID_PAYLOAD,
                };
                tracing::warn!(cause = %error, "undecodable envelope from the hub; reconnecting");
                self.link.close_for(code, &error.to_string());
            }
        }
    }

    /// The member is ready once the hub confirmed it and answered every restored
    /// subscription.
    fn settle(&self, restore: &Restore) {
        if restore.confirmed && restore.subscriptions.is_empty() {
            self.standing.send_if_modified(|standing| {
                let waiting = *standing == Standing::Waiting;
                if waiting {
                    *standing = Standing::Ready;
                }
                waiting
            });
        }
    }

    /// After a (re)connect, before any frame of the hub is read: calls may flow, and the
    /// subscriptions are restored (the hub takes a repeated one as the same).
    fn opened(&self) {
        // Before calls may flow: a submission answered on the old connection and taken
        // after this sees the open and attaches on its own.
        let reattach = self.submissions.opened();
        self.core.up();
        let subscriptions = lock(&self.subscriptions);
        let mut restore = lock(&self.restore);
        *restore = Restore::default();
        for (sid, (pattern, _)) in subscriptions.iter() {
            // A refusal: the connection dropped again; the next open restores them.
            if self
                .core
                .send_envelope(Envelope::Subscribe { sid: *sid, pattern })
                .is_ok()
            {
                restore.subscriptions.insert(*sid);
            }
        }
        drop((subscriptions, restore));
        // Job handles outlive the connection: attach them again (their results may have
        // come while this member was away). Bounded by the call's deadline.
        if !reattach.is_empty() {
            let submissions = Arc::clone(&self.submissions);
            let core = Arc::clone(&self.core);
            tokio::spawn(async move { submissions.reattach(core, reattach).await });
        }
    }

    /// The connection dropped (`how`): calls fail, running jobs stop (the hub requeues
    /// them), the hub can no longer answer submissions or subscribes.
    fn disconnected(&self, down: bool, how: &str) {
        let standing = if down {
            Standing::Closed
        } else {
            Standing::Waiting
        };
        self.standing.send_replace(standing);
        self.core.disconnected(down, how);
        self.worker.abort_all();
        if down {
            // Closed for good: its job handles can no longer be answered. (After a drop
            // they re-attach on the next open.)
            self.submissions.closed();
        }
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, waiting) in pending {
            let _ = waiting.send(Err(RpcError::new(RpcErrorKind::Disconnected, how)));
        }
    }
}

/// Builds a [`Member`] on a consumer builder.
#[must_use]
pub struct MemberBuilder {
    consumer: ConsumerBuilder,
    config: NodeConfig,
    worker: WorkerService,
    job_credits: usize,
}

impl fmt::Debug for MemberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberBuilder")
            .field("consumer", &self.consumer)
            .field("services", &self.config.services)
            .finish_non_exhaustive()
    }
}

impl MemberBuilder {
    /// Serves `service` to the hub (a `{Trait}Server` from `#[cluster_service]`). The names
    /// are announced in the connect parameters, so the hub knows who serves what.
    pub fn serve(mut self, service: impl Service) -> Self {
        self.config.serve(service);
        self
    }

    /// The codec to speak; the hub must speak the same. Default: MessagePack.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.config.codec = codec;
        self
    }

    /// Deadline of a call (and of a subscribe's answer) that does not set its own.
    /// Default: 30 s.
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.config.limits.default_deadline = deadline;
        self
    }

    /// Most calls from the hub running at once; more are refused
    /// [`Overloaded`](RpcErrorKind::Overloaded) before their handler starts.
    pub fn max_concurrent_calls(mut self, max: usize) -> Self {
        self.config.limits.max_concurrent_calls = max;
        self
    }

    /// Works jobs of type `J` from the hub's job queue with `handler`. A handler's `Err`
    /// (any `std::error::Error`, or a `String`) fails the attempt, which is retried with
    /// backoff, then dead-lettered with the error and its causes as text; a panic counts
    /// as a failure too. A closure that never fails names its error type:
    /// `Ok::<_, std::convert::Infallible>(output)`.
    pub fn worker<J, F, Fut, E>(mut self, handler: F) -> Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<J::Output, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.worker.add::<J, F, Fut, E>(handler);
        self
    }

    /// How many jobs this member runs at once (its credits). Default: 16. The hub never
    /// sends more, and gives a worker at most its `worker_credits_limit`.
    pub fn job_credits(mut self, credits: usize) -> Self {
        self.job_credits = credits;
        self
    }

    /// Builds the member, connects, and waits until the hub has registered it (its
    /// services can be called, its jobs dispatched).
    ///
    /// # Errors
    /// As [`Consumer::connect`]; a codec the hub does not speak is a fatal
    /// [`Rejected`](ConnectErrorKind::Rejected) whose message says so; a provider that
    /// does not confirm the member within the consumer's `connect_timeout` (not a hub, or
    /// of another version) is [`TimedOut`](ConnectErrorKind::TimedOut).
    pub async fn connect(self) -> Result<Member, ConnectError> {
        let config = self.config;
        let mut builder = self
            .consumer
            .parameter(CODEC_PARAMETER, config.codec.name());
        if !self.worker.is_empty() {
            builder = builder
                .parameter(JOBS_PARAMETER, self.worker.names())
                .parameter(JOB_CREDITS_PARAMETER, self.job_credits.to_string());
        }
        let services = config.services.names();
        if !services.is_empty() {
            builder = builder.parameter(SERVICES_PARAMETER, services);
        }
        let state = Arc::new_cyclic(|weak: &Weak<MemberState>| {
            let (on_message, on_open) = (weak.clone(), weak.clone());
            let (on_disconnect, on_close) = (weak.clone(), weak.clone());
            let built = builder
                .on_message(move |message| {
                    if let (MessageRef::Binary(frame), Some(state)) =
                        (message, on_message.upgrade())
                    {
                        state.received(frame);
                    }
                })
                .on_open(move || {
                    if let Some(state) = on_open.upgrade() {
                        state.opened();
                    }
                })
                .on_disconnect(move |info: &CloseInfo| {
                    if let Some(state) = on_disconnect.upgrade() {
                        let how = format!("closed with {} {}", info.code, info.reason);
                        state.disconnected(false, how.trim_end());
                    }
                })
                .on_close(move || {
                    if let Some(state) = on_close.upgrade() {
                        state.standing.send_replace(Standing::Closed);
                        state.submissions.closed();
                    }
                })
                .build();
            let link = Arc::new(HubLink::new(built.clone()));
            let core = PeerCore::new(
                Arc::clone(&link) as Arc<dyn Link>,
                config.codec,
                config.limits,
                Arc::new(config.services),
            );
            // Set before connecting, so the first frames find it.
            let _ = self.worker.core.set(Arc::clone(&core));
            MemberState {
                core,
                link,
                worker: self.worker,
                submissions: Arc::default(),
                subscriptions: Mutex::default(),
                pending: Mutex::default(),
                next_sid: AtomicU64::new(1),
                restore: Mutex::default(),
                standing: watch::Sender::new(Standing::Waiting),
            }
        });
        let consumer = state.link.consumer().clone();
        let flushing = CancellationToken::new();
        tokio::spawn(crate::metrics::flush_every_second(flushing.clone()));
        let member = Member {
            inner: Arc::new(MemberInner {
                state,
                consumer,
                flushing,
            }),
        };
        member.inner.consumer.connect().await?;
        member.confirmed().await?;
        Ok(member)
    }
}

/// The consumer side of the typed layer. Cheap to clone; dropping the last clone closes
/// the connection for good and stops what the member runs.
#[derive(Clone)]
pub struct Member {
    inner: Arc<MemberInner>,
}

struct MemberInner {
    state: Arc<MemberState>,
    consumer: Consumer,
    /// Stops the task handing the served calls' counts to the `metrics` facade.
    flushing: CancellationToken,
}

impl Drop for MemberInner {
    fn drop(&mut self) {
        self.flushing.cancel();
        self.consumer.destroy();
        self.state.disconnected(true, "member dropped");
    }
}

impl Member {
    /// A member on top of a consumer builder (host, auth parameters, reconnect policy).
    pub fn builder(consumer: ConsumerBuilder) -> MemberBuilder {
        MemberBuilder {
            consumer,
            config: NodeConfig::default(),
            worker: WorkerService::default(),
            job_credits: 16,
        }
    }

    /// Waits for the hub's confirmation of this connection, up to the consumer's
    /// `connect_timeout`.
    async fn confirmed(&self) -> Result<(), ConnectError> {
        let timeout = self.inner.consumer.options().connect_timeout;
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(ready) => ready,
            Err(_) => Err(ConnectError::new(ConnectErrorKind::TimedOut).with_detail(format!(
                "the provider did not confirm the member within {timeout:?}: is it a hub of this version?"
            ))),
        }
    }

    /// Resolves once the hub has this member on the current connection (its services,
    /// job names and subscriptions all restored): at once while that holds, and after a
    /// reconnect once it holds again. [`MemberBuilder::connect`] returns only then, so
    /// this is for code that must not act during a reconnect.
    ///
    /// # Errors
    /// Why the member closed for good ([`Destroyed`](ConnectErrorKind::Destroyed) after
    /// a drop or shutdown, or the reason the consumer gave up reconnecting).
    pub async fn ready(&self) -> Result<(), ConnectError> {
        let mut standing = self.inner.state.standing.subscribe();
        let now = standing
            .wait_for(|s| *s != Standing::Waiting)
            .await
            .map(|s| *s)
            .unwrap_or(Standing::Closed);
        match (now, self.inner.consumer.state()) {
            (Standing::Ready, _) => Ok(()),
            (_, ConsumerState::Closed(error)) => Err(error),
            _ => Err(ConnectError::new(ConnectErrorKind::Destroyed)),
        }
    }

    /// The consumer underneath: raw text messages keep working beside RPC.
    pub fn consumer(&self) -> &Consumer {
        &self.inner.consumer
    }

    fn core(&self) -> &Arc<PeerCore> {
        &self.inner.state.core
    }

    /// The connection's RPC state, shared.
    pub(crate) fn core_handle(&self) -> Result<Arc<PeerCore>, RpcError> {
        Ok(Arc::clone(self.core()))
    }

    /// The jobs this member submitted that have not resolved yet.
    pub(crate) fn submissions(&self) -> &Arc<Submissions> {
        &self.inner.state.submissions
    }

    /// A caller of the hub (for clients built by hand).
    ///
    /// # Errors
    /// Never in practice: the member is connected once built.
    pub fn caller(&self) -> Result<Caller, RpcError> {
        Ok(Caller::new(Arc::clone(self.core())))
    }

    /// The codec this member speaks.
    pub fn codec(&self) -> CodecKind {
        self.core().codec()
    }

    /// Submitting jobs to the hub's queue.
    pub fn jobs(&self) -> MemberJobs {
        MemberJobs::new(self.clone())
    }

    /// A client of a service the hub serves.
    ///
    /// # Errors
    /// Never in practice: the member is connected once built.
    pub fn client<C: ServiceClient>(&self) -> Result<C, RpcError> {
        Ok(C::from_caller(Caller::new(Arc::clone(self.core()))))
    }

    /// Publishes `value` on `subject` through the hub.
    ///
    /// # Errors
    /// [`RpcErrorKind::InvalidSubject`] for a subject that is not valid (or reserved),
    /// [`RpcErrorKind::Encode`], and the transport's refusals
    /// ([`NotConnected`](RpcErrorKind::NotConnected), [`TooLarge`](RpcErrorKind::TooLarge),
    /// [`Backpressure`](RpcErrorKind::Backpressure)).
    pub fn publish<T: Serialize + ?Sized>(&self, subject: &str, value: &T) -> Result<(), RpcError> {
        check(subject, false).map_err(|why| invalid("subject", subject, why))?;
        let core = self.core();
        with_frame(
            |buf| {
                Envelope::Publish {
                    subject,
                    payload: &[],
                }
                .encode(buf)?;
                core.codec()
                    .encode(value, buf)
                    .map_err(|e| RpcError::new(RpcErrorKind::Encode, e.to_string()))
            },
            |frame| core.link().send_frame(frame),
        )?
    }

    /// Subscribes to subjects matching `pattern` (`*` one token, `>` the rest); resolves
    /// once the hub has the subscription, so a publication after this reaches it.
    /// Restored automatically after a reconnect; dropped by the hub while disconnected.
    ///
    /// # Errors
    /// [`RpcErrorKind::InvalidSubject`] for a pattern that is not valid (or reserved),
    /// [`RpcErrorKind::TooManySubscriptions`] past the hub's limit,
    /// [`RpcErrorKind::NotConnected`] or [`RpcErrorKind::Disconnected`] without a hub,
    /// and [`RpcErrorKind::Timeout`] if the hub does not answer within the member's
    /// default deadline.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<Subscription<T>, RpcError> {
        check(pattern, true).map_err(|why| invalid("pattern", pattern, why))?;
        let state = &self.inner.state;
        let sid = state.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, answer) = oneshot::channel();
        lock(&state.pending).insert(sid, tx);
        let unsubscribe = {
            let state = Arc::downgrade(state);
            Unsubscribe::new(move || {
                let Some(state) = state.upgrade() else {
                    return;
                };
                lock(&state.pending).remove(&sid);
                if lock(&state.subscriptions).remove(&sid).is_some() {
                    // A refusal: the connection is gone, and the subscription with it.
                    let _ = state.core.send_envelope(Envelope::Unsubscribe { sid });
                }
            })
        };
        // From here on, dropping `subscription` (a refusal, or this future dropped) takes
        // the subscription back.
        let (subscription, sink) = Subscription::new(self.codec(), unsubscribe);
        lock(&state.subscriptions).insert(sid, (pattern.to_owned(), sink));
        state
            .core
            .send_envelope(Envelope::Subscribe { sid, pattern })?;
        let deadline = Caller::new(Arc::clone(&state.core)).deadline();
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(RpcErrorKind::Disconnected.into()),
            Err(_) => Err(RpcError::new(
                RpcErrorKind::Timeout,
                "the hub did not confirm the subscription",
            )),
        }
    }

    /// Closes for good and waits for the close handshake.
    pub async fn shutdown(&self) {
        self.inner.consumer.shutdown().await;
        self.inner.state.disconnected(true, "member shut down");
        self.inner.flushing.cancel();
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("consumer", &self.inner.consumer)
            .finish_non_exhaustive()
    }
}
