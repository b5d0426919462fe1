//! How jobs run ([`JobOptions`], chosen per submission) and the queue's defaults and limits
//! ([`QueueOptions`], chosen by the hub). A submission's options are checked against the
//! hub's limits before the job is queued: a member cannot ask for more than the hub allows.

use super::error::InvalidJob;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest duration the queue ever adds to its clock: limits above it are lowered to
/// it, so no deadline or due time can overflow.
pub(crate) const LONGEST: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Longest job name: the wire gives it one length byte.
pub const MAX_JOB_NAME_LEN: usize = 255;

/// Longest unique key of a job ([`JobOptions::key`]), in bytes.
pub const MAX_JOB_KEY_LEN: usize = 1024;

/// How one job is run. Each field left unset takes the queue's default
/// ([`QueueOptions`]); each set one must be within the queue's limits, or the submission
/// is refused with [`JobError::Invalid`](super::JobError::Invalid).
///
/// ```
/// use cluster_rpc::JobOptions;
/// use std::time::Duration;
/// let options = JobOptions::default().priority(5).timeout(Duration::from_secs(10)).max_attempts(3);
/// assert_eq!(options.priority, 5);
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobOptions {
    /// Higher runs first among jobs of the same name. Default 0.
    pub priority: i32,
    /// Not run before this much time from submission. At most
    /// [`QueueOptions::delay_limit`].
    pub delay: Option<Duration>,
    /// One attempt's time limit; past it the job is requeued. Above zero and at most
    /// [`QueueOptions::timeout_limit`].
    pub timeout: Option<Duration>,
    /// Attempts before the job goes to the dead letters. At most
    /// [`QueueOptions::attempts_limit`]; 0 counts as 1.
    pub max_attempts: Option<u32>,
    /// A unique key: while a job of the same name and key is waiting, delayed, running,
    /// or completed within the result retention, submitting again returns that job's
    /// handle instead of queueing another. At most [`MAX_JOB_KEY_LEN`] bytes.
    pub key: Option<String>,
}

impl JobOptions {
    /// Options with a priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Options with a delay before the first attempt.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Options with a per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Options with a number of attempts.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Options with a unique key ([`key`](Self::key)).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Refuses options outside the queue's limits.
    pub(crate) fn check(&self, queue: &QueueOptions) -> Result<(), InvalidJob> {
        if let Some(requested) = self.timeout {
            if requested.is_zero() || requested > queue.timeout_limit {
                return Err(InvalidJob::Timeout {
                    requested,
                    limit: queue.timeout_limit,
                });
            }
        }
        if let Some(requested) = self.delay {
            if requested > queue.delay_limit {
                return Err(InvalidJob::Delay {
                    requested,
                    limit: queue.delay_limit,
                });
            }
        }
        if let Some(key) = &self.key {
            if key.len() > MAX_JOB_KEY_LEN {
                return Err(InvalidJob::Key { len: key.len() });
            }
        }
        if let Some(requested) = self.max_attempts {
            if requested > queue.attempts_limit {
                return Err(InvalidJob::Attempts {
                    requested,
                    limit: queue.attempts_limit,
                });
            }
        }
        Ok(())
    }
}

/// Refuses a job name workers could not register or the wire could not carry: empty,
/// longer than [`MAX_JOB_NAME_LEN`] bytes, or holding a `,` (the separator of the `jobs`
/// connect parameter).
pub(crate) fn check_name(name: &str) -> Result<(), InvalidJob> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_JOB_NAME_LEN {
        "longer than 255 bytes"
    } else if name.contains(',') {
        "contains ','"
    } else {
        return Ok(());
    };
    Err(InvalidJob::Name {
        name: name.chars().take(64).collect(),
        reason: reason.to_owned(),
    })
}

/// Defaults and limits of a hub's job queue. Built with [`Default`] and the setters, or
/// loaded from a config file (durations in milliseconds):
///
/// ```
/// use cluster_rpc::QueueOptions;
/// use std::time::Duration;
/// let options = QueueOptions::default().capacity(5).backoff(Duration::from_millis(20));
/// assert_eq!(options.capacity, 5);
/// ```
///
/// The limits bound what a submitter may ask for (every member is untrusted): a job
/// asking for more is refused with [`JobError::Invalid`](super::JobError::Invalid); a
/// worker announcing more credits than [`worker_credits_limit`](Self::worker_credits_limit)
/// gets that many. Limits above 30 years count as 30 years.
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
    /// Longest per-attempt timeout a job may ask for. Default: 24 h.
    #[serde(with = "millis")]
    pub timeout_limit: Duration,
    /// Longest delay a job may ask for. Default: 30 days.
    #[serde(with = "millis")]
    pub delay_limit: Duration,
    /// Most attempts a job may ask for. Default: 100.
    pub attempts_limit: u32,
    /// Most credits (jobs at once) one worker gets, whatever it announces. Default: 1024.
    pub worker_credits_limit: usize,
    /// How long a completed job's result is kept, for submitters that lost their
    /// connection or their hub ([`Jobs::result`](crate::Jobs::result)), and for unique keys.
    /// Default: 5 minutes.
    #[serde(with = "millis")]
    pub result_retention: Duration,
    /// Most results kept; the oldest go first past it (a durable store forgets them too).
    /// Default: 100,000.
    pub max_results: usize,
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
            timeout_limit: Duration::from_secs(24 * 3600),
            delay_limit: Duration::from_secs(30 * 24 * 3600),
            attempts_limit: 100,
            worker_credits_limit: 1024,
            result_retention: Duration::from_secs(300),
            max_results: 100_000,
        }
    }
}

