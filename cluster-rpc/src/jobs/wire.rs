//! What the hub and its workers say to each other about jobs: batches of records in
//! `Publish` envelopes on reserved subjects, several jobs to a frame each way.
//!
//! All integers little-endian; a frame's payload is its records back to back:
//!
//! | subject | direction | record |
//! |---|---|---|
//! | [`RUN_SUBJECT`] | hub → worker | u128 job id, u32 attempt, u8 length + job name, u32 length + codec-encoded job |
//! | [`DONE_SUBJECT`] | worker → hub | u128 job id, u32 attempt, u8 status (0 output, 1 error), u32 length + codec-encoded output or UTF-8 error |
//! | [`CANCEL_SUBJECT`] | hub → worker | u128 job id, u32 attempt |
//!
//! Progress goes the other way on [`PROGRESS_SUBJECT`](super::PROGRESS_SUBJECT), one
//! codec-encoded `(id, value)` per frame.

use super::JobId;
use crate::envelope::Envelope;

/// Jobs for a worker to run.
pub(crate) const RUN_SUBJECT: &str = "__jobs.run";
/// Finished attempts, from a worker.
pub(crate) const DONE_SUBJECT: &str = "__jobs.done";
/// Attempts a worker must drop (cancelled or timed out).
pub(crate) const CANCEL_SUBJECT: &str = "__jobs.cancel";

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
        Envelope::Publish {
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

    /// Adds a job to run.
    pub(crate) fn push_run(&mut self, id: JobId, attempt: u32, name: &str, job: &[u8]) {
        let name = &name.as_bytes()[..name.len().min(255)];
        self.push_head(id, attempt);
        self.buf.push(name.len() as u8);
        self.buf.extend_from_slice(name);
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
    pub(crate) fn push_cancel(&mut self, id: JobId, attempt: u32) {
        self.push_head(id, attempt);
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
        let id = u128::from_le_bytes(self.take("job id cut short")?);
        let attempt = u32::from_le_bytes(self.take("attempt cut short")?);
        Ok((id, attempt))
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

/// The jobs of a [`RUN_SUBJECT`] frame. Never panics, whatever the bytes.
pub(crate) fn runs(payload: &[u8]) -> impl Iterator<Item = Result<Run<'_>, Malformed>> {
    let mut reader = Reader(payload);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || reader.is_empty() {
            return None;
        }
        let run = (|| {
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
        })();
        failed = run.is_err();
        Some(run)
    })
}

/// The finished attempts of a [`DONE_SUBJECT`] frame. Never panics, whatever the bytes.
pub(crate) fn dones(payload: &[u8]) -> impl Iterator<Item = Result<Done<'_>, Malformed>> {
    let mut reader = Reader(payload);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || reader.is_empty() {
            return None;
        }
        let done = (|| {
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
        })();
        failed = done.is_err();
        Some(done)
    })
}

/// The attempts of a [`CANCEL_SUBJECT`] frame. Never panics, whatever the bytes.
pub(crate) fn cancels(
    payload: &[u8],
) -> impl Iterator<Item = Result<(JobId, u32), Malformed>> + '_ {
    let mut reader = Reader(payload);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || reader.is_empty() {
            return None;
        }
        let head = reader.head();
        failed = head.is_err();
        Some(head)
    })
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
        let mut cancel = Batch::new(CANCEL_SUBJECT);
        cancel.push_cancel(9, 3);
        assert_eq!(cancels(payload(&cancel)).collect::<Vec<_>>(), [Ok((9, 3))]);
        cancel.clear();
        assert!(cancel.is_empty());
        assert_eq!(cancels(payload(&cancel)).count(), 0);
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
            let _ = cancels(&bytes).count();
        }
    }
}
