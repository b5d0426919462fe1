//! The member: the consumer side of the typed layer. It serves services to the hub,
//! calls the hub's services, and publishes and subscribes.

use crate::codec::{Codec, CodecKind, CODEC_PARAMETER};
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::RpcError;
use crate::hub::SERVICES_PARAMETER;
use crate::jobs::{
    Job, JobContext, MemberJobs, WorkerService, CANCEL_SUBJECT, JOBS_PARAMETER,
    JOB_CREDITS_PARAMETER, RUN_SUBJECT,
};
use crate::link::Link;
use crate::options::NodeConfig;
use crate::peer::{Caller, PeerCore};
use crate::pubsub::{is_valid_pattern, is_valid_subject, LocalSink, Subscription, Unsubscribe};
use crate::service::{Service, ServiceClient};
use cluster_transport::{close_code, ConnectError, Consumer, ConsumerBuilder, MessageRef};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// State the consumer's callbacks share with the member handle.
struct MemberState {
    core: OnceLock<Arc<PeerCore>>,
    /// The job handlers, if this member is a worker.
    worker: WorkerService,
    /// Subscriptions by id, kept across reconnects to restore them.
    subscriptions: Mutex<HashMap<u64, (String, LocalSink)>>,
    next_sid: AtomicU64,
}

impl MemberState {
    fn received(&self, frame: &[u8]) {
        let Some(core) = self.core.get() else {
            return;
        };
        match Envelope::decode(frame) {
            Ok(Envelope::Message {
                sid,
                subject,
                payload,
            }) => {
                let subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, sink)) = subs.get(&sid) {
                    sink.deliver(subject, payload);
                }
            }
            Ok(Envelope::Publish { subject, payload }) if !self.worker.is_empty() => {
                let handled = match subject {
                    RUN_SUBJECT => self.worker.run_batch(payload),
                    CANCEL_SUBJECT => self.worker.cancel_batch(payload),
                    _ => Ok(()),
                };
                if let Err(error) = handled {
                    tracing::warn!(cause = %error, "bad job frame from the hub; reconnecting");
                    core.link()
                        .close_for(close_code::INVALID_PAYLOAD, &error.to_string());
                }
            }
            Ok(other) => core.handle(other),
            Err(error) => {
                let code = match error {
                    EnvelopeError::UnknownVersion(_) => close_code::UNSUPPORTED_DATA,
                    _ => close_code::INVALID_PAYLOAD,
                };
                tracing::warn!(cause = %error, "undecodable envelope from the hub; reconnecting");
                core.link().close_for(code, &error.to_string());
            }
        }
    }

    /// After a (re)connect: calls may flow, subscriptions are restored.
    fn opened(&self) {
        let Some(core) = self.core.get() else {
            return;
        };
        core.up();
        let subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        for (sid, (pattern, _)) in subs.iter() {
            core.send_envelope(Envelope::Subscribe { sid: *sid, pattern });
        }
    }

    fn disconnected(&self) {
        if let Some(core) = self.core.get() {
            core.disconnected(false);
        }
        // The hub requeues what this member was running: drop it here.
        self.worker.abort_all();
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

    /// Deadline of a call that does not set its own. Default: 30 s.
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.config.limits.default_deadline = deadline;
        self
    }

    /// Most calls from the hub running at once; more are refused `Overloaded`.
    pub fn max_concurrent_calls(mut self, max: usize) -> Self {
        self.config.limits.max_concurrent_calls = max;
        self
    }

    /// Works jobs of type `J` from the hub's job queue with `handler`. A handler's `Err`
    /// fails the attempt (retried with backoff, then dead-lettered); a panic counts as a
    /// failure too.
    pub fn worker<J, F, Fut>(mut self, handler: F) -> Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<J::Output, String>> + Send + 'static,
    {
        self.worker.add::<J, F, Fut>(handler);
        self
    }

    /// How many jobs this member runs at once (its credits). Default: 16. The hub never
    /// sends more.
    pub fn job_credits(mut self, credits: usize) -> Self {
        self.job_credits = credits;
        self
    }

    /// Builds the member and connects.
    ///
    /// # Errors
    /// As [`Consumer::connect`]; a codec the hub does not speak is a fatal
    /// [`Rejected`](cluster_transport::ConnectErrorKind::Rejected) whose message says so.
    pub async fn connect(self) -> Result<Member, ConnectError> {
        let state = Arc::new(MemberState {
            core: OnceLock::new(),
            worker: self.worker.clone(),
            subscriptions: Mutex::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
        });
        let config = self.config;
        let worker_core = Arc::clone(&self.worker.core);
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
        let (on_message, on_open, on_disconnect) =
            (Arc::clone(&state), Arc::clone(&state), Arc::clone(&state));
        let consumer = builder
            .on_message(move |message| {
                if let MessageRef::Binary(frame) = message {
                    on_message.received(frame);
                }
            })
            .on_open(move || on_open.opened())
            .on_disconnect(move |_| on_disconnect.disconnected())
            .build();
        let core = PeerCore::new(
            Arc::new(consumer.clone()) as Arc<dyn Link>,
            config.codec,
            config.limits,
            Arc::new(config.services),
        );
        // Set before connecting, so the first frames find it.
        let _ = worker_core.set(Arc::clone(&core));
        let _ = state.core.set(core);
        consumer.connect().await?;
        Ok(Member { state, consumer })
    }
}

