//! The worker table: capabilities, slots, GPU allocation and the learned success/speed EWMAs.

use std::collections::HashMap;

use crate::error::{invalid, unknown, CoreResult};
use crate::filters::Share;
use crate::gpu_names;
use crate::learning::{KindId, Learning, ModelId, Start, EWMA_ALPHA};
use crate::{ShapeId, TaskId, WorkerId};

/// One GPU as a worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSpec {
    pub memory_total_mb: u64,
    pub compute_capability: f64,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Gpu {
    pub memory_total_mb: u64,
    pub compute_capability: f64,
    /// Lowercased once, since model filters compare case-insensitively.
    pub name_lower: String,
    /// Its name as `gpu_names::words`, what `gpu_models` asks are matched against.
    pub name_words: String,
    /// Placed tasks using it: at most 1 + the prefetch depth (a prefetched task may be given a
    /// GPU a running task still uses; the agent starts it when the GPU frees).
    pub holders: u32,
    /// A started task uses it whole; two started tasks never share a GPU whole.
    pub running: bool,
    /// Thousandths of it that placed share tasks hold (at most `WHOLE_MILLI`), and the memory
    /// they reserve (at most its memory). A GPU with shares is never given whole, and a GPU held
    /// whole takes no shares (see `Share::fits`).
    pub milli: u32,
    pub reserved_mb: u64,
    /// False once the control plane reports the GPU broken; it is then never given to a task.
    pub healthy: bool,
}

/// A registered worker.
#[derive(Debug)]
pub struct Worker {
    pub slots: u32,
    pub gpus: Vec<Gpu>,
    /// Lowercased.
    pub backend: String,
    /// Sorted, deduplicated.
    pub labels: Vec<String>,
    /// Sorted, deduplicated; empty = runs every kind.
    pub kinds: Vec<String>,
    pub draining: bool,
    /// Set by the control plane's reputation logic; kept apart from `draining` so an operator's
    /// drain and a quarantine never undo each other.
    pub quarantined: bool,
    pub cost_per_hour: f64,
    /// The worker's GPU model (its first GPU's name), for runtime predictions.
    pub model: ModelId,
    pub success_rate: f64,
    /// Speed against the fleet over all kinds (what `worker_stats` reports).
    pub speed: f64,
    /// Speed against the fleet per kind it has run successfully.
    kind_speed: Vec<(KindId, f64)>,
    pub succeeded: u64,
    pub failed: u64,
    /// Tasks placed (or attached) here, oldest first; at most slots + prefetch depth long.
    pub tasks: Vec<TaskId>,
    /// Of those, the ones the agent reported started; never more than `slots`.
    pub started: u32,
    /// Extra tasks it may hold beyond its slots (the agent queues them locally).
    pub prefetch_depth: u32,
    /// Warming: successes since it joined or left quarantine, while fewer than `ramp_len`.
    pub ramp: Option<u32>,
    ramp_len: u32,
    /// Placement counter value when it last got a task (round-robin order).
    pub last_tick: u64,
    /// Affinity keys of the last tasks placed here, most recent last.
    pub warm: Vec<u64>,
    /// Generation of the worker's current heartbeat deadline; older heap entries are stale.
    pub heartbeat_gen: u64,
    /// Placed tasks that need several GPUs at once and have not started: each holds its GPUs
    /// against tasks placed after it (see `backfill`).
    pub(crate) queued_gangs: u32,
    /// Shapes whose placement index lists this worker, with its member slot in each, so a
    /// change of score updates just those, without a search.
    pub(crate) shapes: Vec<(ShapeId, u32)>,
    /// Its static profile (see `Profile`), given by `WorkerTable::add`: workers with the same
    /// one pass or fail every static filter alike.
    pub(crate) profile: u32,
}

/// Everything the static filter (`filters::static_fit`) and the fit measure (`policy::fit`) read
/// of a worker, none of which changes while it is connected. A fleet is mostly a few kinds of
/// node, so an index built over 10,000 workers checks a handful of profiles, not 10,000 workers.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Profile {
    kinds: Vec<String>,
    backend: String,
    labels: Vec<String>,
    /// The GPUs in order, as runs of like ones (a node's GPUs are mostly of one model): (how
    /// many, memory, compute capability bits, name words).
    gpus: Vec<(usize, u64, u64, String)>,
}

