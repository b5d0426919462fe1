//! The main demo: a distributed job queue on this machine. One hub, four worker
//! processes, 100,000 jobs with a live progress bar; one worker is killed (SIGKILL)
//! midway, its jobs are requeued to the others, and the summary proves that no job was
//! lost and none was answered twice.
//!
//! Run: `cargo run --release --example job_queue`

use futures_util::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use network_cluster::prelude::*;
use network_cluster::rpc::{Job, JobContext};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const JOBS: usize = 100_000;
const WORKERS: usize = 4;
const CREDITS: usize = 16;

/// 64-bit FNV-1a of a 64-byte payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fnv {
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl Job for Fnv {
    const NAME: &'static str = "fnv";
    type Output = u64;
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn payload(i: usize) -> Vec<u8> {
    let mut data = vec![0u8; 64];
    data[..8].copy_from_slice(&(i as u64).to_le_bytes());
    data
}

/// A worker process: serves `fnv` jobs until the hub goes away.
async fn worker(port: u16, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("name", name)
        .reconnect_interval(Duration::from_millis(100))
        .max_attempts(0);
    let member = Member::builder(consumer)
        .job_credits(CREDITS)
        .worker(|job: Fnv, _ctx: JobContext| async move { Ok(fnv(&job.data)) })
        .connect()
        .await?;
    while member.consumer().ready().await.is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        let port = args.get(2).ok_or("worker PORT NAME")?.parse()?;
        return worker(port, args.get(3).map_or("worker", String::as_str)).await;
    }

    let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(0))
        .start()
        .await?;
    let port = hub.provider().port();
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let name = format!("worker-{i}");
        let child = tokio::process::Command::new(&exe)
            .args(["worker", &port.to_string(), &name])
            .kill_on_drop(true)
            .spawn()?;
        workers.push((name, child));
    }
    while hub.jobs().stats().workers.len() < WORKERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("hub on 127.0.0.1:{port}, {WORKERS} worker processes with {CREDITS} credits each");

    let bar = ProgressBar::new(JOBS as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos:>7}/{len} jobs {per_sec:>12} {msg}")
            .map_err(|e| e.to_string())?,
    );
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..JOBS {
        let handle = hub.jobs().submit(&Fnv { data: payload(i) })?;
        pending.push(async move { (i, handle.id(), handle.await) });
    }

    // Collect every answer; at half way, kill one worker with SIGKILL.
    let mut answers: HashMap<u128, (usize, u64)> = HashMap::with_capacity(JOBS);
    let mut answered_twice = 0;
    let mut wrong = 0;
    let mut killed = None;
    while let Some((i, id, outcome)) = pending.next().await {
        match outcome {
            Ok(hash) => {
                if hash != fnv(&payload(i)) {
                    wrong += 1;
                }
                if answers.insert(id, (i, hash)).is_some() {
                    answered_twice += 1;
                }
            }
            Err(error) => bar.println(format!("job {i} failed: {error}")),
        }
        bar.inc(1);
        if killed.is_none() && answers.len() == JOBS / 2 {
            let (name, child) = &mut workers[0];
            child.kill().await?;
            bar.println(format!("killed {name} (SIGKILL) with jobs in flight"));
            killed = Some(name.clone());
        }
    }
    bar.finish_with_message("done");
    let elapsed = started.elapsed();

    let stats = hub.jobs().stats();
    let mut indexes: Vec<usize> = answers.values().map(|(i, _)| *i).collect();
    indexes.sort_unstable();
    indexes.dedup();
    println!();
    println!("jobs submitted      {JOBS}");
    println!(
        "answers received    {} ({} distinct jobs)",
        answers.len(),
        indexes.len()
    );
    println!("lost                {}", JOBS - indexes.len());
    println!("answered twice      {answered_twice}");
    println!("wrong results       {wrong}");
    println!(
        "worker killed       {}",
        killed.as_deref().unwrap_or("none")
    );
    println!(
        "queue               completed {}, failed attempts {}, dead {}",
        stats.completed, stats.failed, stats.dead
    );
    for w in &stats.workers {
        println!(
            "  {:<10} completed {:>6}",
            w.name.as_deref().unwrap_or("?"),
            w.completed
        );
    }
    println!(
        "throughput          {:.0} jobs/s ({JOBS} jobs in {elapsed:.2?})",
        JOBS as f64 / elapsed.as_secs_f64()
    );
    let ok = indexes.len() == JOBS && answered_twice == 0 && wrong == 0;
    println!(
        "{}",
        if ok {
            "OK: no job lost, none answered twice"
        } else {
            "FAILED"
        }
    );

    hub.shutdown().await;
    for (_, mut child) in workers {
        let _ = child.wait().await;
    }
    if ok {
        Ok(())
    } else {
        Err("some jobs were lost, wrong or answered twice".into())
    }
}