impl QueueOptions {
    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, jobs: usize) -> Self {
        self.capacity = jobs;
        self
    }

    /// Sets the default per-attempt [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the default [`max_attempts`](Self::max_attempts).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the first retry delay, [`backoff`](Self::backoff).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the longest retry delay, [`max_backoff`](Self::max_backoff).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Sets how many dead jobs are kept, [`max_dead`](Self::max_dead).
    pub fn max_dead(mut self, jobs: usize) -> Self {
        self.max_dead = jobs;
        self
    }

    /// Sets the longest timeout a job may ask for, [`timeout_limit`](Self::timeout_limit).
    pub fn timeout_limit(mut self, limit: Duration) -> Self {
        self.timeout_limit = limit;
        self
    }

    /// Sets the longest delay a job may ask for, [`delay_limit`](Self::delay_limit).
    pub fn delay_limit(mut self, limit: Duration) -> Self {
        self.delay_limit = limit;
        self
    }

    /// Sets the most attempts a job may ask for, [`attempts_limit`](Self::attempts_limit).
    pub fn attempts_limit(mut self, limit: u32) -> Self {
        self.attempts_limit = limit;
        self
    }

    /// Sets the most credits one worker gets,
    /// [`worker_credits_limit`](Self::worker_credits_limit).
    pub fn worker_credits_limit(mut self, limit: usize) -> Self {
        self.worker_credits_limit = limit;
        self
    }

    /// Sets how long results are kept, [`result_retention`](Self::result_retention).
    pub fn result_retention(mut self, retention: Duration) -> Self {
        self.result_retention = retention;
        self
    }

    /// Sets how many results are kept at most, [`max_results`](Self::max_results).
    pub fn max_results(mut self, results: usize) -> Self {
        self.max_results = results;
        self
    }

    /// The options with every duration at most 30 years, and the defaults within the
    /// limits, so no arithmetic on the queue's clock can overflow.
    pub(crate) fn bounded(mut self) -> Self {
        for d in [
            &mut self.timeout,
            &mut self.backoff,
            &mut self.max_backoff,
            &mut self.timeout_limit,
            &mut self.delay_limit,
            &mut self.result_retention,
        ] {
            *d = (*d).min(LONGEST);
        }
        self.timeout = self
            .timeout
            .min(self.timeout_limit)
            .max(Duration::from_millis(1));
        self.max_attempts = self.max_attempts.clamp(1, self.attempts_limit.max(1));
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_over_the_limits_are_refused() {
        let queue = QueueOptions::default();
        let max = Duration::MAX;
        assert!(matches!(
            JobOptions::default().timeout(max).check(&queue),
            Err(InvalidJob::Timeout { .. })
        ));
        assert!(matches!(
            JobOptions::default().timeout(Duration::ZERO).check(&queue),
            Err(InvalidJob::Timeout { .. })
        ));
        assert!(matches!(
            JobOptions::default().delay(max).check(&queue),
            Err(InvalidJob::Delay { .. })
        ));
        assert!(matches!(
            JobOptions::default().max_attempts(u32::MAX).check(&queue),
            Err(InvalidJob::Attempts { .. })
        ));
        let fine = JobOptions::default()
            .timeout(queue.timeout_limit)
            .delay(queue.delay_limit)
            .max_attempts(queue.attempts_limit);
        assert_eq!(fine.check(&queue), Ok(()));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("resize").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a,b").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn absurd_limits_are_bounded() {
        let options = QueueOptions::default()
            .timeout_limit(Duration::MAX)
            .delay_limit(Duration::MAX)
            .timeout(Duration::MAX)
            .max_attempts(0)
            .bounded();
        assert_eq!(options.timeout_limit, LONGEST);
        assert_eq!(options.delay_limit, LONGEST);
        assert_eq!(options.timeout, LONGEST);
        assert_eq!(options.max_attempts, 1);
        let from_file: QueueOptions =
            serde_json::from_str(r#"{"capacity": 7, "timeout_limit": 1000}"#).unwrap();
        assert_eq!(from_file.capacity, 7);
        assert_eq!(from_file.timeout_limit, Duration::from_secs(1));
    }
}
