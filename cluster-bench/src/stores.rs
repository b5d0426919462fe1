//! `cluster-bench stores`: the durable job store (`LogStore`, our journal) on the local
//! disk, measured the way the queue uses it, beside the candidate we rejected (redb 4, a
//! B-tree with transactions; with `--features redb`), and the hub's restart time and data
//! directory size.
//!
//! - **Journal:** 200,000 jobs go through (submitted, started, completed) with a commit
//!   per 16 changes, as a worker's answer frame commits; four threads at once, as hubs
//!   take submissions and answers from several connections: jobs/s, fsyncs/s, bytes
//!   written per job.
//! - **Restart:** 1,000,000 jobs waiting on disk: the time `LogStore::open` and recovery
//!   take, and the time a hub takes to start on the directory (recovery and its queue
//!   rebuilt).
//! - **Growth:** 1,000,000 jobs through under steady load (at most ~1,000 alive): the
//!   directory's size before, at its largest, and after.
//! - **redb:** the same jobs, one table from job id to its record: a write transaction per
//!   commit point (submitted: insert; started: update; completed: remove), each durable;
//!   group commit by batching the four threads' changes into one transaction each time
//!   one commits. And the same restart: open, and read every waiting job back.

use cluster_rpc::jobs::store::{Change, Commit, Owner};
use cluster_rpc::jobs::{JobStore, LogOptions, LogStore};
use cluster_rpc::{Hub, JobOptions, QueueOptions};
use cluster_transport::Provider;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `cluster-bench stores`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Jobs through for the journal figures.
    #[arg(long, default_value_t = 200_000)]
    jobs: u64,
    /// Jobs waiting on disk for the restart figures.
    #[arg(long, default_value_t = 1_000_000)]
    waiting: u64,
    /// Where to put the data directories (default: the system's temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Jobs per commit: a worker's answer frame.
const PER_COMMIT: u64 = 16;
/// Threads recording at once.
const THREADS: u64 = 4;

/// The 64-byte W5 payload of job `i`.
fn payload(i: u64) -> [u8; 64] {
    let mut data = [b'P'; 64];
    data[..8].copy_from_slice(&i.to_le_bytes());
    data
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    println!("journal (LogStore, group commit), {} jobs through, {THREADS} threads, a commit per {PER_COMMIT} jobs:", args.jobs);
    let dir = tempfile::tempdir_in(&base)?;
    journal_through(dir.path(), args.jobs)?;
    println!("journal restart with {} jobs waiting:", args.waiting);
    let dir = tempfile::tempdir_in(&base)?;
    journal_restart(dir.path(), args.waiting)?;
    println!("journal growth, 1,000,000 jobs through, ~1,000 alive:");
    let dir = tempfile::tempdir_in(&base)?;
    journal_growth(dir.path(), 1_000_000)?;
    #[cfg(feature = "redb")]
    {
        println!("redb 4 (rejected), {} jobs through, {THREADS} threads, a commit per {PER_COMMIT} jobs:", args.jobs);
        let dir = tempfile::tempdir_in(&base)?;
        redb_store::through(&dir.path().join("jobs.redb"), args.jobs)?;
        println!("redb 4 restart with {} jobs waiting:", args.waiting);
        let dir = tempfile::tempdir_in(&base)?;
        redb_store::restart(&dir.path().join("jobs.redb"), args.waiting)?;
    }
    #[cfg(not(feature = "redb"))]
    println!("(redb: build with `--features redb` to measure it too)");
    Ok(())
}

/// Queues a commit and returns where its outcome arrives.
fn commit(store: &LogStore) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    store.sync(Commit::new(move |_| {
        let _ = tx.send(());
    }));
    rx
}

/// One job's three changes.
fn job_through(store: &LogStore, id: u64, options: &JobOptions, worker: uuid::Uuid) {
    let id = u128::from(id);
    store.record(&Change::Submitted {
        id,
        name: "fnv",
        payload: &payload(id as u64),
        options,
        owner: Owner::HUB,
        at: 1,
    });
    store.record(&Change::Started {
        id,
        attempt: 1,
        worker,
        at: 2,
    });
    store.record(&Change::Completed {
        id,
        attempt: 1,
        output: &id.to_le_bytes()[..8],
        at: 3,
        retain_until: 0,
    });
}

