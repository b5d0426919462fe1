//! What the hub, its workers and member submitters say to each other about jobs: batches
//! of records in `Publish` envelopes on reserved subjects, several to a frame.
//!
//! All integers little-endian; a frame's payload is its records back to back:
//!
//! | subject | direction | record |
//! |---|---|---|
//! | [`RUN_SUBJECT`] | hub → worker | u128 job id, u32 attempt, u8 length + job name, u32 length + codec-encoded job |
//! | [`DROP_SUBJECT`] | hub → worker | u128 job id, u32 attempt (drop it: cancelled or timed out) |
//! | [`DONE_SUBJECT`] | worker → hub | u128 job id, u32 attempt, u8 status (0 output, 1 error), u32 length + codec-encoded output or UTF-8 error |
//! | [`PROGRESS_SUBJECT`] | worker → hub | u128 job id, u32 attempt, f64 value |
//! | [`CANCEL_SUBJECT`] | submitter → hub | u128 job id |
//! | [`RESULT_SUBJECT`] | hub → submitter | u64 ticket, u8 status (0 output, 1 error), u32 length + codec-encoded output or [`JobError`] |
//! | [`UPDATE_SUBJECT`] | hub → submitter | u64 ticket, f64 value |
//!
//! A member submitting a job names it by a ticket of its own; the hub answers with the
//! job's id and later sends the result and progress under that ticket.

use super::{JobError, JobId};
use crate::codec::{Codec, CodecKind};
use crate::envelope::Envelope;

/// Jobs for a worker to run.
pub(crate) const RUN_SUBJECT: &str = "__jobs.run";
/// Attempts a worker must drop (cancelled or timed out).
pub(crate) const DROP_SUBJECT: &str = "__jobs.drop";
/// Finished attempts, from a worker.
pub(crate) const DONE_SUBJECT: &str = "__jobs.done";
/// Progress of running attempts, from a worker.
pub(crate) const PROGRESS_SUBJECT: &str = "__jobs.progress";
/// Jobs a member submitted and cancels.
pub(crate) const CANCEL_SUBJECT: &str = "__jobs.cancel";
/// Outcomes of a member's jobs, by ticket.
pub(crate) const RESULT_SUBJECT: &str = "__jobs.result";
/// Progress of a member's jobs, by ticket.
pub(crate) const UPDATE_SUBJECT: &str = "__jobs.update";

/// A frame is closed and a new one started once it holds this many bytes, well under the
/// transport's default 32 KiB payload limit. A single larger record goes alone.
pub(crate) const FRAME_TARGET: usize = 16 * 1024;

/// A batch frame being built: the envelope header, then records.
#[derive(Debug)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    header: usize,
    records: usize,
}

impl Batch {
    /// An empty batch for `subject`.
    pub(crate) fn new(subject: &'static str) -> Self {
        let mut buf = Vec::new();
        // A reserved subject of a few bytes: it fits.
        let _ = Envelope::Publish {
            subject,
            payload: &[],
        }
        .encode(&mut buf);
        let header = buf.len();
        Self {
            buf,
            header,
            records: 0,
        }
    }

    /// Whether the batch holds no record.
    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Whether the batch should be sent before another record is added.
    pub(crate) fn is_full(&self) -> bool {
        self.buf.len() >= FRAME_TARGET
    }

