//! What a submitter holds: a [`JobHandle`] (a future of the typed output, with cancel and
//! progress), and the progress it shares with whoever reports it.

use super::queue::{Queue, Submitter};
use super::remote::Withdraw;
use super::{JobError, JobId};
use crate::codec::{Codec, CodecKind};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use tokio::sync::{oneshot, watch};

/// What the queue answers a submitter: the encoded output, or why not.
pub(crate) type Outcome = Result<Bytes, JobError>;

/// A job's progress, shared by whoever reports it and the job's handle: the last value,
/// and a watch channel made only when someone asks for updates (most never do, and a
/// channel per job is not free). A batch holds one per job, so it is kept small (what is
/// rarely used is out of line, and one lock guards all that needs one).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    bits: AtomicU64,
    /// Someone asked for updates: reports go through the channel too.
    watched: AtomicBool,
    closed: AtomicBool,
    /// The job waits in a ready queue (changed under the queue's lock).
    queued: AtomicBool,
    /// The job was cancelled: its handle resolves at once, and a queued entry is dropped
    /// when the dispatcher reaches it.
    cancelled: AtomicBool,
    /// What the job's resolution hands over, and the updates channel.
    resolution: Mutex<Resolution>,
    /// Someone attached: the job's resolution must look at the waiters.
    attached: AtomicBool,
    /// The job resolved: no one can attach any more.
    resolved: AtomicBool,
    /// Its outcome was stored for the handle that reads it here, and that handle's waker
    /// taken: closing has no one to wake then.
    delivered: AtomicBool,
}

/// What a job's resolution hands over, besides its first submitter, and the channel of
/// its progress reports.
#[derive(Debug, Default)]
struct Resolution {
    /// The reports' channel, once someone asked for updates.
    updates: Option<watch::Sender<f64>>,
    /// Submitters attached after the first (a unique key submitted again, a re-attach, a
    /// lookup by id): resolved with the same outcome. Rare: out of line.
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every job's progress instead of a vector's three words"
    )]
    waiters: Option<Box<Vec<Submitter>>>,
    /// The outcome, for the hub-side handle that reads it here ([`Delivery::Progress`]):
    /// one slot in the job's progress instead of a channel per job (the rare error out
    /// of line).
    outcome: Option<Result<Bytes, Box<JobError>>>,
    /// That handle's task, woken when the outcome arrives or the job is gone.
    waker: Option<Waker>,
}

impl Progress {
    /// Records a report.
    pub(crate) fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Ordering::Relaxed);
        if self.watched.load(Ordering::SeqCst) {
            if let Some(tx) = &self.resolution().updates {
                tx.send_replace(value);
            }
        }
    }

    /// The last report (0.0 before the first).
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }

    /// A receiver of the reports; it sees the channel closed once the job resolved.
    pub(crate) fn subscribe(&self) -> watch::Receiver<f64> {
        let mut resolution = self.resolution();
        self.watched.store(true, Ordering::SeqCst);
        match &resolution.updates {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(self.get());
                // Closed under this lock: a channel stored now is taken by the close.
                if !self.closed.load(Ordering::SeqCst) {
                    resolution.updates = Some(tx);
                }
                rx
            }
        }
    }

    /// Marks the job as waiting in a ready queue, or not.
    pub(crate) fn set_queued(&self, queued: bool) {
        self.queued.store(queued, Ordering::Relaxed);
    }

    /// Whether the job waits in a ready queue.
    pub(crate) fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    /// Marks the job cancelled.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether the job was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn resolution(&self) -> MutexGuard<'_, Resolution> {
        self.resolution.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches another submitter; gives it back if the job resolved already (its result
    /// is then kept, or gone).
    pub(crate) fn attach(&self, submitter: Submitter) -> Result<(), Submitter> {
        let mut resolution = self.resolution();
        self.attached.store(true, Ordering::SeqCst);
        if self.resolved.load(Ordering::SeqCst) {
            return Err(submitter);
        }
        resolution
            .waiters
            .get_or_insert_with(Box::default)
            .push(submitter);
        Ok(())
    }

    /// The job resolves: stores `outcome` for the handle that reads it here (if the job
    /// has one) and wakes it; returns the submitters attached after the first, to resolve
    /// too.
    pub(crate) fn resolve(&self, outcome: Option<Outcome>) -> Vec<Submitter> {
        self.resolved.store(true, Ordering::SeqCst);
        if outcome.is_none() && !self.attached.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let mut resolution = self.resolution();
        let waiters = resolution.waiters.take().map(|w| *w).unwrap_or_default();
        let waker = match outcome {
            Some(outcome) => {
                resolution.outcome = Some(outcome.map_err(Box::new));
                self.delivered.store(true, Ordering::SeqCst);
                resolution.waker.take()
            }
            None => None,
        };
        drop(resolution);
        if let Some(waker) = waker {
            waker.wake();
        }
        waiters
    }

    /// The outcome stored for the handle that reads it here: `Ready` once the job
    /// resolved, or with [`JobError::Cancelled`] once its entry is gone unresolved.
    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut resolution = self.resolution();
        if let Some(outcome) = resolution.outcome.take() {
            return Poll::Ready(outcome.map_err(|error| *error));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(JobError::Cancelled));
        }
        match &mut resolution.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The job resolved: no more reports, receivers see the channel closed.
    /// Closing again does nothing.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // A delivered outcome left no waker, and with no channel (a subscriber from now
        // on sees `closed`) there is nothing to do: no lock at most jobs' end.
        if self.delivered.load(Ordering::SeqCst) && !self.watched.load(Ordering::SeqCst) {
            return;
        }
        // Receivers see the channel closed once it is dropped; a handle waiting here for
        // a job that is gone unresolved learns it.
        let (updates, waker) = {
            let mut resolution = self.resolution();
            (resolution.updates.take(), resolution.waker.take())
        };
        drop(updates);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A job's [`Progress`], shared by its handle and its entry: the job's own, or its place