fn journal_through(dir: &Path, jobs: u64) -> anyhow::Result<()> {
    let store = Arc::new(LogStore::open(dir, LogOptions::default())?);
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let options = JobOptions::default();
                let worker = uuid::Uuid::from_u128(7);
                // Commits in flight are awaited in order, a few at a time, as answer
                // frames from several workers are.
                let mut waiting = std::collections::VecDeque::new();
                let mut id = t;
                while id < jobs {
                    for _ in 0..PER_COMMIT {
                        if id < jobs {
                            job_through(&store, id, &options, worker);
                            id += THREADS;
                        }
                    }
                    waiting.push_back(commit(&store));
                    if waiting.len() > 8 {
                        if let Some(rx) = waiting.pop_front() {
                            let _ = rx.recv();
                        }
                    }
                }
                for rx in waiting {
                    let _ = rx.recv();
                }
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a recording thread panicked"))?;
    }
    let took = start.elapsed().as_secs_f64();
    let stats = store.stats();
    println!(
        "  {:.0} jobs/s, {} fsyncs ({:.0}/s, {:.1} jobs each), {:.0} bytes written/job, {} commits",
        jobs as f64 / took,
        stats.fsyncs,
        stats.fsyncs as f64 / took,
        jobs as f64 / stats.fsyncs.max(1) as f64,
        stats.bytes_written as f64 / jobs as f64,
        stats.commits
    );
    Ok(())
}

fn journal_restart(dir: &Path, waiting: u64) -> anyhow::Result<()> {
    {
        let store = LogStore::open(dir, LogOptions::default())?;
        let options = JobOptions::default();
        for id in 0..waiting {
            store.record(&Change::Submitted {
                id: u128::from(id),
                name: "fnv",
                payload: &payload(id),
                options: &options,
                owner: Owner::HUB,
                at: 1,
            });
        }
        let _ = commit(&store).recv();
        store.close();
    }
    let bytes = dir_bytes(dir);
    let start = Instant::now();
    let store = LogStore::open(dir, LogOptions::default())?;
    let recovered = store.recover()?.jobs.len();
    let open = start.elapsed();
    store.close();
    drop(store);
    anyhow::ensure!(
        recovered as u64 == waiting,
        "recovered {recovered} of {waiting}"
    );
    // The whole hub: the store opened and recovered, the queue rebuilt, the port bound.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (hub_took, stats) = runtime.block_on(async {
        let start = Instant::now();
        let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(0))
            .job_queue(QueueOptions::default().capacity(usize::MAX))
            .jobs_storage(dir)
            .start()
            .await?;
        let took = start.elapsed();
        let stats = hub.jobs().stats();
        hub.shutdown().await;
        anyhow::Ok((took, stats))
    })?;
    anyhow::ensure!(
        stats.waiting as u64 == waiting,
        "the hub has {} waiting",
        stats.waiting
    );
    println!(
        "  {} MB on disk; store open + recovery {:.0} ms; hub start (recovery, queue rebuilt) {:.0} ms",
        bytes / 1_000_000,
        open.as_secs_f64() * 1e3,
        hub_took.as_secs_f64() * 1e3
    );
    Ok(())
}

fn journal_growth(dir: &Path, jobs: u64) -> anyhow::Result<()> {
    let store = LogStore::open(dir, LogOptions::default())?;
    let options = JobOptions::default();
    let worker = uuid::Uuid::from_u128(7);
    let before = dir_bytes(dir);
    let mut largest = before;
    let start = Instant::now();
    let mut alive = std::collections::VecDeque::new();
    for id in 0..jobs {
        store.record(&Change::Submitted {
            id: u128::from(id),
            name: "fnv",
            payload: &payload(id),
            options: &options,
            owner: Owner::HUB,
            at: 1,
        });
        alive.push_back(id);
        if alive.len() > 1_000 {
            if let Some(done) = alive.pop_front() {
                let done = u128::from(done);
                store.record(&Change::Started {
                    id: done,
                    attempt: 1,
                    worker,
                    at: 2,
                });
                store.record(&Change::Completed {
                    id: done,
                    attempt: 1,
                    output: b"12345678",
                    at: 3,
                    retain_until: 0,
                });
            }
        }
        if id % 4096 == 0 {
            let _ = commit(&store).recv();
            largest = largest.max(dir_bytes(dir));
        }
    }
    let _ = commit(&store).recv();
    let through = start.elapsed();
    // Compaction runs beside the writer: wait until it caught up (the writer looks at it
    // when it wakes, every 20 ms at most).
    let settle = Instant::now();
    while segments(dir) > 1 && settle.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = settle.elapsed();
    let after = dir_bytes(dir);
    let stats = store.stats();
    println!(
        "  {:.0} jobs/s through; directory {} KB before, {} KB at its largest, {} KB after \
         ({} compactions, {} MB written; caught up {:.1} s after the load)",
        jobs as f64 / through.as_secs_f64(),
        before / 1000,
        largest / 1000,
        after / 1000,
        stats.compactions,
        stats.bytes_written / 1_000_000,
        settled.as_secs_f64()
    );
    store.close();
    Ok(())
}

