//! Jobs on NATS JetStream shared by several hubs, end to end against a real nats-server
//! (started per test on a free loopback port, JetStream in a temp dir): jobs run on
//! another hub and answer on the submitter's, each hub pulls at most its workers' free
//! credits, priority levels in order, retries then the dead-letter stream, progress
//! keeping a long job's claim, dead letters listed, requeued and deleted through any hub,
//! cancellation across hubs, delays, NATS going away and
//! coming back, and 3 hub processes with 8 workers and 50,000 jobs with one hub killed -9.

mod common;

use common::fnv::{fnv, numbered as job, Fnv};
use common::nats::NatsServer;
use common::*;
use futures_util::stream::{FuturesUnordered, StreamExt};
use network_cluster::prelude::*;
use network_cluster::rpc::cluster::ClusterOptions;
use network_cluster::rpc::jobs::{
    JetStreamOptions, JetStreamStore, StoreError, JOBS_ADMIN_PARAMETER,
};
use network_cluster::rpc::{Job, JobContext, JobError, JobOptions, JobState, QueueOptions};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A job that records its tag when it starts, then waits for the test's gate.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tagged {
    tag: String,
}

impl Job for Tagged {
    const NAME: &'static str = "tagged";
    type Output = String;
}

/// Always fails.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doomed;

impl Job for Doomed {
    const NAME: &'static str = "doomed";
    type Output = ();
}

/// Fails until the test mends its worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    tag: String,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    type Output = String;
}

/// The hubs' jobs admin token (operator calls).
const ADMIN: &str = "admin-token";

/// Every test has a server of its own: one prefix does.
const PREFIX: &str = "t";

/// The tests' JetStream settings: a short poll.
fn options() -> JetStreamOptions {
    JetStreamOptions::default().poll(Duration::from_millis(20))
}

/// A JetStream context of the test's own, to look into the streams.
async fn jetstream(server: &NatsServer) -> async_nats::jetstream::Context {
    let client = async_nats::connect(server.url())
        .await
        .expect("connect to NATS");
    async_nats::jetstream::new(client)
}

/// A hub in the cluster on `server` (prefix [`PREFIX`]), its jobs on JetStream with
/// `jobs` (as every hub in cluster mode), and its job store.
async fn hub_on(
    server: &NatsServer,
    jobs: JetStreamOptions,
    queue: QueueOptions,
) -> (Hub, JetStreamStore) {
    let cluster = ClusterOptions::new(server.url()).prefix(PREFIX).jobs(jobs);
    let hub = Hub::builder(local())
        .job_queue(queue)
        .jobs_admin_token(ADMIN)
        .cluster(cluster)
        .start()
        .await
        .expect("start the hub");
    let store = hub
        .cluster()
        .and_then(|c| c.jobs_store())
        .cloned()
        .expect("jobs on JetStream in cluster mode");
    (hub, store)
}

/// `N` hubs as [`hub_on`] makes them, with `queue`.
async fn hubs<const N: usize>(
    server: &NatsServer,
    jobs: JetStreamOptions,
    queue: QueueOptions,
) -> [(Hub, JetStreamStore); N] {
    let mut hubs = Vec::with_capacity(N);
    for _ in 0..N {
        hubs.push(hub_on(server, jobs.clone(), queue.clone()).await);
    }
    hubs.try_into().unwrap_or_else(|_| unreachable!())
}

async fn shutdown(hubs: impl IntoIterator<Item = Hub>) {
    for hub in hubs {
        hub.shutdown().await;
    }
}

fn consumer_of(hub: &Hub) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
        .reconnect_interval(Duration::from_millis(20))
}

async fn fnv_worker(hub: &Hub, credits: usize, ran: Arc<AtomicUsize>) -> Member {
    Member::builder(consumer_of(hub))
        .worker(move |job: Fnv, _ctx: JobContext| {
            let ran = Arc::clone(&ran);
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
                Ok::<_, std::convert::Infallible>(fnv(&job.data))
            }
        })
        .job_credits(credits)
        .connect()
        .await
        .expect("connect the worker")
}

