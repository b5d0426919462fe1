//! The durable job queue end to end, on real disk in temp dirs: a hub process killed with
//! -9 mid-run and restarted on its data directory, restarts keeping waiting, delayed and
//! dead jobs and results, unique keys, result retention and lookups by id, member handles
//! re-attaching after a reconnect, a full store, a newer format, group commit.

mod common;

use common::fnv::{fnv, numbered as job, work, Fnv};
use common::*;
use futures_util::stream::{FuturesUnordered, StreamExt};
use network_cluster::prelude::*;
use network_cluster::rpc::jobs::{LogOptions, StoreError};
use network_cluster::rpc::{Job, JobError, JobHandle, JobOptions, QueueOptions, StartError};
use network_cluster::transport::ConsumerEvent;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// Always fails.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doomed;

impl Job for Doomed {
    const NAME: &'static str = "doomed";
    type Output = ();
}

fn member_of(port: u16) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .reconnect_interval(Duration::from_millis(50))
        .max_attempts(200)
}

async fn hub_on(dir: &Path, queue: QueueOptions) -> Hub {
    Hub::builder(local())
        .job_queue(queue)
        .jobs_storage(dir)
        .start()
        .await
        .unwrap()
}

async fn wait_workers(hub: &Hub, n: usize) {
    within("workers to join", async {
        while hub.jobs().stats().workers.len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A hub process (`test_peer hub`) on `port` (0: any) keeping its jobs in `dir`: the
/// process and its port.
async fn spawn_hub(port: u16, dir: &Path) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new(test_peer())
        .args(["hub", &port.to_string(), &dir.display().to_string()])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the hub process");
    let stdout = child.stdout.take().expect("hub stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = within("the hub process to listen", lines.next_line()).await;
    let line = ready.ok().flatten().unwrap_or_default();
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("hub process said {line:?}"));
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_run_loses_no_job_and_answers_each_once() {
    const JOBS: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, port) = spawn_hub(0, dir.path()).await;
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(spawn_peer("worker", port).await);
    }
    let submitter = Member::builder(member_of(port)).connect().await.unwrap();
    // Every job accepted (durable) before any result is counted; 512 submissions in
    // flight share the journal's fsyncs.
    async fn outcome(i: u64, handle: JobHandle<u64>) -> (u64, u128, Result<u64, JobError>) {
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
    let answered = Arc::new(AtomicUsize::new(0));
    let mut results: HashMap<u64, u128> = HashMap::new();
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Some((i, id, result)) = tokio::time::timeout_at(deadline, pending.next())
        .await
        .expect("every job answered in time")
    {
        assert_eq!(result, Ok(fnv(&i.to_le_bytes())), "job {i}");
        assert!(results.insert(i, id).is_none(), "job {i} answered twice");
        answered.fetch_add(1, Ordering::Relaxed);
        if !killed && results.len() as u64 >= JOBS * 2 / 5 {
            // SIGKILL: no goodbye, nothing flushed.
            hub.kill().await.unwrap();
            let (restarted, same) = spawn_hub(port, dir.path()).await;
            assert_eq!(same, port);
            hub = restarted;
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(results.len() as u64, JOBS);
    let ids: std::collections::HashSet<_> = results.values().collect();
    assert_eq!(ids.len() as u64, JOBS, "one job per submission");
    // The restarted hub has nothing left to do.
    let stats = within("stats", submitter.jobs().stats()).await.unwrap();
    assert_eq!(
        (stats.waiting, stats.delayed, stats.active),
        (0, 0, 0),
        "{stats:?}"
    );
    submitter.shutdown().await;
}

#[tokio::test]
async fn a_restart_brings_back_waiting_delayed_and_dead_jobs_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let queue = QueueOptions::default()
        .max_attempts(1)
        .backoff(Duration::from_millis(1));
    let hub = hub_on(dir.path(), queue.clone()).await;
    let port = hub.provider().port();
    let worker = Member::builder(member_of(port))
        .worker(work)
        .worker(|_: Doomed, _| async { Err::<(), _>("never works") })
        .connect()
        .await
        .unwrap();
    wait_workers(&hub, 1).await;
    let done = hub.jobs().submit(&job(1, 0)).await.unwrap();
    let done_id = done.id();
    assert_eq!(within("job", done).await, Ok(fnv(&1u64.to_le_bytes())));
    let dead = hub.jobs().submit(&Doomed).await.unwrap();
    let dead_id = dead.id();
    assert!(matches!(
        within("dead", dead).await,
        Err(JobError::Dead { .. })
    ));
    worker.shutdown().await;
    within("worker gone", async {
        while !hub.jobs().stats().workers.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // No worker now: these wait.
    let mut waiting = Vec::new();
    for i in 10..15 {
        waiting.push(hub.jobs().submit(&job(i, 0)).await.unwrap().id());
    }
    let later = JobOptions::default().delay(Duration::from_secs(3600));
    let delayed = hub
        .jobs()
        .submit_with(&job(99, 0), later)
        .await
        .unwrap()
        .id();
    hub.shutdown().await;

    let hub = hub_on(dir.path(), queue).await;
    let stats = hub.jobs().stats();
    assert_eq!(
        (stats.waiting, stats.delayed, stats.dead),
        (5, 1, 1),
        "{stats:?}"
    );
    assert_eq!(hub.jobs().dead_letters()[0].id, dead_id);
    assert_eq!(hub.jobs().dead_letters()[0].last_error, "never works");
    // The result kept from before the restart, by id.
    let kept = hub.jobs().result::<Fnv>(done_id).unwrap();
    assert_eq!(
        within("kept result", kept).await,
        Ok(fnv(&1u64.to_le_bytes()))
    );
    // Handles on the jobs that waited; a worker arrives and they run.
    let handles: Vec<_> = waiting
        .iter()
        .map(|id| hub.jobs().result::<Fnv>(*id).unwrap())
        .collect();
    let _worker = Member::builder(member_of(hub.provider().port()))
        .worker(work)
        .connect()
        .await
        .unwrap();
    for (i, handle) in (10u64..).zip(handles) {
        assert_eq!(
            within("recovered job", handle).await,
            Ok(fnv(&i.to_le_bytes()))
        );
    }
    assert!(hub.jobs().result::<Fnv>(delayed).is_ok());
    assert_eq!(
        hub.jobs().result::<Fnv>(12345).unwrap_err(),
        JobError::NotFound
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn unique_keys_return_the_existing_job_while_it_lives_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for the steps below on a loaded machine; then waited out.
    let queue = QueueOptions::default().result_retention(Duration::from_millis(1_500));
    let hub = hub_on(dir.path(), queue).await;
    let keyed = JobOptions::default().key("invoice-7");
    // No worker: the first waits, the second returns it.
    let first = hub
        .jobs()
        .submit_with(&job(7, 0), keyed.clone())
        .await
        .unwrap();
    let again = hub
        .jobs()
        .submit_with(&job(8, 0), keyed.clone())
        .await
        .unwrap();
    assert_eq!(first.id(), again.id());
    assert_eq!(hub.jobs().stats().waiting, 1);
    // Another name, or another key, is another job.
    let other = hub
        .jobs()
        .submit_with(&job(7, 0), JobOptions::default().key("invoice-8"))
        .await
        .unwrap();
    assert_ne!(other.id(), first.id());
    let _worker = Member::builder(member_of(hub.provider().port()))
        .worker(work)
        .connect()
        .await
        .unwrap();
    let expected = Ok(fnv(&7u64.to_le_bytes()));
    assert_eq!(within("first", first).await, expected);
    assert_eq!(within("again", again).await, expected);
    within("other", other).await.unwrap();
    // Completed, within the retention: the same job's result, at once.
    let kept = hub
        .jobs()
        .submit_with(&job(9, 0), keyed.clone())
        .await
        .unwrap();
    assert_eq!(within("kept", kept).await, expected);
    // A member's submission with the key joins it too.
    let member = Member::builder(member_of(hub.provider().port()))
        .connect()
        .await
        .unwrap();
    let from_member = member
        .jobs()
        .submit_with(&job(10, 0), keyed.clone())
        .await
        .unwrap();
    assert_eq!(within("member", from_member).await, expected);
    // Past the retention, the key is free: a new job.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let fresh = hub.jobs().submit_with(&job(11, 0), keyed).await.unwrap();
    assert_eq!(within("fresh", fresh).await, Ok(fnv(&11u64.to_le_bytes())));
    // A batch cannot share a key.
    let batch = [job(1, 0), job(2, 0)];
    let refused = hub
        .jobs()
        .submit_many_with(&batch, JobOptions::default().key("k"))
        .await
        .unwrap_err();
    assert!(matches!(refused, JobError::Invalid(_)), "{refused}");
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn results_are_kept_for_their_retention_then_forgotten() {
    let hub = Hub::builder(local())
        .job_queue(QueueOptions::default().result_retention(Duration::from_millis(200)))
        .start()
        .await
        .unwrap();
    let _worker = Member::builder(member_of(hub.provider().port()))
        .worker(work)
        .connect()
        .await
        .unwrap();
    wait_workers(&hub, 1).await;
    let handle = hub.jobs().submit(&job(3, 0)).await.unwrap();
    let id = handle.id();
    within("job", handle).await.unwrap();
    let again = hub.jobs().result::<Fnv>(id).unwrap();
    assert_eq!(within("kept", again).await, Ok(fnv(&3u64.to_le_bytes())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The dispatcher forgets expired results when it next runs.
    within("another job", hub.jobs().submit(&job(4, 0)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        hub.jobs().result::<Fnv>(id).unwrap_err(),
        JobError::NotFound
    );
    hub.shutdown().await;
}

/// A result let go because `max_results` were kept is forgotten on disk as well: a
/// restart does not bring it back (even with room for it then), and the journal does not
/// carry it, and rewrite it at each compaction, until its retention ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_let_go_for_room_are_forgotten_by_the_store_too() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_on(dir.path(), QueueOptions::default().max_results(2)).await;
    let worker = Member::builder(member_of(hub.provider().port()))
        .worker(work)
        .connect()
        .await
        .unwrap();
    wait_workers(&hub, 1).await;
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let handle = hub.jobs().submit(&job(i, 0)).await.unwrap();
        ids.push(handle.id());
        assert_eq!(within("job", handle).await, Ok(fnv(&i.to_le_bytes())));
    }
    worker.shutdown().await;
    hub.shutdown().await;
    // Restarted with room for every result: only the two kept come back.
    let hub = hub_on(dir.path(), QueueOptions::default()).await;
    for (i, id) in (0..5u64).zip(&ids) {
        let found = hub.jobs().result::<Fnv>(*id);
        if i < 3 {
            assert_eq!(found.unwrap_err(), JobError::NotFound, "job {i}");
        } else {
            let kept = within("kept result", found.unwrap()).await;
            assert_eq!(kept, Ok(fnv(&i.to_le_bytes())), "job {i}");
        }
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn a_members_handle_reattaches_after_its_connection_drops() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let port = hub.provider().port();
    let _worker = Member::builder(member_of(port))
        .worker(work)
        .connect()
        .await
        .unwrap();
    wait_workers(&hub, 1).await;
    let member = Member::builder(member_of(port).parameter("name", "submitter"))
        .connect()
        .await
        .unwrap();
    let slow = member.jobs().submit(&job(5, 300)).await.unwrap();
    let quick = member.jobs().submit(&job(6, 0)).await.unwrap();
    let quick_id = quick.id();
    // The hub drops the submitter's connection; it reconnects on its own.
    let conn = connection_named(hub.provider(), "submitter").await;
    conn.close(1011, "test: drop the submitter");
    assert_eq!(within("slow job", slow).await, Ok(fnv(&5u64.to_le_bytes())));
    assert_eq!(
        within("quick job", quick).await,
        Ok(fnv(&6u64.to_le_bytes()))
    );
    // A lookup by id from the member that submitted it; another member may not.
    let again = member.jobs().result::<Fnv>(quick_id).await.unwrap();
    assert_eq!(within("again", again).await, Ok(fnv(&6u64.to_le_bytes())));
    let stranger = Member::builder(member_of(port)).connect().await.unwrap();
    let refused = stranger.jobs().result::<Fnv>(quick_id).await.unwrap_err();
    assert_eq!(refused, JobError::NotFound);
    member.shutdown().await;
    stranger.shutdown().await;
    hub.shutdown().await;
}

/// A submission the hub answered before the member's connection dropped, but whose future
/// was first polled again after the member reconnected (the demo's submitter is busy
/// restarting the hub meanwhile): its handle still gets the job's result. Its id was not
/// known to the re-attach that followed the reconnect, so the handle attaches on its own.
#[tokio::test]
async fn a_submission_answered_before_a_reconnect_and_awaited_after_it_gets_its_result() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let port = hub.provider().port();
    let member = Member::builder(member_of(port).parameter("name", "submitter"))
        .connect()
        .await
        .unwrap();
    let (jobs, seven) = (member.jobs(), job(7, 0));
    let mut early = std::pin::pin!(jobs.submit(&seven));
    // One poll sends the submission; the hub answers it, but nobody polls the future.
    std::future::poll_fn(|cx| {
        assert!(std::future::Future::poll(early.as_mut(), cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await;
    // Answers come in order: once this one is here, so is the early one's.
    let later = within("a later submission", member.jobs().submit(&job(8, 0)))
        .await
        .unwrap();
    assert_eq!(hub.jobs().stats().waiting, 2);
    let mut events = member.consumer().events();
    let conn = connection_named(hub.provider(), "submitter").await;
    conn.close(1011, "test: drop the submitter");
    within("the submitter to reconnect", async {
        while !matches!(events.next().await, Some(ConsumerEvent::Open) | None) {}
    })
    .await;
    // A round trip on the new connection: the re-attach after the reconnect has run.
    within("stats", member.jobs().stats()).await.unwrap();
    let _worker = Member::builder(member_of(port))
        .worker(work)
        .connect()
        .await
        .unwrap();
    let early = within("the early submission", early).await.unwrap();
    assert_eq!(
        within("early job", early).await,
        Ok(fnv(&7u64.to_le_bytes()))
    );
    assert_eq!(
        within("later job", later).await,
        Ok(fnv(&8u64.to_le_bytes()))
    );
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_full_store_refuses_submissions_clearly_and_the_hub_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::builder(local())
        .jobs_storage_with(dir.path(), LogOptions::default().max_bytes(8 << 10))
        .start()
        .await
        .unwrap();
    let mut accepted = 0;
    let error = loop {
        match hub.jobs().submit(&job(accepted, 0)).await {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 10_000, "never full");
    };
    assert!(accepted > 10, "{accepted}");
    assert!(
        matches!(error, JobError::Store(StoreError::Full(_))),
        "{error}"
    );
    assert!(error.to_string().contains("full"), "{error}");
    // Refused jobs were not queued; the accepted ones are all there.
    let stats = hub.jobs().stats();
    assert_eq!(stats.waiting as u64, accepted, "{stats:?}");
    // A member's submission gets the same answer.
    let member = Member::builder(member_of(hub.provider().port()))
        .connect()
        .await
        .unwrap();
    let refused = member.jobs().submit(&job(1, 0)).await.unwrap_err();
    assert!(
        matches!(refused, JobError::Store(StoreError::Full(_))),
        "{refused}"
    );
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_directory_of_a_newer_format_is_refused_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    hub_on(dir.path(), QueueOptions::default())
        .await
        .shutdown()
        .await;
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("segment-"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[6] = 9; // the format version's low byte
    std::fs::write(&segment, &bytes).unwrap();
    let error = Hub::builder(local())
        .jobs_storage(dir.path())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StartError::Store(StoreError::NewerFormat { found: 9, .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("format version 9"), "{error}");
}

/// A tmpfs of `size` mounted at a fresh temporary directory (`ro` for a read-only one),
/// unmounted on drop; `None`, said loudly, where this process may not mount (not root, or
/// a container without the capability).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|out| out.status.success());
        if !mounted {
            eprintln!("!! SKIPPED: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)");
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A real full disk (a 256 KiB tmpfs, no size limit of the store's own): submissions fail
/// saying the store is full, what was accepted stays, and the hub goes on serving.
#[tokio::test]
async fn a_real_full_disk_refuses_submissions_clearly() {
    let Some(disk) = Tmpfs::mount("size=256k") else {
        return;
    };
    let hub = Hub::builder(local())
        .jobs_storage(disk.0.path())
        .start()
        .await
        .unwrap();
    let mut accepted = 0u64;
    let error = loop {
        match hub.jobs().submit(&job(accepted, 0)).await {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 100_000, "never full");
    };
    assert!(
        matches!(error, JobError::Store(StoreError::Full(_))),
        "{error}"
    );
    assert!(accepted > 10, "{accepted}");
    assert!(error.to_string().contains("full"), "{error}");
    // Refused jobs were not queued; the accepted ones are all there.
    assert_eq!(hub.jobs().stats().waiting as u64, accepted);
    hub.shutdown().await;
}

/// A data directory on a read-only disk: the hub refuses to start, saying why.
#[tokio::test]
async fn a_read_only_disk_is_refused_at_start_saying_so() {
    let Some(disk) = Tmpfs::mount("ro,size=1m") else {
        return;
    };
    let error = Hub::builder(local())
        .jobs_storage(disk.0.path())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(error, StartError::Store(StoreError::ReadOnly(_))),
        "{error:?}"
    );
    assert!(error.to_string().contains("read-only"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_share_fsyncs_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_on(dir.path(), QueueOptions::default()).await;
    let port = hub.provider().port();
    // Eight members submitting at once, 200 jobs each, each submission its own commit.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let member = Member::builder(member_of(port)).connect().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            for i in 0..200 {
                let jobs = member.jobs();
                in_flight.push(async move { jobs.submit(&job(i, 0)).await.map(|h| h.id()) });
            }
            while let Some(result) = in_flight.next().await {
                result.unwrap();
            }
            member.shutdown().await;
        }));
    }
    for task in tasks {
        within("submitters", task).await.unwrap();
    }
    let stats = hub.jobs().store_stats();
    assert_eq!(hub.jobs().stats().waiting, 1_600);
    assert!(stats.commits >= 1_600, "{stats:?}");
    assert!(
        stats.fsyncs * 4 <= stats.commits,
        "group commit: {} fsyncs for {} commits",
        stats.fsyncs,
        stats.commits
    );
    hub.shutdown().await;
}
