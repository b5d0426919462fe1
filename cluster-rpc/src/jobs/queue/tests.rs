//! The queue without a network: workers are links that record the frames they are sent,
//! and answers are fed back as a worker would send them.

use super::*;
use crate::envelope::Envelope;
use crate::jobs::handle::Outcome;
use crate::jobs::store::{Feed, PulledJob};
use crate::jobs::wire::{Batch, DONE_SUBJECT, PROGRESS_SUBJECT, RUN_SUBJECT};
use crate::jobs::InvalidJob;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

/// A worker's connection: keeps every frame, and wakes whoever waits for one.
#[derive(Default)]
struct Recorder {
    frames: StdMutex<Vec<Vec<u8>>>,
    sent: Notify,
}

impl Link for Recorder {
    fn send_frame(&self, frame: &[u8]) -> Result<(), crate::error::RpcError> {
        self.frames.lock().unwrap().push(frame.to_vec());
        self.sent.notify_one();
        Ok(())
    }

    fn close_for(&self, _code: u16, _reason: &str) {}
}

/// A job sent to a worker: id, attempt, name.
type Sent = (JobId, u32, String);

impl Recorder {
    /// The jobs sent to this worker since the last call.
    fn take_runs(&self) -> Vec<Sent> {
        let frames = std::mem::take(&mut *self.frames.lock().unwrap());
        let mut runs = Vec::new();
        for frame in frames {
            let Ok(Envelope::Publish { subject, payload }) = Envelope::decode(&frame) else {
                panic!("not a publish frame");
            };
            if subject == RUN_SUBJECT {
                for run in wire::runs(payload) {
                    let run = run.unwrap();
                    runs.push((run.id, run.attempt, run.name.to_owned()));
                }
            }
        }
        runs
    }

    /// Waits until at least one job was sent, and takes what was.
    async fn next_runs(&self) -> Vec<Sent> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let runs = self.take_runs();
                if !runs.is_empty() {
                    return runs;
                }
                self.sent.notified().await;
            }
        })
        .await
        .expect("no job was dispatched")
    }
}

fn queue(options: QueueOptions) -> Arc<Queue> {
    let store = Arc::new(crate::jobs::MemoryStore::new());
    Queue::start(
        options,
        CodecKind::default(),
        CancellationToken::new(),
        store,
    )
    .unwrap()
}

fn worker(queue: &Queue, names: &[&str], credits: usize) -> (Uuid, Arc<Recorder>) {
    let conn = Uuid::new_v4();
    let recorder = Arc::new(Recorder::default());
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    queue.worker_joined(
        conn,
        Arc::clone(&recorder) as Arc<dyn Link>,
        &names,
        credits,
        None,
    );
    (conn, recorder)
}

/// The outcome delivered so far, if any.
fn outcome_now(delivery: &mut Delivery, progress: &Progress) -> Option<Outcome> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match delivery.poll(progress, &mut cx) {
        std::task::Poll::Ready(outcome) => Some(outcome),
        std::task::Poll::Pending => None,
    }
}

fn submit(queue: &Queue, name: &str, options: JobOptions) -> Queued {
    queue.submit_here(name, vec![1], options).unwrap()
}

/// A worker's answer frame's payload for these attempts, each a success.
fn answer(queue: &Arc<Queue>, conn: Uuid, done: &[Sent]) {
    let mut batch = Batch::new(DONE_SUBJECT);
    for (id, attempt, _) in done {
        batch.push_done(*id, *attempt, Ok(&[0xc0]));
    }
    let Ok(Envelope::Publish { payload, .. }) = Envelope::decode(batch.frame()) else {
        panic!("not a publish frame");
    };
    queue.answers(conn, payload).unwrap();
}

#[tokio::test]
async fn a_name_without_a_free_worker_holds_up_no_other_name() {
    let queue = queue(QueueOptions::default());
    // Higher-priority jobs of a name nobody runs are queued first.
    for _ in 0..5 {
        submit(&queue, "resize", JobOptions::default().priority(9));
    }
    let fnv: Vec<Queued> = (0..3)
        .map(|_| submit(&queue, "fnv", JobOptions::default()))
        .collect();
    let (_, recorder) = worker(&queue, &["fnv"], 8);
    let runs = recorder.next_runs().await;
    let ids: Vec<JobId> = runs.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, fnv.iter().map(|(id, _, _)| *id).collect::<Vec<_>>());
    let stats = queue.stats();
    assert_eq!((stats.waiting, stats.active), (5, 3));
}

