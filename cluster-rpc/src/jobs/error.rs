//! Why a job produced no output, as kinds a caller can match on. These errors cross the
//! wire (a member's submission is answered with one), so they are plain data.

use crate::error::RpcError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a job produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobError {
    /// Every attempt failed; the job is in the dead letters.
    #[error("job failed {attempts} times, last: {last_error}")]
    Dead {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error, with its causes (`error: cause: cause`).
        last_error: String,
    },
    /// The job was cancelled.
    #[error("job cancelled")]
    Cancelled,
    /// The queue is at its capacity.
    #[error("job queue is full ({capacity} jobs)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The submission was refused: its name or options are outside what the hub allows.
    #[error("job refused: {0}")]
    Invalid(#[from] InvalidJob),
    /// No job with this id where it was looked for (the dead letters, say).
    #[error("no such job")]
    NotFound,
    /// The job exists but is of another kind than the one asked for.
    #[error("the job is a {found:?} job, not a {expected:?} job")]
    WrongKind {
        /// The name of the kind asked for.
        expected: String,
        /// The job's own name.
        found: String,
    },
    /// The hub refused an operator's call: it needs the hub's jobs admin token.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The job could not be encoded for the queue.
    #[error("job encode error: {0}")]
    Encode(String),
    /// The job's output did not decode as the kind's `Output`.
    #[error("job output decode error: {0}")]
    Decode(String),
    /// The job store could not keep the job (a full or read-only disk, say): it was not
    /// queued.
    #[error(transparent)]
    Store(#[from] crate::jobs::StoreError),
    /// Talking to the hub failed (member submissions). The job itself, once accepted,
    /// runs on whether its submitter is connected or not.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// What makes a submission invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InvalidJob {
    /// The job name is empty, too long or holds a `,`.
    #[error("job name {name:?} is {reason}")]
    Name {
        /// The name (its first 64 characters).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The per-attempt timeout is zero or over the hub's limit.
    #[error("timeout {requested:?} is not within (0, {limit:?}]")]
    Timeout {
        /// What the job asked for.
        requested: Duration,
        /// The hub's limit.
        limit: Duration,
    },
    /// The delay is over the hub's limit.
    #[error("delay {requested:?} is over the limit of {limit:?}")]
    Delay {
        /// What the job asked for.
        requested: Duration,
        /// The hub's limit.
        limit: Duration,
    },
    /// The unique key is longer than [`MAX_JOB_KEY_LEN`](crate::jobs::MAX_JOB_KEY_LEN).
    #[error("unique key of {len} bytes is over the limit of 1024")]
    Key {
        /// Its length.
        len: usize,
    },
    /// A batch ([`Jobs::submit_many_with`](crate::Jobs::submit_many_with)) cannot share
    /// one unique key: submit keyed jobs one by one.
    #[error("a batch of jobs cannot share a unique key")]
    KeyInBatch,
    /// The number of attempts is over the hub's limit.
    #[error("{requested} attempts are over the limit of {limit}")]
    Attempts {
        /// What the job asked for.
        requested: u32,
        /// The hub's limit.
        limit: u32,
    },
}
