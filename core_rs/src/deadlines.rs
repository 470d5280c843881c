//! Heartbeat and task-timeout deadlines: one min-heap with lazy invalidation.
//!
//! A heartbeat or a finished task does not search the heap; it bumps a generation so the old
//! entry is recognised as stale when it surfaces. Push is O(log n); stale entries cost one pop
//! each, and the heap is compacted when they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Deadline {
    /// A worker's heartbeat deadline.
    Worker,
    /// A placed task's timeout.
    Task,
}

/// (deadline_ms, what, id, generation)
type Entry = (u64, Deadline, u64, u64);

#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<Entry>>,
    next_gen: u64,
}

impl Deadlines {
    /// A generation never handed out before, so a new deadline never matches an old entry.
    pub fn next_generation(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    pub fn push(&mut self, at_ms: u64, what: Deadline, id: u64, generation: u64) {
        self.heap.push(Reverse((at_ms, what, id, generation)));
    }

    /// The earliest deadline for which `is_current(what, id, generation)` holds.
    pub fn next(&mut self, is_current: impl Fn(Deadline, u64, u64) -> bool) -> Option<u64> {
        while let Some(&Reverse((at, what, id, generation))) = self.heap.peek() {
            if is_current(what, id, generation) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Take every current deadline at or before `now_ms` (so each is reported once).
    pub fn take_expired(
        &mut self,
        now_ms: u64,
        is_current: impl Fn(Deadline, u64, u64) -> bool,
    ) -> Vec<(Deadline, u64)> {
        let mut expired = Vec::new();
        while let Some(&Reverse((at, what, id, generation))) = self.heap.peek() {
            if at > now_ms {
                break;
            }
            self.heap.pop();
            if is_current(what, id, generation) {
                expired.push((what, id));
            }
        }
        expired
    }

    /// Drop stale entries when they dominate the heap (e.g. frequent heartbeats with a long
    /// timeout), keeping memory proportional to what is tracked.
    pub fn compact_if_stale(
        &mut self,
        tracked: usize,
        is_current: impl Fn(Deadline, u64, u64) -> bool,
    ) {
        if self.heap.len() > 2 * tracked + 1024 {
            self.heap
                .retain(|&Reverse((_, what, id, generation))| is_current(what, id, generation));
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_are_skipped_and_expiry_is_reported_once() {
        let mut d = Deadlines::default();
        let old = d.next_generation();
        d.push(100, Deadline::Worker, 1, old);
        let current = d.next_generation();
        d.push(200, Deadline::Worker, 1, current);
        let live = |_: Deadline, _: u64, g: u64| g == current;
        assert_eq!(
            d.next(live),
            Some(200),
            "the superseded deadline must not count"
        );
        assert!(d.take_expired(150, live).is_empty());
        assert_eq!(d.take_expired(250, live), vec![(Deadline::Worker, 1)]);
        assert!(d.take_expired(300, live).is_empty(), "reported once");
        assert_eq!(d.next(live), None);
    }

    #[test]
    fn compaction_keeps_only_current_entries() {
        let mut d = Deadlines::default();
        for i in 0..3000 {
            d.push(i, Deadline::Task, i, i);
        }
        d.compact_if_stale(10, |_, _, g| g % 2 == 0);
        assert_eq!(d.len(), 1500);
    }
}
