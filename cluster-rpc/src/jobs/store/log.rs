//! The embedded durable store: an append-only journal in a data directory, written by one
//! thread with group commit, and compacted in the background into snapshots.
//!
//! # On disk
//!
//! ```text
//! DIR/LOCK                      held (flock) while a hub uses the directory
//! DIR/snapshot-<n>.jobs         every job alive before segment n (at most one)
//! DIR/segment-<n>.jobs          the changes since, one file per segment
//! ```
//!
//! Each file starts with a header naming the format version; each record is framed by its
//! length and a CRC-32 of its body (little-endian: u32 length, u32 CRC, then a tag byte
//! and the change's fields). A restart loads the newest snapshot and replays the
//! segments after it. A record cut by a crash (a torn tail) or corrupted fails its
//! checksum: the replay stops there with a warning, and the file is cut back to its last
//! good record. A directory written by a newer format version is refused, saying so.
//!
//! # Group commit
//!
//! [`record`](JobStore::record) encodes a change into a buffer and returns;
//! [`sync`](JobStore::sync) queues a commit. The writer thread takes everything buffered
//! at once, writes it in one call and, under [`FsyncPolicy::Batch`], makes it durable with
//! one `fdatasync` for all the commits waiting: under load, thousands of submissions and
//! results share each fsync.
//!
//! # Compaction
//!
//! A segment is closed at [`LogOptions::segment_bytes`]. Once the closed segments reach
//! [`LogOptions::compact_after_bytes`], a background thread replays the last snapshot and
//! those segments, writes the jobs still alive (waiting, delayed, running, dead, and
//! results within their retention that the queue did not let go for room) into a new
//! snapshot, and deletes what it replaces. A first pass over the files finds where each
//! job is removed, so the replay skips the jobs gone by the end (under a steady load, most
//! of them) instead of building each. The directory's size follows the live jobs, not the
//! jobs that went through.

mod format;
mod replay;
mod writer;

use self::format::{check_header, BadHeader, FileKind, HEADER_LEN};
use self::replay::Replay;
use self::writer::{Files, Writer};
use super::{unix_millis, Change, Commit, JobStore, Recovery, StoreError, StoreStats};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// When the journal fsyncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FsyncPolicy {
    /// One fsync for everything waiting when the writer comes round (group commit): a
    /// submission is acknowledged, and a result delivered, once on disk; under load many
    /// share one fsync. Survives a crash of the process and of the machine.
    #[default]
    Batch,
    /// One fsync per commit (a submission call, a worker's answer frame), never shared:
    /// the same guarantee as `Batch`, at the disk's fsync rate.
    Each,
    /// Written to the operating system at once, never fsynced: survives a crash of the
    /// process (kill -9), not of the machine or the disk.
    Never,
}

/// Options of a [`LogStore`].
///
/// ```
/// use cluster_rpc::jobs::{FsyncPolicy, LogOptions};
/// let options = LogOptions::default().fsync(FsyncPolicy::Each).max_bytes(1 << 30);
/// assert_eq!(options.fsync, FsyncPolicy::Each);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LogOptions {
    /// When to fsync. Default: [`FsyncPolicy::Batch`].
    pub fsync: FsyncPolicy,
    /// A segment is closed past this size. Default: 32 MiB.
    pub segment_bytes: u64,
    /// Closed segments are compacted once they add up to this. Default: 64 MiB.
    pub compact_after_bytes: u64,
    /// Most bytes the directory may take; past it submissions fail with
    /// [`StoreError::Full`] until compaction frees room. Default: none (the disk's size).
    pub max_bytes: Option<u64>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Batch,
            segment_bytes: 32 << 20,
            compact_after_bytes: 64 << 20,
            max_bytes: None,
        }
    }
}

impl LogOptions {
    /// Sets [`fsync`](Self::fsync).
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.fsync = policy;
        self
    }

    /// Sets [`segment_bytes`](Self::segment_bytes).
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets [`compact_after_bytes`](Self::compact_after_bytes).
    pub fn compact_after_bytes(mut self, bytes: u64) -> Self {
        self.compact_after_bytes = bytes;
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }
}

/// The embedded durable store: see the [module docs](self).
///
/// ```
/// use cluster_rpc::jobs::{JobStore, LogOptions, LogStore};
/// let dir = std::env::temp_dir().join(format!("jobs-doc-{}", std::process::id()));
/// let store = LogStore::open(&dir, LogOptions::default())?;
/// assert!(store.recover()?.jobs.is_empty());
/// store.close();
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), cluster_rpc::StoreError>(())
/// ```
#[derive(Debug)]
pub struct LogStore {
    writer: Writer,
    recovery: Mutex<Option<Recovery>>,
}

