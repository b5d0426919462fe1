//! The journal's writer thread: takes what was buffered, writes it in one call, fsyncs
//! per the policy, finishes the commits that waited for it; rotates segments and starts
//! compactions.

use super::format::{self, header, FileKind, Record};
use super::replay::{Removals, Replay};
use super::{io_error, load, read_into, FsyncPolicy, LogOptions};
use crate::jobs::store::{unix_millis, Change, Commit, StoreError, StoreStats};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// How long buffered records without a commit wait before the writer takes them (and how
/// often an idle writer looks at a running compaction).
const IDLE_FLUSH: Duration = Duration::from_millis(20);

/// The files of a data directory.
#[derive(Debug)]
pub(super) struct Files {
    dir: PathBuf,
    /// The newest snapshot's number.
    pub(super) snapshot: Option<u64>,
    /// Segment numbers, oldest first: those at or after the snapshot.
    pub(super) segments: Vec<u64>,
    /// The directory's lock, held while open.
    pub(super) lock: Option<File>,
}

impl Files {
    /// Lists `dir`: the newest snapshot, and the segments it does not cover. Leftovers of
    /// an interrupted compaction (a temporary snapshot, files an older snapshot covers)
    /// are removed.
    pub(super) fn list(dir: &Path) -> Result<Self, StoreError> {
        let mut snapshots = Vec::new();
        let mut segments = Vec::new();
        let entries = fs::read_dir(dir).map_err(|e| io_error("listing the data directory", &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing the data directory", &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(n) = number(name, "snapshot-") {
                snapshots.push(n);
            } else if let Some(n) = number(name, "segment-") {
                segments.push(n);
            }
        }
        snapshots.sort_unstable();
        segments.sort_unstable();
        let snapshot = snapshots.last().copied();
        let files = Self {
            dir: dir.to_path_buf(),
            snapshot,
            segments: Vec::new(),
            lock: None,
        };
        // What the newest snapshot covers is gone once it is written; finish the job.
        let from = snapshot.unwrap_or(0);
        for &n in snapshots.iter().filter(|n| **n < from) {
            let _ = fs::remove_file(files.snapshot_path(n));
        }
        for &n in segments.iter().filter(|n| **n < from) {
            let _ = fs::remove_file(files.segment_path(n));
        }
        segments.retain(|n| *n >= from);
        Ok(Self { segments, ..files })
    }

    pub(super) fn snapshot_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("snapshot-{n:020}.jobs"))
    }

    pub(super) fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("segment-{n:020}.jobs"))
    }

    /// Bytes the directory's journal files take.
    fn disk_bytes(&self) -> u64 {
        let snapshot = self.snapshot.map(|n| self.snapshot_path(n));
        let segments = self.segments.iter().map(|n| self.segment_path(*n));
        snapshot
            .into_iter()
            .chain(segments)
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Makes the directory's entries (new, renamed, removed files) durable.
    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing the data directory", &e))
    }

    /// Creates segment `n` with its header, durable.
    fn create_segment(&self, n: u64) -> Result<File, StoreError> {
        let path = self.segment_path(n);
        let mut file = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("creating a journal segment", &e))?;
        file.write_all(&header(FileKind::Segment))
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("writing a segment header", &e))?;
        self.sync_dir()?;
        Ok(file)
    }
}

/// `12` of `prefix` + `00000000000000000012.jobs`.
fn number(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".jobs")?
        .parse()
        .ok()
}

/// What the callers hand the writer thread.
#[derive(Default)]
struct Pending {
    /// Encoded records not written yet.
    buf: Vec<u8>,
    /// Bytes ever appended to `buf`: a commit waits for the position it was queued at.
    end: u64,
    commits: Vec<(u64, Commit)>,
    /// The standing failure: submissions are refused while it lasts.
    failed: Option<StoreError>,
    closing: bool,
    closed: bool,
}

