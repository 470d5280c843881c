//! An indexed heap of ready workers in [`ReadyKey`] order, for the placement and warm indexes.
//!
//! Every placement changes the rank of the worker it went to in each index that lists it, so
//! moving an entry is the operation to make cheap. An ordered tree pays a removal and an
//! insertion for it, with node searches and rebalancing; a 4-ary heap in one flat array pays one
//! sift. Each entry has a slot that stays put while the entry moves, so its owner finds it without
//! searching. Setting, moving or clearing an entry is O(log n); walking the entries in order
//! ([`Ranked::iter`]) goes through a frontier of the heap positions whose parents were yielded:
//! a short inline scan for each of the first few entries, O(log k) for the k-th beyond, so
//! looking at the best few is cheap however large the heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smallvec::SmallVec;

use crate::placement::ReadyKey;

const ARITY: usize = 4;
/// The position of a slot whose entry is not in the heap.
const ABSENT: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct Ranked {
    /// (key, slot), a min-heap on the key: the best entry first.
    heap: Vec<(ReadyKey, u32)>,
    /// Heap position per slot, ABSENT when the slot has no entry.
    pos: Vec<u32>,
    /// Slots given back, to hand out again.
    free: Vec<u32>,
}

impl Ranked {
    /// A new slot, without an entry.
    pub fn slot(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.pos.push(ABSENT);
            (self.pos.len() - 1) as u32
        })
    }

    /// Give a slot back, dropping its entry.
    pub fn release(&mut self, slot: u32) {
        self.set(slot, None);
        self.free.push(slot);
    }

    /// The slot's entry, if it has one.
    pub fn get(&self, slot: u32) -> Option<ReadyKey> {
        let at = self.pos[slot as usize];
        (at != ABSENT).then(|| self.heap[at as usize].0)
    }

    /// The best entry and its slot.
    pub fn first(&self) -> Option<(ReadyKey, u32)> {
        self.heap.first().copied()
    }

    /// Set, move or clear the slot's entry.
    pub fn set(&mut self, slot: u32, key: Option<ReadyKey>) {
        let at = self.pos[slot as usize];
        match (at, key) {
            (ABSENT, None) => {}
            (ABSENT, Some(key)) => {
                self.heap.push((key, slot));
                self.sift_up(self.heap.len() - 1);
            }
            (at, None) => {
                let at = at as usize;
                self.pos[slot as usize] = ABSENT;
                let last = self.heap.pop().expect("the slot's entry is in the heap");
                if at < self.heap.len() {
                    self.heap[at] = last;
                    if at > 0 && last.0 < self.heap[(at - 1) / ARITY].0 {
                        self.sift_up(at);
                    } else {
                        self.sift_down(at);
                    }
                }
            }
            (at, Some(key)) => {
                let at = at as usize;
                let old = self.heap[at].0;
                self.heap[at].0 = key;
                if key < old {
                    self.sift_up(at);
                } else if key > old {
                    self.sift_down(at);
                }
            }
        }
    }

    /// Put `entry` at heap position `at`.
    fn put(&mut self, at: usize, entry: (ReadyKey, u32)) {
        self.heap[at] = entry;
        self.pos[entry.1 as usize] = at as u32;
    }

    fn sift_up(&mut self, mut at: usize) {
        let entry = self.heap[at];
        while at > 0 {
            let parent = (at - 1) / ARITY;
            if self.heap[parent].0 <= entry.0 {
                break;
            }
            self.put(at, self.heap[parent]);
            at = parent;
        }
        self.put(at, entry);
    }

    fn sift_down(&mut self, mut at: usize) {
        let entry = self.heap[at];
        let n = self.heap.len();
        loop {
            let first = ARITY * at + 1;
            if first >= n {
                break;
            }
            let mut best = first;
            for child in first + 1..(first + ARITY).min(n) {
                if self.heap[child].0 < self.heap[best].0 {
                    best = child;
                }
            }
            if self.heap[best].0 >= entry.0 {
                break;
            }
            self.put(at, self.heap[best]);
            at = best;
        }
        self.put(at, entry);
    }

    /// The entries with their slots, best first.
    pub fn iter(&self) -> Ordered<'_> {
        Ordered {
            ranked: self,
            frontier: Frontier::Inline(SmallVec::new()),
            expand: None,
            started: false,
        }
    }
}

/// Frontier entries kept inline and searched by a scan; a longer walk moves them into a binary
/// heap. A walk over the best few entries (the usual one: the best and the runner-up) thus
/// allocates nothing and pays a short scan per entry, and a long one O(log k) per entry.
const INLINE: usize = 8;

