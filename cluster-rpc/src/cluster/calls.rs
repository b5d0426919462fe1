//! Calls across hubs: NATS request/reply carrying this crate's own request, response and
//! error envelopes.
//!
//! - A call to any member serving a service goes to `{prefix}.svc.{service}`, which every
//!   hub serving it (itself or through a member) holds in the queue group of that name:
//!   NATS picks one hub, that hub one of its members.
//! - A call to one member goes to `{prefix}.conn.{member id}`, which only its hub holds.
//! - The answer comes back on `{prefix}.reply.{hub id}.{call id}`; NATS answers "no
//!   responders" at once when nobody holds the subject, which the caller sees as
//!   [`NoPeer`](crate::RpcErrorKind::NoPeer) or
//!   [`NotConnected`](crate::RpcErrorKind::NotConnected).
//! - Deadlines travel relative (the serving hub stops the call when it passes); a call
//!   dropped by its caller publishes its reply subject on `{prefix}.cancel`, and the hub
//!   running it drops the handler (or the member's call, which cancels on the member).
//! - A service call can reach a hub just as the last member serving it there leaves: NATS
//!   picked the hub while it still held the queue group. That hub answers
//!   [`NoPeer`](crate::RpcErrorKind::NoPeer) (nothing ran), after it dropped its interest;
//!   the caller then sends the call once more, within its deadline, and NATS picks a hub
//!   that still serves it (or answers "no responders"). So a call is not refused while
//!   another hub serves its service, unless members leave two hubs at the same instant.

