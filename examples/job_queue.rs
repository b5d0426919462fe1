//! The main demo: a durable distributed job queue on this machine. A hub process keeping
//! its jobs in a data directory, four worker processes, and this process submitting
//! 100,000 jobs with a live progress bar. Midway, one worker AND the hub are killed
//! (SIGKILL); the hub is restarted on the same data directory, the workers and this
//! submitter reconnect, and the summary proves that no job was lost, none was answered
//! twice and none was wrong.
//!
//! Run: `cargo run --release --example job_queue`

use futures_util::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use network_cluster::prelude::*;
use network_cluster::rpc::{ByteBuf, Job, JobContext, JobError, JobHandle, JobOptions, MemberJobs};
use network_cluster::transport::ConsumerState;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

const JOBS: usize = 100_000;
const WORKERS: usize = 4;
const CREDITS: usize = 16;
/// Submissions in flight at once: each is acknowledged once durable (group commit).
const IN_FLIGHT: usize = 1024;

/// 64-bit FNV-1a of a 64-byte payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fnv {
    data: ByteBuf,
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

fn payload(i: usize) -> ByteBuf {
    let mut data = vec![0u8; 64];
    data[..8].copy_from_slice(&(i as u64).to_le_bytes());
    ByteBuf::from(data)
}

/// Consumers of this demo reconnect every 100 ms, for up to five minutes.
fn consumer(port: u16, name: &str) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("name", name)
        .reconnect_interval(Duration::from_millis(100))
        .max_attempts(3_000)
}

/// A worker process: serves `fnv` jobs, across hub restarts, until killed.
async fn worker(port: u16, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let _member = Member::builder(consumer(port, name))
        .job_credits(CREDITS)
        .worker(|job: Fnv, _ctx: JobContext| async move {
            Ok::<_, std::convert::Infallible>(fnv(&job.data))
        })
        .connect()
        .await?;
    std::future::pending().await
}

/// The hub process: keeps its jobs in `dir`, until killed.
async fn hub(port: u16, dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(port))
        .jobs_storage(dir)
        .start()
        .await?;
    println!("{}", hub.provider().port());
    std::future::pending().await
}