#[tokio::test]
async fn names_take_turns_on_a_worker_that_runs_both() {
    let queue = queue(QueueOptions::default());
    for _ in 0..10 {
        submit(&queue, "a", JobOptions::default());
    }
    for _ in 0..3 {
        submit(&queue, "b", JobOptions::default());
    }
    let (conn, recorder) = worker(&queue, &["a", "b"], 1);
    let mut order = String::new();
    for _ in 0..13 {
        let runs = recorder.next_runs().await;
        assert_eq!(runs.len(), 1, "one credit, one job at a time");
        order.push_str(&runs[0].2);
        answer(&queue, conn, &runs);
    }
    assert_eq!(order, "abababaaaaaaa");
}

#[tokio::test]
async fn priorities_then_first_in_first_out_within_a_name() {
    let queue = queue(QueueOptions::default());
    let mut by_tag = Vec::new();
    for (priority, tag) in [(0, 10), (5, 50), (1, 11), (5, 51), (9, 90)] {
        let (id, _, _) = submit(&queue, "x", JobOptions::default().priority(priority));
        by_tag.push((id, tag));
    }
    let (conn, recorder) = worker(&queue, &["x"], 1);
    let mut order = Vec::new();
    for _ in 0..5 {
        let runs = recorder.next_runs().await;
        let tag = by_tag.iter().find(|(id, _)| *id == runs[0].0).unwrap().1;
        order.push(tag);
        answer(&queue, conn, &runs);
    }
    assert_eq!(order, [90, 50, 51, 11, 10]);
}

#[tokio::test]
async fn options_past_the_limits_are_refused_and_dispatch_goes_on() {
    let queue = queue(QueueOptions::default());
    let (_, recorder) = worker(&queue, &["x"], 4);
    for options in [
        JobOptions::default().timeout(Duration::MAX),
        JobOptions::default().delay(Duration::MAX),
        JobOptions::default().max_attempts(u32::MAX),
    ] {
        let refused = queue.submit_here("x", vec![1], options).map(|_| ());
        assert!(matches!(refused, Err(JobError::Invalid(_))), "{refused:?}");
    }
    assert!(matches!(
        queue.submit_here("", vec![1], JobOptions::default()),
        Err(JobError::Invalid(InvalidJob::Name { .. }))
    ));
    let (id, _, _) = submit(&queue, "x", JobOptions::default());
    assert_eq!(recorder.next_runs().await[0].0, id);
}

#[tokio::test]
async fn credits_past_the_limit_are_clamped() {
    let queue = queue(QueueOptions::default().worker_credits_limit(3));
    let (_, recorder) = worker(&queue, &["x"], usize::MAX);
    assert_eq!(queue.stats().workers[0].credits, 3);
    for _ in 0..10 {
        submit(&queue, "x", JobOptions::default());
    }
    assert_eq!(recorder.take_runs().len(), 3);
    assert_eq!(queue.stats().active, 3);
}

#[tokio::test]
async fn progress_counts_only_from_the_worker_running_the_attempt() {
    let queue = queue(QueueOptions::default());
    let (runner, recorder) = worker(&queue, &["x"], 1);
    let (id, _, progress) = submit(&queue, "x", JobOptions::default());
    let (other, _) = worker(&queue, &["x"], 1);
    let attempt = recorder.next_runs().await[0].1;
    let report = |conn, value| {
        let mut batch = Batch::new(PROGRESS_SUBJECT);
        batch.push_progress(id, attempt, value);
        let Ok(Envelope::Publish { payload, .. }) = Envelope::decode(batch.frame()) else {
            panic!("not a publish frame");
        };
        queue.progress(conn, payload).unwrap();
    };
    report(other, 0.9);
    assert_eq!(
        progress.get(),
        0.0,
        "a forged report from another worker counts"
    );
    report(runner, 0.5);
    assert_eq!(progress.get(), 0.5);
}

