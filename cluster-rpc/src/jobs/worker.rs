//! The worker side: running a member's job handlers on the batches the hub sends, and the
//! context a handler reports progress through.

use super::wire::{self, Batch, Malformed, DONE_SUBJECT, PROGRESS_SUBJECT};
use super::{Job, JobId};
use crate::codec::{Codec, CodecKind};
use crate::envelope::Envelope;
use crate::error::{RpcError, RpcErrorKind};
use crate::peer::{panic_message, PeerCore};
use cluster_transport::close_code;
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::FutureExt;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

/// The connect parameter listing the job names a worker runs.
pub(crate) const JOBS_PARAMETER: &str = "jobs";
/// The connect parameter with a worker's credits (jobs at once).
pub(crate) const JOB_CREDITS_PARAMETER: &str = "job_credits";

/// What a job handler's error becomes: anything that converts into a boxed error (any
/// `std::error::Error`, a `String`, a `&str`).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes, as one line: `error: cause: cause`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a job handler gets besides the job: its id, attempt, and a way to report
/// progress to the submitter.
#[derive(Clone)]
pub struct JobContext {
    id: JobId,
    attempt: u32,
    core: Option<Arc<PeerCore>>,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Which attempt this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Reports progress (say, 0.0 to 1.0) to the submitter's [`JobHandle`](super::JobHandle).
    /// Fire and forget: a lost report is replaced by the next.
    pub fn progress(&self, value: f64) {
        let Some(core) = &self.core else {
            return;
        };
        let mut batch = Batch::new(PROGRESS_SUBJECT);
        batch.push_progress(self.id, self.attempt, value);
        let _ = core.link().send_frame(batch.frame());
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// Starts one job: decodes it and runs the handler until it first waits. A job that
/// finished (or failed) by then is added to `out`; one still running is returned.
type Handler = Arc<
    dyn Fn(&[u8], CodecKind, JobContext, &mut Batch) -> Option<BoxFuture<'static, Encoded>>
        + Send
        + Sync,
>;

/// An attempt's outcome: the codec-encoded output, or the handler's error as text.
type Encoded = Result<Vec<u8>, String>;

/// The attempts running in tasks, to drop them when the hub cancels them or leaves.
type Running = Arc<Mutex<HashMap<(JobId, u32), AbortHandle>>>;

/// A member's job handlers by job name, and the attempts it runs. The hub sends jobs in
/// batches ([`wire`](super::wire)); each batch runs in place on the connection's task, and
/// the attempts that finish without waiting (most do) are answered in one frame. An
/// attempt that waits moves to a task of its own and is answered when it ends.
#[derive(Clone, Default)]
pub(crate) struct WorkerService {
    handlers: HashMap<&'static str, Handler>,
    /// The member's connection, for answers and progress; set once the member exists.
    pub(crate) core: Arc<OnceLock<Arc<PeerCore>>>,
    running: Running,
}

impl WorkerService {
    pub(crate) fn add<J, F, Fut, E>(&mut self, handler: F)
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<J::Output, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let handler = Arc::new(handler);
        self.handlers.insert(
            J::NAME,
            Arc::new(move |payload, codec, ctx, out| {
                let (id, attempt) = (ctx.id, ctx.attempt);
                let job: J = match codec.decode(payload) {
                    Ok(job) => job,
                    Err(error) => {
                        out.push_done(id, attempt, Err(&error.to_string()));
                        return None;
                    }
                };
                let started = catch_unwind(AssertUnwindSafe(|| handler(job, ctx)));
                let mut running = match started {
                    Ok(running) => Box::pin(running),
                    Err(panic) => {
                        out.push_done(id, attempt, Err(&panicked(panic.as_ref())));
                        return None;
                    }
                };
                // Most handlers finish at once: poll once in place, no task and no waker.
                let mut cx = Context::from_waker(Waker::noop());
                match catch_unwind(AssertUnwindSafe(|| running.as_mut().poll(&mut cx))) {
                    Ok(Poll::Ready(Ok(output))) => {
                        out.push_done_encoded(id, attempt, |buf| {
                            codec.encode(&output, buf).map_err(|e| e.to_string())
                        });
                        None
                    }
                    Ok(Poll::Ready(Err(error))) => {
                        out.push_done(id, attempt, Err(&error_chain(&*error.into())));
                        None
                    }
                    Err(panic) => {
                        out.push_done(id, attempt, Err(&panicked(panic.as_ref())));
                        None
                    }
                    Ok(Poll::Pending) => Some(
                        async move {
                            let output =
                                running.await.map_err(|error| error_chain(&*error.into()))?;
                            let mut bytes = Vec::new();
                            codec
                                .encode(&output, &mut bytes)
                                .map_err(|e| e.to_string())?;
                            Ok(bytes)
                        }
                        .boxed(),
                    ),
                }
            }),
        );
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// The job names, comma-separated, for the `jobs` connect parameter.
    pub(crate) fn names(&self) -> String {
        let mut names: Vec<_> = self.handlers.keys().copied().collect();
        names.sort_unstable();
        names.join(",")
    }

    /// Runs a batch of jobs from the hub; answers those done at once in one frame per
    /// [`FRAME_TARGET`](super::wire::FRAME_TARGET) bytes.
    ///
    /// # Errors
    /// A malformed batch (the jobs before the bad record run).
    pub(crate) fn run_batch(&self, payload: &[u8]) -> Result<(), Malformed> {
        let Some(core) = self.core.get() else {
            return Ok(());
        };
        let codec = core.codec();
        let mut out = Batch::new(DONE_SUBJECT);
        let mut result = Ok(());
        for run in wire::runs(payload) {
            let run = match run {
                Ok(run) => run,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            let ctx = JobContext {
                id: run.id,
                attempt: run.attempt,
                core: Some(Arc::clone(core)),
            };
            let waiting = match self.handlers.get(run.name) {
                Some(handler) => handler(run.job, codec, ctx, &mut out),
                None => {
                    let error = format!("this worker runs no job named {:?}", run.name);
                    out.push_done(run.id, run.attempt, Err(&error));
                    None
                }
            };
            if let Some(waiting) = waiting {
                self.spawn(core, run.id, run.attempt, waiting);
            }
            if out.is_full() {
                send(core, &out);
                out.clear();
            }
        }
        if !out.is_empty() {
            send(core, &out);
        }
        result
    }

    /// Runs an attempt that waits in a task of its own, registered for cancellation.
    fn spawn(
        &self,
        core: &Arc<PeerCore>,
        id: JobId,
        attempt: u32,
        job: BoxFuture<'static, Encoded>,
    ) {
        let (abort, registration) = AbortHandle::new_pair();
        lock(&self.running).insert((id, attempt), abort);
        let running = Arc::clone(&self.running);
        let core = Arc::clone(core);
        let span =
            tracing::debug_span!("job", job.id = %uuid::Uuid::from_u128(id), job.attempt = attempt);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let Ok(outcome) =
                    Abortable::new(AssertUnwindSafe(job).catch_unwind(), registration).await
                else {
                    return; // cancelled: the hub expects no answer
                };
                if lock(&running).remove(&(id, attempt)).is_none() {
                    return; // cancelled while finishing
                }
                let outcome = outcome.unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
                let mut out = Batch::new(DONE_SUBJECT);
                out.push_done(id, attempt, outcome.as_deref().map_err(String::as_str));
                send(&core, &out);
            },
            span,
        ));
    }