impl Profile {
    fn of(w: &Worker) -> Profile {
        let mut gpus: Vec<(usize, u64, u64, String)> = Vec::new();
        for g in &w.gpus {
            let cc = g.compute_capability.to_bits();
            match gpus.last_mut() {
                Some((n, mb, c, name))
                    if (*mb, *c) == (g.memory_total_mb, cc) && *name == g.name_words =>
                {
                    *n += 1;
                }
                _ => gpus.push((1, g.memory_total_mb, cc, g.name_words.clone())),
            }
        }
        Profile {
            kinds: w.kinds.clone(),
            backend: w.backend.clone(),
            labels: w.labels.clone(),
            gpus,
        }
    }
}

/// The capacity-related parts of a new worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerOptions {
    pub cost_per_hour: f64,
    pub prefetch_depth: u32,
    /// 0 = no warming: full slots at once.
    pub warmup_successes: u32,
}

impl Worker {
    pub fn new(
        slots: u32,
        gpus: Vec<GpuSpec>,
        backend: &str,
        mut labels: Vec<String>,
        mut kinds: Vec<String>,
    ) -> CoreResult<Worker> {
        if slots == 0 {
            return Err(invalid("a worker needs at least 1 slot"));
        }
        if let Some(g) = gpus.iter().find(|g| !g.compute_capability.is_finite()) {
            return Err(invalid(format!(
                "GPU '{}' has a compute capability that is not a number",
                g.name
            )));
        }
        labels.sort();
        labels.dedup();
        kinds.sort();
        kinds.dedup();
        Ok(Worker {
            slots,
            gpus: gpus
                .into_iter()
                .map(|g| Gpu {
                    memory_total_mb: g.memory_total_mb,
                    compute_capability: g.compute_capability,
                    name_lower: g.name.to_lowercase(),
                    name_words: gpu_names::words(&g.name),
                    holders: 0,
                    running: false,
                    milli: 0,
                    reserved_mb: 0,
                    healthy: true,
                })
                .collect(),
            backend: backend.to_lowercase(),
            labels,
            kinds,
            draining: false,
            quarantined: false,
            cost_per_hour: 0.0,
            model: 0,
            success_rate: 1.0,
            speed: 1.0,
            kind_speed: Vec::new(),
            succeeded: 0,
            failed: 0,
            tasks: Vec::new(),
            started: 0,
            prefetch_depth: 0,
            ramp: None,
            ramp_len: 0,
            last_tick: 0,
            warm: Vec::new(),
            heartbeat_gen: 0,
            queued_gangs: 0,
            shapes: Vec::new(),
            profile: 0,
        })
    }

    /// Apply the options and intern the GPU model.
    pub fn configure(&mut self, options: WorkerOptions, learning: &mut Learning) -> CoreResult<()> {
        let cost = options.cost_per_hour;
        if !cost.is_finite() || cost < 0.0 {
            return Err(invalid(format!(
                "cost_per_hour must be a finite number >= 0, got {cost}"
            )));
        }
        self.cost_per_hour = cost;
        self.prefetch_depth = options.prefetch_depth;
        self.ramp_len = options.warmup_successes;
        self.restart_warmup();
        let model = self.gpus.first().map_or("cpu", |g| g.name_lower.as_str());
        self.model = learning.model_id(model);
        Ok(())
    }

    /// Start the warm-up ramp again (a new worker, or one back from quarantine).
    pub fn restart_warmup(&mut self) {
        self.ramp = (self.ramp_len > 0 && self.slots > 1).then_some(0);
    }

    pub fn accepts_kind(&self, kind: &str) -> bool {
        self.kinds.is_empty()
            || self
                .kinds
                .binary_search_by(|k| k.as_str().cmp(kind))
                .is_ok()
    }

    pub fn has_labels(&self, labels: &[String]) -> bool {
        labels.iter().all(|l| self.labels.binary_search(l).is_ok())
    }