/// in the progress of a batch ([`batch`](Self::batch)), which holds every job of the
/// batch in one allocation (no allocation and free per job). A batch's allocation lives
/// while any of its jobs' handles or entries does.
#[derive(Debug, Clone)]
pub(crate) struct ProgressRef {
    all: Arc<[Progress]>,
    /// Its place in `all`; always in range.
    at: usize,
}

impl ProgressRef {
    /// A job's own progress.
    pub(crate) fn new() -> Self {
        Self {
            all: Arc::new([Progress::default()]),
            at: 0,
        }
    }

    /// The progress of `count` jobs in one allocation, a reference to each in turn.
    pub(crate) fn batch(count: usize) -> impl Iterator<Item = Self> {
        let all: Arc<[Progress]> = (0..count).map(|_| Progress::default()).collect();
        (0..count).map(move |at| Self {
            all: Arc::clone(&all),
            at,
        })
    }

    /// A reference that does not keep the progress alive.
    pub(crate) fn downgrade(&self) -> WeakProgress {
        WeakProgress(Some((Arc::downgrade(&self.all), self.at)))
    }
}

impl Default for ProgressRef {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for ProgressRef {
    type Target = Progress;

    fn deref(&self) -> &Progress {
        &self.all[self.at]
    }
}

/// A [`ProgressRef`] that does not keep the progress alive (kept for single jobs: a
/// batch's job would stay reachable while any job of its batch is alive).
#[derive(Debug, Clone, Default)]
pub(crate) struct WeakProgress(Option<(Weak<[Progress]>, usize)>);

impl WeakProgress {
    /// The progress, if it is still alive.
    pub(crate) fn upgrade(&self) -> Option<ProgressRef> {
        let (all, at) = self.0.as_ref()?;
        Some(ProgressRef {
            all: all.upgrade()?,
            at: *at,
        })
    }

    /// Whether the progress is gone.
    pub(crate) fn is_gone(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|(all, _)| all.strong_count() == 0)
    }
}

/// Where a hub-side handle's outcome arrives.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// In the job's progress, which the handle holds: the job's first submitter on this
    /// hub (no channel per job).
    Progress,
    /// Through a channel: handles attached later, and members' handles.
    Channel(oneshot::Receiver<Outcome>),
}

impl Delivery {
    /// The outcome, once it arrived (`progress` is the job's, which the handle holds). A
    /// channel whose sender is gone counts as cancelled.
    pub(crate) fn poll(&mut self, progress: &Progress, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self {
            Delivery::Progress => progress.poll_outcome(cx),
            Delivery::Channel(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(outcome) => Poll::Ready(outcome.unwrap_or(Err(JobError::Cancelled))),
            },
        }
    }
}