#[tokio::test]
async fn a_member_cancels_only_its_own_jobs() {
    let queue = queue(QueueOptions::default());
    let owner = Uuid::new_v4();
    let link: Arc<dyn Link> = Arc::new(Recorder::default());
    let submitter = Submitter::Member {
        conn: owner,
        link,
        ticket: 1,
    };
    let (id, progress) = queue
        .submit(
            "x",
            vec![1],
            JobOptions::default(),
            submitter,
            crate::jobs::store::Owner(42),
        )
        .unwrap();
    let mut batch = Batch::new(wire::CANCEL_SUBJECT);
    batch.push_cancel(id);
    let Ok(Envelope::Publish { payload, .. }) = Envelope::decode(batch.frame()) else {
        panic!("not a publish frame");
    };
    queue.cancel_for(Uuid::new_v4(), payload).unwrap();
    assert!(!progress.is_cancelled());
    assert_eq!(queue.stats().waiting, 1);
    queue.cancel_for(owner, payload).unwrap();
    assert!(progress.is_cancelled());
    assert_eq!(queue.stats().waiting, 0);
}

#[tokio::test]
async fn a_dropped_queue_stops_its_dispatcher() {
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let queue = queue(QueueOptions::default());
    assert_eq!(tasks(), before + 1);
    drop(queue);
    tokio::time::timeout(Duration::from_secs(5), async {
        while tasks() > before {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dispatcher outlived its queue");
}

/// A store that keeps the changes' kinds and holds every commit until told to finish them.
#[derive(Debug, Default)]
struct HeldStore {
    changes: StdMutex<Vec<String>>,
    commits: StdMutex<Vec<Commit>>,
}

impl HeldStore {
    fn kinds(&self) -> Vec<String> {
        std::mem::take(&mut *self.changes.lock().unwrap())
    }

    fn finish_all(&self, result: Result<(), StoreError>) -> usize {
        let commits = std::mem::take(&mut *self.commits.lock().unwrap());
        let n = commits.len();
        for commit in commits {
            commit.finish(result.clone());
        }
        n
    }
}

impl JobStore for HeldStore {
    fn recover(&self) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        let mut dead =
            super::super::store::RecoveredJob::new(3, "x".into(), vec![9], JobOptions::default());
        dead.state = RecoveredState::Dead;
        recovery.jobs = vec![
            super::super::store::RecoveredJob::new(1, "x".into(), vec![1], JobOptions::default()),
            super::super::store::RecoveredJob::new(2, "x".into(), vec![2], JobOptions::default()),
            dead,
        ];
        Ok(recovery)
    }

    fn record(&self, change: &Change<'_>) {
        let kind = format!("{change:?}");
        let kind = kind.split([' ', '{']).next().unwrap_or_default().to_owned();
        self.changes.lock().unwrap().push(kind);
    }

    fn sync(&self, commit: Commit) {
        self.commits.lock().unwrap().push(commit);
    }

    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    fn close(&self) {}
}

#[tokio::test]
async fn the_store_sees_every_change_and_gates_acceptance_and_results() {
    let store = Arc::new(HeldStore::default());
    let queue = Queue::start(
        QueueOptions::default(),
        CodecKind::default(),
        CancellationToken::new(),
        Arc::new(Arc::clone(&store)),
    )
    .unwrap();
    // Recovered: two waiting jobs and a dead letter.
    assert_eq!((queue.stats().waiting, queue.stats().dead), (2, 1));
    let (id, mut outcome, progress) = submit(&queue, "x", JobOptions::default());
    // Not accepted before the store's commit.
    let accepted = {
        let queue = Arc::clone(&queue);
        let progress = progress.clone();
        tokio::spawn(async move { queue.accepted([(id, &*progress)]).await })
    };
    tokio::task::yield_now().await;
    assert!(!accepted.is_finished());
    while store.finish_all(Ok(())) == 0 {
        tokio::task::yield_now().await;
    }
    accepted.await.unwrap().unwrap();
    let (conn, recorder) = worker(&queue, &["x"], 8);
    let mut runs = Vec::new();
    while runs.len() < 3 {
        runs.extend(recorder.next_runs().await);
    }
    answer(&queue, conn, &runs);
    // Completed, but not delivered before the commit of its completion.
    tokio::task::yield_now().await;
    assert!(outcome_now(&mut outcome, &progress).is_none());
    assert_eq!(store.finish_all(Ok(())), 1);
    assert!(outcome_now(&mut outcome, &progress).unwrap().is_ok());
    assert_eq!(
        store.kinds(),
        [
            "Submitted",
            "Started",
            "Started",
            "Started",
            "Completed",
            "Completed",
            "Completed"
        ]
    );
    // A submission the store cannot keep is refused and withdrawn: it never runs.
    let (id, _, progress) = submit(&queue, "y", JobOptions::default());
    let refused = {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move { queue.accepted([(id, &*progress)]).await })
    };
    while store.finish_all(Err(StoreError::Full("test".into()))) == 0 {
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        refused.await.unwrap(),
        Err(JobError::Store(StoreError::Full(_)))
    ));
    assert_eq!(queue.stats().waiting, 0);
    assert_eq!(store.kinds(), ["Submitted", "Cancelled"]);
}

