//! One connection seen by the RPC layer: calls out (correlation, deadline, cancellation)
//! and calls in (dispatch, limits, cancellation, panics), over one [`Link`].

use crate::codec::{Codec, CodecKind};
use crate::envelope::Envelope;
use crate::error::{RpcError, RpcErrorKind};
use crate::link::Link;
use crate::metrics::{self, CallOutcome};
use crate::service::Services;
use cluster_transport::close_code;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::oneshot;

type Reply = Result<Vec<u8>, RpcError>;

thread_local! {
    /// Scratch space frames are encoded into before the transport copies them.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes into the thread's scratch buffer and, if that worked, hands the bytes to `send`.
pub(crate) fn with_frame<R>(
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError>,
    send: impl FnOnce(&[u8]) -> R,
) -> Result<R, RpcError> {
    let mut buf = SCRATCH
        .with(|s| s.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
        .unwrap_or_default();
    buf.clear();
    let result = encode(&mut buf).map(|()| send(&buf));
    if buf.capacity() <= 64 * 1024 {
        SCRATCH.with(|s| {
            if let Ok(mut slot) = s.try_borrow_mut() {
                *slot = buf;
            }
        });
    }
    result
}

/// A handler's return value encoded with `codec`, in a buffer of exactly its size: what a
/// generated server answers. Encoded in the thread's scratch buffer and copied once, where a
/// fresh `Vec` grew from a marker byte to the whole value (an allocation and a reallocation
/// or more per call).
///
/// # Errors
/// [`Encode`](RpcErrorKind::Encode) when the codec cannot represent the value.
pub fn encode_response<T: Serialize + ?Sized>(
    codec: CodecKind,
    value: &T,
) -> Result<Vec<u8>, RpcError> {
    with_frame(
        |buf| {
            codec
                .encode(value, buf)
                .map_err(|e| RpcError::new(RpcErrorKind::Encode, e.to_string()))
        },
        <[u8]>::to_vec,
    )
}

/// Limits and defaults of one node's calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// Deadline of a call that does not set its own.
    pub(crate) default_deadline: Duration,
    /// Most incoming calls running at once per connection; more are refused `Overloaded`.
    pub(crate) max_concurrent_calls: usize,
}

/// A call's answer, on its way from wherever it is served.
pub(crate) type Answer = futures_util::future::BoxFuture<'static, Result<Vec<u8>, RpcError>>;

/// Where a node sends the calls for services it does not serve itself (a hub: to a
/// member serving it, or to another hub).
pub(crate) trait Forward: Send + Sync + 'static {
    /// The answer to `method` of `service` with the encoded `request`, from whoever serves
    /// it within `deadline`; `None` when nobody does. Dropping the answer cancels the call.
    fn forward(
        &self,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> Option<Answer>;
}

/// The RPC state of one connection.
pub(crate) struct PeerCore {
    link: Arc<dyn Link>,
    codec: CodecKind,
    limits: CallLimits,
    services: Arc<Services>,
    forward: Option<Arc<dyn Forward>>,
    next_id: AtomicU64,
    calls: Mutex<Calls>,
    /// How many of their calls run here (`incoming`'s length, kept beside the map so the
    /// limit is checked on every call without taking the lock).
    running: AtomicUsize,
}

#[derive(Default)]
struct Calls {
    /// Our calls waiting for an answer.
    outgoing: HashMap<u64, oneshot::Sender<Reply>>,
    /// Their calls running here, to cancel.
    incoming: HashMap<u64, AbortHandle>,
    /// Set while the connection is down: new calls fail at once.
    down: bool,
}

impl PeerCore {
    pub(crate) fn new(
        link: Arc<dyn Link>,
        codec: CodecKind,
        limits: CallLimits,
        services: Arc<Services>,
    ) -> Arc<Self> {
        Self::forwarding(link, codec, limits, services, None)
    }

    /// [`new`](Self::new), passing calls for services not in `services` to `forward`.
    pub(crate) fn forwarding(
        link: Arc<dyn Link>,
        codec: CodecKind,
        limits: CallLimits,
        services: Arc<Services>,
        forward: Option<Arc<dyn Forward>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            link,
            codec,
            limits,
            services,
            forward,
            next_id: AtomicU64::new(1),
            calls: Mutex::new(Calls::default()),
            running: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Their call `id` runs here until [`end_incoming`](Self::end_incoming) or cancelled.
    fn begin_incoming(&self, id: u64, handle: AbortHandle) {
        let mut calls = self.calls();
        calls.incoming.insert(id, handle);
        self.running.store(calls.incoming.len(), Ordering::Relaxed);
    }

    /// Their call `id` no longer runs here: its handle, if it was still running.
    fn end_incoming(&self, id: u64) -> Option<AbortHandle> {
        let mut calls = self.calls();
        let handle = calls.incoming.remove(&id);
        self.running.store(calls.incoming.len(), Ordering::Relaxed);
        handle
    }

    pub(crate) fn codec(&self) -> CodecKind {
        self.codec
    }

    pub(crate) fn link(&self) -> &Arc<dyn Link> {
        &self.link
    }

    /// The connection dropped (`how`: the close, when known): every call out fails with
    /// `Disconnected`, every call in is cancelled. With `down`, new calls fail until
    /// [`up`](Self::up).
    pub(crate) fn disconnected(&self, down: bool, how: &str) {
        let (outgoing, incoming) = {
            let mut calls = self.calls();
            calls.down = down;
            self.running.store(0, Ordering::Relaxed);
            (
                std::mem::take(&mut calls.outgoing),
                std::mem::take(&mut calls.incoming),
            )
        };
        for (_, tx) in outgoing {
            let _ = tx.send(Err(RpcError::new(RpcErrorKind::Disconnected, how)));
        }
        for (_, handle) in incoming {
            handle.abort();
        }
    }

    /// The connection is back.
    pub(crate) fn up(&self) {
        self.calls().down = false;
    }

    /// Sends a call and waits for its answer, its deadline, or the connection's end.
    pub(crate) async fn call(
        self: &Arc<Self>,
        service: &'static str,
        method: &'static str,
        request: &(impl Serialize + ?Sized),
        deadline: Duration,
    ) -> Reply {
        let codec = self.codec;
        self.call_with(service, method, deadline, |buf| {
            codec
                .encode(request, buf)
                .map_err(|e| RpcError::new(RpcErrorKind::Encode, e.to_string()))
        })
        .await
    }

    /// [`call`](Self::call) with a request encoded already.
    pub(crate) async fn call_encoded(
        self: &Arc<Self>,
        service: &str,
        method: &str,
        request: &[u8],
        deadline: Duration,
    ) -> Reply {
        self.call_with(service, method, deadline, |buf| {
            buf.extend_from_slice(request);
            Ok(())
        })
        .await
    }

    /// A call whose request `encode_request` appends to the frame.
    async fn call_with(
        self: &Arc<Self>,
        service: &str,
        method: &str,
        deadline: Duration,
        encode_request: impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError>,
    ) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut calls = self.calls();
            if calls.down {
                return Err(RpcError::from(RpcErrorKind::Disconnected));
            }
            calls.outgoing.insert(id, tx);
        }
        // From here on, dropping this future removes the call and tells the far side.
        let mut guard = CallGuard {
            peer: self,
            id,
            armed: true,
        };
        let deadline_ms = u32::try_from(deadline.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let sent = with_frame(
            |buf| {
                Envelope::Request {
                    id,
                    deadline_ms,
                    service,
                    method,
                    payload: &[],
                }
                .encode(buf)?;
                encode_request(buf)
            },
            |frame| self.link.send_frame(frame),
        )
        .and_then(|sent| sent);
        if let Err(error) = sent {
            guard.armed = false;
            self.calls().outgoing.remove(&id);
            return Err(error);
        }
        let outcome = tokio::time::timeout(deadline, rx).await;
        match outcome {
            Ok(Ok(reply)) => {
                guard.armed = false;
                reply
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(RpcError::from(RpcErrorKind::Disconnected))
            }
            // The guard sends the cancel.
            Err(_) => Err(RpcError::from(RpcErrorKind::Timeout)),
        }
    }

    /// Sends a small control envelope (cancel, subscribe, unsubscribe).
    ///
    /// # Errors
    /// The transport's refusal, or a field too long for the envelope.
    pub(crate) fn send_envelope(&self, envelope: Envelope<'_>) -> Result<(), RpcError> {
        with_frame(
            |buf| Ok(envelope.encode(buf)?),
            |frame| self.link.send_frame(frame),
        )?
    }

    /// Handles one call-related envelope from the peer.
    pub(crate) fn handle(self: &Arc<Self>, envelope: Envelope<'_>) {
        match envelope {
            Envelope::Request {
                id,
                deadline_ms,
                service,
                method,
                payload,
            } => self.serve(id, deadline_ms, service, method, payload),
            Envelope::Response { id, payload } => self.answer(id, Ok(payload.to_vec())),
            Envelope::Error { id, code, message } => {
                self.answer(id, Err(RpcError::from_wire(code, message)));
            }
            Envelope::Cancel { id } => {
                if let Some(handle) = self.end_incoming(id) {
                    handle.abort();
                }
            }
            _ => {}
        }
    }

    fn answer(&self, id: u64, reply: Reply) {
        if let Some(tx) = self.calls().outgoing.remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// Answers call `id` with an error (its detail cut to [`MAX_DETAIL`] bytes).
    fn fail(&self, id: u64, error: &RpcError) -> Result<(), RpcError> {
        self.send_envelope(Envelope::Error {
            id,
            code: error.code(),
            message: clip(error.detail(), MAX_DETAIL),
        })
    }

    fn serve(
        self: &Arc<Self>,
        id: u64,
        deadline_ms: u32,
        service: &str,
        method: &str,
        payload: &[u8],
    ) {
        let deadline = Duration::from_millis(u64::from(deadline_ms.max(1)));
        let served = self.services.get(service);
        let counted = match served {
            Some(served) => served.metrics.method(method),
            None if self.forward.is_some() => metrics::forwarded(),
            None => {
                metrics::unknown_service().record(CallOutcome::Refused, None);
                let error = RpcError::new(RpcErrorKind::NoSuchService, service);
                return self.answer_error(id, &error);
            }
        };
        // The limit is checked before the handler exists: an `Overloaded` call has had no
        // effect. (Handlers that finish in the first poll below never count: they are not
        // running concurrently with anything.)
        if self.running.load(Ordering::Relaxed) >= self.limits.max_concurrent_calls {
            counted.record(CallOutcome::Overloaded, None);
            let error = RpcError::new(
                RpcErrorKind::Overloaded,
                format!("{} calls running", self.limits.max_concurrent_calls),
            );
            return self.answer_error(id, &error);
        }
        // The start of the read that brought the call: one clock read per read, not per
        // call (a call's time then includes the calls read before it in the same read).
        let started = cluster_transport::__clock::read_started();
        let future = match served {
            Some(served) => served.service.call(method, payload, self.codec),
            None => self
                .forward
                .as_ref()
                .and_then(|f| f.forward(service, method, payload, deadline))
                .ok_or_else(|| RpcError::new(RpcErrorKind::NoSuchService, service)),
        };
        let future = match future {
            Ok(f) => f,
            Err(error) => {
                counted.record(CallOutcome::Refused, None);
                return self.answer_error(id, &error);
            }
        };
        // Most handlers answer at once (no I/O): poll once in place and skip the task, the
        // timer and the registration. A handler that is not done yet moves to a task,
        // which polls it again with a real waker (futures must tolerate that extra poll).
        let mut running = AssertUnwindSafe(future).catch_unwind();
        let first = Pin::new(&mut running).poll(&mut Context::from_waker(Waker::noop()));
        if let Poll::Ready(outcome) = first {
            counted.record(outcome_of(&outcome), Some(started.elapsed()));
            return self.reply(id, outcome);
        }
        let (handle, registration) = AbortHandle::new_pair();
        self.begin_incoming(id, handle);
        let counted = Arc::clone(counted);
        let peer = Arc::clone(self);
        let span = tracing::debug_span!("rpc", rpc.id = id, rpc.method = %method);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome =
                    tokio::time::timeout(deadline, Abortable::new(running, registration)).await;
                let finished = peer.end_incoming(id).is_some();
                let elapsed = Some(started.elapsed());
                match outcome {
                    // Cancelled by the caller or by a disconnect: nobody to answer.
                    Ok(Err(_aborted)) => counted.record(CallOutcome::Cancelled, elapsed),
                    _ if !finished => counted.record(CallOutcome::Cancelled, elapsed),
                    Ok(Ok(outcome)) => {
                        counted.record(outcome_of(&outcome), elapsed);
                        peer.reply(id, outcome);
                    }
                    Err(_elapsed) => {
                        counted.record(CallOutcome::Timeout, elapsed);
                        peer.answer_error(id, &RpcErrorKind::Timeout.into());
                    }
                }
            },
            span,
        ));
    }

    /// Answers call `id` of the peer, handled outside the services (the hub's own).
    pub(crate) fn respond(&self, id: u64, outcome: Result<Vec<u8>, RpcError>) {
        self.reply(id, Ok(outcome));
    }

    /// Answers call `id` with its handler's outcome.
    fn reply(&self, id: u64, outcome: std::thread::Result<Result<Vec<u8>, RpcError>>) {
        match outcome {
            Ok(Ok(bytes)) => {
                let sent = with_frame(
                    |buf| {
                        Envelope::Response { id, payload: &[] }.encode(buf)?;
                        buf.extend_from_slice(&bytes);
                        Ok(())
                    },
                    |frame| self.link.send_frame(frame),
                );
                if let Ok(Err(error)) = sent {
                    let error = RpcError::new(
                        error.kind(),
                        format!(
                            "the reply of {} bytes was refused: {}",
                            bytes.len(),
                            error.detail()
                        ),
                    );
                    self.answer_error(id, &error);
                }
            }
            Ok(Err(error)) => self.answer_error(id, &error),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(rpc.id = id, panic = %message, "handler panicked");
                self.answer_error(id, &RpcError::new(RpcErrorKind::Panicked, message));
            }
        }
    }

    /// Answers call `id` with `error`. If even that is refused (the send queue is full),
    /// the connection is dropped so that the caller learns at once (`Disconnected`, with
    /// this reason) instead of waiting out its deadline; a connection already gone fails
    /// the caller by itself.
    fn answer_error(&self, id: u64, error: &RpcError) {
        match self.fail(id, error) {
            Ok(()) => {}
            Err(e) if e.kind() == RpcErrorKind::NotConnected => {}
            Err(e) => {
                tracing::warn!(rpc.id = id, cause = %e, "could not answer a call; closing");
                self.link
                    .close_for(close_code::INTERNAL, "a call's answer could not be sent");
            }
        }
    }
}