    /// Is affinity key `key` (0 = none) warm here?
    pub fn is_warm(&self, key: u64) -> bool {
        key != 0 && self.warm.contains(&key)
    }

    /// How a task with affinity `key` starts here: warm unless it has a key that is cold here.
    pub fn start_for(&self, key: u64) -> Start {
        if key == 0 || self.is_warm(key) {
            Start::Warm
        } else {
            Start::Cold
        }
    }

    /// Takes new work at all: neither draining nor quarantined.
    pub fn accepting(&self) -> bool {
        !self.draining && !self.quarantined
    }

    /// Tasks placed here (started or not).
    pub fn held(&self) -> u32 {
        self.tasks.len() as u32
    }

    /// Slots it may use now: warming ramps them from 1 to `slots` over its first
    /// `warmup_successes` successes (linearly), so a new or recovered worker proves itself on a
    /// little work before it gets a full share.
    pub fn effective_slots(&self) -> u32 {
        match self.ramp {
            None => self.slots,
            Some(r) => (1 + (self.slots - 1) * r / self.ramp_len.max(1)).min(self.slots),
        }
    }

    /// Tasks it may hold: its (effective) slots plus the prefetch depth.
    pub fn capacity(&self) -> u32 {
        self.effective_slots() + self.prefetch_depth
    }

    /// Slots with no task at all (what `worker_stats` reports as free).
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.held())
    }

    /// Can take one more task right now (ignoring GPUs).
    pub fn is_ready(&self) -> bool {
        self.accepting() && self.held() < self.capacity()
    }

    /// Share of its capacity still free, in [0, 1]: of its task places, and of its GPUs when it
    /// has some (a 4-GPU task loads a worker four times as much as a 1-GPU task).
    pub fn availability(&self) -> f64 {
        let free = self.capacity().saturating_sub(self.held());
        let places = f64::from(free) / f64::from(self.slots + self.prefetch_depth);
        if self.gpus.is_empty() {
            return places;
        }
        places.min(f64::from(crate::demand::free_gpus(self)) / self.gpus.len() as f64)
    }

    /// Its speed at `kind` against the fleet: its own EWMA once it has run the kind, else what
    /// its GPU model does, else its overall speed.
    pub fn speed_for(&self, kind: KindId, learning: &Learning) -> f64 {
        self.kind_speed
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|&(_, s)| s)
            .or_else(|| learning.model_speed(kind, self.model))
            .unwrap_or(self.speed)
    }

    /// Predicted runtime of a `kind` task here, see `Learning::runtime_ms`.
    pub fn runtime_ms(&self, kind: KindId, learning: &Learning, start: Start) -> Option<f64> {
        learning.runtime_ms(kind, self.model, self.speed_for(kind, learning), start)
    }

    /// Fold one outcome into the EWMAs and the warm-up ramp.
    fn learn(&mut self, kind: KindId, succeeded: bool, speed_sample: Option<f64>) {
        let outcome = if succeeded { 1.0 } else { 0.0 };
        self.success_rate += EWMA_ALPHA * (outcome - self.success_rate);
        if let Some(sample) = speed_sample {
            self.speed += EWMA_ALPHA * (sample - self.speed);
            match self.kind_speed.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, s)) => *s += EWMA_ALPHA * (sample - *s),
                None => self.kind_speed.push((kind, sample)),
            }
        }
        if succeeded {
            self.succeeded += 1;
            if let Some(r) = self.ramp {
                self.ramp = (r + 1 < self.ramp_len).then_some(r + 1);
            }
        } else {
            self.failed += 1;
            // Cooling: a failure while warming halves the progress.
            if let Some(r) = self.ramp {
                self.ramp = Some(r / 2);
            }
        }
    }
}

/// (total slots, free slots, free capacity) a worker adds to the fleet totals.
fn contribution(w: &Worker) -> (u64, u64, u64) {
    if !w.accepting() {
        return (0, 0, 0);
    }
    (
        u64::from(w.slots),
        u64::from(w.free_slots()),
        u64::from(w.capacity().saturating_sub(w.held())),
    )
}

