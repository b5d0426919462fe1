//! Dispatch: rounds that give ready jobs to workers with free credits, and the dispatcher
//! task that runs rounds when woken, promotes delayed jobs and times out attempts.

use super::state::{wall_now, State, Status};
use super::Queue;
use crate::error::{RpcError, RpcErrorKind};
use crate::jobs::options::LONGEST;
use crate::jobs::wire::{Batch, DROP_SUBJECT};
use crate::jobs::JobError;
use crate::link::Link;
use crate::metrics::AttemptOutcome;
use std::cmp::Reverse;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `now + d`, or 30 years from now if that overflows (`d` comes from the queue's bounded
/// options or a checked submission, so it does not in practice).
pub(super) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + LONGEST)
}

impl Queue {
    /// Wakes the dispatcher task for a round, once until it runs.
    pub(super) fn request_dispatch(&self, st: &mut State) {
        if !st.dispatch_requested {
            st.dispatch_requested = true;
            self.wake.notify_one();
        }
    }

    /// A dispatch round: gives ready jobs to workers with free credits, names taking
    /// turns, then sends each worker its batch.
    pub(super) fn dispatch_in(&self, st: &mut State, now: Instant) {
        // One wall-clock reading per round for the attempts it starts.
        st.round_wall = wall_now();
        loop {
            self.assign(st, now);
            let failed = st.workers.flush_batches();
            if failed.is_empty() {
                if st.shared && st.workers.free() > 0 {
                    if let Some(shared) = self.store.shared() {
                        shared.wake();
                    }
                }
                return;
            }
            // A worker that cannot take frames is gone: its jobs go to the others now.
            for id in failed {
                tracing::debug!(worker = id, "worker refused a batch; requeueing its jobs");
                st.drop_worker(id);
            }
        }
    }

    fn assign(&self, st: &mut State, now: Instant) {
        while st.workers.free() > 0 {
            let Some(name) = st.ready.next_turn() else {
                break;
            };
            let Some(worker) = st.workers.freest(st.ready.workers_of(name)) else {
                st.ready.pass_over(name);
                continue;
            };
            let Some((id, entry)) = st.ready.take(name, &mut st.spare) else {
                continue;
            };
            let own = entry
                .options()
                .timeout
                .filter(|t| *t != self.options.timeout);
            let timeout = own.unwrap_or(self.options.timeout);
            st.start(id, entry, worker, (after(now, timeout), own.is_some()));
        }
        st.ready.end_round();
    }

    /// Delayed jobs whose time has come become ready.
    fn promote_delayed(&self, st: &mut State, now: Instant) {
        while let Some(Reverse((at, _, id))) = st.delayed.peek().copied() {
            if at > now {
                break;
            }
            st.delayed.pop();
            if matches!(st.jobs.get(&id).map(|e| &e.status), Some(Status::Delayed)) {
                st.delayed_count -= 1;
                if let Some(entry) = st.jobs.remove(&id) {
                    st.make_ready(id, entry);
                }
            }
        }
    }

    /// Results past their retention are forgotten, and their unique keys released.
    fn expire_results(&self, st: &mut State, now: Instant) {
        let mut gone = Vec::new();
        st.results.expire(now, &mut gone);
        for (key, id) in gone {
            st.keys.release(&key, id);
        }
    }

    /// Attempts past their deadline are dropped on their worker and requeued.
    fn expire(&self, st: &mut State, now: Instant) {
        while let Some((key, id)) = st.deadlines.first() {
            if key.at > now {
                break;
            }
            let ended = st.running(id, key).and_then(|(worker, attempt)| {
                let entry = st.end_attempt(id, worker, attempt)?;
                Some((worker, attempt, entry))
            });
            let Some((worker, attempt, entry)) = ended else {
                // Not running any more: a deadline left behind (none should be).
                st.deadlines.remove(key);
                continue;
            };
            if let Some(w) = st.workers.get(worker) {
                send_drop(&w.link, id, attempt);
            }
            tracing::debug!(job.id = %Uuid::from_u128(id), job.attempt = attempt, "job timed out");
            self.metrics.attempt(AttemptOutcome::TimedOut);
            self.fail_attempt(st, id, entry, "timed out".into(), false);
        }
    }

    /// The dispatcher task: a dispatch round whenever woken, delayed jobs when due,
    /// timeouts when due. It holds the queue only while it works, so it ends on `stop`,
    /// which the queue also fires when it is dropped.
    pub(super) async fn run_dispatcher(
        queue: Weak<Queue>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) {
        // One timer, moved only when something is due earlier than it is set for; waking
        // early is harmless (the round finds nothing due and sets it again).
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut fired = true;
        loop {
            let Some(this) = queue.upgrade() else {
                return;
            };
            let armed = {
                let mut st = this.state();
                st.dispatch_requested = false;
                if fired {
                    st.timer = None;
                }
                let now = Instant::now();
                this.promote_delayed(&mut st, now);
                this.expire_results(&mut st, now);
                this.expire(&mut st, now);
                this.dispatch_in(&mut st, now);
                if let Some(at) = st.next_due() {
                    if st.timer.is_none_or(|t| at < t) {
                        sleep.as_mut().reset(at);
                        st.timer = Some(at);
                    }
                }
                st.timer.is_some()
            };
            fired = false;
            drop(this);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = wake.notified() => {}
                _ = &mut sleep, if armed => fired = true,
            }
        }
        if let Some(this) = queue.upgrade() {
            this.stopped();
        }
    }

    /// The hub stopped: everyone still waiting learns it.
    fn stopped(&self) {
        let mut st = self.state();
        let mut entries = st.ready.drain();
        entries.extend(st.jobs.drain().map(|(_, entry)| *entry));
        entries.extend(st.awaiting.drain().map(|(_, entry)| *entry));
        st.delayed.clear();
        st.deadlines.clear();
        st.delayed_count = 0;
        st.active = 0;
        drop(st);
        for mut entry in entries {
            entry.resolve(
                Err(JobError::Rpc(RpcError::from(RpcErrorKind::Cancelled))),
                self.codec,
            );
        }
    }
}

/// Tells a worker to drop an attempt (cancelled or timed out). A refused frame means the
/// worker is leaving, which drops the attempt too.
pub(super) fn send_drop(link: &Arc<dyn Link>, id: u128, attempt: u32) {
    let mut batch = Batch::new(DROP_SUBJECT);
    batch.push_drop(id, attempt);
    let _ = link.send_frame(batch.frame());
}