    /// The whole frame.
    pub(crate) fn frame(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the batch, keeping its header and its buffer.
    pub(crate) fn clear(&mut self) {
        self.buf.truncate(self.header);
        self.records = 0;
    }

    /// Adds a job to run. Its name is at most 255 bytes: the queue refuses longer ones.
    pub(crate) fn push_run(&mut self, id: JobId, attempt: u32, name: &str, job: &[u8]) {
        let len = u8::try_from(name.len()).unwrap_or(u8::MAX);
        self.push_head(id, attempt);
        self.buf.push(len);
        self.buf
            .extend_from_slice(name.as_bytes().get(..usize::from(len)).unwrap_or_default());
        self.push_bytes(job);
    }

    /// Adds a finished attempt.
    pub(crate) fn push_done(&mut self, id: JobId, attempt: u32, outcome: Result<&[u8], &str>) {
        self.push_head(id, attempt);
        let (status, bytes) = match outcome {
            Ok(output) => (0, output),
            Err(error) => (1, error.as_bytes()),
        };
        self.buf.push(status);
        self.push_bytes(bytes);
    }

    /// Adds a finished attempt whose output `encode` writes in place; an encoding error
    /// fails the attempt instead.
    pub(crate) fn push_done_encoded(
        &mut self,
        id: JobId,
        attempt: u32,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) {
        let start = self.buf.len();
        self.push_head(id, attempt);
        self.buf.push(0);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        match encode(&mut self.buf) {
            Ok(()) => {
                let len = self.buf.len() - len_at - 4;
                let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
                self.buf[len_at..len_at + 4].copy_from_slice(&len);
            }
            Err(error) => {
                self.buf.truncate(start);
                self.records -= 1;
                self.push_done(id, attempt, Err(&error));
            }
        }
    }

    /// Adds an attempt to drop.
    pub(crate) fn push_drop(&mut self, id: JobId, attempt: u32) {
        self.push_head(id, attempt);
    }

    /// Adds a progress report of a running attempt.
    pub(crate) fn push_progress(&mut self, id: JobId, attempt: u32, value: f64) {
        self.push_head(id, attempt);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// Adds a job to cancel.
    pub(crate) fn push_cancel(&mut self, id: JobId) {
        self.records += 1;
        self.buf.extend_from_slice(&id.to_le_bytes());
    }

    /// Adds a progress report for a submitter's ticket.
    pub(crate) fn push_update(&mut self, ticket: u64, value: f64) {
        self.records += 1;
        self.buf.extend_from_slice(&ticket.to_le_bytes());
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    fn push_head(&mut self, id: JobId, attempt: u32) {
        self.records += 1;
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&attempt.to_le_bytes());
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(bytes);
    }
}

/// Builds the [`RESULT_SUBJECT`] frame of one outcome for a member's ticket and hands it
/// to `send`. A job error is codec-encoded; one that does not encode is sent as
/// [`JobError::Encode`].
pub(crate) fn with_result_frame<R>(
    ticket: u64,
    outcome: Result<&[u8], JobError>,
    codec: CodecKind,
    send: impl FnOnce(&[u8]) -> R,
) -> R {
    let mut batch = Batch::new(RESULT_SUBJECT);
    batch.records += 1;
    batch.buf.extend_from_slice(&ticket.to_le_bytes());
    match outcome {
        Ok(output) => {
            batch.buf.push(0);
            batch.push_bytes(output);
        }
        Err(error) => {
            let mut encoded = Vec::new();
            if let Err(e) = codec.encode(&error, &mut encoded) {
                encoded.clear();
                let _ = codec.encode(&JobError::Encode(e.to_string()), &mut encoded);
            }
            batch.buf.push(1);
            batch.push_bytes(&encoded);
        }
    }
    send(batch.frame())
}

/// A record that does not parse: the frame is not from a well-behaved peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed job batch: {0}")]
pub(crate) struct Malformed(&'static str);

/// One job to run, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run<'a> {
    pub(crate) id: JobId,
    pub(crate) attempt: u32,
    pub(crate) name: &'a str,
    pub(crate) job: &'a [u8],
}

/// One finished attempt, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done<'a> {
    pub(crate) id: JobId,
    pub(crate) attempt: u32,
    pub(crate) outcome: Result<&'a [u8], &'a str>,
}

/// Reads records off the front of a frame's payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Malformed> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(Malformed(what))?;
        self.0 = rest;
        Ok(*head)
    }

    fn head(&mut self) -> Result<(JobId, u32), Malformed> {
        let id = self.id()?;
        let attempt = u32::from_le_bytes(self.take("attempt cut short")?);
        Ok((id, attempt))
    }

    fn id(&mut self) -> Result<JobId, Malformed> {
        Ok(u128::from_le_bytes(self.take("job id cut short")?))
    }

    fn ticket(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.take("ticket cut short")?))
    }

    fn value(&mut self) -> Result<f64, Malformed> {
        Ok(f64::from_le_bytes(self.take("value cut short")?))
    }

    fn slice(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.0.len() < len {
            return Err(Malformed(what));
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = u32::from_le_bytes(self.take("length cut short")?);
        let len = usize::try_from(len).map_err(|_| Malformed("length too large"))?;
        self.slice(len, "bytes cut short")
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(bytes).map_err(|_| Malformed("text is not utf-8"))
}

/// The records of a frame, each read by `read`; after a malformed one, nothing more.
/// Never panics, whatever the bytes.
fn records<'a, T>(
    payload: &'a [u8],
    mut read: impl FnMut(&mut Reader<'a>) -> Result<T, Malformed> + 'a,
) -> impl Iterator<Item = Result<T, Malformed>> + 'a {
    let mut reader = Reader(payload);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || reader.is_empty() {
            return None;
        }
        let record = read(&mut reader);
        failed = record.is_err();
        Some(record)
    })
}