impl LogStore {
    /// Opens (or creates) the store in `dir`: takes the directory's lock, replays what is
    /// there (cutting a torn tail), and starts a new segment and the writer thread.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process uses the directory,
    /// [`StoreError::NewerFormat`], [`StoreError::ReadOnly`] or [`StoreError::Io`].
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_error("creating the data directory", &e))?;
        let lock = lock(&dir)?;
        let mut files = Files::list(&dir)?;
        let mut replay = Replay::default();
        let mut buf = Vec::new();
        if let Some(n) = files.snapshot {
            let path = files.snapshot_path(n);
            load(&path, FileKind::Snapshot, &mut replay, &dir, &mut buf)?;
        }
        for &n in &files.segments {
            let path = files.segment_path(n);
            load(&path, FileKind::Segment, &mut replay, &dir, &mut buf)?;
        }
        let recovery = replay.recovery(unix_millis(SystemTime::now()));
        files.lock = Some(lock);
        let writer = Writer::start(files, options)?;
        Ok(Self {
            writer,
            recovery: Mutex::new(Some(recovery)),
        })
    }
}

/// Takes the directory's lock, held while the store is open (and released by the OS if
/// the process dies).
fn lock(dir: &Path) -> Result<File, StoreError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| io_error("opening the lock file", &e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| StoreError::Locked(dir.display().to_string()))?;
    Ok(file)
}

/// Replays one file into `replay`; cuts a torn or corrupted tail off it, with a warning.
fn load(
    path: &PathBuf,
    kind: FileKind,
    replay: &mut Replay,
    dir: &Path,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    replay.next_file();
    read_into(path, buf)?;
    let bytes = &*buf;
    match check_header(bytes, kind) {
        Ok(()) => {}
        Err(BadHeader::Newer(found)) => {
            return Err(StoreError::NewerFormat {
                path: dir.display().to_string(),
                found,
                supported: format::VERSION,
            })
        }
        Err(BadHeader::NotOurs) => {
            // A file cut before its header was complete (a crash as it was created) holds
            // nothing; anything else is not ours to touch.
            if bytes.len() < HEADER_LEN && kind == FileKind::Segment {
                tracing::warn!(file = %path.display(), "empty journal segment with a torn header; removed");
                fs::remove_file(path).map_err(|e| io_error("removing a torn segment", &e))?;
                return Ok(());
            }
            return Err(StoreError::Io(format!(
                "{} is not a job journal file of this library",
                path.display()
            )));
        }
    }
    let mut at = HEADER_LEN;
    while let Some((body, len)) = bytes.get(at..).and_then(format::frame) {
        if !replay.read(body) {
            break;
        }
        at += len;
    }
    if at < bytes.len() {
        tracing::warn!(
            file = %path.display(),
            valid_bytes = at,
            skipped_bytes = bytes.len() - at,
            "torn or corrupted journal tail skipped (a write cut by a crash); the file is cut back to its last good record"
        );
        let file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_error("opening the journal", &e))?;
        file.set_len(at as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("cutting a torn tail", &e))?;
    }
    Ok(())
}

/// Reads the file at `path` into `buf`, whose capacity is kept from file to file: a
/// compaction reads tens of MiB per file, and a fresh buffer for each costs a page fault
/// per 4 KiB.
pub(super) fn read_into(path: &Path, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    buf.clear();
    File::open(path)
        .and_then(|mut file| file.read_to_end(buf))
        .map_err(|e| io_error("reading the journal", &e))?;
    Ok(())
}

/// Classifies an I/O error.
pub(crate) fn io_error(context: &str, error: &std::io::Error) -> StoreError {
    let text = format!("{context}: {error}");
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            StoreError::Full(text)
        }
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            StoreError::ReadOnly(text)
        }
        _ => StoreError::Io(text),
    }
}

impl JobStore for LogStore {
    fn recover(&self) -> Result<Recovery, StoreError> {
        Ok(self
            .recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default())
    }

    fn record(&self, change: &Change<'_>) {
        self.writer.record(change);
    }

    fn sync(&self, commit: Commit) {
        self.writer.sync(commit);
    }

    fn check(&self) -> Result<(), StoreError> {
        self.writer.check()
    }

    fn stats(&self) -> StoreStats {
        self.writer.stats()
    }