/// All live workers, plus the slot totals `slots()` reports, kept up to date incrementally.
#[derive(Debug, Default)]
pub struct WorkerTable {
    /// Indexed by handle. Boxed so a removed worker costs one null pointer, not a whole record.
    workers: Vec<Option<Box<Worker>>>,
    live: usize,
    /// Over live, accepting (not draining, not quarantined) workers.
    total_slots: u64,
    free_slots: u64,
    /// Tasks those workers can still take, prefetch included.
    free_capacity: u64,
    pub learning: Learning,
    /// Each static profile of a live worker: its number and how many live workers have it. A
    /// profile goes with its last worker: a RunPod pod's `pod=ID` label makes one per pod, and
    /// pods come and go for as long as the control plane runs.
    profiles: HashMap<Profile, (u32, usize)>,
    /// The number the next new profile gets (numbers tell apart the profiles of live workers).
    next_profile: u32,
}

impl WorkerTable {
    pub fn add(&mut self, mut worker: Worker) -> WorkerId {
        let next = self.next_profile;
        let (number, workers) = self
            .profiles
            .entry(Profile::of(&worker))
            .or_insert((next, 0));
        *workers += 1;
        worker.profile = *number;
        if *number == next {
            self.next_profile = next.wrapping_add(1);
        }
        let id = self.workers.len() as WorkerId;
        self.live += 1;
        self.account(&worker, true);
        let gpus = worker.gpus.len();
        self.learning.demand.fleet_changed(worker.model, gpus, true);
        self.workers.push(Some(Box::new(worker)));
        id
    }

    fn account(&mut self, w: &Worker, add: bool) {
        let (t, f, c) = contribution(w);
        if add {
            self.total_slots += t;
            self.free_slots += f;
            self.free_capacity += c;
        } else {
            self.total_slots -= t;
            self.free_slots -= f;
            self.free_capacity -= c;
        }
    }

    /// Change a worker, keeping the fleet totals in step.
    pub fn update<R>(&mut self, id: WorkerId, f: impl FnOnce(&mut Worker) -> R) -> CoreResult<R> {
        let mut worker = self
            .slot_mut(id)
            .and_then(Option::take)
            .ok_or_else(|| unknown_worker(id))?;
        self.account(&worker, false);
        let result = f(&mut worker);
        self.account(&worker, true);
        self.workers[id as usize] = Some(worker);
        Ok(result)
    }

    pub fn remove(&mut self, id: WorkerId) -> CoreResult<Box<Worker>> {
        let worker = self
            .slot_mut(id)
            .and_then(Option::take)
            .ok_or_else(|| unknown_worker(id))?;
        self.live -= 1;
        self.account(&worker, false);
        let profile = Profile::of(&worker);
        if let Some((_, workers)) = self.profiles.get_mut(&profile) {
            *workers -= 1;
            if *workers == 0 {
                self.profiles.remove(&profile);
            }
        }
        let gpus = worker.gpus.len();
        self.learning
            .demand
            .fleet_changed(worker.model, gpus, false);
        Ok(worker)
    }

