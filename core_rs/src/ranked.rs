//! An indexed heap: the ready workers of the placement and warm indexes, the active tenants
//! and the per-shape heads of the pending queue, each kept in its key's order, best first.
//!
//! Every placement changes the rank of the worker it went to, and the position of its task's
//! tenant and flow, so moving an entry is the operation to make cheap. An ordered tree pays a
//! removal and an insertion for it, with node searches and rebalancing; a 4-ary heap in one flat
//! array pays one sift. Each entry has a slot that stays put while the entry moves, so its owner
//! finds it without searching. Setting, moving or clearing an entry is O(log n); walking the
//! entries in order ([`Ranked::iter`]) goes through a frontier of the heap positions whose
//! parents were yielded: a short inline scan for each of the first few entries, O(log k) for the
//! k-th beyond, so looking at the best few is cheap however large the heap.
//!
//! Layout. The heap stores each key with its slot as one [`Key::Entry`] that orders like (key,
//! slot); a worker's is one `u128`, so comparing two is one integer comparison. The heap is
//! stored in lines of four entries aligned to 64 bytes, the root alone in the first one's last
//! place, so the four children of any entry fill exactly one line (one cache line for 16-byte
//! entries): a step of a sift reads one line and compares four entries. Places past the end hold
//! [`Key::VACANT`], which orders after every entry, so the step needs no bounds check per child.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Debug;

use smallvec::SmallVec;

use crate::WorkerId;

const ARITY: usize = 4;
/// The position of a slot whose entry is not in the heap.
const ABSENT: u32 = u32::MAX;

/// A worker's position in a ready set of the placement index: best rank first, ties to the
/// lowest worker handle so placement is deterministic. Defined here, beside its packing.
pub type ReadyKey = (Reverse<u64>, WorkerId);

/// A key a [`Ranked`] heap orders by, smallest first.
pub trait Key: Copy + Ord {
    /// The key with its slot, as the heap stores it: ordered like (key, slot).
    type Entry: Copy + Ord + Debug;
    /// Orders after every entry of a slot below `ABSENT`.
    const VACANT: Self::Entry;
    fn entry(self, slot: u32) -> Self::Entry;
    fn key(entry: Self::Entry) -> Self;
    fn slot(entry: Self::Entry) -> u32;
}

/// (an order, an id) in one `u128`: the order in the top 64 bits, then the id and the slot in 32
/// bits each. A tenant's finish tag and handle.
impl Key for (u64, u32) {
    type Entry = u128;
    const VACANT: u128 = u128::MAX;

    fn entry(self, slot: u32) -> u128 {
        (u128::from(self.0) << 64) | (u128::from(self.1) << 32) | u128::from(slot)
    }

    fn key(entry: u128) -> (u64, u32) {
        ((entry >> 64) as u64, (entry >> 32) as u32)
    }

    fn slot(entry: u128) -> u32 {
        entry as u32
    }
}

/// A worker's rank (best first) and handle, packed as (order, id) with the rank inverted.
impl Key for ReadyKey {
    type Entry = u128;
    const VACANT: u128 = u128::MAX;

    fn entry(self, slot: u32) -> u128 {
        let (Reverse(rank), worker) = self;
        // Handles are indices of the worker table, which would need 32 GiB before one outgrew
        // this.
        let worker = u32::try_from(worker).expect("worker handles fit in 32 bits");
        (!rank, worker).entry(slot)
    }

    fn key(entry: u128) -> ReadyKey {
        let (order, worker) = <(u64, u32)>::key(entry);
        (Reverse(!order), u64::from(worker))
    }

    fn slot(entry: u128) -> u32 {
        <(u64, u32)>::slot(entry)
    }
}

/// (seq, task): a queued task's place in FIFO order.
impl Key for (u64, u64) {
    type Entry = (u64, u64, u32);
    const VACANT: (u64, u64, u32) = (u64::MAX, u64::MAX, u32::MAX);

    fn entry(self, slot: u32) -> (u64, u64, u32) {
        (self.0, self.1, slot)
    }

    fn key(entry: (u64, u64, u32)) -> (u64, u64) {
        (entry.0, entry.1)
    }

    fn slot(entry: (u64, u64, u32)) -> u32 {
        entry.2
    }
}

/// Four heap places, aligned: the children of one entry.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Line<E>([E; ARITY]);

/// Line and place of heap position `at`: the root is the first line's last place, so the
/// children of `at` (4 at + 1 .. 4 at + 4) are all of line `at + 1`.
fn place(at: usize) -> (usize, usize) {
    let p = at + ARITY - 1;
    (p / ARITY, p % ARITY)
}

#[derive(Debug)]
pub struct Ranked<K: Key> {
    /// A min-heap of entries: the best first.
    lines: Vec<Line<K::Entry>>,
    /// Entries in the heap.
    len: usize,
    /// Heap position per slot, ABSENT when the slot has no entry.
    pos: Vec<u32>,
    /// Slots given back, to hand out again.
    free: Vec<u32>,
}

