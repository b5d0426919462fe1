//! Replaying records into the jobs' state: how a restart recovers, and how compaction
//! finds what is still alive.

use super::format::{
    self, put_bytes, put_options, put_text, put_u128, put_u32, put_u64, Reader, Record,
    TAG_CANCELLED, TAG_JOB, TAG_REMOVED, TAG_SUBMITTED,
};
use crate::jobs::id::{id_map, IdMap};
use crate::jobs::store::{
    Attempt, Change, Owner, RecoveredJob, RecoveredResult, RecoveredState, Recovery, UnixMillis,
};
use crate::jobs::{JobId, JobOptions};

/// Where a job stands in the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stand {
    Waiting,
    Running,
    Delayed(UnixMillis),
    Dead,
    Completed {
        at: UnixMillis,
        retain_until: UnixMillis,
        output: Vec<u8>,
    },
}

/// One job's whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplayJob {
    pub(super) id: JobId,
    name: String,
    payload: Vec<u8>,
    options: JobOptions,
    owner: Owner,
    submitted_at: UnixMillis,
    attempts: u32,
    stand: Stand,
    history: Vec<Attempt>,
}

/// Why an attempt cut short by a stop ended.
pub(super) const STOPPED: &str = "the hub stopped during this attempt";
/// Why a released attempt ended.
const RELEASED: &str = "its worker left (this attempt does not count)";

impl ReplayJob {
    fn end_attempt(&mut self, at: UnixMillis, error: Option<&str>) {
        if let Some(last) = self.history.last_mut() {
            if last.ended_at.is_none() {
                last.ended_at = Some(at);
                last.error = error.map(str::to_owned);
            }
        }
    }

    /// Writes the job after its id: name, payload, options, owner, submitted, attempts, a
    /// stand (u8 0 waiting, 1 running, 2 delayed + at, 3 dead, 4 completed + at + retain
    /// until + output), then the history (u32 count; each attempt: number u32, worker
    /// u128, started u64, ended u64 (0: not), error flag u8 + text).
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        put_text(out, &self.name);
        put_bytes(out, &self.payload);
        put_options(out, &self.options);
        put_u128(out, self.owner.0);
        put_u64(out, self.submitted_at);
        put_u32(out, self.attempts);
        match &self.stand {
            Stand::Waiting => out.push(0),
            Stand::Running => out.push(1),
            Stand::Delayed(at) => {
                out.push(2);
                put_u64(out, *at);
            }
            Stand::Dead => out.push(3),
            Stand::Completed {
                at,
                retain_until,
                output,
            } => {
                out.push(4);
                put_u64(out, *at);
                put_u64(out, *retain_until);
                put_bytes(out, output);
            }
        }
        put_u32(out, u32::try_from(self.history.len()).unwrap_or(u32::MAX));
        for a in &self.history {
            put_u32(out, a.number);
            put_u128(out, a.worker.as_u128());
            put_u64(out, a.started_at);
            put_u64(out, a.ended_at.unwrap_or(0));
            match &a.error {
                Some(error) => {
                    out.push(1);
                    put_text(out, error);
                }
                None => out.push(0),
            }
        }
    }

    /// Reads what [`encode`](Self::encode) wrote.
    pub(super) fn decode(id: JobId, r: &mut Reader<'_>) -> Option<Self> {
        let name = r.text()?.to_owned();
        let payload = r.bytes()?.to_vec();
        let options = r.options()?;
        let owner = Owner(r.u128()?);
        let submitted_at = r.u64()?;
        let attempts = r.u32()?;
        let stand = match r.u8()? {
            0 => Stand::Waiting,
            1 => Stand::Running,
            2 => Stand::Delayed(r.u64()?),
            3 => Stand::Dead,
            4 => Stand::Completed {
                at: r.u64()?,
                retain_until: r.u64()?,
                output: r.bytes()?.to_vec(),
            },
            _ => return None,
        };
        let count = r.u32()? as usize;
        // Each attempt takes at least 37 bytes: a corrupted count cannot allocate much.
        let mut history = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let mut attempt =
                Attempt::started(r.u32()?, uuid::Uuid::from_u128(r.u128()?), r.u64()?);
            attempt.ended_at = Some(r.u64()?).filter(|t| *t != 0);
            if r.u8()? == 1 {
                attempt.error = Some(r.text()?.to_owned());
            }
            history.push(attempt);
        }
        Some(Self {
            id,
            name,
            payload,
            options,
            owner,
            submitted_at,
            attempts,
            stand,
            history,
        })
    }
}

/// A record's place in the files a replay reads: the file's number (in the order read,
/// from 0), the record's number in it.
type Position = (u64, u64);

