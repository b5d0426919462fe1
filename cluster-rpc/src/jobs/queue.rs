//! The queue's state and its dispatcher: one std mutex, short critical sections, one
//! attempt task per running job.

use super::{JobError, JobId, JobOptions, Outcome};
use crate::codec::{Codec, CodecKind};
use crate::error::RpcError;
use crate::peer::PeerCore;
use futures_util::future::{AbortHandle, Abortable};
use serde::{Deserialize, Serialize};
use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Limits and defaults of a hub's job queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Most jobs waiting or delayed at once; more are refused. Default: 1,000,000.
    pub capacity: usize,
    /// One attempt's time limit when the job sets none. Default: 30 s.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Attempts when the job sets none. Default: 3.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with ±50 % jitter. Default: 100 ms.
    #[serde(with = "millis")]
    pub backoff: Duration,
    /// Longest retry delay. Default: 10 s.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    /// Dead jobs kept for inspection; older ones are forgotten. Default: 10,000.
    pub max_dead: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            capacity: 1_000_000,
            timeout: Duration::from_secs(30),
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_dead: 10_000,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Counts of the queue, and each worker's load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobStats {
    /// Ready to run, waiting for a free worker.
    pub waiting: usize,
    /// Not to run yet (delayed, or backing off before a retry).
    pub delayed: usize,
    /// Running on a worker now.
    pub active: usize,
    /// Finished with an output, since the hub started.
    pub completed: u64,
    /// Attempts that failed (errors, panics, timeouts), since the hub started.
    pub failed: u64,
    /// Jobs in the dead letters now.
    pub dead: usize,
    /// Per connected worker.
    pub workers: Vec<WorkerStats>,
}

/// One worker's load and throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Its connection id.
    pub id: Uuid,
    /// Its `name` connect parameter, if any.
    pub name: Option<String>,
    /// Jobs it runs at once at most.
    pub credits: usize,
    /// Jobs it runs now.
    pub active: usize,
    /// Jobs it finished.
    pub completed: u64,
    /// Jobs it finished per second since it joined.
    pub per_second: f64,
}

/// A job that failed every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadJob {
    /// Its id.
    pub id: JobId,
    /// Its job name.
    pub name: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: String,
    /// The encoded job, for inspection.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// What a worker receives for one attempt.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobRun {
    pub(crate) id: JobId,
    pub(crate) name: String,
    pub(crate) attempt: u32,
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
}

/// A worker's answer to one attempt: the encoded output or the handler's error.
pub(crate) type RunResult = Result<serde_bytes::ByteBuf, String>;

struct Worker {
    core: Arc<PeerCore>,
    name: Option<String>,
    jobs: Vec<String>,
    credits: usize,
    active: usize,
    completed: u64,
    joined: Instant,
}

enum Status {
    Waiting,
    Delayed,
    Running { worker: Uuid, abort: AbortHandle },
}

struct Entry {
    name: Arc<str>,
    payload: Arc<Vec<u8>>,
    options: JobOptions,
    attempts: u32,
    status: Status,
    /// The submitter; taken when the job resolves, so it resolves once.
    waiter: Option<oneshot::Sender<Outcome>>,
    progress: watch::Sender<f64>,
    /// Where to forward progress for a member submitter (a pub/sub subject).
    progress_subject: Option<String>,
}

#[derive(PartialEq, Eq)]
struct ReadyKey {
    priority: i32,
    seq: u64,
    id: JobId,
}

impl Ord for ReadyKey {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Higher priority first, then first in first out.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ReadyKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct State {
    seq: u64,
    ready: BinaryHeap<ReadyKey>,
    delayed: BinaryHeap<Reverse<(Instant, u64, JobId)>>,
    jobs: HashMap<JobId, Entry>,
    workers: HashMap<Uuid, Worker>,
    dead: std::collections::VecDeque<DeadJob>,
    waiting: usize,
    delayed_count: usize,
    active: usize,
    completed: u64,
    failed: u64,
}

/// Publishes progress for member submitters (set by the hub: its pub/sub router).
pub(crate) type ProgressSink = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// The hub's job queue.
pub(crate) struct Queue {
    state: Mutex<State>,
    wake: Notify,
    options: QueueOptions,
    codec: CodecKind,
    stop: CancellationToken,
    progress_sink: ProgressSink,
}

impl Queue {
    /// A queue and its dispatcher task, which runs until `stop`.
    pub(crate) fn start(
        options: QueueOptions,
        codec: CodecKind,
        stop: CancellationToken,
        progress_sink: ProgressSink,
    ) -> Arc<Self> {
        let queue = Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            options,
            codec,
            stop,
            progress_sink,
        });
        tokio::spawn(Arc::clone(&queue).run_dispatcher());
        queue
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn codec(&self) -> CodecKind {
        self.codec
    }