/// A worker of `Tagged` jobs: records each tag as it starts, then waits for a permit.
async fn gated_worker(
    hub: &Hub,
    credits: usize,
    started: Arc<Mutex<Vec<String>>>,
    gate: Arc<Semaphore>,
) -> Member {
    Member::builder(consumer_of(hub))
        .worker(move |job: Tagged, _ctx: JobContext| {
            let started = Arc::clone(&started);
            let gate = Arc::clone(&gate);
            async move {
                started.lock().unwrap().push(job.tag.clone());
                gate.acquire().await.map(|p| p.forget()).ok();
                Ok::<_, std::convert::Infallible>(job.tag)
            }
        })
        .job_credits(credits)
        .connect()
        .await
        .expect("connect the worker")
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_on_one_hub_run_on_another_and_answer_on_the_first() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [(a, store_a), (b, store_b)] = hubs(&server, options(), QueueOptions::default()).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let _worker = fnv_worker(&b, 8, Arc::clone(&ran)).await;
    let jobs: Vec<Fnv> = (0..300).map(|i| job(i, 0)).collect();
    let handles = within("the submissions", a.jobs().submit_many(&jobs))
        .await
        .unwrap();
    for (i, handle) in handles.into_iter().enumerate() {
        let expected = fnv(&(i as u64).to_le_bytes());
        assert_eq!(within("a result", handle).await, Ok(expected), "job {i}");
    }
    // A member connected to hub A submits too: its result comes back through A.
    let submitter = Member::builder(consumer_of(&a)).connect().await.unwrap();
    let handle = within("a submission", submitter.jobs().submit(&job(7, 0)))
        .await
        .unwrap();
    assert_eq!(
        within("its result", handle).await,
        Ok(fnv(&7u64.to_le_bytes()))
    );
    assert_eq!(ran.load(Ordering::SeqCst), 301, "each job ran once");
    let (sa, sb) = (store_a.jetstream_stats(), store_b.jetstream_stats());
    assert_eq!((sa.published, sa.pulled), (301, 0), "{sa:?}");
    assert_eq!((sb.published, sb.pulled, sb.acked), (0, 301, 301), "{sb:?}");
    // Completed where they ran.
    assert_eq!(
        (a.jobs().stats().completed, b.jobs().stats().completed),
        (0, 301)
    );
    submitter.shutdown().await;
    shutdown([a, b]).await;
}