/// Where each job's last removal (a cancel or a remove record) is in the files a
/// compaction replays, found by a first pass over them. A job whose submission (or
/// snapshot copy) comes before its last removal is gone by the end: the replay skips it
/// instead of building the job only to drop it. Under a steady load most of a
/// compaction's jobs are such (finished, then forgotten when their retention ended or the
/// kept results were full): building them was most of its work.
#[derive(Debug, Default)]
pub(super) struct Removals {
    last: IdMap<Position>,
    files: u64,
    /// Submissions and snapshot jobs seen.
    jobs: usize,
}

impl Removals {
    /// Notes the removals among one file's records (the bytes after its header), up to
    /// where its valid part ends. Files are scanned in the order the replay reads them;
    /// a file that is not read (a bad header) is scanned as empty.
    pub(super) fn scan(&mut self, records: &[u8]) {
        let file = self.files;
        self.files += 1;
        let (mut at, mut n) = (0, 0);
        while let Some((body, len)) = records.get(at..).and_then(format::frame) {
            match format::tag_and_id(body) {
                Some((TAG_CANCELLED | TAG_REMOVED, id)) => {
                    self.last.insert(id, (file, n));
                }
                Some((TAG_SUBMITTED | TAG_JOB, _)) => self.jobs += 1,
                _ => {}
            }
            n += 1;
            at += len;
        }
    }
}

/// The jobs' state as records are applied, in the order the jobs were submitted.
#[derive(Debug, Default)]
pub(super) struct Replay {
    jobs: Vec<Option<ReplayJob>>,
    index: IdMap<usize>,
    /// Removals ahead (a compaction's); none on a restart.
    removals: Removals,
    /// The next record's place.
    at: Position,
    /// Files begun.
    files: u64,
}

impl Replay {
    /// A replay that skips the jobs `removals` drops later.
    pub(super) fn skipping(removals: Removals) -> Self {
        // About the jobs it builds (fewer when jobs older than the files were removed).
        let jobs = removals.jobs.saturating_sub(removals.last.len());
        Self {
            jobs: Vec::with_capacity(jobs),
            index: id_map(jobs),
            removals,
            ..Self::default()
        }
    }

    /// Starts the next file: every file read, in the order [`Removals::scan`] saw them.
    pub(super) fn next_file(&mut self) {
        self.at = (self.files, 0);
        self.files += 1;
    }

    /// Applies one framed record body (or skips a job that a later removal drops);
    /// `false` if the body does not parse.
    pub(super) fn read(&mut self, body: &[u8]) -> bool {
        let at = self.at;
        self.at.1 += 1;
        if !self.removals.last.is_empty() {
            if let Some((TAG_SUBMITTED | TAG_JOB, id)) = format::tag_and_id(body) {
                if self
                    .removals
                    .last
                    .get(&id)
                    .is_some_and(|removed| *removed > at)
                {
                    return true;
                }
            }
        }
        match format::record(body) {
            Some(record) => {
                self.apply(record);
                true
            }
            None => false,
        }
    }

    fn job(&mut self, id: JobId) -> Option<&mut ReplayJob> {
        let at = *self.index.get(&id)?;
        self.jobs.get_mut(at)?.as_mut()
    }

    fn insert(&mut self, job: ReplayJob) {
        if self.index.contains_key(&job.id) {
            return;
        }
        self.index.insert(job.id, self.jobs.len());
        self.jobs.push(Some(job));
    }

    fn remove(&mut self, id: JobId) {
        if let Some(at) = self.index.remove(&id) {
            if let Some(slot) = self.jobs.get_mut(at) {
                *slot = None;
            }
        }
    }