    /// Queues a job; returns where its outcome and progress arrive.
    pub(crate) fn submit(
        self: &Arc<Self>,
        id: JobId,
        name: &str,
        payload: Vec<u8>,
        options: JobOptions,
        progress_subject: Option<String>,
    ) -> Result<(oneshot::Receiver<Outcome>, watch::Receiver<f64>), JobError> {
        let (tx, rx) = oneshot::channel();
        let (progress, progress_rx) = watch::channel(0.0);
        {
            let mut st = self.state();
            if st.waiting + st.delayed_count >= self.options.capacity {
                return Err(JobError::QueueFull {
                    capacity: self.options.capacity,
                });
            }
            if st.jobs.contains_key(&id) {
                return Err(JobError::Duplicate);
            }
            let delay = options.delay;
            st.jobs.insert(
                id,
                Entry {
                    name: Arc::from(name),
                    payload: Arc::new(payload),
                    options,
                    attempts: 0,
                    status: Status::Waiting,
                    waiter: Some(tx),
                    progress,
                    progress_subject,
                },
            );
            match delay {
                Some(d) if !d.is_zero() => {
                    st.schedule(id, Instant::now() + d);
                    // The dispatcher may have to wake earlier than it planned.
                    self.wake.notify_one();
                }
                _ => {
                    st.make_ready(id);
                    self.dispatch_in(&mut st);
                }
            }
        }
        tracing::debug!(job.id = %Uuid::from_u128(id), job.name = name, "job queued");
        Ok((rx, progress_rx))
    }