/// The jobs of a [`RUN_SUBJECT`] frame.
pub(crate) fn runs(payload: &[u8]) -> impl Iterator<Item = Result<Run<'_>, Malformed>> {
    records(payload, |reader| {
        let (id, attempt) = reader.head()?;
        let [len] = reader.take::<1>("name length missing")?;
        let name = utf8(reader.slice(usize::from(len), "name cut short")?)?;
        let job = reader.bytes()?;
        Ok(Run {
            id,
            attempt,
            name,
            job,
        })
    })
}

/// The finished attempts of a [`DONE_SUBJECT`] frame.
pub(crate) fn dones(payload: &[u8]) -> impl Iterator<Item = Result<Done<'_>, Malformed>> {
    records(payload, |reader| {
        let (id, attempt) = reader.head()?;
        let [status] = reader.take::<1>("status missing")?;
        let bytes = reader.bytes()?;
        let outcome = match status {
            0 => Ok(bytes),
            1 => Err(utf8(bytes)?),
            _ => return Err(Malformed("unknown status")),
        };
        Ok(Done {
            id,
            attempt,
            outcome,
        })
    })
}

/// The attempts of a [`DROP_SUBJECT`] frame.
pub(crate) fn drops(payload: &[u8]) -> impl Iterator<Item = Result<(JobId, u32), Malformed>> + '_ {
    records(payload, Reader::head)
}

/// The reports of a [`PROGRESS_SUBJECT`] frame: job id, attempt, value.
pub(crate) fn progress_reports(
    payload: &[u8],
) -> impl Iterator<Item = Result<(JobId, u32, f64), Malformed>> + '_ {
    records(payload, |reader| {
        let (id, attempt) = reader.head()?;
        Ok((id, attempt, reader.value()?))
    })
}

/// The job ids of a [`CANCEL_SUBJECT`] frame.
pub(crate) fn job_ids(payload: &[u8]) -> impl Iterator<Item = Result<JobId, Malformed>> + '_ {
    records(payload, Reader::id)
}

/// One outcome of a [`RESULT_SUBJECT`] frame: the ticket, and the codec-encoded output or
/// job error.
pub(crate) type ResultRecord<'a> = (u64, Result<&'a [u8], &'a [u8]>);

/// The outcomes of a [`RESULT_SUBJECT`] frame.
pub(crate) fn results(payload: &[u8]) -> impl Iterator<Item = Result<ResultRecord<'_>, Malformed>> {
    records(payload, |reader| {
        let ticket = reader.ticket()?;
        let [status] = reader.take::<1>("status missing")?;
        let bytes = reader.bytes()?;
        match status {
            0 => Ok((ticket, Ok(bytes))),
            1 => Ok((ticket, Err(bytes))),
            _ => Err(Malformed("unknown status")),
        }
    })
}