/// Starts the hub process on `port` (0: any) and returns it and its port.
async fn start_hub(
    exe: &Path,
    port: u16,
    dir: &Path,
) -> Result<(tokio::process::Child, u16), Box<dyn std::error::Error>> {
    let mut child = tokio::process::Command::new(exe)
        .args(["hub", &port.to_string(), &dir.display().to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("hub stdout")?;
    let line = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .ok_or("the hub process did not start")?;
    Ok((child, line.parse()?))
}

/// Submits job `i` under its unique key, after `wait`: a submission retried after a hub
/// crash returns the job accepted before, never a second one.
async fn submit(
    jobs: MemberJobs,
    i: usize,
    wait: Duration,
) -> (usize, Result<JobHandle<u64>, JobError>) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let options = JobOptions::default().key(i.to_string());
    (
        i,
        jobs.submit_with(&Fnv { data: payload(i) }, options).await,
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") => {
            let port = args.get(2).ok_or("worker PORT NAME")?.parse()?;
            return worker(port, args.get(3).map_or("worker", String::as_str)).await;
        }
        Some("hub") => {
            let port = args.get(2).ok_or("hub PORT DIR")?.parse()?;
            return hub(port, args.get(3).ok_or("hub PORT DIR")?).await;
        }
        _ => {}
    }

    let dir = std::env::temp_dir().join(format!("job-queue-demo-{}", std::process::id()));
    let exe = std::env::current_exe()?;
    let (mut hub, port) = start_hub(&exe, 0, &dir).await?;
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let name = format!("worker-{i}");
        let child = tokio::process::Command::new(&exe)
            .args(["worker", &port.to_string(), &name])
            .kill_on_drop(true)
            .spawn()?;
        workers.push((name, child));
    }
    let submitter = Member::builder(consumer(port, "submitter"))
        .connect()
        .await?;
    while submitter.jobs().stats().await?.workers.len() < WORKERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "hub process on 127.0.0.1:{port} with its jobs in {}, {WORKERS} worker processes \
         with {CREDITS} credits each",
        dir.display()
    );

    let bar = ProgressBar::new(JOBS as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos:>7}/{len} jobs {per_sec:>12} {msg}")
            .map_err(|e| e.to_string())?,
    );
    let started = Instant::now();
    let mut submissions = FuturesUnordered::new();
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut resubmitted = 0;
    let mut answers: HashMap<u128, (usize, u64)> = HashMap::with_capacity(JOBS);
    let mut answered_twice = 0;
    let mut wrong = 0;
    let mut failed = 0;
    let (mut worker_killed, mut hub_killed) = (None, false);
    let mut restart_took = Duration::ZERO;
    while answers.len() + failed < JOBS {
        while next < JOBS && submissions.len() < IN_FLIGHT {
            submissions.push(submit(submitter.jobs(), next, Duration::ZERO));
            next += 1;
        }
        tokio::select! {
            Some((i, submitted)) = submissions.next() => match submitted {
                Ok(handle) => pending.push(async move { (i, handle.id(), handle.await) }),
                // Not accepted (the hub died meanwhile): again in a moment, under the same
                // key, while the other submissions and answers go on.
                Err(error) => {
                    if matches!(submitter.consumer().state(), ConsumerState::Closed(_)) {
                        return Err(format!("the submitter gave up reconnecting: {error}").into());
                    }
                    resubmitted += 1;
                    submissions.push(submit(submitter.jobs(), i, Duration::from_millis(20)));
                }
            },
            Some((i, id, outcome)) = pending.next() => {
                match outcome {
                    Ok(hash) => {
                        if hash != fnv(&payload(i)) {
                            wrong += 1;
                        }
                        if answers.insert(id, (i, hash)).is_some() {
                            answered_twice += 1;
                        }
                    }
                    Err(error) => {
                        failed += 1;
                        bar.println(format!("job {i} failed: {error}"));
                    }
                }
                bar.inc(1);
            }
        }
        if worker_killed.is_none() && answers.len() >= JOBS * 3 / 10 {
            let (name, child) = &mut workers[0];
            child.kill().await?;
            bar.println(format!("killed {name} (SIGKILL) with jobs in flight"));
            worker_killed = Some(name.clone());
        }
        if !hub_killed && answers.len() >= JOBS / 2 {
            hub.kill().await?;
            let restart = Instant::now();
            bar.println("killed the hub (SIGKILL) with jobs waiting and running");
            let (restarted, same) = start_hub(&exe, port, &dir).await?;
            restart_took = restart.elapsed();
            bar.println(format!(
                "restarted the hub on {} in {restart_took:.0?}: port {same}",
                dir.display()
            ));
            hub = restarted;
            hub_killed = true;
        }
    }
    bar.finish_with_message("done");
    let elapsed = started.elapsed();

    let stats = submitter.jobs().stats().await?;
    let mut indexes: Vec<usize> = answers.values().map(|(i, _)| *i).collect();
    indexes.sort_unstable();
    indexes.dedup();
    println!();
    println!("jobs submitted      {JOBS} ({resubmitted} submissions retried under their key)");
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
        worker_killed.as_deref().unwrap_or("none")
    );
    println!(
        "hub killed          {}",
        if hub_killed {
            format!("yes, restarted on its data directory in {restart_took:.0?}")
        } else {
            "no".to_owned()
        }
    );
    println!(
        "restarted hub       completed {}, failed attempts {}, dead {}",
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
    let ok = indexes.len() == JOBS && answered_twice == 0 && wrong == 0 && failed == 0;
    println!(
        "{}",
        if ok {
            "OK: no job lost, none answered twice, none wrong"
        } else {
            "FAILED"
        }
    );

    submitter.shutdown().await;
    drop(hub);
    drop(workers);
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        Ok(())
    } else {
        Err("some jobs were lost, wrong or answered twice".into())
    }
}