    /// Cancels a job wherever it is.
    pub(crate) fn cancel(&self, id: JobId) {
        let mut st = self.state();
        let Some(mut entry) = st.jobs.remove(&id) else {
            return;
        };
        match entry.status {
            Status::Waiting => st.waiting -= 1,
            Status::Delayed => st.delayed_count -= 1,
            Status::Running { worker, ref abort } => {
                abort.abort();
                st.active -= 1;
                if let Some(w) = st.workers.get_mut(&worker) {
                    w.active -= 1;
                }
            }
        }
        if let Some(waiter) = entry.waiter.take() {
            let _ = waiter.send(Err(JobError::Cancelled));
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Progress a worker reported for a job.
    pub(crate) fn progress(&self, id: JobId, value: f64) {
        let forward = {
            let st = self.state();
            let Some(entry) = st.jobs.get(&id) else {
                return;
            };
            entry.progress.send_replace(value);
            entry.progress_subject.clone()
        };
        if let Some(subject) = forward {
            let mut payload = Vec::new();
            if self.codec.encode(&value, &mut payload).is_ok() {
                (self.progress_sink)(&subject, &payload);
            }
        }
    }

    /// A member joined; if it works jobs, it becomes a worker.
    pub(crate) fn worker_joined(
        &self,
        id: Uuid,
        core: Arc<PeerCore>,
        jobs: Vec<String>,
        credits: usize,
        name: Option<String>,
    ) {
        if jobs.is_empty() || credits == 0 {
            return;
        }
        self.state().workers.insert(
            id,
            Worker {
                core,
                name,
                jobs,
                credits,
                active: 0,
                completed: 0,
                joined: Instant::now(),
            },
        );
        self.wake.notify_one();
    }

    /// A member left. Its running jobs fail `Disconnected` and are requeued by their
    /// attempt tasks.
    pub(crate) fn worker_left(&self, id: Uuid) {
        self.state().workers.remove(&id);
    }

    pub(crate) fn stats(&self) -> JobStats {
        let st = self.state();
        let now = Instant::now();
        JobStats {
            waiting: st.waiting,
            delayed: st.delayed_count,
            active: st.active,
            completed: st.completed,
            failed: st.failed,
            dead: st.dead.len(),
            workers: st
                .workers
                .iter()
                .map(|(id, w)| WorkerStats {
                    id: *id,
                    name: w.name.clone(),
                    credits: w.credits,
                    active: w.active,
                    completed: w.completed,
                    per_second: w.completed as f64 / (now - w.joined).as_secs_f64().max(1e-3),
                })
                .collect(),
        }
    }

    pub(crate) fn dead_letters(&self) -> Vec<DeadJob> {
        self.state().dead.iter().cloned().collect()
    }

    pub(crate) fn requeue_dead(
        self: &Arc<Self>,
        id: JobId,
    ) -> Result<(oneshot::Receiver<Outcome>, watch::Receiver<f64>), JobError> {
        let dead = {
            let mut st = self.state();
            let at = st
                .dead
                .iter()
                .position(|d| d.id == id)
                .ok_or_else(|| JobError::Decode("no dead job with this id".into()))?;
            st.dead.remove(at)
        };
        let Some(dead) = dead else {
            return Err(JobError::Decode("no dead job with this id".into()));
        };
        self.submit(
            dead.id,
            &dead.name,
            dead.payload,
            JobOptions::default(),
            None,
        )
    }

    async fn run_dispatcher(self: Arc<Self>) {
        loop {
            let next_due = self.dispatch();
            let sleep = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
        }
        // Hub stopped: everyone still waiting learns it.
        let mut st = self.state();
        for (_, mut entry) in st.jobs.drain() {
            if let Status::Running { abort, .. } = &entry.status {
                abort.abort();
            }
            if let Some(waiter) = entry.waiter.take() {
                let _ = waiter.send(Err(JobError::Rpc(RpcError::Cancelled)));
            }
        }
    }

    /// Starts every job that can start now; returns when the next delayed job is due.
    fn dispatch(self: &Arc<Self>) -> Option<Instant> {
        let mut st = self.state();
        self.dispatch_in(&mut st)
    }

    /// [`dispatch`](Self::dispatch) with the state locked already: submissions and
    /// finished attempts dispatch in place, without waking the dispatcher task.
    fn dispatch_in(self: &Arc<Self>, st: &mut State) -> Option<Instant> {
        let now = Instant::now();
        while let Some(Reverse((at, _, id))) = st.delayed.peek().copied() {
            if at > now {
                break;
            }
            st.delayed.pop();
            if matches!(st.jobs.get(&id).map(|e| &e.status), Some(Status::Delayed)) {
                st.delayed_count -= 1;
                st.make_ready(id);
            }
        }
        while let Some(key) = st.ready.peek() {
            let id = key.id;
            let Some(entry) = st.jobs.get(&id) else {
                st.ready.pop();
                continue;
            };
            if !matches!(entry.status, Status::Waiting) {
                st.ready.pop();
                continue;
            }
            let name = Arc::clone(&entry.name);
            // The worker serving this job with the most free credits.
            let pick = st
                .workers
                .iter()
                .filter(|(_, w)| w.active < w.credits && w.jobs.iter().any(|j| **j == *name))
                .max_by_key(|(_, w)| w.credits - w.active)
                .map(|(id, _)| *id);
            let Some(worker_id) = pick else {
                // Strict priority order: the best job waits for a worker, the rest too.
                break;
            };
            st.ready.pop();
            self.start_attempt(st, id, worker_id);
        }
        st.delayed.peek().map(|Reverse((at, _, _))| *at)
    }

    fn start_attempt(self: &Arc<Self>, st: &mut State, id: JobId, worker_id: Uuid) {
        let Some(worker) = st.workers.get_mut(&worker_id) else {
            return;
        };
        worker.active += 1;
        let core = Arc::clone(&worker.core);
        let Some(entry) = st.jobs.get_mut(&id) else {
            return;
        };
        entry.attempts += 1;
        let (abort, registration) = AbortHandle::new_pair();
        entry.status = Status::Running {
            worker: worker_id,
            abort,
        };
        let run = JobRun {
            id,
            name: entry.name.to_string(),
            attempt: entry.attempts,
            payload: entry.payload.to_vec(),
        };
        let timeout = entry.options.timeout.unwrap_or(self.options.timeout);
        st.waiting -= 1;
        st.active += 1;
        let queue = Arc::clone(self);
        let span =
            tracing::debug_span!("job", job.id = %Uuid::from_u128(id), job.attempt = run.attempt);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let call = core.call("__worker", "run", &run, timeout);
                if let Ok(outcome) = Abortable::new(call, registration).await {
                    queue.finish(id, worker_id, outcome);
                }
            },
            span,
        ));
    }

    /// Takes an attempt's outcome: complete, retry, requeue or bury the job.
    fn finish(self: &Arc<Self>, id: JobId, worker_id: Uuid, outcome: Result<Vec<u8>, RpcError>) {
        let mut st = self.state();
        let running_here = matches!(
            st.jobs.get(&id).map(|e| &e.status),
            Some(Status::Running { worker, .. }) if *worker == worker_id
        );
        if !running_here {
            return; // cancelled meanwhile: nobody waits for this answer
        }
        st.active -= 1;
        if let Some(w) = st.workers.get_mut(&worker_id) {
            w.active -= 1;
        }
        let result: Result<RunResult, RpcError> = outcome.and_then(|bytes| {
            self.codec
                .decode(&bytes)
                .map_err(|e| RpcError::Decode(e.to_string()))
        });
        match result {
            Ok(Ok(output)) => {
                if let Some(mut entry) = st.jobs.remove(&id) {
                    if let Some(waiter) = entry.waiter.take() {
                        let _ = waiter.send(Ok(output.into_vec()));
                    }
                }
                st.completed += 1;
                if let Some(w) = st.workers.get_mut(&worker_id) {
                    w.completed += 1;
                }
            }
            // The worker went away: not the job's fault, run it elsewhere now.
            Err(
                RpcError::Disconnected
                | RpcError::NotConnected
                | RpcError::Send(_)
                | RpcError::Overloaded,
            ) => {
                if let Some(entry) = st.jobs.get_mut(&id) {
                    entry.attempts = entry.attempts.saturating_sub(1);
                }
                st.make_ready(id);
            }
            Err(RpcError::Timeout) => self.retry_or_bury(&mut st, id, "timed out".into(), false),
            Ok(Err(error)) => self.retry_or_bury(&mut st, id, error, true),
            Err(error) => self.retry_or_bury(&mut st, id, error.to_string(), true),
        }
        self.dispatch_in(&mut st);
    }

    fn retry_or_bury(&self, st: &mut State, id: JobId, error: String, backoff: bool) {
        st.failed += 1;
        let Some(entry) = st.jobs.get(&id) else {
            return;
        };
        let max = entry
            .options
            .max_attempts
            .unwrap_or(self.options.max_attempts)
            .max(1);
        if entry.attempts >= max {
            let Some(mut entry) = st.jobs.remove(&id) else {
                return;
            };
            tracing::warn!(job.id = %Uuid::from_u128(id), attempts = entry.attempts, cause = %error, "job dead");
            if let Some(waiter) = entry.waiter.take() {
                let _ = waiter.send(Err(JobError::Dead {
                    attempts: entry.attempts,
                    last_error: error.clone(),
                }));
            }
            if st.dead.len() >= self.options.max_dead {
                st.dead.pop_front();
            }
            st.dead.push_back(DeadJob {
                id,
                name: entry.name.to_string(),
                attempts: entry.attempts,
                last_error: error,
                payload: entry.payload.to_vec(),
            });
            return;
        }
        if backoff {
            let delay = backoff_delay(&self.options, entry.attempts);
            st.schedule(id, Instant::now() + delay);
            self.wake.notify_one();
        } else {
            st.make_ready(id);
        }
    }
}