impl<K: Key> Default for Ranked<K> {
    fn default() -> Self {
        Ranked {
            lines: Vec::new(),
            len: 0,
            pos: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<K: Key> Ranked<K> {
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
    pub fn get(&self, slot: u32) -> Option<K> {
        let at = self.pos[slot as usize];
        (at != ABSENT).then(|| K::key(self.at(at as usize)))
    }

    /// The best entry and its slot.
    pub fn first(&self) -> Option<(K, u32)> {
        (self.len > 0).then(|| {
            let entry = self.at(0);
            (K::key(entry), K::slot(entry))
        })
    }

    /// The second best entry and its slot: the best of the first one's children.
    pub fn second(&self) -> Option<(K, u32)> {
        let children = &self.lines.get(1)?.0;
        let best = children.iter().copied().min().filter(|&e| e != K::VACANT)?;
        Some((K::key(best), K::slot(best)))
    }

    fn at(&self, at: usize) -> K::Entry {
        let (line, i) = place(at);
        self.lines[line].0[i]
    }

    fn write(&mut self, at: usize, entry: K::Entry) {
        let (line, i) = place(at);
        self.lines[line].0[i] = entry;
    }

    /// Set, move or clear the slot's entry.
    pub fn set(&mut self, slot: u32, key: Option<K>) {
        let at = self.pos[slot as usize];
        match (at, key) {
            (ABSENT, None) => {}
            (ABSENT, Some(key)) => {
                let at = self.len;
                self.len += 1;
                if place(at).0 >= self.lines.len() {
                    self.lines.push(Line([K::VACANT; ARITY]));
                }
                self.sift_up(at, key.entry(slot));
            }
            (at, None) => {
                let at = at as usize;
                self.pos[slot as usize] = ABSENT;
                self.len -= 1;
                let last = self.at(self.len);
                self.write(self.len, K::VACANT);
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
                let entry = key.entry(slot);
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
    fn put(&mut self, at: usize, entry: K::Entry) {
        self.write(at, entry);
        self.pos[K::slot(entry) as usize] = at as u32;
    }

    /// Settle `entry` at `at` or above it.
    fn sift_up(&mut self, mut at: usize, entry: K::Entry) {
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
    fn sift_down(&mut self, mut at: usize, entry: K::Entry) {
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
    pub fn iter(&self) -> Ordered<'_, K> {
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
enum Frontier<E> {
    Inline(SmallVec<[(E, u32); INLINE]>),
    Heap(BinaryHeap<Reverse<(E, u32)>>),
}

impl<E: Ord> Frontier<E> {
    fn push(&mut self, entry: (E, u32)) {
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

    fn pop(&mut self) -> Option<(E, u32)> {
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
pub struct Ordered<'a, K: Key> {
    ranked: &'a Ranked<K>,
    frontier: Frontier<K::Entry>,
    /// The position last yielded, whose children join the frontier on the next call.
    expand: Option<usize>,
    started: bool,
}

impl<K: Key> Iterator for Ordered<'_, K> {
    /// A key and its slot.
    type Item = (K, u32);

    fn next(&mut self) -> Option<(K, u32)> {
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
        Some((K::key(entry), K::slot(entry)))
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

    /// Apply `ops` to a heap of keys made by `key` (from a rank and the slot) and to an ordered
    /// set, checking after each that walking the heap gives the set's order, `second` its second
    /// entry, and that each slot reads back its own entry.
    fn check_against_a_set<K: Key + Debug>(
        ops: Vec<Op>,
        key: impl Fn(u64, u32) -> K,
    ) -> Result<(), TestCaseError> {
        let mut ranked = Ranked::default();
        // slot -> its entry, as the reference.
        let mut model: BTreeMap<u32, Option<K>> = BTreeMap::new();
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
                    let k = rank.map(|r| key(r, slot));
                    ranked.set(slot, k);
                    model.insert(slot, k);
                }
                _ => {}
            }
            let mut expected: Vec<K> = model.values().flatten().copied().collect();
            expected.sort_unstable();
            prop_assert_eq!(
                ranked.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                expected.clone()
            );
            prop_assert_eq!(ranked.second().map(|(k, _)| k), expected.get(1).copied());
            for (k, slot) in ranked.iter() {
                prop_assert_eq!(ranked.get(slot), Some(k));
            }
            for (&slot, &k) in &model {
                prop_assert_eq!(ranked.get(slot), k);
            }
        }
        Ok(())
    }

    proptest! {
        /// Workers by rank, ties to the lowest handle (here the slot).
        #[test]
        fn ranks_walk_in_the_order_of_an_ordered_set(ops in prop::collection::vec(op(), 1..600)) {
            check_against_a_set(ops, |r, slot| (Reverse(r), u64::from(slot)))?;
        }

        /// Tasks by (seq, task): seqs tie often and the task breaks the tie.
        #[test]
        fn fifo_keys_walk_in_the_order_of_an_ordered_set(ops in prop::collection::vec(op(), 1..600)) {
            check_against_a_set(ops, |r, slot| (r, u64::from(slot) * 7 % 11))?;
        }

        /// Tenants by finish tag, ties to the lowest handle.
        #[test]
        fn tags_walk_in_the_order_of_an_ordered_set(ops in prop::collection::vec(op(), 1..600)) {
            check_against_a_set(ops, |r, slot| (r, slot % 3))?;
        }
    }
}