    /// Drops the attempts the hub cancelled or timed out (their handlers are dropped, not
    /// awaited).
    ///
    /// # Errors
    /// A malformed frame (the attempts before the bad record are dropped).
    pub(crate) fn drop_batch(&self, payload: &[u8]) -> Result<(), Malformed> {
        for attempt in wire::drops(payload) {
            let key = attempt?;
            if let Some(abort) = lock(&self.running).remove(&key) {
                abort.abort();
            }
        }
        Ok(())
    }

    /// The connection dropped: the hub requeues every attempt, so drop them all here.
    pub(crate) fn abort_all(&self) {
        let running = std::mem::take(&mut *lock(&self.running));
        for abort in running.into_values() {
            abort.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends an answer frame, so that the hub hears of every attempt at once: a frame
/// refused as too large goes again one answer at a time, and an answer too large on its
/// own becomes an error answer saying so. A full send queue drops the connection (the hub
/// then requeues the attempts at once); a connection already gone needs nothing.
fn send(core: &PeerCore, batch: &Batch) {
    match core.link().send_frame(batch.frame()) {
        Ok(()) => {}
        Err(error) if error.kind() == RpcErrorKind::TooLarge => send_one_by_one(core, batch),
        Err(error) => refused(core, &error),
    }
}

fn send_one_by_one(core: &PeerCore, batch: &Batch) {
    let Ok(Envelope::Publish { payload, .. }) = Envelope::decode(batch.frame()) else {
        return;
    };
    let mut one = Batch::new(DONE_SUBJECT);
    for done in wire::dones(payload).flatten() {
        one.clear();
        one.push_done(done.id, done.attempt, done.outcome);
        let error = match core.link().send_frame(one.frame()) {
            Ok(()) => continue,
            Err(error) if error.kind() == RpcErrorKind::TooLarge => error,
            Err(error) => return refused(core, &error),
        };
        let len = match done.outcome {
            Ok(bytes) => bytes.len(),
            Err(text) => text.len(),
        };
        one.clear();
        let why = format!("the attempt's answer of {len} bytes was refused: {error}");
        one.push_done(done.id, done.attempt, Err(&why));
        if let Err(error) = core.link().send_frame(one.frame()) {
            return refused(core, &error);
        }
    }
}

fn refused(core: &PeerCore, error: &RpcError) {
    if error.kind() != RpcErrorKind::NotConnected {
        tracing::warn!(cause = %error, "job answers could not be sent; reconnecting");
        core.link()
            .close_for(close_code::INTERNAL, "job answers could not be sent");
    }
}

/// How a panicking handler's attempt fails.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    RpcError::new(RpcErrorKind::Panicked, panic_message(panic)).to_string()
}

impl fmt::Debug for WorkerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}