    pub fn get(&self, id: WorkerId) -> CoreResult<&Worker> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.workers.get(i))
            .and_then(|w| w.as_deref())
            .ok_or_else(|| unknown_worker(id))
    }

    /// Mutable access for changes that do not affect slot totals (scores, keys, GPU health).
    pub fn get_mut(&mut self, id: WorkerId) -> CoreResult<&mut Worker> {
        self.slot_mut(id)
            .and_then(|w| w.as_deref_mut())
            .ok_or_else(|| unknown_worker(id))
    }

    /// A worker, mutably, with what the fleet learned (for re-ranking it).
    pub fn get_with_learning(&mut self, id: WorkerId) -> CoreResult<(&mut Worker, &Learning)> {
        let worker = usize::try_from(id)
            .ok()
            .and_then(|i| self.workers.get_mut(i))
            .and_then(|w| w.as_deref_mut())
            .ok_or_else(|| unknown_worker(id))?;
        Ok((worker, &self.learning))
    }

    fn slot_mut(&mut self, id: WorkerId) -> Option<&mut Option<Box<Worker>>> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.workers.get_mut(i))
    }

    pub fn iter(&self) -> impl Iterator<Item = (WorkerId, &Worker)> {
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_deref().map(|w| (i as WorkerId, w)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (WorkerId, &mut Worker)> {
        self.workers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, w)| w.as_deref_mut().map(|w| (i as WorkerId, w)))
    }

    pub fn live(&self) -> usize {
        self.live
    }

    /// (total, free) slots over live, accepting workers.
    pub fn slots(&self) -> (u64, u64) {
        (self.total_slots, self.free_slots)
    }

    /// Tasks the accepting workers can still take (slots, warming and prefetch counted).
    pub fn free_capacity(&self) -> u64 {
        self.free_capacity
    }

    /// Hold a task and occupy the given GPUs, whole or with its share. The caller has checked
    /// they are free (a share: that it fits).
    pub fn occupy(
        &mut self,
        id: WorkerId,
        task: TaskId,
        gpus: &[u32],
        share: Share,
        started: bool,
    ) -> CoreResult<()> {
        self.update(id, |worker| {
            for &g in gpus {
                let gpu = &mut worker.gpus[g as usize];
                if !share.is_whole() {
                    debug_assert!(share.fits(gpu), "share past its GPU");
                    gpu.milli += share.milli;
                    gpu.reserved_mb += share.memory_mb;
                    continue;
                }
                debug_assert!(!(started && gpu.running), "GPU running two tasks");
                gpu.holders += 1;
                gpu.running |= started;
            }
            worker.tasks.push(task);
            if started {
                worker.started += 1;
            }
        })
    }

    /// Give back a task's GPUs (or its share of them) and its place on the worker.
    pub fn vacate(
        &mut self,
        id: WorkerId,
        task: TaskId,
        gpus: &[u32],
        share: Share,
        started: bool,
    ) -> CoreResult<()> {
        self.update(id, |worker| {
            for &g in gpus {
                let gpu = &mut worker.gpus[g as usize];
                if !share.is_whole() {
                    gpu.milli -= share.milli;
                    gpu.reserved_mb -= share.memory_mb;
                    continue;
                }
                gpu.holders -= 1;
                if started {
                    gpu.running = false;
                }
            }
            // Keep placement order: stealing takes the most recently placed first.
            if let Some(pos) = worker.tasks.iter().position(|&t| t == task) {
                worker.tasks.remove(pos);
            }
            if started {
                worker.started -= 1;
            }
        })
    }

    pub fn set_draining(&mut self, id: WorkerId, draining: bool) -> CoreResult<()> {
        self.update(id, |w| w.draining = draining)
    }

    /// How many tasks beyond its slots the worker may hold (its agent queues them). Tasks it
    /// holds beyond a lowered depth stay; it takes no more until it is under the new one.
    pub fn set_prefetch_depth(&mut self, id: WorkerId, depth: u32) -> CoreResult<()> {
        self.update(id, |w| w.prefetch_depth = depth)
    }

    /// Leaving quarantine restarts the warm-up ramp.
    pub fn set_quarantined(&mut self, id: WorkerId, quarantined: bool) -> CoreResult<()> {
        self.update(id, |w| {
            if w.quarantined && !quarantined {
                w.restart_warmup();
            }
            w.quarantined = quarantined;
        })
    }

    /// Learn from a finished task of `kind` that ran on worker `id`, started warm or cold.
    pub fn learn(
        &mut self,
        id: WorkerId,
        kind: KindId,
        start: Start,
        succeeded: bool,
        runtime_ms: u64,
    ) -> CoreResult<()> {
        let model = self.get(id)?.model;
        let speed_sample = if succeeded && runtime_ms > 0 {
            self.learning.observe(kind, model, start, runtime_ms)
        } else {
            None
        };
        self.update(id, |w| w.learn(kind, succeeded, speed_sample))
    }
}