use super::gather::{self, Directory, HubAnswer};
use super::{ClusterHub, Subjects};
use crate::envelope::Envelope;
use crate::error::{RpcError, RpcErrorKind};
use crate::peer::{clip, Answer, MAX_DETAIL};
use async_nats::{Message, StatusCode};
use foldhash::fast::RandomState;
use futures_util::future::{AbortHandle, Abortable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

type Reply = Result<Vec<u8>, RpcError>;

/// What a caller is told when NATS finds nobody holding the subject (as opposed to a hub
/// that answered `NoPeer` itself: a service call is sent once more then).
const NO_RESPONDERS: &str = "nobody in the cluster serves it";

/// A call of this hub waiting for its answer.
struct Waiting {
    tx: oneshot::Sender<Reply>,
    /// What "nobody holds the subject" means for it.
    missing: RpcErrorKind,
}

/// The calls a hub makes to and serves for the other hubs.
pub(crate) struct CallBridge {
    client: async_nats::Client,
    subjects: Arc<Subjects>,
    hub: Weak<dyn ClusterHub>,
    connected: Arc<AtomicBool>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiting, RandomState>>,
    /// Calls from other hubs running here, by reply subject (to cancel).
    running: Mutex<HashMap<Box<str>, AbortHandle, RandomState>>,
    /// This hub's broadcasts waiting for the other hubs' answers, by id.
    gathers: Mutex<HashMap<u64, mpsc::UnboundedSender<bytes::Bytes>, RandomState>>,
    /// The other hubs.
    directory: Directory,
    hub_id: Uuid,
    hub_name: String,
    /// How long a hub stays in the directory without a hello.
    alive: Duration,
}

impl CallBridge {
    pub(crate) fn new(
        client: async_nats::Client,
        subjects: Arc<Subjects>,
        hub: Weak<dyn ClusterHub>,
        connected: Arc<AtomicBool>,
        me: (Uuid, String),
        presence_interval: Duration,
    ) -> Self {
        Self {
            client,
            subjects,
            hub,
            connected,
            next_id: AtomicU64::new(1),
            waiting: Mutex::default(),
            running: Mutex::default(),
            gathers: Mutex::default(),
            directory: Directory::default(),
            hub_id: me.0,
            hub_name: me.1,
            alive: presence_interval.saturating_mul(3),
        }
    }

    fn gathers(
        &self,
    ) -> MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<bytes::Bytes>, RandomState>> {
        self.gathers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the other hubs this hub is here (`hello`) or leaving.
    pub(crate) async fn announce(&self, hello: bool) {
        let presence = gather::presence(hello, self.hub_id, &self.hub_name);
        if let Err(error) = self
            .client
            .publish(self.subjects.presence(), presence)
            .await
        {
            tracing::debug!(cause = %error, "presence not sent");
        }
    }

    /// Another hub said hello or goodbye. A hub new to this one hears back at once.
    pub(crate) fn presence(self: &Arc<Self>, payload: &[u8]) {
        let Some((hello, id, name)) = gather::read_presence(payload) else {
            return;
        };
        if id == self.hub_id {
            return;
        }
        if !hello {
            self.directory.left(id);
        } else if self.directory.heard(id, name) {
            let calls = Arc::clone(self);
            tokio::spawn(async move { calls.announce(true).await });
        }
    }

    /// Sends a broadcast to every hub and waits, until `deadline`, for the answer of each
    /// hub in the directory: their answers, and the names of those that did not answer.
    pub(crate) async fn gather(
        &self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> (Vec<HubAnswer>, Vec<String>) {
        let mut waiting: HashMap<Uuid, String, RandomState> =
            self.directory.alive(self.alive).into_iter().collect();
        if waiting.is_empty() || !self.connected.load(Ordering::Relaxed) {
            return (Vec::new(), waiting.into_values().collect());
        }
        let until = Instant::now() + deadline;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        let deadline_ms = u32::try_from(deadline.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let request_envelope = Envelope::Request {
            id,
            deadline_ms,
            service,
            method,
            payload: &[],
        };
        if request_envelope.encode(&mut frame).is_err() {
            return (Vec::new(), waiting.into_values().collect());
        }
        frame.extend_from_slice(request);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.gathers().insert(id, tx);
        let _forget = Forget(self, id);
        let publish = self.client.publish_with_reply(
            self.subjects.gathers(),
            self.subjects.reply(id),
            frame.into(),
        );
        if !matches!(tokio::time::timeout_at(until, publish).await, Ok(Ok(()))) {
            return (Vec::new(), waiting.into_values().collect());
        }
        let mut answers: Vec<HubAnswer> = Vec::new();
        while !waiting.is_empty() {
            let Ok(Some(bytes)) = tokio::time::timeout_at(until, rx.recv()).await else {
                break;
            };
            match gather::decode_answer(&bytes) {
                Ok(answer) if !answers.iter().any(|a| a.hub == answer.hub) => {
                    waiting.remove(&answer.hub);
                    answers.push(answer);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(cause = %error, "a broadcast answer dropped"),
            }
        }
        (answers, waiting.into_values().collect())
    }

    /// A broadcast from another hub: this hub's members serving the service are called,
    /// and their outcomes answered in one message. The members get the deadline less a
    /// tenth (at most 250 ms), kept for the answer's way back.
    pub(crate) fn serve_gather(self: &Arc<Self>, message: Message) {
        let Some(reply) = message.reply else {
            return;
        };
        let Ok(Envelope::Request {
            deadline_ms,
            service,
            method,
            payload,
            ..
        }) = Envelope::decode(&message.payload)
        else {
            tracing::warn!("an unreadable broadcast from another hub dropped");
            return;
        };
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let deadline = Duration::from_millis(u64::from(deadline_ms.max(1)));
        let margin = (deadline / 10).min(Duration::from_millis(250));
        let members_deadline = deadline
            .saturating_sub(margin)
            .max(Duration::from_millis(1));
        let gathering = hub.gather_local(service, method, payload, members_deadline);
        let calls = Arc::clone(self);
        tokio::spawn(async move {
            let outcomes = gathering.await;
            let answer = gather::encode_answer(calls.hub_id, &calls.hub_name, &outcomes);
            if let Err(error) = calls.client.publish(reply, answer).await {
                tracing::warn!(cause = %error, "a broadcast answer was lost");
            }
        });
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, Waiting, RandomState>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> MutexGuard<'_, HashMap<Box<str>, AbortHandle, RandomState>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a call to `subject` and waits for its answer or its deadline. Dropping the
    /// future cancels it on the hub that runs it.
    async fn call(
        &self,
        subject: &str,
        missing: RpcErrorKind,
        service: &str,
        method: &str,
        deadline: Duration,
        encode_request: impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError>,
    ) -> Reply {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(RpcError::new(
                RpcErrorKind::NotConnected,
                "the hub's connection to NATS is down",
            ));
        }
        let until = Instant::now() + deadline;
        let deadline_ms = u32::try_from(deadline.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        Envelope::Request {
            id,
            deadline_ms,
            service,
            method,
            payload: &[],
        }
        .encode(&mut frame)?;
        encode_request(&mut frame)?;
        let frame = bytes::Bytes::from(frame);
        let reply = self.send(subject, missing, id, frame.clone(), until).await;
        // A hub that lost its last member serving the service as the call arrived: once
        // more, to a hub that serves it.
        let refused_by_a_hub = |reply: &Reply| {
            reply
                .as_ref()
                .is_err_and(|e| e.kind() == RpcErrorKind::NoPeer && e.detail() != NO_RESPONDERS)
        };
        if missing == RpcErrorKind::NoPeer && refused_by_a_hub(&reply) && Instant::now() < until {
            return self.send(subject, missing, id, frame, until).await;
        }
        reply
    }

    /// Sends call `id`'s `frame` to `subject` and waits, until `until`, for its answer.
    async fn send(
        &self,
        subject: &str,
        missing: RpcErrorKind,
        id: u64,
        frame: bytes::Bytes,
        until: Instant,
    ) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id, Waiting { tx, missing });
        // From here on, dropping this future forgets the call and cancels it remotely.
        let mut guard = Pending {
            calls: self,
            id,
            armed: true,
        };
        let reply = self.subjects.reply(id);
        let publish = self
            .client
            .publish_with_reply(subject.to_owned(), reply, frame);
        match tokio::time::timeout_at(until, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                guard.forget();
                return Err(RpcError::new(RpcErrorKind::NotConnected, error.to_string()));
            }
            Err(_) => return Err(RpcError::from(RpcErrorKind::Timeout)),
        }
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(reply)) => {
                guard.armed = false;
                reply
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(RpcError::from(RpcErrorKind::Disconnected))
            }
            Err(_) => Err(RpcError::from(RpcErrorKind::Timeout)),
        }
    }

    /// An answer (or NATS's "no responders") to one of this hub's calls.
    pub(crate) fn answer(&self, message: &Message) {
        let Some(id) = self.subjects.reply_id(&message.subject) else {
            return;
        };
        if let Some(gather) = self.gathers().get(&id) {
            let _ = gather.send(message.payload.clone());
            return;
        }
        let Some(waiting) = self.waiting().remove(&id) else {
            return;
        };
        let reply = if message.status == Some(StatusCode::NO_RESPONDERS) {
            Err(RpcError::new(waiting.missing, NO_RESPONDERS))
        } else {
            match Envelope::decode(&message.payload) {
                Ok(Envelope::Response { payload, .. }) => Ok(payload.to_vec()),
                Ok(Envelope::Error { code, message, .. }) => {
                    Err(RpcError::from_wire(code, message))
                }
                _ => Err(RpcError::new(
                    RpcErrorKind::Decode,
                    "an unreadable answer from another hub",
                )),
            }
        };
        let _ = waiting.tx.send(reply);
    }

    /// A call from another hub: to any member serving its service (`member` none) or to
    /// one member of this hub. Runs until answered, cancelled or past its deadline.
    pub(crate) fn serve(self: &Arc<Self>, message: Message, member: Option<Uuid>) {
        let Some(reply) = message.reply else {
            return;
        };
        let Ok(Envelope::Request {
            id,
            deadline_ms,
            service,
            method,
            payload,
        }) = Envelope::decode(&message.payload)
        else {
            tracing::warn!(subject = %message.subject, "an unreadable call from another hub dropped");
            return;
        };
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let deadline = Duration::from_millis(u64::from(deadline_ms.max(1)));
        let answer = hub.serve_remote(member, service, method, payload, deadline);
        let (handle, registration) = AbortHandle::new_pair();
        let key: Box<str> = reply.as_str().into();
        self.running().insert(key.clone(), handle);
        let calls = Arc::clone(self);
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(deadline, Abortable::new(answer, registration)).await;
            if calls.running().remove(&key).is_none() {
                return;
            }
            let outcome = match outcome {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_cancelled)) => return,
                Err(_elapsed) => Err(RpcError::from(RpcErrorKind::Timeout)),
            };
            let mut frame = Vec::new();
            let encoded = match &outcome {
                Ok(bytes) => Envelope::Response { id, payload: &[] }
                    .encode(&mut frame)
                    .map(|()| frame.extend_from_slice(bytes)),
                Err(error) => Envelope::Error {
                    id,
                    code: error.code(),
                    message: clip(error.detail(), MAX_DETAIL),
                }
                .encode(&mut frame),
            };
            if encoded.is_ok() {
                if let Err(error) = calls.client.publish(reply, frame.into()).await {
                    tracing::warn!(cause = %error, "the answer to another hub's call was lost");
                }
            }
        });
    }

    /// Another hub cancelled the call it sent with reply subject `reply`.
    pub(crate) fn cancelled(&self, reply: &[u8]) {
        let Ok(reply) = std::str::from_utf8(reply) else {
            return;
        };
        if let Some(handle) = self.running().remove(reply) {
            handle.abort();
        }
    }
}

