//! Failed attempts and the dead letters: a failed job is retried with exponential backoff
//! until its attempts run out, then kept (bounded) for inspection and requeueing.

use super::state::{wall_now, Entry, State};
use super::Queue;
use crate::jobs::store::{unix_millis, Attempt, Change, Commit};
use crate::jobs::{JobError, JobId, QueueOptions};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

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
    /// Its attempts, oldest first: workers, times, errors.
    pub history: Vec<Attempt>,
}

/// The dead jobs, oldest first, at most `QueueOptions::max_dead`.
#[derive(Default)]
pub(super) struct DeadLetters {
    jobs: VecDeque<DeadJob>,
}

impl DeadLetters {
    /// Keeps `dead`; returns the id of the oldest dead job it pushed out, if the letters
    /// were full (with `max` 0, `dead` itself).
    pub(super) fn bury(&mut self, dead: DeadJob, max: usize) -> Option<JobId> {
        if max == 0 {
            return Some(dead.id);
        }
        let evicted = (self.jobs.len() >= max)
            .then(|| self.jobs.pop_front())
            .flatten();
        self.jobs.push_back(dead);
        evicted.map(|d| d.id)
    }

    /// Puts back a dead job taken out by [`take`](Self::take); as [`bury`](Self::bury).
    pub(super) fn restore(&mut self, dead: DeadJob, max: usize) -> Option<JobId> {
        self.bury(dead, max)
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn list(&self) -> Vec<DeadJob> {
        self.jobs.iter().cloned().collect()
    }

    pub(super) fn find(&self, id: JobId) -> Option<&DeadJob> {
        self.jobs.iter().find(|d| d.id == id)
    }

    /// Forgets dead job `id`; whether there was one.
    pub(super) fn remove(&mut self, id: JobId) -> bool {
        match self.jobs.iter().position(|d| d.id == id) {
            Some(at) => self.jobs.remove(at).is_some(),
            None => false,
        }
    }

    /// Takes dead job `id` out, if it is a job named `name`.
    ///
    /// # Errors
    /// [`JobError::NotFound`] if no dead job has this id, [`JobError::WrongKind`] if it
    /// has another name (it stays then).
    pub(super) fn take(&mut self, id: JobId, name: &str) -> Result<DeadJob, JobError> {
        let at = self
            .jobs
            .iter()
            .position(|d| d.id == id)
            .ok_or(JobError::NotFound)?;
        match self.jobs.get(at) {
            Some(dead) if dead.name != name => Err(JobError::WrongKind {
                expected: name.to_owned(),
                found: dead.name.clone(),
            }),
            _ => self.jobs.remove(at).ok_or(JobError::NotFound),
        }
    }
}

impl Queue {
    /// An attempt of job `entry` failed with `error`: retried (after a backoff when
    /// `backoff`, at once after a timeout), or buried once its attempts are used up.
    pub(super) fn fail_attempt(
        &self,
        st: &mut State,
        id: JobId,
        mut entry: Box<Entry>,
        error: String,
        backoff: bool,
    ) {
        st.failed += 1;
        let max = entry
            .options()
            .max_attempts
            .unwrap_or(self.options.max_attempts)
            .max(1);
        let at = wall_now();
        let attempt = entry.attempts;
        entry.end_attempt(at, &error);
        if entry.attempts < max {
            let delay = backoff.then(|| backoff_delay(&self.options, entry.attempts));
            if st.shared {
                // The engine redelivers it (to any hub) after the delay; zero is at once.
                let delay = delay.unwrap_or_default();
                st.store.record(Change::Failed {
                    id,
                    attempt,
                    error: &error,
                    retry_at: Some(unix_millis(std::time::SystemTime::now() + delay)),
                    at,
                });
                return;
            }
            st.store.record(Change::Failed {
                id,
                attempt,
                error: &error,
                retry_at: delay.map(|d| unix_millis(std::time::SystemTime::now() + d)),
                at,
            });
            let Some(delay) = delay else {
                return st.make_ready(id, entry);
            };
            st.schedule(id, entry, Instant::now() + delay);
            return self.request_dispatch(st);
        }
        st.store.record(Change::Failed {
            id,
            attempt,
            error: &error,
            retry_at: None,
            at,
        });
        st.store.record(Change::Dead { id, at });
        Self::release_key(st, id, &entry);
        tracing::warn!(job.id = %Uuid::from_u128(id), attempts = entry.attempts, cause = %error, "job dead");
        let dead = JobError::Dead {
            attempts: entry.attempts,
            last_error: error.clone(),
        };
        if !st.shared {
            // (A shared store keeps the dead letters: its dead-letter stream.)
            let name = st.ready.name(entry.name).to_owned();
            let evicted = st.dead.bury(
                DeadJob {
                    id,
                    name,
                    attempts: entry.attempts,
                    last_error: error,
                    payload: Vec::from(std::mem::take(&mut entry.payload)),
                    history: std::mem::take(&mut entry.past),
                },
                self.options.max_dead,
            );
            if let Some(evicted) = evicted {
                st.store.record(Change::Removed { id: evicted });
            }
        }
        // Answered once the death is durable, as a completion is: a crash before then
        // runs the job again, and its submitter must not have had an answer already. If
        // it cannot be made durable, the answer goes out all the same: the job did die.
        let codec = self.codec;
        st.store
            .sync(Commit::new(move |_| entry.resolve(Err(dead), codec)));
    }
}

/// Exponential backoff with ±50 % jitter: `backoff * 2^(attempt-1)`, capped. The options
/// are bounded, so this stays far from overflowing the clock.
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
    fn backoff_grows_with_jitter_and_a_cap() {
        let options = QueueOptions::default();
        for attempt in 1..10 {
            let d = backoff_delay(&options, attempt);
            let base = options.backoff * 2u32.pow(attempt - 1);
            assert!(d >= base.min(options.max_backoff) / 2, "{attempt}: {d:?}");
            assert!(d <= options.max_backoff);
        }
    }

    fn dead(id: JobId, name: &str) -> DeadJob {
        DeadJob {
            id,
            name: name.into(),
            attempts: 1,
            last_error: "x".into(),
            payload: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn dead_letters_are_bounded_and_taken_by_id_and_kind() {
        let mut letters = DeadLetters::default();
        for id in 0..5 {
            letters.bury(dead(id, "a"), 3);
        }
        assert_eq!(letters.len(), 3);
        assert_eq!(letters.take(0, "a"), Err(JobError::NotFound));
        assert!(matches!(
            letters.take(4, "b"),
            Err(JobError::WrongKind { .. })
        ));
        assert_eq!(letters.take(4, "a").map(|d| d.id), Ok(4));
        assert_eq!(letters.len(), 2);
    }
}
