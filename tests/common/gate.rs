//! A job whose worker fails it until the test opens the gate: how the admin tests make
//! dead letters and then see a requeued one run.

use network_cluster::rpc::{Job, JobContext, JobError, JobOptions};
use network_cluster::transport::ConsumerBuilder;
use network_cluster::{Hub, Member};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Job `n`: fails while the gate is shut, then answers `n`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gate {
    pub n: u32,
}

impl Job for Gate {
    const NAME: &'static str = "gate";
    type Output = u32;
}

/// A worker of `Gate` jobs, joined to `hub`'s queue; set the flag to open the gate. Every
/// job that runs with the gate open is reported on the receiver.
pub async fn gated_worker(
    hub: &Hub,
    consumer: ConsumerBuilder,
) -> (Member, Arc<AtomicBool>, mpsc::UnboundedReceiver<u32>) {
    let open = Arc::new(AtomicBool::new(false));
    let (ran_tx, ran) = mpsc::unbounded_channel();
    let gate = Arc::clone(&open);
    let worker = Member::builder(consumer)
        .worker(move |job: Gate, _ctx: JobContext| {
            let (open, ran) = (Arc::clone(&gate), ran_tx.clone());
            async move {
                if open.load(Ordering::SeqCst) {
                    let _ = ran.send(job.n);
                    Ok(job.n)
                } else {
                    Err(format!("gate {} is closed", job.n))
                }
            }
        })
        .connect()
        .await
        .expect("worker");
    super::within("the worker joins the queue", async {
        while hub.jobs().stats().workers.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    (worker, open, ran)
}

/// Job `n`, submitted on `hub` with one attempt while the gate is shut: it goes to the dead
/// letters. Its id as the admin page shows it (a UUID).
pub async fn dead_job(hub: &Hub, n: u32) -> String {
    let handle = hub
        .jobs()
        .submit_with(&Gate { n }, JobOptions::default().max_attempts(1))
        .await
        .expect("submit");
    let id = uuid::Uuid::from_u128(handle.id()).to_string();
    assert!(matches!(
        super::within("a dead job", handle).await,
        Err(JobError::Dead { .. })
    ));
    id
}