/// Journal segments in `dir` (the active one, and closed ones not compacted yet).
fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
                .count()
        })
        .unwrap_or(0)
}

/// Bytes the files in `dir` take.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(feature = "redb")]
mod redb_store {
    //! The rejected candidate, doing what the journal does.

    use super::{payload, PER_COMMIT, THREADS};
    use anyhow::Context;
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
    use std::path::Path;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Instant;

    const JOBS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("jobs");

    /// One change: a submitted job's record (insert), started (update), completed (remove).
    enum Op {
        Put(u128, Vec<u8>),
        Remove(u128),
    }

    /// Group commit over redb: changes pile up; whoever commits takes them all into one
    /// write transaction (durable at commit), the others wait for it.
    struct Group {
        db: Database,
        pending: Mutex<(Vec<Op>, u64, u64)>, // ops, batch number taken, batch number done
        done: Condvar,
        commits: Mutex<u64>,
    }

    impl Group {
        fn push(&self, ops: Vec<Op>) -> anyhow::Result<()> {
            let my_batch = {
                let mut p = self
                    .pending
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                p.0.extend(ops);
                p.1 + 1
            };
            loop {
                let mut p = self
                    .pending
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                if p.2 >= my_batch {
                    return Ok(());
                }
                if p.1 >= my_batch {
                    // Another thread is committing our changes: wait for it.
                    drop(self.done.wait(p).map_err(|_| anyhow::anyhow!("poisoned"))?);
                    continue;
                }
                p.1 = my_batch;
                let ops = std::mem::take(&mut p.0);
                drop(p);
                let txn = self.db.begin_write()?;
                {
                    let mut table = txn.open_table(JOBS)?;
                    for op in ops {
                        match op {
                            Op::Put(id, record) => {
                                table.insert(id, record.as_slice())?;
                            }
                            Op::Remove(id) => {
                                table.remove(id)?;
                            }
                        }
                    }
                }
                txn.commit()?;
                *self
                    .commits
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))? += 1;
                let mut p = self
                    .pending
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                p.2 = p.2.max(my_batch);
                self.done.notify_all();
                return Ok(());
            }
        }
    }

    fn record(id: u64, stage: u8) -> Vec<u8> {
        let mut r = Vec::with_capacity(80);
        r.push(stage);
        r.extend_from_slice(&payload(id));
        r.extend_from_slice(&[0; 8]);
        r
    }

    pub(super) fn through(path: &Path, jobs: u64) -> anyhow::Result<()> {
        let group = Arc::new(Group {
            db: Database::create(path).context("redb create")?,
            pending: Mutex::new((Vec::new(), 0, 0)),
            done: Condvar::new(),
            commits: Mutex::new(0),
        });
        let start = Instant::now();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let group = Arc::clone(&group);
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let mut id = t;
                    while id < jobs {
                        let mut ops = Vec::new();
                        for _ in 0..PER_COMMIT {
                            if id < jobs {
                                let key = u128::from(id);
                                ops.push(Op::Put(key, record(id, 1)));
                                ops.push(Op::Put(key, record(id, 2)));
                                ops.push(Op::Remove(key));
                                id += THREADS;
                            }
                        }
                        group.push(ops)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
        }
        let took = start.elapsed().as_secs_f64();
        let commits = *group
            .commits
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "  {:.0} jobs/s, {commits} durable commits ({:.0}/s, {:.1} jobs each), file {} KB at the end",
            jobs as f64 / took,
            commits as f64 / took,
            jobs as f64 / commits.max(1) as f64,
            bytes / 1000
        );
        Ok(())
    }

    pub(super) fn restart(path: &Path, waiting: u64) -> anyhow::Result<()> {
        {
            let db = Database::create(path)?;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(JOBS)?;
                for id in 0..waiting {
                    table.insert(u128::from(id), record(id, 1).as_slice())?;
                }
            }
            txn.commit()?;
        }
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let start = Instant::now();
        let db = Database::create(path)?;
        let txn = db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let mut jobs = Vec::with_capacity(waiting as usize);
        for row in table.iter()? {
            let (id, record) = row?;
            jobs.push((id.value(), record.value().to_vec()));
        }
        let took = start.elapsed();
        anyhow::ensure!(
            jobs.len() as u64 == waiting,
            "read {} of {waiting}",
            jobs.len()
        );
        println!(
            "  {} MB on disk; open + read every job back {:.0} ms",
            bytes / 1_000_000,
            took.as_secs_f64() * 1e3
        );
        Ok(())
    }
}
