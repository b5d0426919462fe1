//! The job queue end to end: worker processes killed with -9 mid-job, timeouts,
//! retries to the dead letters, priorities, delays, the bound, cancellation, credits,
//! progress, and members submitting jobs that other members work.

mod common;

use common::*;
use network_cluster::prelude::*;
use network_cluster::rpc::{Job, JobContext, JobError, JobOptions, QueueOptions};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hash `data`, after sleeping `sleep_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fnv {
    data: Vec<u8>,
    sleep_ms: u64,
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

async fn work(job: Fnv, _ctx: JobContext) -> Result<u64, String> {
    tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    Ok(fnv(&job.data))
}

/// Fails until its attempt number reaches `succeed_on` (0: always fails).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    succeed_on: u32,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    type Output = u32;
}

fn consumer_of(hub: &Hub) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
        .reconnect_interval(Duration::from_millis(20))
}

async fn wait_workers(hub: &Hub, n: usize) {
    within("workers", async {
        while hub.jobs().stats().workers.len() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// A worker process: this test binary again, running `worker_process`.
fn spawn_worker_process(port: u16) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("JOBS_TEST_WORKER_PORT", port.to_string())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Not a test of its own: the body of a worker process (does nothing otherwise).
#[tokio::test]
async fn worker_process() {
    let Ok(port) = std::env::var("JOBS_TEST_WORKER_PORT") else {
        return;
    };
    let member = Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(port.parse().unwrap()),
    )
    .worker(work)
    .job_credits(4)
    .connect()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    member.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_loses_no_job_and_answers_each_once() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let port = hub.provider().port();
    let mut doomed = spawn_worker_process(port);
    let _survivor = spawn_worker_process(port);
    wait_workers(&hub, 2).await;
    let handles: Vec<_> = (0..200u32)
        .map(|i| {
            let data = i.to_le_bytes().to_vec();
            let handle = hub
                .jobs()
                .submit(&Fnv {
                    data: data.clone(),
                    sleep_ms: 10,
                })
                .unwrap();
            (fnv(&data), handle)
        })
        .collect();
    // Kill one worker with jobs in flight (SIGKILL: no close frame, no goodbye).
    within("jobs running on both", async {
        while hub.jobs().stats().completed < 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    doomed.kill().await.unwrap();
    let mut ids = HashSet::new();
    for (expected, handle) in handles {
        ids.insert(handle.id());
        assert_eq!(within("job", handle).await, Ok(expected));
    }
    assert_eq!(ids.len(), 200);
    let stats = hub.jobs().stats();
    assert_eq!(stats.completed, 200, "{stats:?}");
    assert_eq!((stats.waiting, stats.active, stats.dead), (0, 0, 0));
    assert_eq!(stats.workers.len(), 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn credits_are_never_exceeded_and_the_freest_worker_gets_the_job() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let mut members = Vec::new();
    let mut peaks = Vec::new();
    for credits in [2usize, 3] {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        peaks.push((credits, Arc::clone(&peak)));
        let member = Member::builder(consumer_of(&hub))
            .job_credits(credits)
            .worker(move |job: Fnv, _ctx| {
                let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    assert!(now <= credits, "credit limit exceeded: {now} > {credits}");
                    tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(fnv(&job.data))
                }
            })
            .connect()
            .await
            .unwrap();
        members.push(member);
    }
    wait_workers(&hub, 2).await;
    let handles: Vec<_> = (0..60u8)
        .map(|i| {
            hub.jobs()
                .submit(&Fnv {
                    data: vec![i],
                    sleep_ms: 5,
                })
                .unwrap()
        })
        .collect();
    for handle in handles {
        within("job", handle).await.unwrap();
    }
    for (credits, peak) in peaks {
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            peak <= credits && peak > 0,
            "peak {peak} with {credits} credits"
        );
    }
    let per_worker: Vec<u64> = hub
        .jobs()
        .stats()
        .workers
        .iter()
        .map(|w| w.completed)
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 60);
    assert!(per_worker.iter().all(|c| *c > 0), "{per_worker:?}");
    for m in members {
        m.shutdown().await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn a_job_over_its_timeout_is_requeued_and_runs_again() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let member = Member::builder(consumer_of(&hub))
        .worker(move |job: Fnv, ctx: JobContext| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(ctx.attempt());
                // The first attempt hangs past the timeout; the second is quick.
                let sleep = if ctx.attempt() == 1 {
                    10_000
                } else {
                    job.sleep_ms
                };
                tokio::time::sleep(Duration::from_millis(sleep)).await;
                Ok(fnv(&job.data))
            }
        })
        .connect()
        .await
        .unwrap();
    wait_workers(&hub, 1).await;
    let options = JobOptions::default()
        .timeout(Duration::from_millis(100))
        .max_attempts(3);
    let handle = hub
        .jobs()
        .submit_with(
            &Fnv {
                data: vec![1],
                sleep_ms: 1,
            },
            options,
        )
        .unwrap();
    assert_eq!(within("job", handle).await, Ok(fnv(&[1])));
    assert_eq!(*attempts.lock().unwrap(), [1, 2]);
    assert_eq!(hub.jobs().stats().failed, 1);
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn failures_retry_with_backoff_then_go_to_the_dead_letters() {
    let hub = Hub::builder(local())
        .job_queue({
            let mut q = QueueOptions::default();
            q.backoff = Duration::from_millis(20);
            q
        })
        .start()
        .await
        .unwrap();
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&times);
    let member = Member::builder(consumer_of(&hub))
        .worker(move |job: Flaky, ctx: JobContext| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(Instant::now());
                if job.succeed_on != 0 && ctx.attempt() >= job.succeed_on {
                    Ok(ctx.attempt())
                } else {
                    Err(format!("attempt {} failed", ctx.attempt()))
                }
            }
        })
        .connect()
        .await
        .unwrap();
    wait_workers(&hub, 1).await;
    // Succeeds on the third attempt.
    let handle = hub.jobs().submit(&Flaky { succeed_on: 3 }).unwrap();
    assert_eq!(within("flaky", handle).await, Ok(3));
    {
        let t = times.lock().unwrap();
        assert_eq!(t.len(), 3);
        // Backoff grows: about 20 ms, then about 40 ms (±50 % jitter).
        assert!(t[1] - t[0] >= Duration::from_millis(10));
        assert!(t[2] - t[1] >= Duration::from_millis(20));
    }
    // Never succeeds: dead after max attempts, with its last error, and can be requeued.
    let options = JobOptions::default().max_attempts(2);
    let handle = hub
        .jobs()
        .submit_with(&Flaky { succeed_on: 0 }, options)
        .unwrap();
    let id = handle.id();
    assert_eq!(
        within("dead", handle).await,
        Err(JobError::Dead {
            attempts: 2,
            last_error: "attempt 2 failed".into()
        })
    );
    let dead = hub.jobs().dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempts), (id, 2));
    assert_eq!(hub.jobs().stats().dead, 1);
    let again = hub.jobs().requeue_dead::<u32>(id).unwrap();
    assert!(matches!(
        within("requeued", again).await,
        Err(JobError::Dead { .. })
    ));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn priorities_order_delays_and_the_bound() {
    let hub = Hub::builder(local())
        .job_queue({
            let mut q = QueueOptions::default();
            q.capacity = 10;
            q
        })
        .start()
        .await
        .unwrap();
    // No worker yet: jobs wait, in priority order.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (priority, tag) in [(0, 10u8), (5, 50), (1, 11), (5, 51), (9, 90)] {
        let job = Fnv {
            data: vec![tag],
            sleep_ms: 0,
        };
        handles.push(
            hub.jobs()
                .submit_with(&job, JobOptions::default().priority(priority))
                .unwrap(),
        );
    }
    let delayed_at = Instant::now();
    let delayed = hub
        .jobs()
        .submit_with(
            &Fnv {
                data: vec![7],
                sleep_ms: 0,
            },
            JobOptions::default().delay(Duration::from_millis(300)),
        )
        .unwrap();
    // The bound: 6 queued, 4 more fit, the 11th is refused.
    for i in 0..4u8 {
        handles.push(
            hub.jobs()
                .submit_with(
                    &Fnv {
                        data: vec![200 + i],
                        sleep_ms: 0,
                    },
                    JobOptions::default().priority(-1),
                )
                .unwrap(),
        );
    }
    assert_eq!(
        hub.jobs()
            .submit(&Fnv {
                data: vec![],
                sleep_ms: 0
            })
            .unwrap_err(),
        JobError::QueueFull { capacity: 10 }
    );
    let stats = hub.jobs().stats();
    assert_eq!((stats.waiting, stats.delayed), (9, 1));

    let seen = Arc::clone(&order);
    let member = Member::builder(consumer_of(&hub))
        .job_credits(1)
        .worker(move |job: Fnv, _| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push((job.data[0], Instant::now()));
                Ok(fnv(&job.data))
            }
        })
        .connect()
        .await
        .unwrap();
    for h in handles {
        within("job", h).await.unwrap();
    }
    within("delayed", delayed).await.unwrap();
    let order = order.lock().unwrap().clone();
    let tags: Vec<u8> = order.iter().map(|(t, _)| *t).collect();
    assert_eq!(&tags[..5], [90, 50, 51, 11, 10]);
    let (_, ran_at) = order.iter().find(|(t, _)| *t == 7).unwrap();
    assert!(
        *ran_at - delayed_at >= Duration::from_millis(300),
        "delayed job ran early"
    );
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_queued_and_a_running_job() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let queued = hub
        .jobs()
        .submit(&Fnv {
            data: vec![1],
            sleep_ms: 0,
        })
        .unwrap();
    queued.cancel();
    assert_eq!(within("cancelled", queued).await, Err(JobError::Cancelled));
    assert_eq!(hub.jobs().stats().waiting, 0);

    let stopped = Arc::new(AtomicUsize::new(0));
    struct Probe(Arc<AtomicUsize>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let started = Arc::new(AtomicUsize::new(0));
    let probe = Arc::clone(&stopped);
    let starts = Arc::clone(&started);
    let member = Member::builder(consumer_of(&hub))
        .worker(move |job: Fnv, _| {
            let probe = Probe(Arc::clone(&probe));
            starts.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
                drop(probe);
                Ok(0)
            }
        })
        .connect()
        .await
        .unwrap();
    wait_workers(&hub, 1).await;
    let running = hub
        .jobs()
        .submit(&Fnv {
            data: vec![2],
            sleep_ms: 60_000,
        })
        .unwrap();
    within("running on the worker", async {
        while started.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(hub.jobs().stats().active, 1);
    running.cancel();
    assert_eq!(within("cancelled", running).await, Err(JobError::Cancelled));
    // The handler on the worker was dropped (cancelled), not left running.
    within("handler stopped", async {
        while stopped.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(hub.jobs().stats().active, 0);
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_member_submits_jobs_other_members_work_with_progress() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let worker = Member::builder(consumer_of(&hub))
        .worker(|job: Fnv, ctx: JobContext| async move {
            for step in 1..=4 {
                tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
                ctx.progress(f64::from(step) / 4.0);
            }
            Ok(fnv(&job.data))
        })
        .connect()
        .await
        .unwrap();
    let submitter = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    wait_workers(&hub, 1).await;
    let handle = submitter
        .jobs()
        .submit(&Fnv {
            data: b"abc".to_vec(),
            sleep_ms: 20,
        })
        .unwrap();
    let mut progress = handle.progress_updates();
    let result = within("member job", async {
        let mut seen = Vec::new();
        let mut handle = handle;
        loop {
            tokio::select! {
                out = &mut handle => return (out, seen),
                Ok(()) = progress.changed() => seen.push(*progress.borrow()),
            }
        }
    })
    .await;
    assert_eq!(result.0, Ok(fnv(b"abc")));
    assert!(!result.1.is_empty(), "progress reached the submitter");
    assert!(result.1.iter().all(|p| (0.0..=1.0).contains(p)));
    let stats = submitter.jobs().stats().await.unwrap();
    assert_eq!(stats.completed, 1);
    // Cancelling from the member reaches the hub's queue.
    let slow = submitter
        .jobs()
        .submit(&Fnv {
            data: vec![],
            sleep_ms: 10_000,
        })
        .unwrap();
    within("active", async {
        while hub.jobs().stats().active < 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    slow.cancel();
    assert_eq!(within("cancel", slow).await, Err(JobError::Cancelled));
    within("cancelled on the hub", async {
        while hub.jobs().stats().active > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    worker.shutdown().await;
    submitter.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_queued_whole_or_not_at_all_and_every_result_comes_back() {
    let hub = Hub::builder(local())
        .job_queue({
            let mut q = QueueOptions::default();
            q.capacity = 1_000;
            q
        })
        .start()
        .await
        .unwrap();
    let jobs: Vec<Fnv> = (0..1_000u32)
        .map(|i| Fnv {
            data: i.to_le_bytes().to_vec(),
            sleep_ms: 0,
        })
        .collect();
    // One more than fits: refused whole, nothing queued.
    let too_many: Vec<Fnv> = jobs.iter().cloned().chain([jobs[0].clone()]).collect();
    assert_eq!(
        hub.jobs().submit_many(&too_many).unwrap_err(),
        JobError::QueueFull { capacity: 1_000 }
    );
    assert_eq!(hub.jobs().stats().waiting, 0);
    // Queued before any worker is there; two workers then share them.
    let handles = hub.jobs().submit_many(&jobs).unwrap();
    assert_eq!(hub.jobs().stats().waiting, 1_000);
    let workers = [
        Member::builder(consumer_of(&hub))
            .job_credits(8)
            .worker(work)
            .connect()
            .await
            .unwrap(),
        Member::builder(consumer_of(&hub))
            .job_credits(8)
            .worker(work)
            .connect()
            .await
            .unwrap(),
    ];
    for (job, handle) in jobs.iter().zip(handles) {
        assert_eq!(within("job", handle).await.unwrap(), fnv(&job.data));
    }
    let stats = hub.jobs().stats();
    assert_eq!(
        (stats.completed, stats.waiting, stats.active),
        (1_000, 0, 0)
    );
    // A delayed batch does not run early.
    let submitted = Instant::now();
    let delayed = hub
        .jobs()
        .submit_many_with(
            &jobs[..3],
            JobOptions::default().delay(Duration::from_millis(200)),
        )
        .unwrap();
    assert_eq!(hub.jobs().stats().delayed, 3);
    for handle in delayed {
        within("delayed job", handle).await.unwrap();
    }
    assert!(submitted.elapsed() >= Duration::from_millis(200));
    for w in workers {
        w.shutdown().await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn cancelled_queued_jobs_never_run_and_free_their_place() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let jobs: Vec<Fnv> = (0..3_000u32)
        .map(|i| Fnv {
            data: i.to_le_bytes().to_vec(),
            sleep_ms: 0,
        })
        .collect();
    // No worker yet: all 3,000 wait; 2,000 of them (every one but each third) are cancelled.
    let handles = hub.jobs().submit_many(&jobs).unwrap();
    let mut kept = Vec::new();
    let mut cancelled = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        if i % 3 == 0 {
            kept.push((i, handle));
        } else {
            handle.cancel();
            cancelled.push(handle);
        }
    }
    assert_eq!(hub.jobs().stats().waiting, 1_000);
    for handle in cancelled {
        assert_eq!(within("cancelled", handle).await, Err(JobError::Cancelled));
    }
    let runs = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&runs);
    let member = Member::builder(consumer_of(&hub))
        .job_credits(16)
        .worker(move |job: Fnv, _| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().insert(job.data.clone());
                Ok(fnv(&job.data))
            }
        })
        .connect()
        .await
        .unwrap();
    for (i, handle) in kept {
        assert_eq!(
            within("kept job", handle).await.unwrap(),
            fnv(&jobs[i].data)
        );
    }
    let ran = runs.lock().unwrap().clone();
    assert_eq!(ran.len(), 1_000, "only the jobs not cancelled ran");
    assert!(ran
        .iter()
        .all(|data| u32::from_le_bytes(data[..4].try_into().unwrap()) % 3 == 0));
    let stats = hub.jobs().stats();
    assert_eq!(
        (stats.waiting, stats.active, stats.completed),
        (0, 0, 1_000)
    );
    member.shutdown().await;
    hub.shutdown().await;
}
