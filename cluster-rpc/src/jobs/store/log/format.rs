//! The journal's format on disk: a file header, then records, each framed by its length
//! and a CRC-32 of its body. All integers little-endian.
//!
//! | part | bytes |
//! |---|---|
//! | header | `NCJOBS`, u16 format version, u8 file kind (1 segment, 2 snapshot), 7 zero bytes |
//! | record | u32 body length, u32 CRC-32 (IEEE) of the body, body |
//! | body | u8 tag, then the tag's fields |
//!
//! Bodies, by tag (`id` u128, times u64 Unix milliseconds, `bytes` a u32 length + bytes,
//! `text` a u16 length + UTF-8):
//!
//! | tag | change | fields |
//! |---|---|---|
//! | 1 | submitted | id, at, owner u128, priority i32, flags u8 (1 delay, 2 timeout, 4 attempts, 8 key), [delay u64 ms], [timeout u64 ms], [attempts u32], [key text], name text, payload bytes |
//! | 2 | started | id, attempt u32, worker u128, at |
//! | 4 | completed | id, attempt u32, at, retain until, output bytes |
//! | 5 | failed | id, attempt u32, at, retry at (0: none), error text |
//! | 6 | dead | id, at |
//! | 7 | released | id, attempt u32 |
//! | 8 | cancelled | id |
//! | 9 | revived | id, at |
//! | 10 | removed | id |
//! | 12 | job (snapshots: a job's whole state) | id, then as [`replay`](super::replay) writes it |
//!
//! A record whose length runs past the end of the file or whose CRC does not match ends
//! the file's valid part: a torn tail (a write cut by a crash), skipped with a warning.

use super::replay::ReplayJob;
use crate::jobs::store::{Change, Owner, UnixMillis};
use crate::jobs::{JobId, JobOptions};
use std::time::Duration;

/// The file magic.
pub(super) const MAGIC: &[u8; 6] = b"NCJOBS";
/// The format version this build writes, and the newest it reads.
pub(super) const VERSION: u16 = 1;
/// Header length.
pub(super) const HEADER_LEN: usize = 16;
/// Record frame: length and CRC.
pub(super) const FRAME_LEN: usize = 8;
/// Longest record body read back: a bound on what a corrupted length can make us allocate.
pub(super) const MAX_BODY: usize = 64 << 20;
/// Longest error text kept per failed attempt.
const MAX_ERROR: usize = 4096;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Segment = 1,
    Snapshot = 2,
}

/// A file header.
pub(super) fn header(kind: FileKind) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    h[6..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8] = kind as u8;
    h
}

/// Why a header is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadHeader {
    /// Not a journal file (or cut before its header ended).
    NotOurs,
    /// Written by a newer format version.
    Newer(u16),
}

/// Checks a file's header.
pub(super) fn check_header(bytes: &[u8], kind: FileKind) -> Result<(), BadHeader> {
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err(BadHeader::NotOurs);
    };
    if &h[..6] != MAGIC || h[8] != kind as u8 {
        return Err(BadHeader::NotOurs);
    }
    let version = u16::from_le_bytes([h[6], h[7]]);
    if version > VERSION {
        return Err(BadHeader::Newer(version));
    }
    Ok(())
}

/// A record: a change, as written and as read back (a submission's options are read back
/// owned), or what only snapshots write.
#[derive(Debug, Clone)]
pub(super) enum Record<'a> {
    /// Any change but a submission, as read back; any change, to write.
    Change(Change<'a>),
    /// A submission, as read back.
    Submitted {
        id: JobId,
        at: UnixMillis,
        owner: Owner,
        options: JobOptions,
        name: &'a str,
        payload: &'a [u8],
    },
    /// A job's whole state (snapshots).
    Job(Box<ReplayJob>),
}

