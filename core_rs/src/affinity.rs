//! The warm index: which workers ran an affinity key (e.g. a model) recently, so its weights are
//! likely still in GPU memory.
//!
//! Each worker remembers the keys of its last `memory` tasks. Per key the index keeps every warm
//! worker, and the warm workers that can take a task now ordered by availability, so finding a
//! warm worker for a task looks at a few entries instead of the fleet. A worker's entries move
//! when its availability changes: O(memory x log W) per change. It also sums the slots of the
//! workers where each key is warm, the capacity that can run the key's tasks without a load.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::id_hash::{IdHashMap, IdHashSet};
use crate::placement::ReadyKey;
use crate::policy::score_bits;
use crate::workers::Worker;
use crate::WorkerId;

#[derive(Debug)]
pub struct WarmIndex {
    memory: usize,
    all: IdHashMap<u64, IdHashSet<WorkerId>>,
    ready: IdHashMap<u64, BTreeSet<ReadyKey>>,
    /// Per key: total slots of the workers in `all`.
    slots: IdHashMap<u64, u64>,
}

impl WarmIndex {
    pub fn new(memory: usize) -> WarmIndex {
        WarmIndex {
            memory,
            all: IdHashMap::default(),
            ready: IdHashMap::default(),
            slots: IdHashMap::default(),
        }
    }

    /// Warm workers that can take a task now, most available first.
    pub fn ready(&self, key: u64) -> impl Iterator<Item = WorkerId> + '_ {
        self.ready
            .get(&key)
            .into_iter()
            .flat_map(|s| s.iter().map(|&(_, id)| id))
    }

    /// Every live worker where `key` is warm.
    pub fn all(&self, key: u64) -> impl Iterator<Item = WorkerId> + '_ {
        self.all
            .get(&key)
            .into_iter()
            .flat_map(|s| s.iter().copied())
    }

    /// Slots of the workers where `key` is warm.
    pub fn slots(&self, key: u64) -> u64 {
        self.slots.get(&key).copied().unwrap_or(0)
    }

    /// A task with `key` was placed on the worker: `key` becomes its most recent.
    pub fn touch(&mut self, id: WorkerId, worker: &mut Worker, key: u64) {
        if key == 0 || self.memory == 0 {
            return;
        }
        if let Some(pos) = worker.warm.iter().position(|&k| k == key) {
            worker.warm.remove(pos);
            worker.warm.push(key);
            return;
        }
        worker.warm.push(key);
        self.all.entry(key).or_default().insert(id);
        *self.slots.entry(key).or_default() += u64::from(worker.slots);
        if let Some(base) = worker.base_key {
            self.ready.entry(key).or_default().insert(base);
        }
        if worker.warm.len() > self.memory {
            let evicted = worker.warm.remove(0);
            self.forget(id, worker, evicted);
        }
    }

    fn forget(&mut self, id: WorkerId, worker: &Worker, key: u64) {
        if let Some(set) = self.all.get_mut(&key) {
            set.remove(&id);
            if set.is_empty() {
                self.all.remove(&key);
                self.slots.remove(&key);
            } else if let Some(slots) = self.slots.get_mut(&key) {
                *slots -= u64::from(worker.slots);
            }
        }
        let base = worker.base_key;
        if let (Some(base), Some(set)) = (base, self.ready.get_mut(&key)) {
            set.remove(&base);
            if set.is_empty() {
                self.ready.remove(&key);
            }
        }
    }

    /// The worker's availability or readiness may have changed.
    pub fn refresh(&mut self, id: WorkerId, worker: &mut Worker) {
        let base = worker
            .is_ready()
            .then(|| (Reverse(score_bits(worker.availability())), id));
        if base == worker.base_key {
            return;
        }
        for &key in &worker.warm {
            let set = self.ready.entry(key).or_default();
            if let Some(old) = worker.base_key {
                set.remove(&old);
            }
            if let Some(new) = base {
                set.insert(new);
            }
        }
        worker.base_key = base;
    }

    /// A worker left.
    pub fn worker_removed(&mut self, id: WorkerId, worker: &Worker) {
        for &key in &worker.warm {
            self.forget(id, worker, key);
        }
    }
}