/// A hub shut down mid-run leaves no job waiting for the ack wait: the jobs it ran are
/// acked once their outcomes are stored, and the ones it held (running, queued, or
/// brought by a pull that was on its way) go back at once. So each job completes on one
/// hub only, the job stream empties, and every result reaches the submitter in time.
/// (Before the fix, a job a pull brought while the store closed went back only after
/// the ack wait: this test failed about one run in two.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_shut_down_mid_run_leaves_no_job_waiting_for_the_ack_wait() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    const N: u64 = 4_000;
    let [(a, store_a), (b, _)] = hubs(&server, options(), QueueOptions::default()).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let on_a = fnv_worker(&a, 16, Arc::clone(&ran)).await;
    let on_b = fnv_worker(&b, 64, Arc::clone(&ran)).await;
    let jobs: Vec<Fnv> = (0..N).map(|i| job(i, 0)).collect();
    let handles = within("the submissions", a.jobs().submit_many(&jobs))
        .await
        .unwrap();
    // Mid-run: hub B still pulls jobs and takes its worker's answers.
    until("hub B to complete a quarter", || {
        b.jobs().stats().completed >= N / 4
    })
    .await;
    b.shutdown().await;
    let completed_on_b = b.jobs().stats().completed;
    for (i, handle) in handles.into_iter().enumerate() {
        let expected = fnv(&(i as u64).to_le_bytes());
        assert_eq!(within("a result", handle).await, Ok(expected), "job {i}");
    }
    // Every job acked, so gone from the job stream: one whose outcome hub B dropped
    // would come back only after the ack wait (30 s), and run again on A.
    let js = jetstream(&server).await;
    let stream = store_a.stream_name().to_owned();
    until_async("the job stream to empty", || messages_in(&js, &stream, 0)).await;
    assert_eq!(
        a.jobs().stats().completed + completed_on_b,
        N,
        "each job completed on one hub"
    );
    assert!(ran.load(Ordering::SeqCst) >= N as usize);
    on_a.shutdown().await;
    on_b.shutdown().await;
    shutdown([a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_pulls_at_most_its_workers_free_credits() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [(a, _), (b, store_b)] = hubs(&server, options(), QueueOptions::default()).await;
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let _worker = gated_worker(&b, 2, Arc::clone(&started), Arc::clone(&gate)).await;
    let mut handles = Vec::new();
    for i in 0..10 {
        let tagged = Tagged {
            tag: format!("j{i}"),
        };
        handles.push(
            within("a submission", a.jobs().submit(&tagged))
                .await
                .unwrap(),
        );
    }
    until("two jobs to start", || started.lock().unwrap().len() == 2).await;
    // Several pull rounds later, hub B still holds exactly its 2 credits' worth.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = b.jobs().stats();
    assert_eq!((stats.active, stats.waiting), (2, 0), "{stats:?}");
    assert_eq!(store_b.jetstream_stats().pulled, 2);
    gate.add_permits(10);
    for handle in handles {
        within("a result", handle).await.unwrap();
    }
    assert_eq!(store_b.jetstream_stats().pulled, 10);
    shutdown([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_levels_are_pulled_in_order() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [(a, _), (b, _)] = hubs(&server, options(), QueueOptions::default()).await;
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let _worker = gated_worker(&b, 1, Arc::clone(&started), Arc::clone(&gate)).await;
    let blocker = a
        .jobs()
        .submit(&Tagged {
            tag: "first".into(),
        })
        .await
        .unwrap();
    until("the first job to start", || {
        started.lock().unwrap().len() == 1
    })
    .await;
    let mut handles = vec![blocker];
    for (tag, priority) in [
        ("low", -5),
        ("normal", 0),
        ("high", 5),
        ("low2", -1),
        ("high2", 1),
    ] {
        let tagged = Tagged { tag: tag.into() };
        let options = JobOptions::default().priority(priority);
        handles.push(a.jobs().submit_with(&tagged, options).await.unwrap());
    }
    gate.add_permits(10);
    for handle in handles {
        within("a result", handle).await.unwrap();
    }
    let order = started.lock().unwrap().clone();
    assert_eq!(order, ["first", "high", "high2", "normal", "low", "low2"]);
    shutdown([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_with_backoff_then_moved_to_the_dead_letter_stream() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let queue = QueueOptions::default().backoff(Duration::from_millis(50));
    let [(a, store_a), (b, store_b)] = hubs(&server, options(), queue).await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let _worker = Member::builder(consumer_of(&b))
        .worker(move |_job: Doomed, ctx: JobContext| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap()
                    .push((ctx.attempt(), tokio::time::Instant::now()));
                Err::<(), _>(format!("attempt {} broke", ctx.attempt()))
            }
        })
        .connect()
        .await
        .unwrap();
    let handle = a
        .jobs()
        .submit_with(&Doomed, JobOptions::default().max_attempts(3))
        .await
        .unwrap();
    let outcome = within("the job to die", handle).await;
    assert_eq!(
        outcome,
        Err(JobError::Dead {
            attempts: 3,
            last_error: "attempt 3 broke".into()
        })
    );
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(
        attempts.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Negative acks with the backoff (at least half of 50 ms, then of 100 ms: jitter).
    assert!(attempts[1].1 - attempts[0].1 >= Duration::from_millis(25));
    assert!(attempts[2].1 - attempts[1].1 >= Duration::from_millis(50));
    let stats = store_b.jetstream_stats();
    assert_eq!((stats.naked, stats.dead), (2, 1), "{stats:?}");
    // The dead letter is in the dead-letter stream with its attempts and error; the
    // original is gone from the job stream.
    let js = jetstream(&server).await;
    let dead_stream = store_a.dead_stream_name();
    until_async("the dead letter", || messages_in(&js, dead_stream, 1)).await;
    let dead = js.get_stream(dead_stream).await.unwrap();
    let letter = dead.get_raw_message(1).await.unwrap();
    let headers = letter.headers;
    assert_eq!(
        headers.get("Cluster-Attempts").map(|v| v.as_str()),
        Some("3")
    );
    assert_eq!(
        headers.get("Cluster-Error").map(|v| v.as_str()),
        Some("attempt 3 broke")
    );
    let job_stream = store_a.stream_name();
    until_async("the original to be terminated", || {
        messages_in(&js, job_stream, 0)
    })
    .await;
    shutdown([a, b]).await;
}

/// A member of `hub` holding the jobs admin token.
async fn operator(hub: &Hub) -> Member {
    Member::builder(consumer_of(hub).parameter(JOBS_ADMIN_PARAMETER, ADMIN))
        .connect()
        .await
        .expect("connect the operator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_requeued_once_and_deleted_through_any_hub() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let queue = QueueOptions::default().backoff(Duration::from_millis(10));
    let [(a, _), (b, _)] = hubs(&server, options(), queue).await;
    let mended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ran = Arc::new(AtomicUsize::new(0));
    let (is_mended, runs) = (Arc::clone(&mended), Arc::clone(&ran));
    let _worker = Member::builder(consumer_of(&a))
        .worker(move |job: Flaky, _ctx: JobContext| {
            let mended = is_mended.load(Ordering::SeqCst);
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                match mended {
                    true => Ok(job.tag),
                    false => Err(format!("{} broke", job.tag)),
                }
            }
        })
        .connect()
        .await
        .unwrap();
    // Two jobs of a member of hub A die there.
    let submitter = Member::builder(consumer_of(&a)).connect().await.unwrap();
    let mut ids = Vec::new();
    for tag in ["kept", "dropped"] {
        let options = JobOptions::default().max_attempts(2);
        let flaky = Flaky { tag: tag.into() };
        let handle = submitter.jobs().submit_with(&flaky, options).await.unwrap();
        ids.push(handle.id());
        let died = within("the job to die", handle).await;
        let last_error = format!("{tag} broke");
        assert_eq!(
            died,
            Err(JobError::Dead {
                attempts: 2,
                last_error
            })
        );
    }
    let (kept, dropped) = (ids[0], ids[1]);
    // Hub B lists them, oldest first, from the dead-letter stream.
    let op_b = operator(&b).await;
    let listed = op_b.jobs().list(JobState::Dead, 10).await.unwrap();
    let rows: Vec<_> = listed
        .iter()
        .map(|j| (j.id, j.name.as_str(), j.attempts, j.last_error.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [
            (kept, "flaky", 2, Some("kept broke")),
            (dropped, "flaky", 2, Some("dropped broke"))
        ]
    );
    assert_eq!(op_b.jobs().list(JobState::Dead, 1).await.unwrap().len(), 1);
    let on_b = b.jobs().cluster_dead_letters(10).await.unwrap();
    assert_eq!(
        on_b.iter().map(|d| d.id).collect::<Vec<_>>(),
        [kept, dropped]
    );
    assert_eq!(b.jobs().cluster_dead_letters(1).await.unwrap().len(), 1);
    // Deleted through hub B: gone for every hub.
    assert_eq!(op_b.jobs().delete_dead(dropped).await, Ok(true));
    assert_eq!(op_b.jobs().delete_dead(dropped).await, Ok(false));
    assert_eq!(a.jobs().cluster_delete_dead(dropped).await, Ok(false));
    let op_a = operator(&a).await;
    let listed = op_a.jobs().list(JobState::Dead, 10).await.unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), [kept]);
    // Requeued through both hubs at once (hub A's own API, an operator of hub B): it
    // runs once more, with fresh attempts, and its outcome reaches its submitter.
    mended.store(true, Ordering::SeqCst);
    let (jobs_a, jobs_b) = (a.jobs(), op_b.jobs());
    let (from_a, from_b) =
        tokio::join!(jobs_a.cluster_requeue_dead(kept), jobs_b.requeue_dead(kept));
    let mut answers = [from_a, from_b];
    answers.sort_by_key(Result::is_err);
    assert_eq!(answers, [Ok(()), Err(JobError::NotFound)]);
    let result = submitter.jobs().result::<Flaky>(kept).await.unwrap();
    assert_eq!(
        within("the requeued job's result", result).await,
        Ok("kept".to_owned())
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        5,
        "2 + 2 attempts, then one run"
    );
    // It is no dead letter any more: a second requeue finds nothing.
    assert_eq!(
        op_b.jobs().requeue_dead(kept).await,
        Err(JobError::NotFound)
    );
    assert!(op_b
        .jobs()
        .list(JobState::Dead, 10)
        .await
        .unwrap()
        .is_empty());
    for member in [op_a, op_b, submitter] {
        member.shutdown().await;
    }
    shutdown([a, b]).await;
}

/// Whether stream `name` holds `n` messages.
async fn messages_in(js: &async_nats::jetstream::Context, name: &str, n: u64) -> bool {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.is_ok_and(|i| i.state.messages == n),
        Err(_) => false,
    }
}

async fn until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    within(what, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_ack_wait_is_kept_by_in_progress_acks() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let short = options().ack_wait(Duration::from_millis(400));
    let [(a, _), (b, store_b), (c, store_c)] = hubs(&server, short, QueueOptions::default()).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let _wb = fnv_worker(&b, 1, Arc::clone(&ran)).await;
    let _wc = fnv_worker(&c, 1, Arc::clone(&ran)).await;
    // 1.5 s: almost four ack waits.
    let handle = a.jobs().submit(&job(1, 1500)).await.unwrap();
    assert_eq!(
        within("the result", handle).await,
        Ok(fnv(&1u64.to_le_bytes()))
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1, "never redelivered");
    let (sb, sc) = (store_b.jetstream_stats(), store_c.jetstream_stats());
    assert_eq!(sb.pulled + sc.pulled, 1, "{sb:?} {sc:?}");
    assert_eq!(sb.redelivered + sc.redelivered, 0);
    shutdown([a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_the_submitting_hub_stops_the_job_on_the_hub_running_it() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [(a, _), (b, store_b)] = hubs(&server, options(), QueueOptions::default()).await;
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let _worker = gated_worker(&b, 1, Arc::clone(&started), Arc::clone(&gate)).await;
    let running = a
        .jobs()
        .submit(&Tagged {
            tag: "running".into(),
        })
        .await
        .unwrap();
    until("the job to start on hub B", || {
        started.lock().unwrap().len() == 1
    })
    .await;
    // A job waiting in the stream (hub B's only credit is taken) is cancelled too.
    let waiting = a
        .jobs()
        .submit(&Tagged {
            tag: "waiting".into(),
        })
        .await
        .unwrap();
    running.cancel();
    waiting.cancel();
    assert_eq!(
        within("the cancel", running).await,
        Err(JobError::Cancelled)
    );
    assert_eq!(
        within("the cancel", waiting).await,
        Err(JobError::Cancelled)
    );
    until("hub B to drop the attempt", || b.jobs().stats().active == 0).await;
    until("hub B to terminate it", || {
        store_b.jetstream_stats().terminated == 1
    })
    .await;
    // Hub B's credit is free again and nothing else runs: the waiting job is gone.
    let after = a
        .jobs()
        .submit(&Tagged {
            tag: "after".into(),
        })
        .await
        .unwrap();
    gate.add_permits(10);
    assert_eq!(within("the next job", after).await, Ok("after".into()));
    assert_eq!(*started.lock().unwrap(), ["running", "after"]);
    shutdown([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_runs_after_its_delay_on_another_hub() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [(a, _), (b, _)] = hubs(&server, options(), QueueOptions::default()).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let _worker = fnv_worker(&b, 4, Arc::clone(&ran)).await;
    let submitted = tokio::time::Instant::now();
    let delayed = JobOptions::default().delay(Duration::from_millis(400));
    let handle = a.jobs().submit_with(&job(3, 0), delayed).await.unwrap();
    assert_eq!(
        within("the result", handle).await,
        Ok(fnv(&3u64.to_le_bytes()))
    );
    assert!(submitted.elapsed() >= Duration::from_millis(400));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    shutdown([a, b]).await;
}

/// The lanes of the job stream that have a consumer, by their token (`mid`, `hi`, `lo`,
/// `delayed`), sorted.
async fn consumer_lanes(js: &async_nats::jetstream::Context) -> Vec<String> {
    let stream = js.get_stream("T_JOBS").await.expect("the job stream");
    let mut lanes: Vec<String> = stream
        .consumer_names()
        .map(|name| {
            let name = name.expect("a consumer name");
            name.rsplit('_').next().unwrap_or_default().to_owned()
        })
        .collect()
        .await;
    lanes.sort();
    lanes
}

/// A lane's consumer is opened only once a job is put in it (the server walks every
/// consumer of the stream on each ack): jobs of the normal level leave one consumer, a
/// high-priority and a delayed job add theirs, and no hub opens the low level's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_gets_its_consumer_only_once_a_job_is_put_in_it() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let js = jetstream(&server).await;
    let [(a, _), (b, _)] = hubs(&server, options(), QueueOptions::default()).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let _worker = fnv_worker(&b, 4, Arc::clone(&ran)).await;
    for i in 0..5 {
        let handle = a.jobs().submit(&job(i, 0)).await.unwrap();
        assert_eq!(within("a result", handle).await, Ok(fnv(&i.to_le_bytes())));
    }
    assert_eq!(consumer_lanes(&js).await, ["mid"]);
    let high = JobOptions::default().priority(3);
    let delayed = JobOptions::default().delay(Duration::from_millis(50));
    let handles = [
        a.jobs().submit_with(&job(5, 0), high).await.unwrap(),
        a.jobs().submit_with(&job(6, 0), delayed).await.unwrap(),
    ];
    for handle in handles {
        within("a result", handle).await.unwrap();
    }
    assert_eq!(consumer_lanes(&js).await, ["delayed", "hi", "mid"]);
    assert_eq!(ran.load(Ordering::SeqCst), 7);
    shutdown([a, b]).await;
}

/// Jobs put in a lane no kick told a hub of are found when it starts: a high-priority job
/// and a delayed one, submitted on a hub without workers that then shut down, run on a
/// hub started after (which looks for jobs in the lanes it does not know yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_in_a_lane_no_kick_told_a_hub_of_are_found_when_it_starts() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let js = jetstream(&server).await;
    let (a, _) = hub_on(&server, options(), QueueOptions::default()).await;
    let high = JobOptions::default().priority(5);
    let delayed = JobOptions::default().delay(Duration::from_millis(300));
    // Submitted (stored); their results go to hub A, which is gone by then.
    let handles = [
        a.jobs().submit_with(&job(1, 0), high).await.unwrap(),
        a.jobs().submit_with(&job(2, 0), delayed).await.unwrap(),
    ];
    shutdown([a]).await;
    drop(handles);
    let (b, _) = hub_on(&server, options(), QueueOptions::default()).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let _worker = fnv_worker(&b, 4, Arc::clone(&ran)).await;
    until("both jobs to run on the hub started after", || {
        ran.load(Ordering::SeqCst) == 2
    })
    .await;
    until_async("the job stream to empty", || messages_in(&js, "T_JOBS", 0)).await;
    shutdown([b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_fail_clearly_while_nats_is_away_and_jobs_go_on_after_it_restarts() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let [(a, store_a), (b, store_b)] = hubs(&server, options(), QueueOptions::default()).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let _worker = fnv_worker(&b, 4, Arc::clone(&ran)).await;
    let handle = a.jobs().submit(&job(1, 0)).await.unwrap();
    within("a result", handle).await.unwrap();
    server.kill();
    until("hub A to see NATS gone", || store_check(&store_a).is_err()).await;
    let refused = within("a refusal, not a hang", a.jobs().submit(&job(2, 0))).await;
    assert_store_error(refused, "not connected");
    server.restart();
    until("both hubs to reconnect", || {
        store_check(&store_a).is_ok() && store_check(&store_b).is_ok()
    })
    .await;
    submit_and_check(&a, 3).await;
    shutdown([a, b]).await;
}

/// A publish JetStream never acknowledges (the server is stopped, its socket still open)
/// fails its submission once the request timeout passed, and the hub goes on once the
/// server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_never_acknowledged_fails_after_the_request_timeout() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let timeout = Duration::from_millis(400);
    let [(a, _store)] = hubs(
        &server,
        options().request_timeout(timeout),
        QueueOptions::default(),
    )
    .await;
    let ran = Arc::new(AtomicUsize::new(0));
    let _worker = fnv_worker(&a, 4, Arc::clone(&ran)).await;
    let handle = a.jobs().submit(&job(1, 0)).await.unwrap();
    within("a result", handle).await.unwrap();
    server.pause();
    let sent = Instant::now();
    let refused = within("a refusal, not a hang", a.jobs().submit(&job(2, 0))).await;
    server.resume();
    assert_store_error(refused, "no acknowledgement in time");
    assert!(
        sent.elapsed() >= timeout,
        "refused after {:?}",
        sent.elapsed()
    );
    submit_and_check(&a, 3).await;
    shutdown([a]).await;
}

/// Submits job `n` on `hub` and checks its result.
async fn submit_and_check(hub: &Hub, n: u64) {
    let handle = within("a submission", hub.jobs().submit(&job(n, 0)))
        .await
        .unwrap();
    assert_eq!(within("a result", handle).await, Ok(fnv(&n.to_le_bytes())));
}

/// `refused` is the store's I/O error, saying `why`.
fn assert_store_error<T: std::fmt::Debug>(refused: Result<T, JobError>, why: &str) {
    match refused {
        Err(JobError::Store(StoreError::Io(error))) => assert!(error.contains(why), "{error}"),
        other => panic!("expected a store error, got {other:?}"),
    }
}

fn store_check(store: &JetStreamStore) -> Result<(), StoreError> {
    use network_cluster::rpc::jobs::JobStore;
    store.check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hub_processes_eight_workers_fifty_thousand_jobs_one_hub_killed() {
    const JOBS: u64 = 50_000;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let mut hubs = Vec::new();
    for _ in 0..3 {
        hubs.push(spawn_jetstream_hub(&server, 1000).await);
    }
    let ports: Vec<u16> = hubs.iter().map(|(_, port)| *port).collect();
    let mut workers = Vec::new();
    // 3 workers on hub A, 3 on B, 2 on C.
    for port in [0, 0, 0, 1, 1, 1, 2, 2].into_iter().map(|h| ports[h]) {
        workers.push(spawn_peer("worker", port).await);
    }
    let submitter = Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(ports[0])
            .reconnect_interval(Duration::from_millis(50)),
    )
    .connect()
    .await
    .unwrap();
    async fn outcome(
        i: u64,
        handle: network_cluster::rpc::JobHandle<u64>,
    ) -> (u64, u128, Result<u64, JobError>) {
        (i, handle.id(), handle.await)
    }
    let mut pending = FuturesUnordered::new();
    let mut submissions = FuturesUnordered::new();
    for i in 0..JOBS {
        if submissions.len() == 512 {
            let (i, handle) = within("a submission", submissions.next()).await.unwrap();
            pending.push(outcome(i, handle));
        }
        let jobs = submitter.jobs();
        submissions.push(async move { (i, jobs.submit(&job(i, 0)).await.unwrap()) });
    }
    while let Some((i, handle)) = within("a submission", submissions.next()).await {
        pending.push(outcome(i, handle));
    }
    let mut results: HashMap<u64, u128> = HashMap::new();
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while let Some((i, id, result)) = tokio::time::timeout_at(deadline, pending.next())
        .await
        .expect("every job answered in time")
    {
        assert_eq!(result, Ok(fnv(&i.to_le_bytes())), "job {i}");
        assert!(results.insert(i, id).is_none(), "job {i} answered twice");
        if !killed && results.len() as u64 >= JOBS * 2 / 5 {
            // SIGKILL hub C with its workers' jobs running: no ack, no nak, no goodbye.
            hubs[2].0.kill().await.unwrap();
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(results.len() as u64, JOBS);
    let ids: std::collections::HashSet<_> = results.values().collect();
    assert_eq!(ids.len() as u64, JOBS, "one job per submission");
    // Nothing is left in the stream.
    let js = jetstream(&server).await;
    let mut stream = js
        .get_stream(format!("{}_JOBS", PREFIX.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    submitter.shutdown().await;
}

/// A `test_peer jetstream-hub` process on the server: the process and its port.
async fn spawn_jetstream_hub(
    server: &NatsServer,
    ack_wait_ms: u64,
) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(test_peer())
        .args([
            "jetstream-hub",
            "0",
            &server.url(),
            PREFIX,
            &ack_wait_ms.to_string(),
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the hub process");
    let stdout = child.stdout.take().expect("hub stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = within("the hub process to listen", lines.next_line()).await;
    let line = line.ok().flatten().unwrap_or_default();
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("hub process said {line:?}"));
    (child, port)
}

/// A member of the hub on `port` (a hub process) working `Tagged` jobs at once: logs
/// `(label, tag)` for each.
async fn tag_worker(
    port: u16,
    label: &'static str,
    log: Arc<Mutex<Vec<(&'static str, String)>>>,
) -> Member {
    Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(port)
            .reconnect_interval(Duration::from_millis(20)),
    )
    .worker(move |job: Tagged, _ctx: JobContext| {
        log.lock().unwrap().push((label, job.tag.clone()));
        async move { Ok::<_, std::convert::Infallible>(job.tag) }
    })
    .job_credits(4)
    .connect()
    .await
    .expect("connect the worker")
}

fn tagged(tag: &str) -> Tagged {
    Tagged { tag: tag.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hubs_running_jobs_run_on_the_other_hubs_after_the_ack_wait() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let mut processes = Vec::new();
    for _ in 0..3 {
        processes.push(spawn_jetstream_hub(&server, 500).await);
    }
    let port = |i: usize| processes[i].1;
    // Hub C's worker takes the jobs and never finishes them.
    let on_c = Arc::new(Mutex::new(Vec::new()));
    let never = Arc::new(Semaphore::new(0));
    let c_worker = Member::builder(Consumer::builder().host("127.0.0.1").port(port(2)))
        .worker({
            let on_c = Arc::clone(&on_c);
            move |job: Tagged, _ctx: JobContext| {
                on_c.lock().unwrap().push(job.tag.clone());
                let never = Arc::clone(&never);
                async move {
                    let _ = never.acquire().await;
                    Ok::<_, std::convert::Infallible>(job.tag)
                }
            }
        })
        .job_credits(4)
        .connect()
        .await
        .unwrap();
    let submitter = Member::builder(Consumer::builder().host("127.0.0.1").port(port(0)))
        .connect()
        .await
        .unwrap();
    let tags = ["r1", "r2", "r3", "r4"];
    let mut handles = Vec::new();
    for tag in tags {
        handles.push(submitter.jobs().submit(&tagged(tag)).await.unwrap());
    }
    until("hub C's worker to run all four", || {
        on_c.lock().unwrap().len() == 4
    })
    .await;
    // Workers on A and B now; the jobs stay C's (in-progress acks) until C dies.
    let log = Arc::new(Mutex::new(Vec::new()));
    let _a = tag_worker(port(0), "A", Arc::clone(&log)).await;
    let _b = tag_worker(port(1), "B", Arc::clone(&log)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing redelivered while C lives"
    );
    let killed_at = tokio::time::Instant::now();
    processes[2].0.kill().await.unwrap();
    for (handle, tag) in handles.into_iter().zip(tags) {
        assert_eq!(
            within("the job to run again", handle).await,
            Ok(tag.to_owned())
        );
    }
    // Not at once: JetStream redelivered them once the ack wait passed after C's last
    // in-progress ack (sent every third of it).
    let after = killed_at.elapsed();
    assert!(
        after >= Duration::from_millis(300),
        "redelivered {after:?} after the kill"
    );
    let mut ran: Vec<(&str, String)> = log.lock().unwrap().clone();
    ran.sort_by(|x, y| x.1.cmp(&y.1));
    let ran_tags: Vec<&str> = ran.iter().map(|(_, tag)| tag.as_str()).collect();
    assert_eq!(
        ran_tags, tags,
        "each of C's jobs ran once more, on A or B: {ran:?}"
    );
    assert!(ran.iter().all(|(hub, _)| ["A", "B"].contains(hub)));
    let mut on_c = on_c.lock().unwrap().clone();
    on_c.sort();
    assert_eq!(on_c, tags);
    drop(c_worker);
    submitter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_hub_is_killed_gets_its_results_on_the_hub_it_fails_over_to() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (mut hub_a, port_a) = spawn_jetstream_hub(&server, 1000).await;
    let (_hub_b, port_b) = spawn_jetstream_hub(&server, 1000).await;
    // The worker is on hub C, in this process.
    let (c, store_c) = hub_on(&server, options(), QueueOptions::default()).await;
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let _worker = gated_worker(&c, 2, Arc::clone(&started), Arc::clone(&gate)).await;
    let hosts = [format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}")];
    let member = Member::builder(
        Consumer::builder()
            .hosts(hosts)
            .reconnect_interval(Duration::from_millis(20)),
    )
    .connect()
    .await
    .unwrap();
    let early = member.jobs().submit(&tagged("early")).await.unwrap();
    let late = member.jobs().submit(&tagged("late")).await.unwrap();
    let (early_id, late_id) = (early.id(), late.id());
    until("both jobs to start on hub C", || {
        started.lock().unwrap().len() == 2
    })
    .await;
    hub_a.kill().await.unwrap();
    // "early" ends while the member has no hub: its outcome waits in the results stream.
    gate.add_permits(1);
    until("hub C to finish one", || {
        store_c.jetstream_stats().acked == 1
    })
    .await;
    // The member fails over to hub B, re-attaches, and B finds the stored outcome...
    let first = within("the stored outcome on hub B", early).await;
    // ...then "late" ends: its outcome reaches hub B live.
    gate.add_permits(1);
    let second = within("the live outcome on hub B", late).await;
    assert_eq!(first, Ok("early".to_owned()));
    assert_eq!(second, Ok("late".to_owned()));
    assert_eq!(started.lock().unwrap().len(), 2, "each job ran once");
    // Any hub finds a result: hub C (which only ran it)...
    let on_c = c.jobs().result::<Tagged>(late_id).unwrap();
    assert_eq!(
        within("the result on hub C", on_c).await,
        Ok("late".to_owned())
    );
    // ...the member again, on hub B...
    let again = member.jobs().result::<Tagged>(early_id).await.unwrap();
    assert_eq!(
        within("the result again", again).await,
        Ok("early".to_owned())
    );
    // ...but not another member: the result is the submitter's.
    let other = Member::builder(consumer_of(&c)).connect().await.unwrap();
    let theirs = other.jobs().result::<Tagged>(early_id).await;
    let theirs = match theirs {
        Ok(handle) => within("the lookup", handle).await,
        Err(error) => Err(error),
    };
    assert_eq!(theirs, Err(JobError::NotFound));
    // A job nobody submitted is not found anywhere.
    let unknown = c.jobs().result::<Tagged>(42).unwrap();
    assert_eq!(within("the lookup", unknown).await, Err(JobError::NotFound));
    other.shutdown().await;
    member.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_cancelled_from_a_hub_other_than_its_submitters() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [(a, _), (b, _), (c, store_c)] = hubs(&server, options(), QueueOptions::default()).await;
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let _worker = gated_worker(&c, 1, Arc::clone(&started), Arc::clone(&gate)).await;
    let running = a.jobs().submit(&tagged("running")).await.unwrap();
    until("the job to start on hub C", || {
        started.lock().unwrap().len() == 1
    })
    .await;
    // Hub B never saw the job: it looks it up, and its handle cancels it everywhere.
    let from_b = b.jobs().result::<Tagged>(running.id()).unwrap();
    from_b.cancel();
    assert_eq!(
        within("the cancel on A", running).await,
        Err(JobError::Cancelled)
    );
    until("hub C to terminate it", || {
        store_c.jetstream_stats().terminated == 1
    })
    .await;
    assert_eq!(c.jobs().stats().active, 0);
    shutdown([a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_that_end_together_are_stored_in_few_messages() {
    const JOBS: usize = 64;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [(a, store_a), (c, store_c)] = hubs(&server, options(), QueueOptions::default()).await;
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let _worker = gated_worker(&c, JOBS, Arc::clone(&started), Arc::clone(&gate)).await;
    let mut handles = Vec::new();
    for i in 0..JOBS {
        handles.push(a.jobs().submit(&tagged(&format!("t{i}"))).await.unwrap());
    }
    until("every job to start on hub C", || {
        started.lock().unwrap().len() == JOBS
    })
    .await;
    gate.add_permits(JOBS);
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(within("a result", handle).await, Ok(format!("t{i}")));
    }
    // Each round of outcomes is one message: those that came while one was being stored
    // went in the next (one message per job before).
    let stats = store_c.jetstream_stats();
    assert_eq!(stats.acked, JOBS as u64);
    assert!(
        stats.outcome_messages <= (JOBS / 4) as u64,
        "{} messages for {JOBS} outcomes",
        stats.outcome_messages
    );
    assert_eq!(store_a.jetstream_stats().outcome_messages, 0);
    shutdown([a, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_a_killed_hub_stored_are_found_by_id_on_the_others() {
    const JOBS: usize = 100;
    let Some(server) = NatsServer::start() else {
        return;
    };
    // Hub C, a process, runs every job; hub A submits them; hub B never saw them.
    let (mut hub_c, port_c) = spawn_jetstream_hub(&server, 1000).await;
    let [(a, _), (b, _)] = hubs(&server, options(), QueueOptions::default()).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let worker = tag_worker(port_c, "C", Arc::clone(&log)).await;
    let mut handles = Vec::new();
    for i in 0..JOBS {
        handles.push(a.jobs().submit(&tagged(&format!("t{i}"))).await.unwrap());
    }
    let mut ids = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        ids.push(handle.id());
        assert_eq!(within("a result on A", handle).await, Ok(format!("t{i}")));
    }
    assert_eq!(log.lock().unwrap().len(), JOBS, "each job ran once, on C");
    hub_c.kill().await.unwrap();
    drop(worker);
    // The outcomes are in the results stream: B finds each by id, C gone.
    for (i, id) in ids.into_iter().enumerate() {
        let handle = b.jobs().result::<Tagged>(id).unwrap();
        assert_eq!(within("a result on B", handle).await, Ok(format!("t{i}")));
    }
    shutdown([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_whose_submitters_hub_was_killed_is_found_by_id_on_another_hub() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (mut hub_a, port_a) = spawn_jetstream_hub(&server, 1000).await;
    let (b, _) = hub_on(&server, options(), QueueOptions::default()).await;
    let member = Member::builder(Consumer::builder().host("127.0.0.1").port(port_a))
        .connect()
        .await
        .unwrap();
    // No worker anywhere: the job waits in the job stream.
    let id = member.jobs().submit(&tagged("waiting")).await.unwrap().id();
    hub_a.kill().await.unwrap();
    // No hub knows the job now (its submitter is gone, nobody runs it): hub B finds it
    // in the job stream, so the lookup waits for its outcome instead of `NotFound`.
    let handle = b.jobs().result::<Tagged>(id).unwrap();
    let mut handle = std::pin::pin!(handle);
    let early = tokio::time::timeout(Duration::from_secs(1), handle.as_mut()).await;
    assert!(early.is_err(), "resolved while the job waits: {early:?}");
    let log = Arc::new(Mutex::new(Vec::new()));
    let _worker = tag_worker(b.provider().port(), "B", Arc::clone(&log)).await;
    assert_eq!(
        within("the result on hub B", handle).await,
        Ok("waiting".to_owned())
    );
    drop(member);
    b.shutdown().await;
}
