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
//!
//! Layout. An entry is one `u128` that orders like (key, slot): the rank inverted in the top 64
//! bits, then the worker handle and the slot in 32 bits each, so comparing two entries is one
//! integer comparison. The heap is stored in cache lines of four entries, the root alone in the
//! first one's last place, so the four children of any entry fill exactly one line: a step of a
//! sift reads one line and compares four integers. Places past the end hold `u128::MAX`, which
//! no entry equals, so the step needs no bounds check per child.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smallvec::SmallVec;

use crate::placement::ReadyKey;

const ARITY: usize = 4;
/// The position of a slot whose entry is not in the heap.
const ABSENT: u32 = u32::MAX;
/// What places past the heap's end hold: after every entry.
const VACANT: u128 = u128::MAX;

/// Four heap places in one cache line: the children of one entry.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Line([u128; ARITY]);

const EMPTY_LINE: Line = Line([VACANT; ARITY]);

/// An entry in its ordering form (see the module doc).
fn pack((Reverse(rank), worker): ReadyKey, slot: u32) -> u128 {
    // Handles are indices of the worker table, which would need 32 GiB before one outgrew this.
    let worker = u32::try_from(worker).expect("worker handles fit in 32 bits");
    (u128::from(!rank) << 64) | (u128::from(worker) << 32) | u128::from(slot)
}

fn key_of(entry: u128) -> ReadyKey {
    (
        Reverse(!((entry >> 64) as u64)),
        u64::from((entry >> 32) as u32),
    )
}

fn slot_of(entry: u128) -> u32 {
    entry as u32
}

/// Line and place of heap position `at`: the root is the first line's last place, so the
/// children of `at` (4 at + 1 .. 4 at + 4) are all of line `at + 1`.
fn place(at: usize) -> (usize, usize) {
    let p = at + ARITY - 1;
    (p / ARITY, p % ARITY)
}

#[derive(Debug, Default)]
pub struct Ranked {
    /// A min-heap of entries: the best first.
    lines: Vec<Line>,
    /// Entries in the heap.
    len: usize,
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
        (at != ABSENT).then(|| key_of(self.at(at as usize)))
    }

    /// The best entry and its slot.
    pub fn first(&self) -> Option<(ReadyKey, u32)> {
        (self.len > 0).then(|| {
            let entry = self.at(0);
            (key_of(entry), slot_of(entry))
        })
    }

    /// The second best entry and its slot: the best of the first one's children.
    pub fn second(&self) -> Option<(ReadyKey, u32)> {
        let children = &self.lines.get(1)?.0;
        let best = children.iter().copied().min().filter(|&e| e != VACANT)?;
        Some((key_of(best), slot_of(best)))
    }

    fn at(&self, at: usize) -> u128 {
        let (line, i) = place(at);
        self.lines[line].0[i]
    }

    fn write(&mut self, at: usize, entry: u128) {
        let (line, i) = place(at);
        self.lines[line].0[i] = entry;
    }

    /// Set, move or clear the slot's entry.
    pub fn set(&mut self, slot: u32, key: Option<ReadyKey>) {
        let at = self.pos[slot as usize];
        match (at, key) {
            (ABSENT, None) => {}
            (ABSENT, Some(key)) => {
                let at = self.len;
                self.len += 1;
                if place(at).0 >= self.lines.len() {
                    self.lines.push(EMPTY_LINE);
                }
                self.sift_up(at, pack(key, slot));
            }
            (at, None) => {
                let at = at as usize;
                self.pos[slot as usize] = ABSENT;
                self.len -= 1;
                let last = self.at(self.len);
                self.write(self.len, VACANT);
                if at < self.len {
                    if at > 0 && last < self.at((at - 1) / ARITY) {
                        self.sift_up(at, last);
                    } else {
                        self.sift_down(at, last);
                    }
                }
            }
            (at, Some(key)) => {
                let at = at as usize;
                let entry = pack(key, slot);
                let old = self.at(at);
                if entry < old {
                    self.sift_up(at, entry);
                } else if entry > old {
                    self.sift_down(at, entry);
                }
            }
        }
    }

    /// Put `entry` at heap position `at`.
    fn put(&mut self, at: usize, entry: u128) {
        self.write(at, entry);
        self.pos[slot_of(entry) as usize] = at as u32;
    }

    /// Settle `entry` at `at` or above it.
    fn sift_up(&mut self, mut at: usize, entry: u128) {
        while at > 0 {
            let parent = (at - 1) / ARITY;
            let above = self.at(parent);
            if above <= entry {
                break;
            }
            self.put(at, above);
            at = parent;
        }
        self.put(at, entry);
    }

    /// Settle `entry` at `at` or below it.
    fn sift_down(&mut self, mut at: usize, entry: u128) {
        while ARITY * at + 1 < self.len {
            // The children are line at + 1, vacant places after every entry.
            let children = &self.lines[at + 1].0;
            let mut best = 0;
            for i in 1..ARITY {
                if children[i] < children[best] {
                    best = i;
                }
            }
            let below = children[best];
            if below >= entry {
                break;
            }
            self.put(at, below);
            at = ARITY * at + 1 + best;
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

/// (entry, heap position) of the entries not yet yielded whose parents were.
// The inline variant is the large one on purpose: a walk lives on the stack of one lookup.
#[allow(clippy::large_enum_variant)]
enum Frontier {
    Inline(SmallVec<[(u128, u32); INLINE]>),
    Heap(BinaryHeap<Reverse<(u128, u32)>>),
}

impl Frontier {
    fn push(&mut self, entry: (u128, u32)) {
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

    fn pop(&mut self) -> Option<(u128, u32)> {
        match self {
            Frontier::Inline(entries) => {
                // Entries are unique (they end with their slot), so the entry alone orders them.
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
        let ranked = self.ranked;
        if let Some(at) = self.expand.take() {
            let first = ARITY * at + 1;
            for child in first..(first + ARITY).min(ranked.len) {
                self.frontier.push((ranked.at(child), child as u32));
            }
        }
        let at = if self.started {
            self.frontier.pop()?.1 as usize
        } else {
            self.started = true;
            if ranked.len == 0 {
                return None;
            }
            0
        };
        self.expand = Some(at);
        let entry = ranked.at(at);
        Some((key_of(entry), slot_of(entry)))
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
