//! The warm index: which workers ran an affinity key (e.g. a model) recently, so its weights are
//! likely still in GPU memory.
//!
//! Each worker remembers the keys of its last `memory` tasks. Per key the index keeps every warm
//! worker, and the warm workers that can take a task now ordered by availability, so finding a
//! warm worker for a task looks at a few entries instead of the fleet. Those ordered sets are
//! re-ranked lazily (see `lazy_set`): a worker whose availability falls (a placement) costs
//! O(memory) and no tree work; one whose availability rises (a finish) moves in each set where it
//! rose above its entry, O(memory x log W); a stale entry is moved when it reaches the head of
//! its set (`settle`, before a lookup).

use std::cmp::Reverse;

use crate::id_hash::{IdHashMap, IdHashSet};
use crate::lazy_set::LazySet;
use crate::placement::ReadyKey;
use crate::policy::score_bits;
use crate::workers::Worker;
use crate::WorkerId;

#[derive(Debug)]
pub struct WarmIndex {
    memory: usize,
    all: IdHashMap<u64, IdHashSet<WorkerId>>,
    ready: IdHashMap<u64, LazySet>,
    /// Per worker handle (handles are dense and never reused).
    states: Vec<WarmState>,
}

/// Where one worker stands in the ready sets.
#[derive(Debug, Default, Clone)]
struct WarmState {
    /// Its current key (None = cannot take a task now).
    base: Option<ReadyKey>,
    /// Its entry in the ready set of each key warm on it (see `LazySet`).
    listed: Vec<(u64, Option<ReadyKey>)>,
}

impl WarmIndex {
    pub fn new(memory: usize) -> WarmIndex {
        WarmIndex {
            memory,
            all: IdHashMap::default(),
            ready: IdHashMap::default(),
            states: Vec::new(),
        }
    }

    fn state_mut(states: &mut Vec<WarmState>, id: WorkerId) -> &mut WarmState {
        let i = usize::try_from(id).expect("worker handles are vector indices");
        if states.len() <= i {
            states.resize_with(i + 1, WarmState::default);
        }
        &mut states[i]
    }

    /// Warm workers that can take a task now, most available first.
    pub fn ready(&self, key: u64) -> impl Iterator<Item = WorkerId> + '_ {
        let states = &self.states;
        let base = move |id: WorkerId| {
            usize::try_from(id)
                .ok()
                .and_then(|i| states.get(i))
                .and_then(|s| s.base)
        };
        self.ready
            .get(&key)
            .into_iter()
            .flat_map(move |s| s.in_order(base).map(|(_, id)| id))
    }

    /// Move stale entries off the head of `key`'s ready set before a lookup.
    pub fn settle(&mut self, key: u64) {
        let Some(set) = self.ready.get_mut(&key) else {
            return;
        };
        let states = &mut self.states;
        set.settle(|id| {
            let state = Self::state_mut(states, id);
            if let Some(entry) = state.listed.iter_mut().find(|(k, _)| *k == key) {
                entry.1 = state.base;
            }
            state.base
        });
    }

    /// Every live worker where `key` is warm.
    pub fn all(&self, key: u64) -> impl Iterator<Item = WorkerId> + '_ {
        self.all
            .get(&key)
            .into_iter()
            .flat_map(|s| s.iter().copied())
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
        let state = Self::state_mut(&mut self.states, id);
        let mut listed = None;
        if state.base.is_some() {
            self.ready
                .entry(key)
                .or_default()
                .raise(&mut listed, state.base);
        }
        state.listed.push((key, listed));
        if worker.warm.len() > self.memory {
            let evicted = worker.warm.remove(0);
            self.forget(id, evicted);
        }
    }

    fn forget(&mut self, id: WorkerId, key: u64) {
        if let Some(set) = self.all.get_mut(&key) {
            set.remove(&id);
            if set.is_empty() {
                self.all.remove(&key);
            }
        }
        let state = Self::state_mut(&mut self.states, id);
        let Some(pos) = state.listed.iter().position(|&(k, _)| k == key) else {
            return;
        };
        let (_, listed) = state.listed.swap_remove(pos);
        if let Some(set) = self.ready.get_mut(&key) {
            set.remove(listed);
            if set.is_empty() {
                self.ready.remove(&key);
            }
        }
    }

    /// The worker's availability or readiness may have changed.
    pub fn refresh(&mut self, id: WorkerId, worker: &Worker) {
        let base = worker
            .is_ready()
            .then(|| (Reverse(score_bits(worker.availability())), id));
        let state = Self::state_mut(&mut self.states, id);
        if base == state.base {
            return;
        }
        state.base = base;
        if base.is_none() {
            // Falling out of the sets is lazy too.
            return;
        }
        for (key, listed) in &mut state.listed {
            self.ready.entry(*key).or_default().raise(listed, base);
        }
    }

    /// A worker left.
    pub fn worker_removed(&mut self, id: WorkerId, worker: &Worker) {
        for &key in &worker.warm {
            self.forget(id, key);
        }
        *Self::state_mut(&mut self.states, id) = WarmState::default();
    }
}
