//! A peer process for the end-to-end tests that kill a process mid-work (`tests/jobs.rs`,
//! `tests/rpc.rs`); not a tour of the API. The tests start it, connect it to their hub and
//! kill it with SIGKILL.
//!
//! - `test_peer worker PORT`: works `fnv` jobs (`{data, sleep_ms}`: sleeps, then hashes)
//!   with 4 credits, until killed.
//! - `test_peer slow-member PORT`: serves a `Whoami` whose `name` never answers, until
//!   killed.
//! - `test_peer hub PORT DIR`: a hub on PORT (0: any) keeping its jobs in DIR, until
//!   killed; prints `READY <port>` once listening.
//! - `test_peer cluster-hub PORT NATS_URL NAME`: a hub named NAME on PORT (0: any) in the
//!   cluster on NATS at NATS_URL, until killed; prints `READY <port>` once listening.
//! - `test_peer jetstream-hub PORT NATS_URL PREFIX ACK_WAIT_MS`: a hub on PORT (0: any)
//!   in the cluster with PREFIX on NATS at NATS_URL, its jobs on JetStream with that ack
//!   wait (`tests/cluster_jobs.rs`), until killed; prints `READY <port>` once listening.
//!
//! Workers and members print `READY` once connected; they reconnect every 100 ms when
//! their hub goes away.

use network_cluster::prelude::*;
use network_cluster::rpc::cluster::ClusterOptions;
use network_cluster::rpc::jobs::JetStreamOptions;
use network_cluster::rpc::{ByteBuf, Job, JobContext};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Hash `data`, after sleeping `sleep_ms` (the tests' `Fnv` job).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fnv {
    data: ByteBuf,
    sleep_ms: u64,
}

impl Job for Fnv {
    const NAME: &'static str = "fnv";
    type Output = u64;
}

/// The tests' `Whoami` service.
#[cluster_service]
trait Whoami {
    /// The member's name.
    async fn name(&self) -> String;
}

/// A `Whoami` that never answers.
struct Silent;

impl Whoami for Silent {
    async fn name(&self) -> String {
        std::future::pending().await
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn work(job: Fnv, _ctx: JobContext) -> Result<u64, String> {
    tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    Ok(fnv(&job.data))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(role), Some(port)) = (args.get(1), args.get(2)) else {
        return Err("usage: test_peer worker|slow-member PORT | hub PORT DIR".into());
    };
    if role == "cluster-hub" {
        let (Some(nats), Some(name)) = (args.get(3), args.get(4)) else {
            return Err("usage: test_peer cluster-hub PORT NATS_URL NAME".into());
        };
        let provider = Provider::builder().host("127.0.0.1").port(port.parse()?);
        let cluster = ClusterOptions::new(nats).hub_name(name);
        let hub = Hub::builder(provider).cluster(cluster).start().await?;
        println!("READY {}", hub.provider().port());
        std::future::pending::<()>().await;
        return Ok(());
    }
    if role == "hub" {
        let dir = args.get(3).ok_or("usage: test_peer hub PORT DIR")?;
        let provider = Provider::builder().host("127.0.0.1").port(port.parse()?);
        let hub = Hub::builder(provider).jobs_storage(dir).start().await?;
        println!("READY {}", hub.provider().port());
        std::future::pending::<()>().await;
        return Ok(());
    }
    if role == "jetstream-hub" {
        let usage = "usage: test_peer jetstream-hub PORT NATS_URL PREFIX ACK_WAIT_MS";
        let (Some(url), Some(prefix), Some(ack_wait)) = (args.get(3), args.get(4), args.get(5))
        else {
            return Err(usage.into());
        };
        let jobs = JetStreamOptions::default().ack_wait(Duration::from_millis(ack_wait.parse()?));
        let cluster = ClusterOptions::new(url).prefix(prefix).jobs(jobs);
        let provider = Provider::builder().host("127.0.0.1").port(port.parse()?);
        let hub = Hub::builder(provider).cluster(cluster).start().await?;
        println!("READY {}", hub.provider().port());
        std::future::pending::<()>().await;
        return Ok(());
    }
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port.parse()?)
        .reconnect_interval(Duration::from_millis(100))
        .max_attempts(100);
    let member = match role.as_str() {
        "worker" => Member::builder(consumer).worker(work).job_credits(4),
        "slow-member" => Member::builder(consumer).serve(WhoamiServer::new(Silent)),
        other => return Err(format!("unknown role {other:?}").into()),
    }
    .connect()
    .await?;
    println!("READY");
    // Works until killed.
    std::future::pending::<()>().await;
    drop(member);
    Ok(())
}