/// Longest error detail sent; longer ones are cut (on a character boundary) and marked.
pub(crate) const MAX_DETAIL: usize = 4096;

/// `text`, cut to at most `max` bytes on a character boundary.
pub(crate) fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A handler's outcome, as the call metrics count it.
fn outcome_of(outcome: &std::thread::Result<Result<Vec<u8>, RpcError>>) -> CallOutcome {
    match outcome {
        Ok(Ok(_)) => CallOutcome::Ok,
        Ok(Err(_)) => CallOutcome::Error,
        Err(_) => CallOutcome::Panicked,
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// Removes an abandoned call and tells the far side to stop its handler.
struct CallGuard<'a> {
    peer: &'a PeerCore,
    id: u64,
    armed: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.peer.calls().outgoing.remove(&self.id).is_some() {
            // A refusal: the connection is going, and the far side's handler with it.
            let _ = self.peer.send_envelope(Envelope::Cancel { id: self.id });
        }
    }
}

/// A handle for calling the services of one peer; what generated clients wrap.
#[derive(Clone)]
pub struct Caller {
    target: Target,
    codec: CodecKind,
    deadline: Duration,
}

/// Where a caller's calls go.
#[derive(Clone)]
enum Target {
    /// The peer at the other end of a connection.
    Peer(Arc<PeerCore>),
    /// A member on another hub, or any member serving a service on any hub.
    #[cfg(feature = "nats")]
    Remote(crate::cluster::Remote),
    /// Notes the call and never answers: how a cluster broadcast learns what to send.
    #[cfg(feature = "nats")]
    Record(Arc<Mutex<Option<Recorded>>>),
    /// Answers the first call with a member's outcome from another hub.
    #[cfg(feature = "nats")]
    Replay(Arc<Mutex<Option<Reply>>>),
}

