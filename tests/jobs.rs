//! The job queue end to end: worker processes killed with -9 mid-job, timeouts,
//! retries to the dead letters, priorities, delays, the bound, cancellation, credits,
//! progress, and members submitting jobs that other members work.

mod common;

use common::fnv::{fnv, job, work, Fnv};
use common::*;
use network_cluster::prelude::*;
use network_cluster::rpc::{
    CodecKind, InvalidJob, Job, JobContext, JobError, JobOptions, QueueOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fails until its attempt number reaches `succeed_on` (0: always fails).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    succeed_on: u32,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    type Output = u32;
}

/// Why a `Flaky` attempt failed: a typed error with a cause, as a real handler returns.
#[derive(Debug)]
struct AttemptFailed {
    attempt: u32,
    cause: std::io::Error,
}

impl std::fmt::Display for AttemptFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt {} failed", self.attempt)
    }
}

impl std::error::Error for AttemptFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

fn consumer_of(hub: &Hub) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
        .reconnect_interval(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_loses_no_job_and_answers_each_once() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let port = hub.provider().port();
    let mut doomed = spawn_peer("worker", port).await;
    let _survivor = spawn_peer("worker", port).await;
    // Both worker processes are registered once they say so: jobs spread over both.
    assert_eq!(hub.jobs().stats().workers.len(), 2);
    let mut handles = Vec::new();
    for i in 0..200u32 {
        let data = i.to_le_bytes().to_vec();
        let handle = hub.jobs().submit(&job(data.clone(), 10)).await.unwrap();
        handles.push((fnv(&data), handle));
    }
    let rest = handles.split_off(20);
    let mut ids = HashSet::new();
    // The first jobs are done: jobs are running on both workers now.
    for (expected, handle) in handles {
        ids.insert(handle.id());
        assert_eq!(within("job", handle).await, Ok(expected));
    }
    // Kill one worker with jobs in flight (SIGKILL: no close frame, no goodbye).
    doomed.kill().await.unwrap();
    for (expected, handle) in rest {
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
                    Ok::<_, Infallible>(fnv(&job.data))
                }
            })
            .connect()
            .await
            .unwrap();
        members.push(member);
    }
    let mut handles = Vec::new();
    for i in 0..60u8 {
        handles.push(hub.jobs().submit(&job(vec![i], 5)).await.unwrap());
    }
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
                Ok::<_, Infallible>(fnv(&job.data))
            }
        })
        .connect()
        .await
        .unwrap();
    let options = JobOptions::default()
        .timeout(Duration::from_millis(100))
        .max_attempts(3);
    let handle = hub
        .jobs()
        .submit_with(&job(vec![1], 1), options)
        .await
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
        .job_queue(QueueOptions::default().backoff(Duration::from_millis(20)))
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
                    Err(AttemptFailed {
                        attempt: ctx.attempt(),
                        cause: std::io::Error::other("disk on fire"),
                    })
                }
            }
        })
        .connect()
        .await
        .unwrap();
    // Succeeds on the third attempt.
    let handle = hub.jobs().submit(&Flaky { succeed_on: 3 }).await.unwrap();
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
        .await
        .unwrap();
    let id = handle.id();
    assert_eq!(
        within("dead", handle).await,
        Err(JobError::Dead {
            attempts: 2,
            last_error: "attempt 2 failed: disk on fire".into()
        })
    );
    let dead = hub.jobs().dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempts), (id, 2));
    assert_eq!(hub.jobs().stats().dead, 1);
    // Requeueing names the job's kind: another kind is refused and the job stays dead.
    assert!(matches!(
        hub.jobs().requeue_dead::<Fnv>(id),
        Err(JobError::WrongKind { .. })
    ));
    let again = hub.jobs().requeue_dead::<Flaky>(id).unwrap();
    assert!(matches!(
        within("requeued", again).await,
        Err(JobError::Dead { .. })
    ));
    assert_eq!(
        hub.jobs().requeue_dead::<Flaky>(12345).unwrap_err(),
        JobError::NotFound
    );
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn priorities_order_delays_and_the_bound() {
    let hub = Hub::builder(local())
        .job_queue(QueueOptions::default().capacity(10))
        .start()
        .await
        .unwrap();
    // No worker yet: jobs wait, in priority order.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (priority, tag) in [(0, 10u8), (5, 50), (1, 11), (5, 51), (9, 90)] {
        let tagged = job(vec![tag], 0);
        handles.push(
            hub.jobs()
                .submit_with(&tagged, JobOptions::default().priority(priority))
                .await
                .unwrap(),
        );
    }
    let delayed_at = Instant::now();
    let delayed = hub
        .jobs()
        .submit_with(
            &job(vec![7], 0),
            JobOptions::default().delay(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    // The bound: 6 queued, 4 more fit, the 11th is refused.
    for i in 0..4u8 {
        handles.push(
            hub.jobs()
                .submit_with(&job(vec![200 + i], 0), JobOptions::default().priority(-1))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        hub.jobs().submit(&job(vec![], 0)).await.unwrap_err(),
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
                Ok::<_, Infallible>(fnv(&job.data))
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
    let queued = hub.jobs().submit(&job(vec![1], 0)).await.unwrap();
    queued.cancel();
    assert_eq!(within("cancelled", queued).await, Err(JobError::Cancelled));
    assert_eq!(hub.jobs().stats().waiting, 0);

    /// Says when the handler holding it is dropped (finished or cancelled).
    struct Probe(Arc<tokio::sync::Notify>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    let started = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(tokio::sync::Notify::new());
    let (starts, stops) = (Arc::clone(&started), Arc::clone(&stopped));
    let member = Member::builder(consumer_of(&hub))
        .worker(move |job: Fnv, _| {
            let probe = Probe(Arc::clone(&stops));
            starts.notify_one();
            async move {
                tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
                drop(probe);
                Ok::<_, Infallible>(0)
            }
        })
        .connect()
        .await
        .unwrap();
    let running = hub.jobs().submit(&job(vec![2], 60_000)).await.unwrap();
    within("running on the worker", started.notified()).await;
    assert_eq!(hub.jobs().stats().active, 1);
    running.cancel();
    assert_eq!(within("cancelled", running).await, Err(JobError::Cancelled));
    assert_eq!(hub.jobs().stats().active, 0);
    // The handler on the worker was dropped (cancelled), not left running.
    within("handler stopped", stopped.notified()).await;
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_member_submits_jobs_other_members_work_with_progress() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::clone(&ran);
    let worker = Member::builder(consumer_of(&hub))
        .worker(move |job: Fnv, ctx: JobContext| {
            ids.lock().unwrap().push(ctx.id());
            async move {
                for step in 1..=4 {
                    tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
                    ctx.progress(f64::from(step) / 4.0);
                }
                Ok::<_, String>(fnv(&job.data))
            }
        })
        .connect()
        .await
        .unwrap();
    let submitter = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let handle = submitter
        .jobs()
        .submit(&job(b"abc".to_vec(), 20))
        .await
        .unwrap();
    let id = handle.id();
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
    // The id the member holds is the one the hub assigned and the worker ran.
    assert_eq!(*ran.lock().unwrap(), [id]);
    assert!(!result.1.is_empty(), "progress reached the submitter");
    assert!(result.1.iter().all(|p| (0.0..=1.0).contains(p)));
    let stats = submitter.jobs().stats().await.unwrap();
    assert_eq!(stats.completed, 1);
    // Cancelling from the member reaches the hub's queue.
    let slow = submitter.jobs().submit(&job(vec![], 10_000)).await.unwrap();
    // Accepted with a free worker: dispatched before the answer left the hub.
    assert_eq!(hub.jobs().stats().active, 1);
    slow.cancel();
    assert_eq!(within("cancel", slow).await, Err(JobError::Cancelled));
    // A round trip of the submitter's: the hub has taken its cancel.
    submitter.jobs().stats().await.unwrap();
    assert_eq!(hub.jobs().stats().active, 0);
    worker.shutdown().await;
    submitter.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_queued_whole_or_not_at_all_and_every_result_comes_back() {
    let hub = Hub::builder(local())
        .job_queue(QueueOptions::default().capacity(1_000))
        .start()
        .await
        .unwrap();
    let jobs: Vec<Fnv> = (0..1_000u32)
        .map(|i| job(i.to_le_bytes().to_vec(), 0))
        .collect();
    // One more than fits: refused whole, nothing queued.
    let too_many: Vec<Fnv> = jobs.iter().cloned().chain([jobs[0].clone()]).collect();
    assert_eq!(
        hub.jobs().submit_many(&too_many).await.unwrap_err(),
        JobError::QueueFull { capacity: 1_000 }
    );
    assert_eq!(hub.jobs().stats().waiting, 0);
    // Queued before any worker is there; two workers then share them.
    let handles = hub.jobs().submit_many(&jobs).await.unwrap();
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
        .await
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
        .map(|i| job(i.to_le_bytes().to_vec(), 0))
        .collect();
    // No worker yet: all 3,000 wait; 2,000 of them (every one but each third) are cancelled.
    let handles = hub.jobs().submit_many(&jobs).await.unwrap();
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
                Ok::<_, Infallible>(fnv(&job.data))
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

/// Resize an image: a job kind no worker of the tests below runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Resize {
    width: u32,
}

impl Job for Resize {
    const NAME: &'static str = "resize";
    type Output = u32;
}

#[tokio::test]
async fn a_name_without_a_worker_holds_up_no_other_name() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let fnv_worker = Member::builder(consumer_of(&hub))
        .job_credits(2)
        .worker(work)
        .connect()
        .await
        .unwrap();
    // Jobs nobody runs come first, at a higher priority; they must not stop the others.
    let mut resizes = Vec::new();
    for width in 0..5 {
        let options = JobOptions::default().priority(9);
        resizes.push(
            hub.jobs()
                .submit_with(&Resize { width }, options)
                .await
                .unwrap(),
        );
    }
    let mut hashes = Vec::new();
    for i in 0..20u8 {
        hashes.push(hub.jobs().submit(&job(vec![i], 1)).await.unwrap());
    }
    for (i, handle) in hashes.into_iter().enumerate() {
        assert_eq!(within("fnv job", handle).await, Ok(fnv(&[i as u8])));
    }
    assert_eq!(hub.jobs().stats().waiting, 5);
    // A resize worker arrives: the waiting ones drain too.
    let resize_worker = Member::builder(consumer_of(&hub))
        .worker(|job: Resize, _| async move { Ok::<_, Infallible>(job.width * 2) })
        .connect()
        .await
        .unwrap();
    for (width, handle) in resizes.into_iter().enumerate() {
        assert_eq!(within("resize job", handle).await, Ok(width as u32 * 2));
    }
    fnv_worker.shutdown().await;
    resize_worker.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_member_asking_past_the_limits_is_refused_and_dispatch_goes_on() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let worker = Member::builder(consumer_of(&hub))
        .worker(work)
        .connect()
        .await
        .unwrap();
    let submitter = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let jobs = submitter.jobs();
    let forever = JobOptions::default().timeout(Duration::MAX);
    assert!(matches!(
        jobs.submit_with(&job(vec![1], 0), forever).await,
        Err(JobError::Invalid(InvalidJob::Timeout { .. }))
    ));
    let never = JobOptions::default().delay(Duration::MAX);
    assert!(matches!(
        jobs.submit_with(&job(vec![1], 0), never).await,
        Err(JobError::Invalid(InvalidJob::Delay { .. }))
    ));
    let endless = JobOptions::default().max_attempts(u32::MAX);
    assert!(matches!(
        jobs.submit_with(&job(vec![1], 0), endless).await,
        Err(JobError::Invalid(InvalidJob::Attempts { .. }))
    ));
    // The dispatcher is alive: jobs of the member and of the hub still run.
    let from_member = jobs.submit(&job(vec![2], 0)).await.unwrap();
    assert_eq!(within("member job", from_member).await, Ok(fnv(&[2])));
    let from_hub = hub.jobs().submit(&job(vec![3], 0)).await.unwrap();
    assert_eq!(within("hub job", from_hub).await, Ok(fnv(&[3])));
    worker.shutdown().await;
    submitter.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn credits_past_the_limit_are_clamped_and_bad_worker_parameters_refused() {
    let hub = Hub::builder(local())
        .job_queue(QueueOptions::default().worker_credits_limit(8))
        .start()
        .await
        .unwrap();
    let greedy = Member::builder(consumer_of(&hub))
        .job_credits(1_000_000_000)
        .worker(work)
        .connect()
        .await
        .unwrap();
    assert_eq!(hub.jobs().stats().workers[0].credits, 8);
    // Slow jobs: at most 8 run at once on the greedy worker.
    let mut handles = Vec::new();
    for i in 0..20u8 {
        handles.push(hub.jobs().submit(&job(vec![i], 300)).await.unwrap());
    }
    assert_eq!(hub.jobs().stats().active, 8);
    // Parameters the hub cannot take are refused at the upgrade, saying why.
    for (key, value) in [
        ("job_credits", "lots".to_owned()),
        ("jobs", "x".repeat(300)),
    ] {
        let error = consumer_of(&hub)
            .parameter("jobs", "fnv")
            .parameter(key, value)
            .max_attempts(1)
            .connect()
            .await
            .unwrap_err();
        assert!(error.to_string().contains(key), "{error}");
    }
    for handle in handles {
        within("job", handle).await.unwrap();
    }
    greedy.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_forged_progress_publish_is_refused() {
    use network_cluster::rpc::envelope::Envelope;
    let hub = Hub::builder(local()).start().await.unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let worker = Member::builder(consumer_of(&hub))
        .worker(move |job: Fnv, ctx: JobContext| {
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                ctx.progress(0.5);
                Ok::<_, Infallible>(fnv(&job.data))
            }
        })
        .connect()
        .await
        .unwrap();
    let submitter = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let forger = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let handle = submitter.jobs().submit(&job(vec![1], 0)).await.unwrap();
    let mut updates = handle.progress_updates();
    let id = handle.id();
    // Through the library: reserved subjects are refused to members.
    let subject = format!("__jobs.progress.{id:032x}");
    assert!(forger.publish(&subject, &0.99f64).is_err());
    assert!(forger.subscribe::<f64>("__jobs.>").await.is_err());
    // Around it, as raw frames: the hub drops them.
    let mut value = Vec::new();
    network_cluster::rpc::Codec::encode(&CodecKind::default(), &0.99f64, &mut value).unwrap();
    let mut record = id.to_le_bytes().to_vec();
    record.extend_from_slice(&1u32.to_le_bytes());
    record.extend_from_slice(&0.99f64.to_le_bytes());
    for (subject, payload) in [
        (subject.as_str(), value.as_slice()),
        ("__jobs.progress", &record),
    ] {
        let mut frame = Vec::new();
        Envelope::Publish { subject, payload }
            .encode(&mut frame)
            .unwrap();
        forger.consumer().send(frame).unwrap();
    }
    // A round trip of the forger's (the hub took its frames), then of the submitter's
    // (anything the hub forwarded to it has arrived).
    forger.jobs().stats().await.unwrap();
    submitter.jobs().stats().await.unwrap();
    assert_eq!(
        handle.progress(),
        0.0,
        "a forged report reached the submitter"
    );
    release.notify_one();
    let mut handle = handle;
    let mut seen = Vec::new();
    let outcome = within("job", async {
        loop {
            tokio::select! {
                out = &mut handle => return out,
                Ok(()) = updates.changed() => seen.push(*updates.borrow()),
            }
        }
    })
    .await;
    assert_eq!(outcome, Ok(fnv(&[1])));
    assert!(!seen.contains(&0.99), "{seen:?}");
    worker.shutdown().await;
    submitter.shutdown().await;
    forger.shutdown().await;
    hub.shutdown().await;
}
