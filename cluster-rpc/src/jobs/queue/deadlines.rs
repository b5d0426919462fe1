//! The running attempts' deadlines, earliest first: what the dispatcher times out.
//!
//! Attempts with the queue's own timeout (most of them) are due in the order they start,
//! so their deadlines sit in a queue in that order: starting one appends, ending one is
//! found by its sequence number and marked, and marked ones go when they reach the front,
//! or all at once when they outnumber the live ones. Sequence numbers in the queue are
//! usually consecutive (each attempt started takes the next), so an ending attempt is
//! looked for first at its distance from the front, then by a binary search.
//! Attempts with a timeout of their own are kept in an ordered map. An ordered map for
//! every attempt cost an insertion and a removal in a tree per job: about 900
//! instructions per job in W5, most of the queue's bookkeeping.

use crate::jobs::JobId;
use std::collections::{BTreeMap, VecDeque};
use tokio::time::Instant;

/// Ended deadlines tolerated in the queue beyond twice the live ones before a sweep.
const SWEEP_SLACK: usize = 64;

/// Where a running attempt sits among the deadlines: its time, then a tie-breaker (the
/// attempt's sequence number, unique), and whether its job has a timeout of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DeadlineKey {
    pub(super) at: Instant,
    pub(super) seq: u64,
    own: bool,
}

/// The deadlines of running attempts.
#[derive(Default)]
pub(super) struct Deadlines {
    /// Attempts with the queue's timeout, by sequence number (so by deadline); an ended
    /// one is `None` until it reaches the front or a sweep. The front is live.
    uniform: VecDeque<(u64, Instant, Option<JobId>)>,
    /// Live attempts in `uniform`.
    uniform_live: usize,
    /// Attempts with a timeout of their own.
    own: BTreeMap<DeadlineKey, JobId>,
}

impl Deadlines {
    /// Attempt `seq` of job `id` started, due at `at`; `own` when its timeout is not the
    /// queue's. Returns its key. Sequence numbers grow; with the queue's timeout a deadline
    /// is never before the one started last (`at` is moved up to it if it were).
    pub(super) fn push(&mut self, at: Instant, seq: u64, id: JobId, own: bool) -> DeadlineKey {
        if own {
            let key = DeadlineKey { at, seq, own };
            self.own.insert(key, id);
            return key;
        }
        let at = self.uniform.back().map_or(at, |(_, last, _)| at.max(*last));
        self.uniform.push_back((seq, at, Some(id)));
        self.uniform_live += 1;
        DeadlineKey { at, seq, own }
    }

    /// The attempt due at `key` ended.
    pub(super) fn remove(&mut self, key: DeadlineKey) {
        if key.own {
            self.own.remove(&key);
            return;
        }
        let Some(at) = self.find(key.seq) else {
            return;
        };
        if let Some((_, _, id)) = self.uniform.get_mut(at) {
            if id.take().is_some() {
                self.uniform_live -= 1;
            }
        }
        while self.uniform.front().is_some_and(|(_, _, id)| id.is_none()) {
            self.uniform.pop_front();
        }
        if self.uniform.len() > 2 * self.uniform_live + SWEEP_SLACK {
            // Ended attempts held behind a long-running one: dropped all at once.
            self.uniform.retain(|(_, _, id)| id.is_some());
        }
    }

    /// Where attempt `seq` sits in `uniform`: at its distance from the front when the
    /// numbers between are consecutive (no delayed job, no own timeout and no sweep in
    /// between), else found by a binary search.
    fn find(&self, seq: u64) -> Option<usize> {
        let (front, _, _) = self.uniform.front()?;
        let guess = seq
            .checked_sub(*front)
            .and_then(|d| usize::try_from(d).ok());
        if let Some(i) = guess {
            if self.uniform.get(i).is_some_and(|(s, _, _)| *s == seq) {
                return Some(i);
            }
        }
        self.uniform.binary_search_by_key(&seq, |(s, _, _)| *s).ok()
    }

    /// The earliest deadline, and its job.
    pub(super) fn first(&self) -> Option<(DeadlineKey, JobId)> {
        let uniform = self.uniform.front().and_then(|(seq, at, id)| {
            let key = DeadlineKey {
                at: *at,
                seq: *seq,
                own: false,
            };
            id.map(|id| (key, id))
        });
        let own = self.own.first_key_value().map(|(key, id)| (*key, *id));
        match (uniform, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets every deadline (the hub stops).
    pub(super) fn clear(&mut self) {
        self.uniform.clear();
        self.uniform_live = 0;
        self.own.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Duration;

    #[test]
    fn the_earliest_live_deadline_comes_first_whatever_ends() {
        let now = Instant::now();
        let mut deadlines = Deadlines::default();
        let mut live = Vec::new();
        for seq in 0..100u64 {
            // Every fifth attempt has a timeout of its own, shorter or longer.
            let own = seq % 5 == 0;
            let secs = if own { 200 - seq } else { 30 + seq };
            let key = deadlines.push(now + Duration::from_secs(secs), seq, seq.into(), own);
            live.push((key, JobId::from(seq)));
        }
        // Ended out of order: every third, then the first ten left.
        for step in [3, 1] {
            let ended: Vec<_> = live.iter().step_by(step).take(34).copied().collect();
            for (key, _) in &ended {
                deadlines.remove(*key);
                live.retain(|(k, _)| k != key);
                assert_eq!(deadlines.first(), live.iter().min().copied());
            }
        }
    }

    #[test]
    fn a_deadline_before_the_last_one_is_moved_up_to_it() {
        let now = Instant::now();
        let mut deadlines = Deadlines::default();
        let late = deadlines.push(now + Duration::from_secs(2), 1, 1, false);
        let early = deadlines.push(now + Duration::from_secs(1), 2, 2, false);
        assert_eq!(early.at, late.at);
        deadlines.remove(late);
        assert_eq!(deadlines.first(), Some((early, 2)));
    }

    #[test]
    fn an_attempt_is_found_past_gaps_in_the_numbers() {
        let now = Instant::now();
        let mut deadlines = Deadlines::default();
        // Numbers 3 and 4 went to other jobs (delayed, or with a timeout of their own).
        let keys: Vec<_> = [0u64, 1, 2, 5, 6, 7]
            .into_iter()
            .map(|seq| deadlines.push(now, seq, seq.into(), false))
            .collect();
        // 5 is not at its distance from the front (7 is), nor 6 (past the end).
        deadlines.remove(keys[3]);
        deadlines.remove(keys[4]);
        for key in [keys[0], keys[1], keys[2]] {
            assert_eq!(deadlines.first(), Some((key, key.seq.into())));
            deadlines.remove(key);
        }
        assert_eq!(deadlines.first(), Some((keys[5], 7)));
        assert_eq!(deadlines.uniform_live, 1);
    }

    #[test]
    fn ended_deadlines_behind_a_long_attempt_are_swept() {
        let now = Instant::now();
        let mut deadlines = Deadlines::default();
        let keys: Vec<_> = (0..5_000u64)
            .map(|seq| deadlines.push(now, seq, seq.into(), false))
            .collect();
        // Attempt 0 runs on; all the others end.
        for key in &keys[1..] {
            deadlines.remove(*key);
        }
        assert!(deadlines.uniform.len() <= 2 + SWEEP_SLACK);
        assert_eq!(deadlines.first(), Some((keys[0], 0)));
        deadlines.remove(keys[0]);
        assert!(deadlines.uniform.is_empty());
        assert_eq!(deadlines.first(), None);
    }
}
