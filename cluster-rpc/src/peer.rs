//! One connection seen by the RPC layer: calls out (correlation, deadline, cancellation)
//! and calls in (dispatch, limits, cancellation, panics), over one [`Link`].

use crate::codec::{Codec, CodecKind};
use crate::envelope::Envelope;
use crate::error::RpcError;
use crate::link::Link;
use crate::service::Services;
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
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Limits and defaults of one node's calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// Deadline of a call that does not set its own.
    pub(crate) default_deadline: Duration,
    /// Most incoming calls running at once per connection; more are refused `Overloaded`.
    pub(crate) max_concurrent_calls: usize,
}

/// The RPC state of one connection.
pub(crate) struct PeerCore {
    link: Arc<dyn Link>,
    codec: CodecKind,
    limits: CallLimits,
    services: Arc<Services>,
    next_id: AtomicU64,
    calls: Mutex<Calls>,
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
        Arc::new(Self {
            link,
            codec,
            limits,
            services,
            next_id: AtomicU64::new(1),
            calls: Mutex::new(Calls::default()),
        })
    }

    fn calls(&self) -> MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn codec(&self) -> CodecKind {
        self.codec
    }

    pub(crate) fn link(&self) -> &Arc<dyn Link> {
        &self.link
    }

    /// The connection dropped: every call out fails with `Disconnected`, every call in is
    /// cancelled. With `down`, new calls fail until [`up`](Self::up).
    pub(crate) fn disconnected(&self, down: bool) {
        let (outgoing, incoming) = {
            let mut calls = self.calls();
            calls.down = down;
            (
                std::mem::take(&mut calls.outgoing),
                std::mem::take(&mut calls.incoming),
            )
        };
        for (_, tx) in outgoing {
            let _ = tx.send(Err(RpcError::Disconnected));
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut calls = self.calls();
            if calls.down {
                return Err(RpcError::Disconnected);
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
                .encode(buf);
                self.codec
                    .encode(request, buf)
                    .map_err(|e| RpcError::Encode(e.to_string()))
            },
            |frame| self.link.send_frame(frame).map_err(RpcError::from),
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
                Err(RpcError::Disconnected)
            }
            // The guard sends the cancel.
            Err(_) => Err(RpcError::Timeout),
        }
    }

    /// Sends an envelope, ignoring a refusal: the transport closes a connection that
    /// cannot take it, and that failure reaches everyone through the close.
    pub(crate) fn send_envelope(&self, envelope: Envelope<'_>) {
        let _ = with_frame(
            |buf| {
                envelope.encode(buf);
                Ok(())
            },
            |frame| self.link.send_frame(frame),
        );
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
                if let Some(handle) = self.calls().incoming.remove(&id) {
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

    fn fail(&self, id: u64, error: &RpcError) {
        self.send_envelope(Envelope::Error {
            id,
            code: error.code(),
            message: error.detail(),
        });
    }

    fn serve(
        self: &Arc<Self>,
        id: u64,
        deadline_ms: u32,
        service: &str,
        method: &str,
        payload: &[u8],
    ) {
        let Some(svc) = self.services.get(service) else {
            return self.fail(id, &RpcError::NoSuchService(service.to_owned()));
        };
        let future = match svc.call(method, payload, self.codec) {
            Ok(f) => f,
            Err(error) => return self.fail(id, &error),
        };
        // Most handlers answer at once (no I/O): poll once in place and skip the task, the
        // timer and the registration. A handler that is not done yet moves to a task,
        // which polls it again with a real waker (futures must tolerate that extra poll).
        let mut running = AssertUnwindSafe(future).catch_unwind();
        let first = Pin::new(&mut running).poll(&mut Context::from_waker(Waker::noop()));
        if let Poll::Ready(outcome) = first {
            return self.reply(id, outcome);
        }
        let (handle, registration) = AbortHandle::new_pair();
        {
            let mut calls = self.calls();
            if calls.incoming.len() >= self.limits.max_concurrent_calls {
                drop(calls);
                return self.fail(id, &RpcError::Overloaded);
            }
            calls.incoming.insert(id, handle);
        }
        let peer = Arc::clone(self);
        let deadline = Duration::from_millis(u64::from(deadline_ms.max(1)));
        let span = tracing::debug_span!("rpc", rpc.id = id, rpc.method = %method);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome =
                    tokio::time::timeout(deadline, Abortable::new(running, registration)).await;
                let finished = peer.calls().incoming.remove(&id).is_some();
                match outcome {
                    // Cancelled by the caller or by a disconnect: nobody to answer.
                    Ok(Err(_aborted)) => {}
                    _ if !finished => {}
                    Ok(Ok(outcome)) => peer.reply(id, outcome),
                    Err(_elapsed) => peer.fail(id, &RpcError::Timeout),
                }
            },
            span,
        ));
    }

    /// Answers call `id` with its handler's outcome.
    fn reply(&self, id: u64, outcome: std::thread::Result<Result<Vec<u8>, RpcError>>) {
        match outcome {
            Ok(Ok(bytes)) => {
                let _ = with_frame(
                    |buf| {
                        Envelope::Response { id, payload: &[] }.encode(buf);
                        buf.extend_from_slice(&bytes);
                        Ok(())
                    },
                    |frame| self.link.send_frame(frame),
                );
            }
            Ok(Err(error)) => self.fail(id, &error),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(rpc.id = id, panic = %message, "handler panicked");
                self.fail(id, &RpcError::Panicked(message));
            }
        }
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
            self.peer.send_envelope(Envelope::Cancel { id: self.id });
        }
    }
}

/// A handle for calling the services of one peer; what generated clients wrap.
#[derive(Clone)]
pub struct Caller {
    peer: Arc<PeerCore>,
    deadline: Duration,
}

impl Caller {
    pub(crate) fn new(peer: Arc<PeerCore>) -> Self {
        let deadline = peer.limits.default_deadline;
        Self { peer, deadline }
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
        let bytes = self
            .peer
            .call(service, method, request, self.deadline)
            .await?;
        self.peer
            .codec
            .decode(&bytes)
            .map_err(|e| RpcError::Decode(e.to_string()))
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("codec", &self.peer.codec)
            .field("deadline", &self.deadline)
            .finish()
    }
}