/// The reports of an [`UPDATE_SUBJECT`] frame: ticket, value.
pub(crate) fn updates(payload: &[u8]) -> impl Iterator<Item = Result<(u64, f64), Malformed>> + '_ {
    records(payload, |reader| Ok((reader.ticket()?, reader.value()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The payload of a batch frame, as the receiving side sees it.
    fn payload(batch: &Batch) -> &[u8] {
        match Envelope::decode(batch.frame()) {
            Ok(Envelope::Publish { payload, .. }) => payload,
            other => panic!("not a publish envelope: {other:?}"),
        }
    }

    #[test]
    fn batches_round_trip() {
        let mut run = Batch::new(RUN_SUBJECT);
        run.push_run(1, 1, "fnv", b"abc");
        run.push_run(u128::MAX, 7, "other", b"");
        let got: Vec<_> = runs(payload(&run)).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            [
                Run {
                    id: 1,
                    attempt: 1,
                    name: "fnv",
                    job: b"abc"
                },
                Run {
                    id: u128::MAX,
                    attempt: 7,
                    name: "other",
                    job: b""
                }
            ]
        );
        let mut done = Batch::new(DONE_SUBJECT);
        done.push_done(3, 2, Ok(b"out"));
        done.push_done(4, 1, Err("boom"));
        let got: Vec<_> = dones(payload(&done)).collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0].outcome, Ok(&b"out"[..]));
        assert_eq!(
            (got[1].id, got[1].attempt, got[1].outcome),
            (4, 1, Err("boom"))
        );
        let mut drop = Batch::new(DROP_SUBJECT);
        drop.push_drop(9, 3);
        assert_eq!(drops(payload(&drop)).collect::<Vec<_>>(), [Ok((9, 3))]);
        drop.clear();
        assert!(drop.is_empty());
        assert_eq!(drops(payload(&drop)).count(), 0);
        let mut progress = Batch::new(PROGRESS_SUBJECT);
        progress.push_progress(5, 2, 0.5);
        assert_eq!(
            progress_reports(payload(&progress)).collect::<Vec<_>>(),
            [Ok((5, 2, 0.5))]
        );
        let mut cancel = Batch::new(CANCEL_SUBJECT);
        cancel.push_cancel(11);
        cancel.push_cancel(12);
        assert_eq!(
            job_ids(payload(&cancel)).collect::<Vec<_>>(),
            [Ok(11), Ok(12)]
        );
        let mut update = Batch::new(UPDATE_SUBJECT);
        update.push_update(3, 0.25);
        assert_eq!(
            updates(payload(&update)).collect::<Vec<_>>(),
            [Ok((3, 0.25))]
        );
    }

    #[test]
    fn results_carry_outputs_and_typed_errors() {
        let codec = CodecKind::default();
        let ok = with_result_frame(7, Ok(b"out"), codec, <[u8]>::to_vec);
        let failed = with_result_frame(
            8,
            Err(JobError::QueueFull { capacity: 3 }),
            codec,
            <[u8]>::to_vec,
        );
        let ok = Envelope::decode(&ok).unwrap();
        let Envelope::Publish { subject, payload } = ok else {
            panic!("{ok:?}");
        };
        assert_eq!(subject, RESULT_SUBJECT);
        assert_eq!(
            results(payload).collect::<Vec<_>>(),
            [Ok((7, Ok(&b"out"[..])))]
        );
        let Ok(Envelope::Publish { payload, .. }) = Envelope::decode(&failed) else {
            panic!("not a publish");
        };
        let Some(Ok((8, Err(error)))) = results(payload).next() else {
            panic!("no error record");
        };
        assert_eq!(
            codec.decode::<JobError>(error),
            Ok(JobError::QueueFull { capacity: 3 })
        );
    }

    #[test]
    fn a_cut_record_is_malformed_once() {
        let mut run = Batch::new(RUN_SUBJECT);
        run.push_run(1, 1, "fnv", b"abc");
        let bytes = payload(&run);
        let cut: Vec<_> = runs(&bytes[..bytes.len() - 1]).collect();
        assert_eq!(cut.len(), 1);
        assert!(cut[0].is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = runs(&bytes).count();
            let _ = dones(&bytes).count();
            let _ = drops(&bytes).count();
            let _ = progress_reports(&bytes).count();
            let _ = job_ids(&bytes).count();
            let _ = results(&bytes).count();
            let _ = updates(&bytes).count();
        }
    }
}
