//! W1's counter: one padded counter per thread (no shared cache line is written per
//! message), an end marker per connection, and a report once every sender has ended.

use crate::spec::END_MARK;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// One thread's count, alone on its cache lines.
#[repr(align(128))]
struct Slot(AtomicU64);

/// Every thread's slot, for summing.
static SLOTS: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's slot; leaked on purpose (one per thread, for the life of the process).
    static MINE: &'static Slot = {
        let slot: &'static Slot = Box::leak(Box::new(Slot(AtomicU64::new(0))));
        SLOTS.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
        slot
    };
}

/// Adds one to this thread's count. Only this thread writes its slot, so a plain
/// load and store suffice.
fn count_one() {
    MINE.with(|slot| {
        slot.0
            .store(slot.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed)
    });
}

/// The sum of every thread's count.
fn total() -> u64 {
    SLOTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|slot| slot.0.load(Ordering::Relaxed))
        .sum()
}

/// What the server measured when the last sender ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IngestDone {
    /// Messages counted, end markers included.
    pub(crate) count: u64,
    /// From the first message to the last end marker.
    pub(crate) nanos: u128,
}

/// Counts W1 messages on the server.
#[derive(Debug)]
pub(crate) struct Ingest {
    senders: usize,
    ended: AtomicUsize,
    start: OnceLock<Instant>,
}

impl Ingest {
    /// A counter that reports once `senders` connections sent their end marker.
    pub(crate) fn new(senders: usize) -> Self {
        Self {
            senders,
            ended: AtomicUsize::new(0),
            start: OnceLock::new(),
        }
    }

    /// Counts one message; returns the figures when it was the last end marker.
    ///
    /// A connection's messages are handled in order, so when its end marker is counted all
    /// of its messages are; the `AcqRel` on `ended` makes every thread's count visible.
    pub(crate) fn record(&self, payload: &[u8]) -> Option<IngestDone> {
        let start = *self.start.get_or_init(Instant::now);
        count_one();
        if payload.first() != Some(&END_MARK) {
            return None;
        }
        let ended = self.ended.fetch_add(1, Ordering::AcqRel) + 1;
        (ended == self.senders).then(|| IngestDone {
            nanos: start.elapsed().as_nanos(),
            count: total(),
        })
    }
}

/// Prints the W1 result line for the parent.
pub(crate) fn report(done: IngestDone) {
    crate::common::print_line(&format!("INGEST {} {}", done.count, done.nanos));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{INGEST_DATA, INGEST_END};

    #[test]
    fn reports_after_the_last_end_marker() {
        let ingest = Ingest::new(2);
        let before = total();
        assert_eq!(ingest.record(INGEST_DATA.as_bytes()), None);
        assert_eq!(ingest.record(INGEST_END.as_bytes()), None);
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(ingest.record(INGEST_DATA.as_bytes()), None));
        });
        let done = ingest.record(INGEST_END.as_bytes()).unwrap();
        assert_eq!(done.count - before, 4);
    }
}