/// (key, heap position) of the entries not yet yielded whose parents were.
// The inline variant is the large one on purpose: a walk lives on the stack of one lookup.
#[allow(clippy::large_enum_variant)]
enum Frontier {
    Inline(SmallVec<[(ReadyKey, u32); INLINE]>),
    Heap(BinaryHeap<Reverse<(ReadyKey, u32)>>),
}

impl Frontier {
    fn push(&mut self, entry: (ReadyKey, u32)) {
        match self {
            Frontier::Inline(entries) if entries.len() < INLINE => entries.push(entry),
            Frontier::Inline(entries) => {
                let mut heap: BinaryHeap<_> = entries.drain(..).map(Reverse).collect();
                heap.push(Reverse(entry));
                *self = Frontier::Heap(heap);
            }
            Frontier::Heap(heap) => heap.push(Reverse(entry)),
        }
    }

    fn pop(&mut self) -> Option<(ReadyKey, u32)> {
        match self {
            Frontier::Inline(entries) => {
                // Keys are unique (they end with the worker), so the key alone orders entries.
                let mut best = 0;
                for i in 1..entries.len() {
                    if entries[i].0 < entries[best].0 {
                        best = i;
                    }
                }
                (!entries.is_empty()).then(|| entries.swap_remove(best))
            }
            Frontier::Heap(heap) => heap.pop().map(|Reverse(entry)| entry),
        }
    }
}

/// The entries of a [`Ranked`] in order: the next one is the best of the frontier.
pub struct Ordered<'a> {
    ranked: &'a Ranked,
    frontier: Frontier,
    /// The position last yielded, whose children join the frontier on the next call.
    expand: Option<usize>,
    started: bool,
}

impl Iterator for Ordered<'_> {
    /// An entry and its slot.
    type Item = (ReadyKey, u32);

    fn next(&mut self) -> Option<(ReadyKey, u32)> {
        let heap = &self.ranked.heap;
        if let Some(at) = self.expand.take() {
            let first = ARITY * at + 1;
            let children = heap.iter().enumerate().skip(first).take(ARITY);
            for (child, &(key, _)) in children {
                self.frontier.push((key, child as u32));
            }
        }
        let at = if self.started {
            self.frontier.pop()?.1
        } else {
            self.started = true;
            heap.first()?;
            0
        };
        self.expand = Some(at as usize);
        Some(heap[at as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Slot,
        /// Release the n-th live slot (modulo their count).
        Release(usize),
        /// Set the n-th live slot's entry; `None` clears it. Few ranks, so ties are common and
        /// broken by the worker (here the slot).
        Set(usize, Option<u64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => Just(Op::Slot),
            1 => any::<usize>().prop_map(Op::Release),
            5 => (any::<usize>(), prop::option::weighted(0.8, 0u64..6)).prop_map(|(n, r)| Op::Set(n, r)),
        ]
    }

    proptest! {
        /// Whatever the sequence of operations, walking the heap gives its entries in the order
        /// of an ordered set, and each slot reads back its own entry.
        #[test]
        fn walks_entries_in_the_order_of_an_ordered_set(ops in prop::collection::vec(op(), 1..600)) {
            let mut ranked = Ranked::default();
            // slot -> its entry, as the reference.
            let mut model: BTreeMap<u32, Option<ReadyKey>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Slot => {
                        model.insert(ranked.slot(), None);
                    }
                    Op::Release(n) if !model.is_empty() => {
                        let slot = *model.keys().nth(n % model.len()).unwrap();
                        ranked.release(slot);
                        model.remove(&slot);
                    }
                    Op::Set(n, rank) if !model.is_empty() => {
                        let slot = *model.keys().nth(n % model.len()).unwrap();
                        let key = rank.map(|r| (Reverse(r), u64::from(slot)));
                        ranked.set(slot, key);
                        model.insert(slot, key);
                    }
                    _ => {}
                }
                let mut expected: Vec<ReadyKey> = model.values().flatten().copied().collect();
                expected.sort_unstable();
                prop_assert_eq!(ranked.iter().map(|(key, _)| key).collect::<Vec<_>>(), expected);
                for (key, slot) in ranked.iter() {
                    prop_assert_eq!(ranked.get(slot), Some(key));
                }
                for (&slot, &key) in &model {
                    prop_assert_eq!(ranked.get(slot), key);
                }
            }
        }
    }
}
