//! The worker table: capabilities, slots, GPU allocation and the learned success/speed EWMAs.

use std::collections::HashMap;

use crate::error::{invalid, unknown, CoreResult};
use crate::placement::ReadyKey;
use crate::{ShapeId, TaskId, WorkerId};

/// Weight of a new sample in every EWMA the core keeps.
pub const EWMA_ALPHA: f64 = 0.2;
/// Speed samples are clamped so one odd runtime cannot dominate a worker's score.
const SPEED_SAMPLE_RANGE: (f64, f64) = (0.1, 10.0);

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
    pub busy: bool,
}

/// A registered worker.
#[derive(Debug)]
pub struct Worker {
    pub slots: u32,
    pub free_slots: u32,
    pub gpus: Vec<Gpu>,
    /// Lowercased.
    pub backend: String,
    /// Sorted, deduplicated.
    pub labels: Vec<String>,
    /// Sorted, deduplicated; empty = runs every kind.
    pub kinds: Vec<String>,
    pub draining: bool,
    pub success_rate: f64,
    pub speed: f64,
    pub succeeded: u64,
    pub failed: u64,
    /// Tasks placed (or attached) here; at most `slots` long, so a Vec is cheapest.
    pub tasks: Vec<TaskId>,
    /// Generation of the worker's current heartbeat deadline; older heap entries are stale.
    pub heartbeat_gen: u64,
    /// Shapes whose placement index lists this worker, so a change of score updates just those.
    pub(crate) shapes: Vec<ShapeId>,
    /// The key under which this worker sits in those indexes' ready sets (None = not ready).
    pub(crate) ready_key: Option<ReadyKey>,
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
            free_slots: slots,
            gpus: gpus
                .into_iter()
                .map(|g| Gpu {
                    memory_total_mb: g.memory_total_mb,
                    compute_capability: g.compute_capability,
                    name_lower: g.name.to_lowercase(),
                    busy: false,
                })
                .collect(),
            backend: backend.to_lowercase(),
            labels,
            kinds,
            draining: false,
            success_rate: 1.0,
            speed: 1.0,
            succeeded: 0,
            failed: 0,
            tasks: Vec::new(),
            heartbeat_gen: 0,
            shapes: Vec::new(),
            ready_key: None,
        })
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

    /// Can take one more task right now (ignoring GPUs).
    pub fn is_ready(&self) -> bool {
        !self.draining && self.free_slots > 0
    }

    /// Fold one outcome into the EWMAs; `speed_sample` is None when there is nothing to learn.
    fn learn(&mut self, succeeded: bool, speed_sample: Option<f64>) {
        let outcome = if succeeded { 1.0 } else { 0.0 };
        self.success_rate += EWMA_ALPHA * (outcome - self.success_rate);
        if let Some(sample) = speed_sample {
            self.speed += EWMA_ALPHA * (sample - self.speed);
        }
        if succeeded {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// Fleet-wide runtime EWMA per task kind: a worker's speed is how it does against that.
#[derive(Debug, Default)]
pub struct KindRuntimes {
    ewma_ms: HashMap<String, f64>,
}

impl KindRuntimes {
    /// Record a successful run; returns the worker's speed sample (None for the kind's first).
    pub fn observe(&mut self, kind: &str, runtime_ms: u64) -> Option<f64> {
        let runtime = runtime_ms as f64;
        match self.ewma_ms.get_mut(kind) {
            Some(ewma) => {
                let sample = (*ewma / runtime).clamp(SPEED_SAMPLE_RANGE.0, SPEED_SAMPLE_RANGE.1);
                *ewma += EWMA_ALPHA * (runtime - *ewma);
                Some(sample)
            }
            None => {
                self.ewma_ms.insert(kind.to_owned(), runtime);
                None
            }
        }
    }
}

/// All live workers, plus the slot totals `slots()` reports, kept up to date incrementally.
#[derive(Debug, Default)]
pub struct WorkerTable {
    /// Indexed by handle. Boxed so a removed worker costs one null pointer, not a whole record.
    workers: Vec<Option<Box<Worker>>>,
    live: usize,
    /// Over live, non-draining workers.
    total_slots: u64,
    free_slots: u64,
    runtimes: KindRuntimes,
}

impl WorkerTable {
    pub fn add(&mut self, worker: Worker) -> WorkerId {
        let id = self.workers.len() as WorkerId;
        self.live += 1;
        self.total_slots += u64::from(worker.slots);
        self.free_slots += u64::from(worker.free_slots);
        self.workers.push(Some(Box::new(worker)));
        id
    }

    pub fn remove(&mut self, id: WorkerId) -> CoreResult<Box<Worker>> {
        let worker = self
            .slot_mut(id)
            .and_then(Option::take)
            .ok_or_else(|| unknown_worker(id))?;
        self.live -= 1;
        if !worker.draining {
            self.total_slots -= u64::from(worker.slots);
            self.free_slots -= u64::from(worker.free_slots);
        }
        Ok(worker)
    }

    pub fn get(&self, id: WorkerId) -> CoreResult<&Worker> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.workers.get(i))
            .and_then(|w| w.as_deref())
            .ok_or_else(|| unknown_worker(id))
    }

    pub fn get_mut(&mut self, id: WorkerId) -> CoreResult<&mut Worker> {
        self.slot_mut(id)
            .and_then(|w| w.as_deref_mut())
            .ok_or_else(|| unknown_worker(id))
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

    /// (total, free) slots over live, non-draining workers.
    pub fn slots(&self) -> (u64, u64) {
        (self.total_slots, self.free_slots)
    }

    /// Occupy a slot and the given GPUs. The caller has checked they are free.
    pub fn occupy(&mut self, id: WorkerId, task: TaskId, gpus: &[u32]) -> CoreResult<()> {
        let worker = self.get_mut(id)?;
        debug_assert!(worker.free_slots > 0);
        worker.free_slots -= 1;
        for &g in gpus {
            let gpu = &mut worker.gpus[g as usize];
            debug_assert!(!gpu.busy, "GPU given twice");
            gpu.busy = true;
        }
        worker.tasks.push(task);
        let counted = !worker.draining;
        if counted {
            self.free_slots -= 1;
        }
        Ok(())
    }

    /// Give back a task's slot and GPUs.
    pub fn vacate(&mut self, id: WorkerId, task: TaskId, gpus: &[u32]) -> CoreResult<()> {
        let worker = self.get_mut(id)?;
        worker.free_slots += 1;
        for &g in gpus {
            worker.gpus[g as usize].busy = false;
        }
        if let Some(pos) = worker.tasks.iter().position(|&t| t == task) {
            worker.tasks.swap_remove(pos);
        }
        let counted = !worker.draining;
        if counted {
            self.free_slots += 1;
        }
        Ok(())
    }

    pub fn set_draining(&mut self, id: WorkerId, draining: bool) -> CoreResult<()> {
        let worker = self.get_mut(id)?;
        if worker.draining == draining {
            return Ok(());
        }
        worker.draining = draining;
        let (slots, free) = (u64::from(worker.slots), u64::from(worker.free_slots));
        if draining {
            self.total_slots -= slots;
            self.free_slots -= free;
        } else {
            self.total_slots += slots;
            self.free_slots += free;
        }
        Ok(())
    }

    /// Learn from a finished task of `kind` that ran on worker `id`.
    pub fn learn(
        &mut self,
        id: WorkerId,
        kind: &str,
        succeeded: bool,
        runtime_ms: u64,
    ) -> CoreResult<()> {
        let speed_sample = if succeeded && runtime_ms > 0 {
            self.runtimes.observe(kind, runtime_ms)
        } else {
            None
        };
        self.get_mut(id)?.learn(succeeded, speed_sample);
        Ok(())
    }
}

fn unknown_worker(id: WorkerId) -> crate::CoreError {
    unknown(format!("unknown worker {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_compares_a_worker_with_the_fleet() {
        let mut table = WorkerTable::default();
        let fast = table.add(Worker::new(1, vec![], "", vec![], vec![]).unwrap());
        let slow = table.add(Worker::new(1, vec![], "", vec![], vec![]).unwrap());
        // The kind's first runtime only seeds the fleet EWMA.
        table.learn(fast, "k", true, 100).unwrap();
        assert_eq!(table.get(fast).unwrap().speed, 1.0);
        table.learn(fast, "k", true, 50).unwrap(); // twice as fast as the fleet: sample 2.0
        table.learn(slow, "k", true, 1000).unwrap(); // much slower: sample < 1
        assert!((table.get(fast).unwrap().speed - 1.2).abs() < 1e-9);
        assert!(table.get(slow).unwrap().speed < 1.0);
        table.learn(slow, "k", false, 0).unwrap();
        let w = table.get(slow).unwrap();
        assert!((w.success_rate - 0.8).abs() < 1e-9);
        assert_eq!((w.succeeded, w.failed), (1, 1));
    }

    #[test]
    fn slot_totals_exclude_draining_and_removed_workers() {
        let mut table = WorkerTable::default();
        let a = table.add(Worker::new(4, vec![], "", vec![], vec![]).unwrap());
        let b = table.add(Worker::new(2, vec![], "", vec![], vec![]).unwrap());
        table.occupy(a, 7, &[]).unwrap();
        assert_eq!(table.slots(), (6, 5));
        table.set_draining(b, true).unwrap();
        assert_eq!(table.slots(), (4, 3));
        table.remove(a).unwrap();
        assert_eq!(table.slots(), (0, 0));
        assert!(table.get(a).is_err());
        assert_eq!(table.live(), 1);
        assert!(Worker::new(0, vec![], "", vec![], vec![]).is_err());
    }
}