fn unknown_worker(id: WorkerId) -> crate::CoreError {
    unknown(format!("unknown worker {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_goes_with_the_last_worker_that_has_it() {
        let mut table = WorkerTable::default();
        let pod = |id: u32| Worker::new(1, vec![], "", vec![format!("pod={id}")], vec![]).unwrap();
        let twin = |table: &mut WorkerTable| {
            table.add(Worker::new(1, vec![], "", vec![], vec![]).unwrap())
        };
        let (a, b) = (twin(&mut table), twin(&mut table));
        assert_eq!(table.get(a).unwrap().profile, table.get(b).unwrap().profile);
        // Pods that come and go, each with a label of its own, leave no profile behind.
        for id in 0..100 {
            let w = table.add(pod(id));
            assert_ne!(table.get(w).unwrap().profile, table.get(a).unwrap().profile);
            table.remove(w).unwrap();
        }
        assert_eq!(table.profiles.len(), 1);
        table.remove(a).unwrap();
        assert_eq!(table.profiles.len(), 1, "b still has it");
        table.remove(b).unwrap();
        assert!(table.profiles.is_empty());
    }

    #[test]
    fn speed_compares_a_worker_with_the_fleet() {
        let mut table = WorkerTable::default();
        let fast = table.add(Worker::new(1, vec![], "", vec![], vec![]).unwrap());
        let slow = table.add(Worker::new(1, vec![], "", vec![], vec![]).unwrap());
        // The kind's first runtime only seeds the fleet EWMA.
        let k = table.learning.kind_id("k");
        table.learn(fast, k, Start::Warm, true, 100).unwrap();
        assert_eq!(table.get(fast).unwrap().speed, 1.0);
        table.learn(fast, k, Start::Warm, true, 50).unwrap(); // twice as fast as the fleet: sample 2.0
        table.learn(slow, k, Start::Warm, true, 1000).unwrap(); // much slower: sample < 1
        assert!((table.get(fast).unwrap().speed - 1.2).abs() < 1e-9);
        assert!(table.get(slow).unwrap().speed < 1.0);
        assert!(
            table.get(fast).unwrap().speed_for(k, &table.learning)
                > table.get(slow).unwrap().speed_for(k, &table.learning)
        );
        table.learn(slow, k, Start::Warm, false, 0).unwrap();
        let w = table.get(slow).unwrap();
        assert!((w.success_rate - 0.8).abs() < 1e-9);
        assert_eq!((w.succeeded, w.failed), (1, 1));
    }

    #[test]
    fn slot_totals_exclude_draining_and_removed_workers() {
        let mut table = WorkerTable::default();
        let a = table.add(Worker::new(4, vec![], "", vec![], vec![]).unwrap());
        let b = table.add(Worker::new(2, vec![], "", vec![], vec![]).unwrap());
        table.occupy(a, 7, &[], Share::default(), false).unwrap();
        assert_eq!(table.slots(), (6, 5));
        table.set_draining(b, true).unwrap();
        assert_eq!(table.slots(), (4, 3));
        table.remove(a).unwrap();
        assert_eq!(table.slots(), (0, 0));
        assert!(table.get(a).is_err());
        assert_eq!(table.live(), 1);
        assert!(Worker::new(0, vec![], "", vec![], vec![]).is_err());
    }

    #[test]
    fn warming_ramps_slots_and_failures_cool() {
        let mut learning = Learning::default();
        let mut w = Worker::new(5, vec![], "", vec![], vec![]).unwrap();
        let options = WorkerOptions {
            warmup_successes: 4,
            ..WorkerOptions::default()
        };
        w.configure(options, &mut learning).unwrap();
        let mut seen = vec![w.effective_slots()];
        for _ in 0..4 {
            w.learn(0, true, None);
            seen.push(w.effective_slots());
        }
        assert_eq!(
            seen,
            vec![1, 2, 3, 4, 5],
            "1 slot, then one more per success"
        );
        assert_eq!(w.ramp, None, "fully warm");
        w.restart_warmup();
        w.learn(0, true, None);
        w.learn(0, true, None);
        assert_eq!(w.effective_slots(), 3);
        w.learn(0, false, None);
        assert_eq!(
            w.effective_slots(),
            2,
            "a failure while warming halves the progress"
        );
    }
}