#[tokio::test]
async fn a_death_is_answered_once_it_is_durable() {
    let store = Arc::new(HeldStore::default());
    let queue = Queue::start(
        QueueOptions::default(),
        CodecKind::default(),
        CancellationToken::new(),
        Arc::new(Arc::clone(&store)),
    )
    .unwrap();
    let (conn, recorder) = worker(&queue, &["doomed"], 1);
    let (_, mut outcome, progress) =
        submit(&queue, "doomed", JobOptions::default().max_attempts(1));
    let runs = recorder.next_runs().await;
    let (id, attempt, _) = runs[0];
    let mut batch = Batch::new(DONE_SUBJECT);
    batch.push_done(id, attempt, Err("boom"));
    let Ok(Envelope::Publish { payload, .. }) = Envelope::decode(batch.frame()) else {
        panic!("not a publish frame");
    };
    queue.answers(conn, payload).unwrap();
    // The store recovered one dead letter already.
    assert_eq!(queue.stats().dead, 2);
    // Dead, but not answered before the commit of its death: a crash before then runs
    // it again, and its submitter must not have had an answer.
    tokio::task::yield_now().await;
    assert!(outcome_now(&mut outcome, &progress).is_none());
    store.finish_all(Ok(()));
    assert!(matches!(
        outcome_now(&mut outcome, &progress),
        Some(Err(JobError::Dead { attempts: 1, .. }))
    ));
    let kinds = store.kinds();
    assert!(
        kinds.ends_with(&["Failed".to_owned(), "Dead".to_owned()]),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_handle_waiting_in_the_progress_is_woken_by_its_outcome() {
    let queue = queue(QueueOptions::default());
    let mut queued = queue
        .submit_many(
            "x",
            [Bytes::from_static(b"a"), Bytes::from_static(b"b")].into_iter(),
            &JobOptions::default(),
            |q| q,
        )
        .unwrap();
    let Some((_, mut delivery, progress)) = queued.pop() else {
        panic!("two jobs queued");
    };
    assert!(matches!(delivery, Delivery::Progress));
    let waiting =
        tokio::spawn(async move { std::future::poll_fn(|cx| delivery.poll(&progress, cx)).await });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    let (conn, recorder) = worker(&queue, &["x"], 8);
    let mut runs = Vec::new();
    while runs.len() < 2 {
        runs.extend(recorder.next_runs().await);
    }
    answer(&queue, conn, &runs);
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting handle was woken")
        .unwrap();
    assert_eq!(outcome.unwrap(), Bytes::from_static(&[0xc0]));
}

#[tokio::test]
async fn a_handle_whose_job_is_gone_unresolved_is_cancelled() {
    let queue = queue(QueueOptions::default());
    let (_, mut delivery, progress) = submit(&queue, "x", JobOptions::default());
    assert!(outcome_now(&mut delivery, &progress).is_none());
    // The queue goes without its dispatcher's farewell: the entry is dropped unresolved.
    drop(queue);
    let outcome = outcome_now(&mut delivery, &progress).expect("resolved once the entry is gone");
    assert!(matches!(outcome, Err(JobError::Cancelled)));
}

#[test]
fn an_entry_keeps_options_only_when_they_are_not_the_defaults() {
    let (entry, _) = state::Entry::new(Bytes::new(), JobOptions::default(), None);
    assert_eq!(*entry.options(), JobOptions::default());
    let options = JobOptions::default().priority(3).key("k");
    let (entry, _) = state::Entry::new(Bytes::new(), options.clone(), None);
    assert_eq!(*entry.options(), options);
}

/// `n` one-byte payloads.
fn payloads(n: usize) -> impl ExactSizeIterator<Item = Bytes> {
    (0..n).map(|_| Bytes::from_static(b"p"))
}

#[tokio::test]
async fn a_batch_of_several_chunks_holds_its_room_and_keeps_its_order() {
    let capacity = 3 * SUBMIT_CHUNK;
    let queue = queue(QueueOptions::default().capacity(capacity));
    let n = 2 * SUBMIT_CHUNK + 1;
    let queued = queue
        .submit_many("x", payloads(n), &JobOptions::default(), |q| q)
        .unwrap();
    assert_eq!(queue.stats().waiting, n);
    // What is left of the capacity takes one batch of the rest, not one more job.
    let rest = capacity - n;
    let over = queue.submit_many("x", payloads(rest + 1), &JobOptions::default(), |q| q);
    assert!(matches!(over, Err(JobError::QueueFull { .. })));
    queue
        .submit_many("x", payloads(rest), &JobOptions::default(), |q| q)
        .unwrap();
    assert_eq!(queue.stats().waiting, capacity);
    assert!(queue
        .submit_here("x", vec![1], JobOptions::default())
        .is_err());
    // They run in the order submitted.
    let (_, recorder) = worker(&queue, &["x"], 4);
    let runs = recorder.next_runs().await;
    let ids: Vec<JobId> = runs.iter().map(|(id, _, _)| *id).collect();
    let first: Vec<JobId> = queued.iter().take(4).map(|(id, _, _)| *id).collect();
    assert_eq!(ids, first);
}

/// Announces one payload more than it yields.
struct Short(std::vec::IntoIter<Bytes>);

impl Iterator for Short {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.len() + 1;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Short {}

#[tokio::test]
async fn a_batch_shorter_than_announced_gives_its_room_back() {
    let queue = queue(QueueOptions::default().capacity(4));
    let short = Short(vec![Bytes::new(); 2].into_iter());
    queue
        .submit_many("x", short, &JobOptions::default(), |q| q)
        .unwrap();
    assert_eq!(queue.stats().waiting, 2);
    // The third place was held for the missing payload, and is free again.
    queue
        .submit_many("x", payloads(2), &JobOptions::default(), |q| q)
        .unwrap();
}

#[tokio::test]
async fn a_batch_waiting_without_entries_is_found_listed_cancelled_and_run() {
    let queue = queue(QueueOptions::default());
    let mut queued = queue
        .submit_many("x", payloads(3), &JobOptions::default(), |q| q)
        .unwrap();
    let ids: Vec<JobId> = queued.iter().map(|(id, _, _)| *id).collect();
    let info = queue.find(ids[0]).expect("a waiting job is found");
    assert_eq!(info.state, JobState::Waiting);
    assert_eq!((info.name.as_str(), info.attempts), ("x", 0));
    assert!(info.submitted_at > 0 && info.history.is_empty());
    let listed: Vec<JobId> = queue
        .list(JobState::Waiting, 10)
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, ids);
    // Cancelled by id while it waits: its handle resolves at once, the others still wait.
    assert!(queue.cancel_by_id(ids[1]));
    let (_, delivery, progress) = &mut queued[1];
    assert!(progress.is_cancelled());
    assert!(outcome_now(delivery, progress).is_none_or(|o| o.is_err()));
    assert_eq!(queue.stats().waiting, 2);
    // The first runs (its entry made now), completes, and its history shows the attempt.
    let (conn, recorder) = worker(&queue, &["x"], 1);
    let runs = recorder.next_runs().await;
    assert_eq!(runs, vec![(ids[0], 1, "x".to_owned())]);
    answer(&queue, conn, &runs);
    let (_, delivery, progress) = &mut queued[0];
    let outcome = outcome_now(delivery, progress).expect("resolved by its answer");
    assert_eq!(outcome.unwrap(), Bytes::from_static(&[0xc0]));
    let done = queue.find(ids[0]).expect("its result is kept");
    assert_eq!((done.state, done.history.len()), (JobState::Completed, 1));
    // The last one runs next; the queue goes before it is answered: its handle learns it.
    assert_eq!(recorder.next_runs().await[0].0, ids[2]);
    let (_, mut delivery, progress) = queued.pop().unwrap();
    drop(queue);
    let outcome = outcome_now(&mut delivery, &progress).expect("resolved once the entry is gone");
    assert!(outcome.is_err());
}

#[tokio::test]
async fn finished_entries_are_closed_at_once_and_their_boxes_reused() {
    let queue = queue(QueueOptions::default());
    let payloads = || [Bytes::from_static(b"a"), Bytes::from_static(b"b")].into_iter();
    let mut queued = queue
        .submit_many("x", payloads(), &JobOptions::default(), |q| q)
        .unwrap();
    let (conn, recorder) = worker(&queue, &["x"], 2);
    let mut runs = Vec::new();
    while runs.len() < 2 {
        runs.extend(recorder.next_runs().await);
    }
    answer(&queue, conn, &runs);
    for (_, delivery, progress) in &mut queued {
        assert_eq!(
            outcome_now(delivery, progress),
            Some(Ok(Bytes::from_static(&[0xc0])))
        );
        // Closed when the job resolved, not when its box is reused.
        assert!(progress.subscribe().has_changed().is_err());
    }
    assert_eq!(queue.state().spare.len(), 2);
    // The next fresh jobs' entries are made in those boxes.
    let next = queue
        .submit_many("x", payloads(), &JobOptions::default(), |q| q)
        .unwrap();
    assert_eq!(queue.stats().active, 2);
    assert_eq!(queue.state().spare.len(), 0);
    let mut runs = Vec::new();
    while runs.len() < 2 {
        runs.extend(recorder.next_runs().await);
    }
    answer(&queue, conn, &runs);
    for (_, mut delivery, progress) in next {
        assert!(outcome_now(&mut delivery, &progress).is_some_and(|o| o.is_ok()));
    }
}

#[tokio::test]
async fn jobs_pulled_together_are_queued_together_and_one_running_here_is_skipped() {
    let queue = queue(QueueOptions::default());
    let feed = Feed(Arc::downgrade(&queue));
    let (_, recorder) = worker(&queue, &["echo"], 8);
    let pulled = |id| PulledJob::new(id, "echo".into(), vec![1], JobOptions::default());
    let mut jobs = vec![pulled(1), pulled(2), pulled(3)];
    assert!(feed.pulled_many(&mut jobs));
    assert!(jobs.is_empty(), "taken in");
    // Dispatched in the one round that follows them.
    let frames = recorder.frames.lock().unwrap().len();
    let runs: Vec<JobId> = recorder.take_runs().iter().map(|run| run.0).collect();
    assert_eq!((runs, frames), (vec![1, 2, 3], 1));
    // Job 2 runs here already: the store keeps its claim, the job is not queued twice.
    let mut again = vec![pulled(2), pulled(4)];
    assert!(feed.pulled_many(&mut again));
    let runs: Vec<JobId> = recorder.take_runs().iter().map(|run| run.0).collect();
    assert_eq!(runs, [4]);
    // Once the hub stopped, nothing is taken: the store gives the jobs back.
    let stopped = Feed(std::sync::Weak::new());
    let mut late = vec![pulled(5)];
    assert!(!stopped.pulled_many(&mut late));
    assert_eq!(late.len(), 1);
}