/// A call a broadcast's closure made, to send to the other hubs.
#[cfg(feature = "nats")]
#[derive(Debug)]
pub(crate) struct Recorded {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) request: Vec<u8>,
    pub(crate) deadline: Duration,
}

impl Caller {
    pub(crate) fn new(peer: Arc<PeerCore>) -> Self {
        let (codec, deadline) = (peer.codec, peer.limits.default_deadline);
        Self {
            target: Target::Peer(peer),
            codec,
            deadline,
        }
    }

    /// A caller that notes its first call in `slot` and never answers.
    #[cfg(feature = "nats")]
    pub(crate) fn record(
        slot: Arc<Mutex<Option<Recorded>>>,
        codec: CodecKind,
        deadline: Duration,
    ) -> Self {
        Self {
            target: Target::Record(slot),
            codec,
            deadline,
        }
    }

    /// A caller whose first call answers `reply`.
    #[cfg(feature = "nats")]
    pub(crate) fn replay(reply: Reply, codec: CodecKind, deadline: Duration) -> Self {
        Self {
            target: Target::Replay(Arc::new(Mutex::new(Some(reply)))),
            codec,
            deadline,
        }
    }

    /// A caller through the hub's cluster.
    #[cfg(feature = "nats")]
    pub(crate) fn remote(
        remote: crate::cluster::Remote,
        codec: CodecKind,
        deadline: Duration,
    ) -> Self {
        Self {
            target: Target::Remote(remote),
            codec,
            deadline,
        }
    }