/// The counters, shared with the threads.
#[derive(Debug, Default)]
struct Counters {
    changes: AtomicU64,
    commits: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    disk_bytes: AtomicU64,
    compactions: AtomicU64,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    counters: Counters,
    options: LogOptions,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer: its thread, and what callers share with it.
pub(super) struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("counters", &self.shared.counters)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts a new segment after the existing ones and the thread that writes it.
    pub(super) fn start(files: Files, options: LogOptions) -> Result<Self, StoreError> {
        let n = files
            .segments
            .last()
            .map_or(files.snapshot.unwrap_or(0), |n| n + 1);
        let file = files.create_segment(n)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            counters: Counters::default(),
            options,
        });
        shared
            .counters
            .disk_bytes
            .store(files.disk_bytes(), Ordering::Relaxed);
        let mut thread = Thread {
            shared: Arc::clone(&shared),
            files,
            file,
            active: n,
            active_bytes: format::HEADER_LEN as u64,
            compaction: None,
            lost: None,
        };
        thread.files.segments.push(n);
        let handle = std::thread::Builder::new()
            .name("job-journal".into())
            .spawn(move || thread.run())
            .map_err(|e| io_error("starting the journal writer", &e))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(handle)),
        })
    }

    pub(super) fn record(&self, change: &Change<'_>) {
        let mut p = self.shared.pending();
        if p.closed {
            return;
        }
        let len = format::encode(&Record::Change(*change), &mut p.buf);
        p.end += len as u64;
        self.shared.counters.changes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn sync(&self, commit: Commit) {
        let mut p = self.shared.pending();
        if p.closed {
            drop(p);
            return commit.finish(Err(StoreError::Closed));
        }
        let end = p.end;
        p.commits.push((end, commit));
        if p.commits.len() == 1 {
            self.shared.wake.notify_one();
        }
    }

    pub(super) fn check(&self) -> Result<(), StoreError> {
        let p = self.shared.pending();
        if p.closed {
            return Err(StoreError::Closed);
        }
        p.failed.clone().map_or(Ok(()), Err)
    }

    pub(super) fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        StoreStats {
            kind: "log".to_owned(),
            changes: c.changes.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            disk_bytes: c.disk_bytes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
        }
    }

    /// Writes what is buffered, finishes every commit, stops the thread and lets go of
    /// the directory. Blocks until then; idempotent.
    pub(super) fn close(&self) {
        {
            let mut p = self.shared.pending();
            p.closing = true;
            self.shared.wake.notify_one();
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// A compaction running in its own thread: the segment numbers it covers.
struct Compaction {
    upto: u64,
    handle: JoinHandle<Result<u64, StoreError>>,
}

/// The writer thread's own state.
struct Thread {
    shared: Arc<Shared>,
    files: Files,
    file: File,
    active: u64,
    active_bytes: u64,
    compaction: Option<Compaction>,
    /// Why records written with no commit waiting were lost: the next commits fail with
    /// it (a commit stands for every change recorded before it).
    lost: Option<StoreError>,
}

impl Thread {
    fn run(&mut self) {
        let mut buf = Vec::new();
        let mut commits = Vec::new();
        loop {
            let (closing, end) = {
                let mut p = self.shared.pending();
                // Idle, it still comes round every IDLE_FLUSH: records without a commit
                // are written, and a finished compaction is taken in.
                if p.buf.is_empty() && p.commits.is_empty() && !p.closing {
                    p = self
                        .shared
                        .wake
                        .wait_timeout(p, IDLE_FLUSH)
                        .map_or_else(|e| e.into_inner().0, |(p, _)| p);
                }
                std::mem::swap(&mut p.buf, &mut buf);
                std::mem::swap(&mut p.commits, &mut commits);
                if p.closing {
                    p.closed = true;
                }
                (p.closing, p.end)
            };
            let base = end - buf.len() as u64;
            if !commits.is_empty() {
                if let Some(lost) = self.lost.take() {
                    for (_, commit) in commits.drain(..) {
                        self.shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                        commit.finish(Err(lost.clone()));
                    }
                }
            }
            let result = self.write(&buf, &mut commits, base);
            if let Err(error) = &result {
                if commits.is_empty() {
                    self.lost = Some(error.clone());
                }
            }
            {
                let mut p = self.shared.pending();
                match &result {
                    Ok(()) if buf.is_empty() => {}
                    Ok(()) => p.failed = None,
                    Err(error) => {
                        tracing::error!(cause = %error, "job journal write failed; submissions are refused until it works again");
                        p.failed = Some(error.clone());
                    }
                }
            }
            buf.clear();
            for (_, commit) in commits.drain(..) {
                self.shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                commit.finish(result.clone());
            }
            if closing {
                self.finish_compaction(true);
                let _ = self.file.sync_all();
                self.files.lock.take();
                return;
            }
            self.maintain();
        }
    }

    /// Writes `buf` (which starts at position `base` of everything appended) and makes it
    /// durable per the policy. Under `Each`, the commits are written and fsynced one by
    /// one, and finished as they are (the rest are left).
    fn write(
        &mut self,
        buf: &[u8],
        commits: &mut Vec<(u64, Commit)>,
        base: u64,
    ) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(max) = self.shared.options.max_bytes {
            let disk = self.shared.counters.disk_bytes.load(Ordering::Relaxed);
            if disk + buf.len() as u64 > max {
                return Err(StoreError::Full(format!(
                    "the data directory would take {} bytes, over its limit of {max}",
                    disk + buf.len() as u64
                )));
            }
        }
        match self.shared.options.fsync {
            FsyncPolicy::Each if !commits.is_empty() => {
                let mut written = 0usize;
                for (end, commit) in commits.drain(..) {
                    let upto = usize::try_from(end.saturating_sub(base))
                        .unwrap_or(buf.len())
                        .min(buf.len());
                    if upto > written {
                        self.append(&buf[written..upto])?;
                        written = upto;
                    }
                    self.fsync()?;
                    self.shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                    commit.finish(Ok(()));
                }
                if written < buf.len() {
                    self.append(&buf[written..])?;
                }
                Ok(())
            }
            FsyncPolicy::Batch if !commits.is_empty() => {
                self.append(buf)?;
                self.fsync()
            }
            _ => self.append(buf),
        }
    }

    /// Appends to the active segment; a failed write is cut back off the file, so the
    /// next write follows valid records.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let result = self.file.write_all(bytes);
        self.shared.counters.writes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.active_bytes += bytes.len() as u64;
                let c = &self.shared.counters;
                c.bytes_written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                c.disk_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                let _ = self.file.set_len(self.active_bytes);
                Err(io_error("writing the job journal", &error))
            }
        }
    }

    fn fsync(&mut self) -> Result<(), StoreError> {
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.file
            .sync_data()
            .map_err(|e| io_error("syncing the job journal", &e))
    }

    /// Closes a full segment, and compacts once closed segments add up.
    fn maintain(&mut self) {
        self.finish_compaction(false);
        if self.active_bytes >= self.shared.options.segment_bytes {
            if let Err(error) = self.rotate() {
                tracing::error!(cause = %error, "could not start a new journal segment");
            }
        }
        let closed: Vec<u64> = self
            .files
            .segments
            .iter()
            .copied()
            .filter(|n| *n < self.active)
            .collect();
        if self.compaction.is_some() || closed.is_empty() {
            return;
        }
        let closed_bytes: u64 = closed
            .iter()
            .filter_map(|n| fs::metadata(self.files.segment_path(*n)).ok())
            .map(|m| m.len())
            .sum();
        if closed_bytes < self.shared.options.compact_after_bytes {
            return;
        }
        let upto = self.active - 1;
        let snapshot = self.files.snapshot.map(|n| self.files.snapshot_path(n));
        let segments: Vec<PathBuf> = closed.iter().map(|n| self.files.segment_path(*n)).collect();
        let target = self.files.snapshot_path(upto + 1);
        let dir = self.files.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("job-compaction".into())
            .spawn(move || compact(&dir, snapshot, &segments, &target));
        match spawned {
            Ok(handle) => self.compaction = Some(Compaction { upto, handle }),
            Err(error) => tracing::warn!(cause = %error, "could not start a compaction"),
        }
    }

    /// Starts the next segment, the full one made durable first.
    fn rotate(&mut self) -> Result<(), StoreError> {
        if self.shared.options.fsync != FsyncPolicy::Never {
            self.fsync()?;
        }
        let n = self.active + 1;
        self.file = self.files.create_segment(n)?;
        self.files.segments.push(n);
        self.active = n;
        self.active_bytes = format::HEADER_LEN as u64;
        self.shared
            .counters
            .disk_bytes
            .fetch_add(format::HEADER_LEN as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Takes a finished compaction's result (waits for it when `wait`): the files it
    /// replaced are deleted.
    fn finish_compaction(&mut self, wait: bool) {
        let done = self
            .compaction
            .as_ref()
            .is_some_and(|c| wait || c.handle.is_finished());
        if !done {
            return;
        }
        let Some(compaction) = self.compaction.take() else {
            return;
        };
        match compaction.handle.join() {
            Ok(Ok(written)) => {
                let old_snapshot = self.files.snapshot.replace(compaction.upto + 1);
                if let Some(n) = old_snapshot {
                    let _ = fs::remove_file(self.files.snapshot_path(n));
                }
                let (gone, kept): (Vec<u64>, Vec<u64>) = self
                    .files
                    .segments
                    .iter()
                    .partition(|n| **n <= compaction.upto);
                for n in gone {
                    let _ = fs::remove_file(self.files.segment_path(n));
                }
                self.files.segments = kept;
                let _ = self.files.sync_dir();
                let c = &self.shared.counters;
                c.compactions.fetch_add(1, Ordering::Relaxed);
                c.bytes_written.fetch_add(written, Ordering::Relaxed);
                c.disk_bytes
                    .store(self.files.disk_bytes(), Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tracing::warn!(cause = %error, "journal compaction failed; the journal is kept as it was")
            }
            Err(_) => tracing::warn!("journal compaction panicked; the journal is kept as it was"),
        }
    }
}

/// Replays `snapshot` and `segments`, and writes the jobs still alive into `target`
/// (through a temporary file, renamed once durable). Returns the bytes written.
fn compact(
    dir: &Path,
    snapshot: Option<PathBuf>,
    segments: &[PathBuf],
    target: &Path,
) -> Result<u64, StoreError> {
    // First pass: where each job is removed, so that the replay skips the jobs gone by
    // the end (most of them under a steady load) instead of building each.
    let files = || {
        let snapshot = snapshot.iter().map(|path| (path, FileKind::Snapshot));
        snapshot.chain(segments.iter().map(|path| (path, FileKind::Segment)))
    };
    let mut removals = Removals::default();
    let mut buf = Vec::new();
    for (path, kind) in files() {
        read_into(path, &mut buf)?;
        let records = match format::check_header(&buf, kind) {
            Ok(()) => buf.get(format::HEADER_LEN..).unwrap_or_default(),
            Err(_) => &[],
        };
        removals.scan(records);
    }
    let mut replay = Replay::skipping(removals);
    for (path, kind) in files() {
        load(path, kind, &mut replay, dir, &mut buf)?;
    }
    drop(buf);
    let tmp = target.with_extension("tmp");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, {
        fs::File::create(&tmp).map_err(|e| io_error("creating a snapshot", &e))?
    });
    let mut buf = Vec::with_capacity(64 << 10);
    buf.extend_from_slice(&header(FileKind::Snapshot));
    let mut written = 0u64;
    for job in replay.live(unix_millis(SystemTime::now())) {
        format::encode(&Record::Job(Box::new(job)), &mut buf);
        if buf.len() >= 60 << 10 {
            out.write_all(&buf)
                .map_err(|e| io_error("writing a snapshot", &e))?;
            written += buf.len() as u64;
            buf.clear();
        }
    }
    out.write_all(&buf)
        .map_err(|e| io_error("writing a snapshot", &e))?;
    written += buf.len() as u64;
    let file = out
        .into_inner()
        .map_err(|e| io_error("writing a snapshot", e.error()))?;
    file.sync_all()
        .map_err(|e| io_error("syncing a snapshot", &e))?;
    fs::rename(&tmp, target).map_err(|e| io_error("renaming a snapshot", &e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing the data directory", &e))?;
    Ok(written)
}
