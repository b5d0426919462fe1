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

use crate::common::print_line;
use crate::rpc::connect_member_with;
use crate::spec::{ClientSpec, PAYLOAD};
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

/// W5, the clients child: connects `spec.conns` workers of `spec.in_flight` credits each
/// (W8: worker `i` on hub `i % 3`), says `CONNECTED`, and keeps them connected until the
/// process ends.
pub(super) async fn workers(spec: &ClientSpec) -> anyhow::Result<Vec<Member>> {
    let credits = spec.in_flight.max(1);
    let ports = spec.hub_ports();
    let mut members = Vec::with_capacity(spec.conns);
    for i in 0..spec.conns {
        members.push(connect_worker(ports[i % ports.len()], credits).await?);
    }
    print_line("CONNECTED");
    Ok(members)
}

/// W5, the server child: waits for `workers` workers, submits `n` jobs in one batch
/// ([`Jobs::submit_many`](cluster_rpc::Jobs::submit_many)), awaits and checks every result
/// in submission order; returns the time from the submission to the last result. With
/// `whole_queue` (the hub's queue is not shared with other hubs through JetStream) the
/// hub's counts must show every job completed and none left.
pub(crate) async fn submit_and_check(
    hub: &Hub,
    n: u64,
    workers: usize,
    whole_queue: bool,
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
        .await
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
        !whole_queue || stats.completed >= n && stats.waiting == 0 && stats.active == 0,
        "queue not drained after {n} jobs: {stats:?}"
    );
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::HubServer;
    use crate::spec::{Workload, PAYLOAD_LEN};

    #[test]
    fn payloads_are_64_bytes_and_differ() {
        assert_eq!(payload(7).len(), PAYLOAD_LEN);
        assert_ne!(fnv(&payload(1)), fnv(&payload(2)));
        // The FNV-1a test vector.
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_answer_every_job_right() {
        let hub = HubServer::start(Workload::W5, None, None, None)
            .await
            .unwrap();
        let _workers = [
            connect_worker(hub.port(), 4).await.unwrap(),
            connect_worker(hub.port(), 4).await.unwrap(),
        ];
        let took = submit_and_check(hub.hub(), 2_000, 2, true).await.unwrap();
        assert!(took > Duration::ZERO);
        assert_eq!(hub.hub().jobs().stats().completed, 2_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_on_jetstream_run_on_every_hub_and_come_back_right() {
        let Some(nats) = crate::nats::start_for_test().await else {
            return;
        };
        let clustered = Some(crate::rpc::Clustered {
            nats: nats.url(),
            across: true,
        });
        let mut hubs = Vec::new();
        for _ in 0..3 {
            hubs.push(
                HubServer::start(Workload::W5, None, None, clustered)
                    .await
                    .unwrap(),
            );
        }
        let mut workers = Vec::new();
        for hub in &hubs {
            workers.push(connect_worker(hub.port(), 4).await.unwrap());
        }
        // More jobs in one batch than the JetStream client lets wait for their acks
        // (5,000): a store that held them all until the batch's commit hung here.
        let submitted = submit_and_check(hubs[0].hub(), 6_000, 1, false);
        let took = tokio::time::timeout(Duration::from_secs(60), submitted)
            .await
            .expect("the jobs did not finish in 60 s")
            .unwrap();
        assert!(took > Duration::ZERO);
        // Every hub's worker ran some of them.
        for hub in &hubs {
            assert!(hub.hub().jobs().stats().completed > 0);
        }
    }
}