/// A submitted job: await it for the typed output. Dropping the handle does not cancel
/// the job; [`cancel`](Self::cancel) does.
#[must_use = "a job handle resolves to the job's result"]
pub struct JobHandle<T> {
    id: JobId,
    outcome: Delivery,
    progress: ProgressRef,
    cancel: Canceller,
    codec: CodecKind,
    _output: PhantomData<fn() -> T>,
}

/// How a handle cancels its job.
pub(crate) enum Canceller {
    /// In the hub's own queue.
    Queue(Arc<Queue>),
    /// A member's submission: ask the hub.
    Member(Withdraw),
}

impl<T> JobHandle<T> {
    pub(crate) fn new(
        id: JobId,
        outcome: Delivery,
        progress: ProgressRef,
        cancel: Canceller,
        codec: CodecKind,
    ) -> Self {
        Self {
            id,
            outcome,
            progress,
            cancel,
            codec,
            _output: PhantomData,
        }
    }

    /// The job's id, assigned by the hub.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Cancels the job: a queued job is removed, a running one is stopped on its worker.
    /// The handle resolves to [`JobError::Cancelled`] at once.
    pub fn cancel(&self) {
        match &self.cancel {
            Canceller::Queue(queue) => queue.cancel(self.id, &self.progress),
            Canceller::Member(withdraw) => withdraw.withdraw(self.id, &self.progress),
        }
    }

    /// The progress it shares with the queue.
    pub(crate) fn shared_progress(&self) -> &Progress {
        &self.progress
    }

    /// The last progress the worker reported (0.0 until it reports).
    pub fn progress(&self) -> f64 {
        self.progress.get()
    }

    /// A receiver that changes whenever the worker reports progress.
    pub fn progress_updates(&self) -> watch::Receiver<f64> {
        self.progress.subscribe()
    }
}

impl<T: DeserializeOwned> Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.progress.is_cancelled() {
            return Poll::Ready(Err(JobError::Cancelled));
        }
        let this = &mut *self;
        let Poll::Ready(outcome) = this.outcome.poll(&this.progress, cx) else {
            return Poll::Pending;
        };
        Poll::Ready(outcome.and_then(|bytes| {
            self.codec
                .decode(&bytes)
                .map_err(|e| JobError::Decode(e.to_string()))
        }))
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id)
            .field("progress", &self.progress.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_shares_one_allocation_and_each_job_has_its_own_progress() {
        let refs: Vec<ProgressRef> = ProgressRef::batch(3).collect();
        assert_eq!(refs.len(), 3);
        assert!(refs.iter().all(|r| Arc::ptr_eq(&r.all, &refs[0].all)));
        refs[1].set(0.5);
        refs[2].cancel();
        assert_eq!(
            refs.iter().map(|r| r.get()).collect::<Vec<_>>(),
            [0.0, 0.5, 0.0]
        );
        assert_eq!(
            refs.iter().map(|r| r.is_cancelled()).collect::<Vec<_>>(),
            [false, false, true]
        );
        let outcome = |r: &ProgressRef| {
            let outcome = r.resolution().outcome.take();
            outcome.map(|o| o.map_err(|error| *error))
        };
        refs[0].resolve(Some(Ok(Bytes::from_static(b"first"))));
        assert!(outcome(&refs[1]).is_none());
        assert_eq!(outcome(&refs[0]), Some(Ok(Bytes::from_static(b"first"))));
    }

    #[test]
    fn a_jobs_progress_stays_small() {
        // A batch holds one per job (W5: 200,000 at once): 136 bytes before the rarely
        // used parts went out of line.
        assert!(std::mem::size_of::<Progress>() <= 96);
    }

    #[test]
    fn a_weak_reference_finds_its_own_job_until_the_progress_is_gone() {
        let refs: Vec<ProgressRef> = ProgressRef::batch(2).collect();
        let weak = refs[1].downgrade();
        let found = weak.upgrade().expect("alive");
        assert!(std::ptr::eq(&*found, &*refs[1]));
        drop((refs, found));
        assert!(weak.is_gone() && weak.upgrade().is_none());
        assert!(WeakProgress::default().is_gone());
    }
}