    /// The same peer with another deadline for each call.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The deadline each call gets.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Sends `request` to `method` of `service`, awaits and decodes the response. Dropping
    /// the future cancels the call, on the far side too.
    ///
    /// # Errors
    /// Every [`RpcError`]: timeout, disconnect, unknown service or method, decode errors,
    /// a panic in the handler.
    pub async fn call<Req, Resp>(
        &self,
        service: &'static str,
        method: &'static str,
        request: &Req,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let bytes = match &self.target {
            Target::Peer(peer) => peer.call(service, method, request, self.deadline).await?,
            #[cfg(feature = "nats")]
            Target::Remote(remote) => {
                let codec = self.codec;
                remote
                    .call(service, method, self.deadline, |buf| {
                        codec
                            .encode(request, buf)
                            .map_err(|e| RpcError::new(RpcErrorKind::Encode, e.to_string()))
                    })
                    .await?
            }
            #[cfg(feature = "nats")]
            Target::Record(slot) => {
                let mut buf = Vec::new();
                self.codec
                    .encode(request, &mut buf)
                    .map_err(|e| RpcError::new(RpcErrorKind::Encode, e.to_string()))?;
                let recorded = Recorded {
                    service,
                    method,
                    request: buf,
                    deadline: self.deadline,
                };
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(recorded);
                std::future::pending::<()>().await;
                return Err(RpcError::from(RpcErrorKind::Cancelled));
            }
            #[cfg(feature = "nats")]
            Target::Replay(slot) => slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| {
                    Err(RpcError::new(
                        RpcErrorKind::Cancelled,
                        "a cluster broadcast runs one call per member of another hub",
                    ))
                })?,
        };
        self.codec
            .decode(&bytes)
            .map_err(|e| RpcError::new(RpcErrorKind::Decode, e.to_string()))
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("codec", &self.codec)
            .field("deadline", &self.deadline)
            .finish()
    }
}