    /// Applies one record. Records about a job the replay does not hold (forgotten, or
    /// whose submission was cut by a crash) change nothing.
    pub(super) fn apply(&mut self, record: Record<'_>) {
        let change = match record {
            Record::Submitted {
                id,
                at,
                owner,
                options,
                name,
                payload,
            } => {
                let delayed = options.delay.filter(|d| !d.is_zero());
                let stand = match delayed {
                    Some(d) => Stand::Delayed(
                        at.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    ),
                    None => Stand::Waiting,
                };
                return self.insert(ReplayJob {
                    id,
                    name: name.to_owned(),
                    payload: payload.to_vec(),
                    options,
                    owner,
                    submitted_at: at,
                    attempts: 0,
                    stand,
                    history: Vec::new(),
                });
            }
            Record::Job(job) => return self.insert(*job),
            Record::Change(change) => change,
        };
        match change {
            Change::Started {
                id,
                attempt,
                worker,
                at,
            } => {
                if let Some(job) = self.job(id) {
                    job.attempts = attempt;
                    job.stand = Stand::Running;
                    job.history.push(Attempt::started(attempt, worker, at));
                }
            }
            Change::Completed {
                id,
                output,
                at,
                retain_until,
                ..
            } => {
                if let Some(job) = self.job(id) {
                    job.end_attempt(at, None);
                    job.stand = Stand::Completed {
                        at,
                        retain_until,
                        output: output.to_vec(),
                    };
                }
            }
            Change::Failed {
                id,
                error,
                retry_at,
                at,
                ..
            } => {
                if let Some(job) = self.job(id) {
                    job.end_attempt(at, Some(error));
                    job.stand = retry_at.map_or(Stand::Waiting, Stand::Delayed);
                }
            }
            Change::Dead { id, .. } => {
                if let Some(job) = self.job(id) {
                    job.stand = Stand::Dead;
                }
            }
            Change::Released { id, attempt } => {
                if let Some(job) = self.job(id) {
                    let at = job.history.last().map_or(0, |a| a.started_at);
                    job.end_attempt(at, Some(RELEASED));
                    job.attempts = attempt.saturating_sub(1);
                    job.stand = Stand::Waiting;
                }
            }
            Change::Revived { id, .. } => {
                if let Some(job) = self.job(id) {
                    job.attempts = 0;
                    job.options = JobOptions::default();
                    job.stand = Stand::Waiting;
                }
            }
            Change::Cancelled { id } | Change::Removed { id } => self.remove(id),
            Change::Submitted { .. } | Change::Progress { .. } => {}
        }
    }

    /// The jobs still alive at `now` (results past their retention are not), in order.
    pub(super) fn live(self, now: UnixMillis) -> impl Iterator<Item = ReplayJob> {
        self.jobs
            .into_iter()
            .flatten()
            .filter(move |job| match job.stand {
                Stand::Completed { retain_until, .. } => retain_until > now,
                _ => true,
            })
    }