/// The consumer side of the typed layer. Cheap to clone.
#[derive(Clone)]
pub struct Member {
    state: Arc<MemberState>,
    consumer: Consumer,
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

    /// The consumer underneath: raw text messages keep working beside RPC.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    fn core(&self) -> Result<&Arc<PeerCore>, RpcError> {
        self.state.core.get().ok_or(RpcError::NotConnected)
    }

    /// A caller of the hub (for clients built by hand).
    ///
    /// # Errors
    /// Never in practice: the member is connected once built.
    pub fn caller(&self) -> Result<Caller, RpcError> {
        Ok(Caller::new(Arc::clone(self.core()?)))
    }

    /// The codec this member speaks.
    pub fn codec(&self) -> CodecKind {
        self.state
            .core
            .get()
            .map_or(CodecKind::default(), |c| c.codec())
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
        Ok(C::from_caller(Caller::new(Arc::clone(self.core()?))))
    }

    /// Publishes `value` on `subject` through the hub.
    ///
    /// # Errors
    /// [`RpcError::Encode`], [`RpcError::NotConnected`], or [`RpcError::Send`] for an
    /// invalid subject or a refused frame.
    pub fn publish<T: Serialize + ?Sized>(&self, subject: &str, value: &T) -> Result<(), RpcError> {
        if !is_valid_subject(subject) {
            return Err(RpcError::Send(format!("invalid subject {subject:?}")));
        }
        let core = self.core()?;
        crate::peer::with_frame(
            |buf| {
                Envelope::Publish {
                    subject,
                    payload: &[],
                }
                .encode(buf);
                core.codec()
                    .encode(value, buf)
                    .map_err(|e| RpcError::Encode(e.to_string()))
            },
            |frame| core.link().send_frame(frame).map_err(RpcError::from),
        )?
    }

    /// Subscribes to subjects matching `pattern` (`*` one token, `>` the rest). Restored
    /// automatically after a reconnect; dropped by the hub while disconnected.
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
        let core = Arc::clone(self.core()?);
        let sid = self.state.next_sid.fetch_add(1, Ordering::Relaxed);
        let unsubscribe = {
            let state = Arc::clone(&self.state);
            let core = Arc::clone(&core);
            Unsubscribe::new(move || {
                state
                    .subscriptions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&sid);
                core.send_envelope(Envelope::Unsubscribe { sid });
            })
        };
        let (subscription, sink) = Subscription::new(core.codec(), unsubscribe);
        self.state
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid, (pattern.to_owned(), sink));
        core.send_envelope(Envelope::Subscribe { sid, pattern });
        Ok(subscription)
    }

    /// Closes for good and waits for the close handshake.
    pub async fn shutdown(&self) {
        self.consumer.shutdown().await;
        if let Ok(core) = self.core() {
            core.disconnected(true);
        }
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}