impl State {
    fn make_ready(&mut self, id: JobId) {
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        entry.status = Status::Waiting;
        let priority = entry.options.priority;
        self.seq += 1;
        self.ready.push(ReadyKey {
            priority,
            seq: self.seq,
            id,
        });
        self.waiting += 1;
    }

    fn schedule(&mut self, id: JobId, at: Instant) {
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        entry.status = Status::Delayed;
        self.seq += 1;
        self.delayed.push(Reverse((at, self.seq, id)));
        self.delayed_count += 1;
    }
}

/// Exponential backoff with ±50 % jitter: `backoff * 2^(attempt-1)`, capped.
fn backoff_delay(options: &QueueOptions, attempt: u32) -> Duration {
    let exp = options
        .backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(options.max_backoff);
    let jitter: f64 = rand::random_range(0.5..1.5);
    exp.mul_f64(jitter).min(options.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo() {
        let mut heap = BinaryHeap::new();
        heap.push(ReadyKey {
            priority: 0,
            seq: 1,
            id: 1,
        });
        heap.push(ReadyKey {
            priority: 5,
            seq: 2,
            id: 2,
        });
        heap.push(ReadyKey {
            priority: 0,
            seq: 3,
            id: 3,
        });
        heap.push(ReadyKey {
            priority: 5,
            seq: 4,
            id: 4,
        });
        let order: Vec<_> = std::iter::from_fn(|| heap.pop().map(|k| k.id)).collect();
        assert_eq!(order, [2, 4, 1, 3]);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let options = QueueOptions::default();
        for attempt in 1..10 {
            let d = backoff_delay(&options, attempt);
            let base = options.backoff * 2u32.pow(attempt - 1);
            assert!(d >= base.min(options.max_backoff) / 2, "{attempt}: {d:?}");
            assert!(d <= options.max_backoff);
        }
    }
}