/// Appends `record`, framed, to `out`; returns its length. A change the journal does not
/// keep (progress) appends nothing.
pub(super) fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    let body = out.len();
    match *record {
        Record::Change(ref change) => match *change {
            Change::Submitted {
                id,
                name,
                payload,
                options,
                owner,
                at,
            } => {
                out.push(TAG_SUBMITTED);
                put_u128(out, id);
                put_u64(out, at);
                put_u128(out, owner.0);
                put_options(out, options);
                put_text(out, name);
                put_bytes(out, payload);
            }
            Change::Started {
                id,
                attempt,
                worker,
                at,
            } => {
                out.push(2);
                put_u128(out, id);
                put_u32(out, attempt);
                put_u128(out, worker.as_u128());
                put_u64(out, at);
            }
            Change::Completed {
                id,
                attempt,
                output,
                at,
                retain_until,
            } => {
                out.push(4);
                put_u128(out, id);
                put_u32(out, attempt);
                put_u64(out, at);
                put_u64(out, retain_until);
                put_bytes(out, output);
            }
            Change::Failed {
                id,
                attempt,
                error,
                retry_at,
                at,
            } => {
                out.push(5);
                put_u128(out, id);
                put_u32(out, attempt);
                put_u64(out, at);
                put_u64(out, retry_at.unwrap_or(0));
                put_text(out, truncated(error, MAX_ERROR));
            }
            Change::Dead { id, at } => {
                out.push(6);
                put_u128(out, id);
                put_u64(out, at);
            }
            Change::Released { id, attempt } => {
                out.push(7);
                put_u128(out, id);
                put_u32(out, attempt);
            }
            Change::Cancelled { id } => {
                out.push(TAG_CANCELLED);
                put_u128(out, id);
            }
            Change::Revived { id, at } => {
                out.push(9);
                put_u128(out, id);
                put_u64(out, at);
            }
            Change::Removed { id } => {
                out.push(TAG_REMOVED);
                put_u128(out, id);
            }
            Change::Progress { .. } => {
                out.truncate(start);
                return 0;
            }
        },
        Record::Submitted {
            id,
            at,
            owner,
            ref options,
            name,
            payload,
        } => {
            out.truncate(start);
            return encode(
                &Record::Change(Change::Submitted {
                    id,
                    name,
                    payload,
                    options,
                    owner,
                    at,
                }),
                out,
            );
        }
        Record::Job(ref job) => {
            out.push(TAG_JOB);
            put_u128(out, job.id);
            job.encode(out);
        }
    }
    let len = out.len() - body;
    let crc = crc32fast::hash(&out[body..]);
    // The body is at most a payload plus small fields: far below 4 GiB.
    out[start..start + 4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Reads the record at the front of `bytes`: the record and its framed length, or `None`
/// where the valid part ends (nothing left, a torn or corrupted record).
#[cfg(test)]
pub(super) fn decode(bytes: &[u8]) -> Option<(Record<'_>, usize)> {
    let (body, len) = frame(bytes)?;
    Some((record(body)?, len))
}

/// The body of the record at the front of `bytes` (its length and CRC checked) and the
/// record's framed length, or `None` where the valid part ends.
pub(super) fn frame(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let frame = bytes.get(..FRAME_LEN)?;
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 || len > MAX_BODY {
        return None;
    }
    let body = bytes.get(FRAME_LEN..FRAME_LEN + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((body, FRAME_LEN + len))
}

/// The record a framed body holds, or `None` if it does not parse.
pub(super) fn record(body: &[u8]) -> Option<Record<'_>> {
    Reader(body).record()
}

/// A body's tag and job id (every record begins with them), without reading the rest.
pub(super) fn tag_and_id(body: &[u8]) -> Option<(u8, JobId)> {
    let mut r = Reader(body);
    Some((r.u8()?, r.u128()?))
}

/// Tags of the records that make a job's state (a submission; a snapshot's whole job).
pub(super) const TAG_SUBMITTED: u8 = 1;
pub(super) const TAG_JOB: u8 = 12;
/// Tags of the records after which a job is gone (cancelled; removed).
pub(super) const TAG_CANCELLED: u8 = 8;
pub(super) const TAG_REMOVED: u8 = 10;

/// Reads a record body.
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    pub(super) fn u128(&mut self) -> Option<u128> {
        Some(u128::from_le_bytes(self.array()?))
    }

    pub(super) fn text(&mut self) -> Option<&'a str> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn record(&mut self) -> Option<Record<'a>> {
        let tag = self.u8()?;
        let id = self.u128()?;
        let change = match tag {
            TAG_SUBMITTED => return self.submitted(id),
            2 => Change::Started {
                id,
                attempt: self.u32()?,
                worker: uuid::Uuid::from_u128(self.u128()?),
                at: self.u64()?,
            },
            4 => Change::Completed {
                id,
                attempt: self.u32()?,
                at: self.u64()?,
                retain_until: self.u64()?,
                output: self.bytes()?,
            },
            5 => {
                let attempt = self.u32()?;
                let at = self.u64()?;
                let retry_at = Some(self.u64()?).filter(|t| *t != 0);
                Change::Failed {
                    id,
                    attempt,
                    error: self.text()?,
                    retry_at,
                    at,
                }
            }
            6 => Change::Dead {
                id,
                at: self.u64()?,
            },
            7 => Change::Released {
                id,
                attempt: self.u32()?,
            },
            TAG_CANCELLED => Change::Cancelled { id },
            9 => Change::Revived {
                id,
                at: self.u64()?,
            },
            TAG_REMOVED => Change::Removed { id },
            TAG_JOB => return Some(Record::Job(Box::new(ReplayJob::decode(id, self)?))),
            _ => return None,
        };
        Some(Record::Change(change))
    }

    fn submitted(&mut self, id: JobId) -> Option<Record<'a>> {
        let (at, owner, options) = (self.u64()?, Owner(self.u128()?), self.options()?);
        let name = self.text()?;
        let payload = self.bytes()?;
        Some(Record::Submitted {
            id,
            at,
            owner,
            options,
            name,
            payload,
        })
    }

    /// A job's options, as [`put_options`] writes them.
    pub(super) fn options(&mut self) -> Option<JobOptions> {
        let priority = i32::from_le_bytes(self.array()?);
        let flags = self.u8()?;
        let mut options = JobOptions::default().priority(priority);
        if flags & 1 != 0 {
            options.delay = Some(Duration::from_millis(self.u64()?));
        }
        if flags & 2 != 0 {
            options.timeout = Some(Duration::from_millis(self.u64()?));
        }
        if flags & 4 != 0 {
            options.max_attempts = Some(self.u32()?);
        }
        if flags & 8 != 0 {
            options.key = Some(self.text()?.to_owned());
        }
        Some(options)
    }
}

/// Writes a job's options: priority i32, flags u8 (1 delay, 2 timeout, 4 attempts, 8 key),
/// then the fields flagged.
pub(super) fn put_options(out: &mut Vec<u8>, options: &JobOptions) {
    out.extend_from_slice(&options.priority.to_le_bytes());
    let flags = u8::from(options.delay.is_some())
        | u8::from(options.timeout.is_some()) << 1
        | u8::from(options.max_attempts.is_some()) << 2
        | u8::from(options.key.is_some()) << 3;
    out.push(flags);
    if let Some(d) = options.delay {
        put_u64(out, millis(d));
    }
    if let Some(d) = options.timeout {
        put_u64(out, millis(d));
    }
    if let Some(n) = options.max_attempts {
        put_u32(out, n);
    }
    if let Some(key) = &options.key {
        put_text(out, key);
    }
}

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u128(out: &mut Vec<u8>, v: u128) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_text(out: &mut Vec<u8>, text: &str) {
    let text = truncated(text, usize::from(u16::MAX));
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(bytes);
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
