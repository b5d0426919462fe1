//! W5 jobs on our job queue: the hub (server child) submits every job and checks every
//! result; the clients child runs the worker members.
//!
//! A job is the 64-bit FNV-1a of a 64-byte payload whose first 8 bytes are the job's
//! index, so every result differs and is checked against a hash computed locally. A wrong
//! result, a failed job or a lost one (a handle that does not resolve in time) fails the run.
//!
//! Lines to the parent: the clients child says `CONNECTED` once its `conns` workers are
//! connected; the server child answers `JOBS <n> <workers>` (wait for `workers` workers,
//! submit `n` jobs, await all) with `JOBS <n> <ns>`, measured from the first submission
//! to the last checked result.

use super::rpc::connect_member_with;
use super::spec::{ClientSpec, PAYLOAD};
use crate::commands::print_line;
use anyhow::Context;
use cluster_rpc::{Hub, Job, JobContext, Member};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Longest wait for any one job's result once every job is submitted.
const JOB_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the workers to connect.
const WORKERS_WAIT: Duration = Duration::from_secs(20);

/// The W5 job: hash `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Fnv {
    /// The 64-byte payload.
    #[serde(with = "serde_bytes")]
    pub(crate) data: Vec<u8>,
}

impl Job for Fnv {
    const NAME: &'static str = "fnv";
    type Output = u64;
}

/// 64-bit FNV-1a.
pub(crate) fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The payload of job `i`: the 64-byte payload with `i` in its first 8 bytes.
pub(crate) fn payload(i: u64) -> Vec<u8> {
    let mut data = PAYLOAD.as_bytes().to_vec();
    data[..8].copy_from_slice(&i.to_le_bytes());
    data
}

/// The worker's handler: the hash, at once.
async fn work(job: Fnv, _ctx: JobContext) -> Result<u64, String> {
    Ok(fnv(&job.data))
}

/// A worker member with `credits` credits.
async fn connect_worker(port: u16, credits: usize) -> anyhow::Result<Member> {
    connect_member_with(port, |builder| builder.job_credits(credits).worker(work)).await
}

/// W5, the clients child: connects `spec.conns` workers of `spec.in_flight` credits each,
/// says `CONNECTED`, and keeps them connected until the process ends.
pub(super) async fn workers(spec: &ClientSpec) -> anyhow::Result<Vec<Member>> {
    let credits = spec.in_flight.max(1);
    let mut members = Vec::with_capacity(spec.conns);
    for _ in 0..spec.conns {
        members.push(connect_worker(spec.port, credits).await?);
    }
    print_line("CONNECTED");
    Ok(members)
}

/// W5, the server child: waits for `workers` workers, submits `n` jobs in one batch
/// ([`Jobs::submit_many`](cluster_rpc::Jobs::submit_many)), awaits and checks every result
/// in submission order; returns the time from the submission to the last result.
pub(crate) async fn submit_and_check(
    hub: &Hub,
    n: u64,
    workers: usize,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + WORKERS_WAIT;
    while hub.jobs().stats().workers.len() < workers {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {workers} workers after {WORKERS_WAIT:?}",
            hub.jobs().stats().workers.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let batch: Vec<Fnv> = (0..n).map(|i| Fnv { data: payload(i) }).collect();
    let expected: Vec<u64> = batch.iter().map(|job| fnv(&job.data)).collect();
    let start = Instant::now();
    // One batch: one lock and one dispatch round, as a job farm submits its work.
    let handles = hub
        .jobs()
        .submit_many(&batch)
        .context("submitting the jobs")?;
    for ((i, mut handle), expected) in (0..n).zip(handles).zip(expected) {
        // Handles resolve out of order; most are done when their turn comes, so a timer
        // is armed only for one that is not.
        let result = match (&mut handle).now_or_never() {
            Some(result) => result,
            None => tokio::time::timeout(JOB_WAIT, handle)
                .await
                .map_err(|_| anyhow::anyhow!("job {i}: no result in {JOB_WAIT:?} (lost)"))?,
        };
        let hash = result.with_context(|| format!("job {i} failed"))?;
        anyhow::ensure!(
            hash == expected,
            "job {i}: wrong result {hash:#x}, expected {expected:#x}"
        );
    }
    let took = start.elapsed();
    let stats = hub.jobs().stats();
    anyhow::ensure!(
        stats.completed >= n && stats.waiting == 0 && stats.active == 0,
        "queue not drained after {n} jobs: {stats:?}"
    );
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::super::rpc::HubServer;
    use super::super::spec::{Workload, PAYLOAD_LEN};
    use super::*;

    #[test]
    fn payloads_are_64_bytes_and_differ() {
        assert_eq!(payload(7).len(), PAYLOAD_LEN);
        assert_ne!(fnv(&payload(1)), fnv(&payload(2)));
        // The FNV-1a test vector.
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_answer_every_job_right() {
        let hub = HubServer::start(Workload::W5).await.unwrap();
        let _workers = [
            connect_worker(hub.port(), 4).await.unwrap(),
            connect_worker(hub.port(), 4).await.unwrap(),
        ];
        let took = submit_and_check(hub.hub(), 2_000, 2).await.unwrap();
        assert!(took > Duration::ZERO);
        assert_eq!(hub.hub().jobs().stats().completed, 2_000);
    }
}