/// Forgets a broadcast once its caller stops waiting.
struct Forget<'a>(&'a CallBridge, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.gathers().remove(&self.1);
    }
}

/// Forgets a call whose future was dropped and tells the hub running it.
struct Pending<'a> {
    calls: &'a CallBridge,
    id: u64,
    armed: bool,
}

impl Pending<'_> {
    /// The call never left: just forget it.
    fn forget(&mut self) {
        self.armed = false;
        self.calls.waiting().remove(&self.id);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.armed || self.calls.waiting().remove(&self.id).is_none() {
            return;
        }
        let (client, subject) = (self.calls.client.clone(), self.calls.subjects.cancels());
        let reply = self.calls.subjects.reply(self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.publish(subject, reply.into()).await;
            });
        }
    }
}

/// Where a call to another hub goes: a service's queue group or one member.
#[derive(Clone)]
pub(crate) struct Remote {
    calls: Arc<CallBridge>,
    subject: Arc<str>,
    missing: RpcErrorKind,
}

impl Remote {
    /// Calls to any member serving `service` on any hub.
    pub(crate) fn service(calls: &Arc<CallBridge>, service: &str) -> Self {
        Self {
            subject: calls.subjects.service(service).into(),
            calls: Arc::clone(calls),
            missing: RpcErrorKind::NoPeer,
        }
    }

    /// Calls to member `id`, on whichever hub it is connected to.
    pub(crate) fn member(calls: &Arc<CallBridge>, id: Uuid) -> Self {
        Self {
            subject: calls.subjects.member(id).into(),
            calls: Arc::clone(calls),
            missing: RpcErrorKind::NotConnected,
        }
    }

    /// Sends a call whose request `encode_request` appends, and waits for its answer.
    pub(crate) async fn call(
        &self,
        service: &str,
        method: &str,
        deadline: Duration,
        encode_request: impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError>,
    ) -> Reply {
        self.calls
            .call(
                &self.subject,
                self.missing,
                service,
                method,
                deadline,
                encode_request,
            )
            .await
    }

    /// The call as an [`Answer`] (a request encoded already).
    pub(crate) fn answer(
        self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> Answer {
        let (service, method, request) = (service.to_owned(), method.to_owned(), request.to_vec());
        Box::pin(async move {
            self.call(&service, &method, deadline, |buf| {
                buf.extend_from_slice(&request);
                Ok(())
            })
            .await
        })
    }
}