    /// What the queue takes back at `now`: a running job comes back waiting, its attempt
    /// counted and ended.
    pub(super) fn recovery(self, now: UnixMillis) -> Recovery {
        let mut recovery = Recovery::default();
        recovery.jobs.reserve(self.index.len());
        for mut job in self.live(now) {
            let state = match job.stand {
                Stand::Waiting => RecoveredState::Waiting,
                Stand::Running => {
                    job.end_attempt(now, Some(STOPPED));
                    RecoveredState::Waiting
                }
                Stand::Delayed(at) => RecoveredState::Delayed(at),
                Stand::Dead => RecoveredState::Dead,
                Stand::Completed {
                    at,
                    retain_until: _,
                    output,
                } => {
                    let mut result = RecoveredResult::new(job.id, job.name, output, at);
                    result.key = job.options.key;
                    result.owner = job.owner;
                    result.submitted_at = job.submitted_at;
                    result.history = job.history;
                    recovery.results.push(result);
                    continue;
                }
            };
            let mut recovered = RecoveredJob::new(job.id, job.name, job.payload, job.options);
            recovered.owner = job.owner;
            recovered.submitted_at = job.submitted_at;
            recovered.attempts = job.attempts;
            recovered.state = state;
            recovered.history = job.history;
            recovery.jobs.push(recovered);
        }
        recovery
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{decode, encode};
    use super::format;
    use super::*;
    use uuid::Uuid;

    fn apply(replay: &mut Replay, change: Change<'_>) {
        let mut buf = Vec::new();
        encode(&Record::Change(change), &mut buf);
        let (record, len) = decode(&buf).unwrap();
        assert_eq!(len, buf.len());
        replay.apply(record);
    }

    #[test]
    fn a_jobs_life_replays_and_a_running_job_comes_back_waiting_counted() {
        let mut replay = Replay::default();
        let options = JobOptions::default().priority(3).max_attempts(5);
        for id in 1..=4 {
            apply(
                &mut replay,
                Change::Submitted {
                    id,
                    name: "fnv",
                    payload: &[id as u8],
                    options: &options,
                    owner: Owner(7),
                    at: 100,
                },
            );
        }
        let worker = Uuid::from_u128(9);
        for id in 1..=4 {
            apply(
                &mut replay,
                Change::Started {
                    id,
                    attempt: 1,
                    worker,
                    at: 200,
                },
            );
        }
        apply(
            &mut replay,
            Change::Completed {
                id: 1,
                attempt: 1,
                output: b"ok",
                at: 300,
                retain_until: 1_000,
            },
        );
        apply(
            &mut replay,
            Change::Failed {
                id: 2,
                attempt: 1,
                error: "boom",
                retry_at: Some(5_000),
                at: 300,
            },
        );
        apply(&mut replay, Change::Released { id: 3, attempt: 1 });
        apply(&mut replay, Change::Cancelled { id: 99 });
        let recovery = replay.recovery(500);
        let ids: Vec<_> = recovery
            .jobs
            .iter()
            .map(|j| (j.id, j.state, j.attempts))
            .collect();
        assert_eq!(
            ids,
            [
                (2, RecoveredState::Delayed(5_000), 1),
                (3, RecoveredState::Waiting, 0),
                (4, RecoveredState::Waiting, 1),
            ]
        );
        let running = &recovery.jobs[2];
        assert_eq!(running.history[0].error.as_deref(), Some(STOPPED));
        assert_eq!(running.options, options);
        assert_eq!(running.owner, Owner(7));
        assert_eq!(recovery.results.len(), 1);
        assert_eq!(recovery.results[0].output, b"ok");
        // Past its retention, the result is gone.
        let mut replay = Replay::default();
        apply(
            &mut replay,
            Change::Submitted {
                id: 1,
                name: "a",
                payload: &[],
                options: &options,
                owner: Owner::HUB,
                at: 1,
            },
        );
        apply(
            &mut replay,
            Change::Completed {
                id: 1,
                attempt: 1,
                output: b"ok",
                at: 2,
                retain_until: 3,
            },
        );
        assert!(replay.recovery(4).results.is_empty());
    }

    #[test]
    fn a_job_record_round_trips() {
        let mut job = ReplayJob {
            id: 5,
            name: "resize".into(),
            payload: vec![1, 2, 3],
            options: JobOptions::default()
                .delay(std::time::Duration::from_secs(3))
                .key("k"),
            owner: Owner(11),
            submitted_at: 10,
            attempts: 2,
            stand: Stand::Completed {
                at: 20,
                retain_until: 30,
                output: vec![4],
            },
            history: vec![Attempt::started(1, Uuid::from_u128(3), 11)],
        };
        job.end_attempt(12, Some("no"));
        let mut buf = Vec::new();
        encode(&Record::Job(Box::new(job.clone())), &mut buf);
        let Some((Record::Job(back), _)) = decode(&buf) else {
            panic!("not a job record");
        };
        assert_eq!(*back, job);
    }

    /// Files as a compaction reads them: each a list of records, framed.
    fn files(records: &[Vec<Record<'_>>]) -> Vec<Vec<u8>> {
        records
            .iter()
            .map(|file| {
                let mut bytes = Vec::new();
                for record in file {
                    encode(record, &mut bytes);
                }
                bytes
            })
            .collect()
    }

    /// Replays `files` as a compaction does: plain, or skipping what `Removals` finds.
    fn replayed(files: &[Vec<u8>], skip: bool) -> Replay {
        let mut removals = Removals::default();
        if skip {
            for file in files {
                removals.scan(file);
            }
        }
        let mut replay = Replay::skipping(removals);
        for file in files {
            replay.next_file();
            let mut at = 0;
            while let Some((body, len)) = format::frame(&file[at..]) {
                assert!(replay.read(body));
                at += len;
            }
        }
        replay
    }

    #[test]
    fn a_compaction_skips_the_jobs_removed_later_and_keeps_the_same_live_jobs() {
        let options = JobOptions::default();
        let submitted = |id| {
            Record::Change(Change::Submitted {
                id,
                name: "fnv",
                payload: b"p",
                options: &options,
                owner: Owner(1),
                at: 10,
            })
        };
        let done = |id| {
            Record::Change(Change::Completed {
                id,
                attempt: 1,
                output: b"o",
                at: 20,
                retain_until: u64::MAX,
            })
        };
        let removed = |id| Record::Change(Change::Removed { id });
        // A snapshot's copy of job 1, removed later; job 2 kept.
        let snapshot = replayed(&files(&[vec![submitted(1), submitted(2)]]), false);
        let mut jobs = snapshot.live(0);
        let (one, two) = (jobs.next().unwrap(), jobs.next().unwrap());
        let records = [
            vec![Record::Job(Box::new(one)), Record::Job(Box::new(two))],
            vec![
                submitted(3),
                done(3),
                removed(3),
                submitted(4),
                done(4),
                Record::Change(Change::Cancelled { id: 5 }),
                submitted(5),
                removed(1),
            ],
            vec![submitted(6), done(6), removed(6), submitted(6), removed(4)],
        ];
        let files = files(&records);
        let (plain, skipping) = (replayed(&files, false), replayed(&files, true));
        // Built, plain: 1, 2, 3, 4, 5, 6 (twice: 6 was submitted again after its removal).
        assert_eq!(plain.jobs.len(), 7);
        // Skipping: 1, 3 and 4 (removed later) and 6's first life are never built.
        assert_eq!(skipping.jobs.len(), 3);
        let live = |replay: Replay| -> Vec<(JobId, Stand)> {
            replay.live(0).map(|job| (job.id, job.stand)).collect()
        };
        let kept = live(skipping);
        assert_eq!(kept, live(plain));
        let ids: Vec<_> = kept.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [2, 5, 6]);
    }
}
