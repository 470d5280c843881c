//! A ready set re-ranked lazily: an ordered set of [`ReadyKey`]s (best first) whose entries may
//! sit too early.
//!
//! Each member has at most one entry, its "listed" key, and a current key (None = not ready)
//! that the owner keeps elsewhere. The invariant: while a member has a current key it has an
//! entry, at or before the current key in set order. So a member whose rank falls (or who stops
//! being ready) needs no tree work at all; only a rise moves its entry at once ([`raise`]). The
//! set can still be walked in exact order ([`LazySet::in_order`]): an entry that is not its
//! member's current key is stale and is held back until the walk reaches its true position,
//! which cannot precede the entry. [`LazySet::settle`] moves stale entries off the head, so a
//! walk only passes the stale entries that lie between valid ones near the top.

use std::collections::{btree_set, BTreeSet};
use std::iter::Peekable;

use crate::placement::ReadyKey;
use crate::WorkerId;

#[derive(Debug, Default)]
pub struct LazySet {
    entries: BTreeSet<ReadyKey>,
}

impl LazySet {
    /// A member's current key became `key`; `listed` is its entry (updated here). O(log n) if
    /// its rank rose above the entry or it became ready, else O(1).
    pub fn raise(&mut self, listed: &mut Option<ReadyKey>, key: Option<ReadyKey>) {
        let Some(new) = key else { return };
        if listed.is_none_or(|old| new < old) {
            if let Some(old) = *listed {
                self.entries.remove(&old);
            }
            self.entries.insert(new);
            *listed = key;
        }
    }

    /// Drop a member's entry.
    pub fn remove(&mut self, listed: Option<ReadyKey>) {
        if let Some(entry) = listed {
            self.entries.remove(&entry);
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Move stale entries off the head until it is valid (or the set is empty): each goes to
    /// its member's current key, or is dropped if it has none. `relist(id)` returns the current
    /// key of the head's member and records it as the member's entry (which it is, once this
    /// returns: the head is left in place exactly when it equals that key).
    pub fn settle(&mut self, mut relist: impl FnMut(WorkerId) -> Option<ReadyKey>) {
        while let Some(&head) = self.entries.first() {
            let key = relist(head.1);
            if key == Some(head) {
                return;
            }
            self.entries.pop_first();
            if let Some(k) = key {
                self.entries.insert(k);
            }
        }
    }

    /// The current keys of the ready members in exact set order, given each member's current
    /// key.
    pub fn in_order<F>(&self, current: F) -> InOrder<'_, F>
    where
        F: Fn(WorkerId) -> Option<ReadyKey>,
    {
        InOrder {
            entries: self.entries.iter().peekable(),
            current,
            held: Vec::new(),
        }
    }
}

/// See [`LazySet::in_order`].
pub struct InOrder<'a, F> {
    entries: Peekable<btree_set::Iter<'a, ReadyKey>>,
    current: F,
    /// Current keys of the stale entries passed so far, not yet yielded (a handful at most
    /// after `settle`).
    held: Vec<ReadyKey>,
}

impl<F> Iterator for InOrder<'_, F>
where
    F: Fn(WorkerId) -> Option<ReadyKey>,
{
    type Item = ReadyKey;

    fn next(&mut self) -> Option<ReadyKey> {
        // The first valid entry, holding back the stale ones before it.
        let valid = loop {
            let Some(&&entry) = self.entries.peek() else {
                break None;
            };
            let key = (self.current)(entry.1);
            if key == Some(entry) {
                break Some(entry);
            }
            self.entries.next();
            self.held.extend(key);
        };
        // Every entry not yet passed is at or before its current key, so nothing unseen can
        // come before the smaller of the two.
        let held = self
            .held
            .iter()
            .enumerate()
            .min_by_key(|&(_, k)| k)
            .map(|(i, &k)| (i, k));
        match (valid, held) {
            (Some(entry), Some((_, h))) if entry < h => {
                self.entries.next();
                Some(entry)
            }
            (_, Some((i, h))) => {
                self.held.swap_remove(i);
                Some(h)
            }
            (Some(entry), None) => {
                self.entries.next();
                Some(entry)
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use super::*;

    /// A deterministic generator for the randomised check below.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    #[test]
    fn walks_in_exact_order_whatever_the_ranks_do() {
        let mut rng = Lcg(3);
        let n = 40;
        let mut set = LazySet::default();
        let mut current: Vec<Option<ReadyKey>> = vec![None; n];
        let mut listed: Vec<Option<ReadyKey>> = vec![None; n];
        for step in 0..20_000 {
            let id = (rng.next() % n as u64) as usize;
            let key =
                (!rng.next().is_multiple_of(5)).then(|| (Reverse(rng.next() % 16), id as WorkerId));
            current[id] = key;
            set.raise(&mut listed[id], key);
            if step % 7 == 0 {
                set.settle(|w| {
                    listed[w as usize] = current[w as usize];
                    current[w as usize]
                });
                let head = set.entries.first().copied();
                assert!(
                    head.is_none_or(|h| current[h.1 as usize] == Some(h)),
                    "settle leaves a valid head"
                );
            }
            let mut expected: Vec<ReadyKey> = current.iter().flatten().copied().collect();
            expected.sort_unstable();
            let walked: Vec<ReadyKey> = set.in_order(|w| current[w as usize]).collect();
            assert_eq!(
                walked, expected,
                "step {step}: lazy walk differs from a sort"
            );
        }
    }
}