    fn close(&self) {
        self.writer.close();
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.writer.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::store::{Owner, RecoveredState};
    use crate::jobs::JobOptions;
    use std::sync::mpsc;
    use uuid::Uuid;

    fn submitted(store: &LogStore, id: u128, options: &JobOptions) {
        store.record(&Change::Submitted {
            id,
            name: "fnv",
            payload: &id.to_le_bytes(),
            options,
            owner: Owner(5),
            at: 1_000,
        });
    }

    /// Queues a commit; the receiver gets its outcome.
    fn commit(store: &LogStore) -> mpsc::Receiver<Result<(), StoreError>> {
        let (tx, rx) = mpsc::channel();
        store.sync(Commit::new(move |r| {
            let _ = tx.send(r);
        }));
        rx
    }

    fn wait(rx: &mpsc::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the commit was not finished")
    }

    fn segment(dir: &Path) -> PathBuf {
        let mut segments: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("segment-"))
            .collect();
        segments.sort();
        segments.remove(0)
    }

    #[test]
    fn what_was_committed_comes_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let options = JobOptions::default().priority(2).key("once");
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        for id in 1..=5 {
            submitted(&store, id, &options);
        }
        let worker = Uuid::from_u128(77);
        for id in 1..=4 {
            store.record(&Change::Started {
                id,
                attempt: 1,
                worker,
                at: 2_000,
            });
        }
        store.record(&Change::Completed {
            id: 1,
            attempt: 1,
            output: b"one",
            at: 3_000,
            retain_until: u64::MAX,
        });
        store.record(&Change::Failed {
            id: 2,
            attempt: 1,
            error: "boom",
            retry_at: Some(u64::MAX),
            at: 3_000,
        });
        store.record(&Change::Failed {
            id: 3,
            attempt: 1,
            error: "dead",
            retry_at: None,
            at: 3_000,
        });
        store.record(&Change::Dead { id: 3, at: 3_000 });
        wait(&commit(&store)).unwrap();
        // Killed here: no close. The lock goes with the process; here, with the store.
        drop(store);
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        let recovery = store.recover().unwrap();
        let jobs: Vec<_> = recovery
            .jobs
            .iter()
            .map(|j| (j.id, j.state, j.attempts))
            .collect();
        assert_eq!(
            jobs,
            [
                (2, RecoveredState::Delayed(u64::MAX), 1),
                (3, RecoveredState::Dead, 1),
                (4, RecoveredState::Waiting, 1),
                (5, RecoveredState::Waiting, 0),
            ]
        );
        assert_eq!(recovery.jobs[0].options, options);
        assert_eq!(recovery.jobs[0].owner, Owner(5));
        assert_eq!(recovery.jobs[0].payload, 2u128.to_le_bytes());
        assert_eq!(recovery.jobs[1].history[0].error.as_deref(), Some("dead"));
        assert_eq!(recovery.jobs[2].history[0].worker, worker);
        assert_eq!(recovery.results.len(), 1);
        assert_eq!(recovery.results[0].output, b"one");
        assert_eq!(recovery.results[0].key.as_deref(), Some("once"));
    }

    #[test]
    fn a_second_hub_cannot_open_a_directory_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        let error = LogStore::open(dir.path(), LogOptions::default()).unwrap_err();
        assert!(matches!(error, StoreError::Locked(_)), "{error}");
        store.close();
        LogStore::open(dir.path(), LogOptions::default()).unwrap();
    }

    #[test]
    fn the_default_policy_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        let options = JobOptions::default();
        // 2,000 submissions, each its own commit, queued as fast as a busy hub would.
        let commits: Vec<_> = (0..2_000)
            .map(|id| {
                submitted(&store, id, &options);
                commit(&store)
            })
            .collect();
        for rx in &commits {
            wait(rx).unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.commits, 2_000);
        assert!(stats.fsyncs >= 1);
        // Every fsync covered many commits: a batch is what waited while the last fsync ran.
        assert!(
            stats.fsyncs * 10 <= stats.commits,
            "{} fsyncs for {} commits",
            stats.fsyncs,
            stats.commits
        );
        assert!(stats.writes <= stats.fsyncs + 2, "{stats:?}");
    }

    #[test]
    fn each_fsyncs_every_commit_and_never_none() {
        for (policy, expected) in [(FsyncPolicy::Each, 50), (FsyncPolicy::Never, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let store = LogStore::open(dir.path(), LogOptions::default().fsync(policy)).unwrap();
            let options = JobOptions::default();
            let commits: Vec<_> = (0..50)
                .map(|id| {
                    submitted(&store, id, &options);
                    commit(&store)
                })
                .collect();
            for rx in &commits {
                wait(rx).unwrap();
            }
            assert_eq!(store.stats().fsyncs, expected, "{policy:?}");
            drop(store);
            let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
            assert_eq!(store.recover().unwrap().jobs.len(), 50, "{policy:?}");
        }
    }

    #[test]
    fn a_torn_tail_is_skipped_and_nothing_committed_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        let options = JobOptions::default();
        for id in 0..100 {
            submitted(&store, id, &options);
        }
        wait(&commit(&store)).unwrap();
        drop(store);
        // A write cut by a crash: half a record, then garbage that fails its checksum.
        let path = segment(dir.path());
        let good = fs::metadata(&path).unwrap().len();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 40;
        let half = bytes[last..last + 20].to_owned();
        bytes.extend_from_slice(&half);
        bytes.extend_from_slice(&[0xAB; 13]);
        fs::write(&path, &bytes).unwrap();
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(store.recover().unwrap().jobs.len(), 100);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            good,
            "cut back to its last good record"
        );
        // New records follow the good ones and come back too.
        submitted(&store, 100, &options);
        wait(&commit(&store)).unwrap();
        drop(store);
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(store.recover().unwrap().jobs.len(), 101);
        // A corrupted byte inside the last record: it fails its checksum and is skipped.
        drop(store);
        let path = segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(store.recover().unwrap().jobs.len(), 100);
    }

    #[test]
    fn a_newer_format_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        drop(LogStore::open(dir.path(), LogOptions::default()).unwrap());
        let path = segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[6..8].copy_from_slice(&(format::VERSION + 1).to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let error = LogStore::open(dir.path(), LogOptions::default()).unwrap_err();
        assert!(
            matches!(error, StoreError::NewerFormat { found: 2, .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("format version 2") && text.contains("upgrade"),
            "{text}"
        );
    }

    #[test]
    fn a_full_store_fails_commits_clearly_and_recovers_when_room_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions::default().max_bytes(4_096);
        let store = LogStore::open(dir.path(), options).unwrap();
        let job = JobOptions::default();
        submitted(&store, 1, &job);
        wait(&commit(&store)).unwrap();
        for id in 2..200 {
            submitted(&store, id, &job);
        }
        let error = wait(&commit(&store)).unwrap_err();
        assert!(matches!(error, StoreError::Full(_)), "{error}");
        assert!(
            error.to_string().contains("over its limit of 4096"),
            "{error}"
        );
        assert_eq!(store.check(), Err(error));
        drop(store);
        // What was committed before is there; what went over the limit is not. (The
        // writer may have written a first part of the uncommitted records while they came
        // in and still had room: those may come back, never all of them.)
        let store = LogStore::open(dir.path(), LogOptions::default()).unwrap();
        let jobs = store.recover().unwrap().jobs;
        assert_eq!(jobs.first().map(|j| j.id), Some(1));
        assert!(jobs.len() < 199, "{} jobs came back", jobs.len());
        assert_eq!(store.check(), Ok(()));
    }

    /// Records the writer failed to write while no commit waited (its idle round) are
    /// lost: the next commit fails, though nothing is left to write when it comes.
    #[test]
    fn a_commit_after_records_lost_in_an_idle_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), LogOptions::default().max_bytes(1_024)).unwrap();
        let job = JobOptions::default();
        for id in 1..100 {
            submitted(&store, id, &job);
        }
        // The writer's idle round tries them, and fails: over the limit.
        while store.check().is_ok() {
            std::thread::yield_now();
        }
        let error = wait(&commit(&store)).unwrap_err();
        assert!(matches!(error, StoreError::Full(_)), "{error}");
    }

    #[test]
    fn compaction_keeps_the_live_jobs_and_bounds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions::default()
            .segment_bytes(16 << 10)
            .compact_after_bytes(32 << 10);
        let store = LogStore::open(dir.path(), options.clone()).unwrap();
        let job = JobOptions::default();
        let worker = Uuid::from_u128(1);
        // 5,000 jobs through (submitted, run, done), 10 left waiting at the start.
        for id in 0..10 {
            submitted(&store, id, &job);
        }
        for id in 10..5_010 {
            submitted(&store, id, &job);
            store.record(&Change::Started {
                id,
                attempt: 1,
                worker,
                at: 1,
            });
            store.record(&Change::Completed {
                id,
                attempt: 1,
                output: b"x",
                at: 2,
                retain_until: 0,
            });
            if id % 100 == 0 {
                wait(&commit(&store)).unwrap();
            }
        }
        wait(&commit(&store)).unwrap();
        // Compaction runs beside the writer: once it caught up, the directory holds the
        // ten live jobs and at most the segments written since.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let stats = loop {
            let stats = store.stats();
            if stats.disk_bytes < 100_000 || std::time::Instant::now() > deadline {
                break stats;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(stats.compactions >= 1, "{stats:?}");
        assert!(stats.bytes_written > 500_000, "{stats:?}");
        assert!(stats.disk_bytes < 100_000, "{stats:?}");
        drop(store);
        let store = LogStore::open(dir.path(), options).unwrap();
        let ids: Vec<_> = store.recover().unwrap().jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
    }
}
