//! Property tests: random fleets, shapes and operation sequences against a simple model.
//!
//! The model tracks where every task is (pending, placed, gone) and every deadline; after each
//! operation the scheduler must agree with it, and every placement must respect slots, GPU
//! exclusivity, the hard filters and the queue order.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use gpucp_core::scheduler::Placement;
use gpucp_core::{GpuSpec, Scheduler, SchedulerConfig, ShapeSpec};
use proptest::prelude::*;

const HEARTBEAT_MS: u64 = 1000;
const GPU_MODELS: [(&str, u64, f64); 4] = [
    ("Tesla T4", 16000, 7.5),
    ("A10", 24000, 8.6),
    ("A100-SXM4", 40960, 8.0),
    ("H100 PCIe", 81920, 9.0),
];
const LABELS: [&str; 3] = ["zone=eu", "zone=us", "ssd"];
const KINDS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
struct WorkerSpec {
    slots: u32,
    gpus: Vec<usize>,
    backend: &'static str,
    labels: Vec<&'static str>,
    kinds: Vec<&'static str>,
}

fn worker_spec() -> impl Strategy<Value = WorkerSpec> {
    (
        1u32..4,
        prop::collection::vec(0..GPU_MODELS.len(), 0..4),
        prop::sample::select(vec!["cuda", "CUDA", "rocm", ""]),
        prop::sample::subsequence(LABELS.to_vec(), 0..=3),
        prop::sample::subsequence(vec!["a", "b"], 0..=2),
    )
        .prop_map(|(slots, gpus, backend, labels, kinds)| WorkerSpec {
            slots,
            gpus,
            backend,
            labels,
            kinds,
        })
}

fn shape_spec() -> impl Strategy<Value = ShapeSpec> {
    (
        prop::sample::select(KINDS.to_vec()),
        0u32..3,
        prop::sample::select(vec![0u64, 20000, 40000]),
        prop::sample::subsequence(vec!["a100", "H100"], 0..=2),
        prop::sample::select(vec!["", "cuda", "rocm"]),
        prop::sample::subsequence(LABELS.to_vec(), 0..=1),
        prop::sample::select(vec![0.0, 8.0]),
    )
        .prop_map(|(kind, gpus, mem, models, backend, labels, cc)| ShapeSpec {
            kind: kind.into(),
            gpus,
            min_gpu_memory_mb: mem,
            gpu_models: models.into_iter().map(String::from).collect(),
            backend: backend.into(),
            labels: labels.into_iter().map(String::from).collect(),
            min_compute_capability: cc,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        shape: usize,
        priority: u8,
        seq: u64,
        timeout_ms: u64,
    },
    Place {
        max: usize,
    },
    Finish {
        pick: usize,
        succeeded: bool,
        runtime_ms: u64,
    },
    Release {
        pick: usize,
    },
    Remove {
        pick: usize,
    },
    AddWorker(WorkerSpec),
    RemoveWorker {
        pick: usize,
    },
    Heartbeat {
        pick: usize,
    },
    Drain {
        pick: usize,
        draining: bool,
    },
    Expired,
    /// Re-attach a running task (a pending one, or a new one) to a worker, using free GPUs.
    Attach {
        pick_worker: usize,
        pick_task: usize,
        shape: usize,
        gpus: usize,
        timeout_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..8, 0u8..4, 0u64..40, prop::sample::select(vec![0u64, 0, 300, 2000]))
            .prop_map(|(shape, priority, seq, timeout_ms)| Op::Push { shape, priority, seq, timeout_ms }),
        3 => (0usize..6).prop_map(|max| Op::Place { max }),
        2 => (any::<usize>(), any::<bool>(), 0u64..500)
            .prop_map(|(pick, succeeded, runtime_ms)| Op::Finish { pick, succeeded, runtime_ms }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => worker_spec().prop_map(Op::AddWorker),
        1 => any::<usize>().prop_map(|pick| Op::RemoveWorker { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Heartbeat { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, draining)| Op::Drain { pick, draining }),
        1 => Just(Op::Expired),
        1 => (any::<usize>(), any::<usize>(), 0usize..8, 0usize..3, prop::sample::select(vec![0u64, 500]))
            .prop_map(|(pick_worker, pick_task, shape, gpus, timeout_ms)| Op::Attach { pick_worker, pick_task, shape, gpus, timeout_ms }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum TaskState {
    Pending {
        shape: usize,
        priority: u8,
        seq: u64,
        timeout_ms: u64,
    },
    Placed {
        worker: u64,
        gpus: Vec<u32>,
        deadline: Option<u64>,
    },
    Gone,
}

struct ModelWorker {
    spec: WorkerSpec,
    draining: bool,
    /// Heartbeat deadline, None once reported by expired().
    deadline: Option<u64>,
}

struct Model {
    sched: Scheduler,
    shapes: Vec<(u64, ShapeSpec)>,
    workers: HashMap<u64, ModelWorker>,
    tasks: HashMap<u64, TaskState>,
    next_task: u64,
    now: u64,
}

fn gpu_ok(shape: &ShapeSpec, model: usize) -> bool {
    let (name, mem, cc) = GPU_MODELS[model];
    mem >= shape.min_gpu_memory_mb
        && (shape.min_compute_capability <= 0.0 || cc >= shape.min_compute_capability)
        && (shape.gpu_models.is_empty()
            || shape
                .gpu_models
                .iter()
                .any(|m| name.to_lowercase().contains(&m.to_lowercase())))
}

/// The hard filters, written independently of the engine (GPU freedom is checked separately).
fn static_ok(shape: &ShapeSpec, w: &WorkerSpec) -> bool {
    (w.kinds.is_empty() || w.kinds.contains(&shape.kind.as_str()))
        && (shape.backend.is_empty() || shape.backend.eq_ignore_ascii_case(w.backend))
        && shape.labels.iter().all(|l| w.labels.contains(&l.as_str()))
}

fn pick<T: Copy + Ord>(items: impl Iterator<Item = T>, pick: usize) -> Option<T> {
    let mut v: Vec<T> = items.collect();
    v.sort();
    (!v.is_empty()).then(|| v[pick % v.len()])
}

impl Model {
    fn new(fleet: Vec<WorkerSpec>, shapes: Vec<ShapeSpec>) -> Model {
        let sched = Scheduler::new(SchedulerConfig {
            heartbeat_timeout_ms: HEARTBEAT_MS,
            ..SchedulerConfig::default()
        })
        .unwrap();
        let mut m = Model {
            sched,
            shapes: Vec::new(),
            workers: HashMap::new(),
            tasks: HashMap::new(),
            next_task: 0,
            now: 0,
        };
        for spec in shapes {
            let id = m.sched.shape(spec.clone()).unwrap();
            m.shapes.push((id, spec));
        }
        for w in fleet {
            m.add_worker(w);
        }
        m
    }

    fn add_worker(&mut self, spec: WorkerSpec) {
        let gpus = spec
            .gpus
            .iter()
            .map(|&g| GpuSpec {
                memory_total_mb: GPU_MODELS[g].1,
                compute_capability: GPU_MODELS[g].2,
                name: GPU_MODELS[g].0.into(),
            })
            .collect();
        let labels = spec.labels.iter().map(|s| s.to_string()).collect();
        let kinds = spec.kinds.iter().map(|s| s.to_string()).collect();
        let id = self
            .sched
            .add_worker(spec.slots, gpus, spec.backend, labels, kinds, self.now)
            .unwrap();
        assert!(!self.workers.contains_key(&id), "worker handle {id} reused");
        self.workers.insert(
            id,
            ModelWorker {
                spec,
                draining: false,
                deadline: Some(self.now + HEARTBEAT_MS),
            },
        );
    }

    fn placed_tasks(&self) -> impl Iterator<Item = u64> + '_ {
        self.tasks
            .iter()
            .filter(|(_, s)| matches!(s, TaskState::Placed { .. }))
            .map(|(&t, _)| t)
    }

    fn apply(&mut self, op: Op) {
        self.now += 37;
        match op {
            Op::Push {
                shape,
                priority,
                seq,
                timeout_ms,
            } => {
                let shape = shape % self.shapes.len();
                let task = self.next_task;
                self.next_task += 1;
                self.sched
                    .push(task, self.shapes[shape].0, priority, seq, timeout_ms)
                    .unwrap();
                self.tasks.insert(
                    task,
                    TaskState::Pending {
                        shape,
                        priority,
                        seq,
                        timeout_ms,
                    },
                );
            }
            Op::Place { max } => {
                let placements = self.sched.place(self.now, max);
                assert!(placements.len() <= max);
                self.check_placements(&placements);
            }
            Op::Finish {
                pick: p,
                succeeded,
                runtime_ms,
            } => {
                if let Some(task) = pick(self.placed_tasks(), p) {
                    let TaskState::Placed { worker, .. } = self.tasks[&task] else {
                        unreachable!()
                    };
                    assert_eq!(
                        self.sched.finish(task, succeeded, runtime_ms).unwrap(),
                        worker
                    );
                    self.tasks.insert(task, TaskState::Gone);
                    assert!(
                        self.sched.finish(task, succeeded, runtime_ms).is_err(),
                        "finish twice must fail"
                    );
                }
            }
            Op::Release { pick: p } => {
                if let Some(task) = pick(self.placed_tasks(), p) {
                    let TaskState::Placed { worker, .. } = self.tasks[&task] else {
                        unreachable!()
                    };
                    assert_eq!(self.sched.release(task).unwrap(), worker);
                    self.tasks.insert(task, TaskState::Gone);
                }
            }
            Op::Remove { pick: p } => {
                let pending = self
                    .tasks
                    .iter()
                    .filter(|(_, s)| matches!(s, TaskState::Pending { .. }))
                    .map(|(&t, _)| t);
                if let Some(task) = pick(pending, p) {
                    assert!(self.sched.remove(task));
                    self.tasks.insert(task, TaskState::Gone);
                }
                assert!(
                    !self.sched.remove(u64::MAX),
                    "an unknown task is not pending"
                );
            }
            Op::AddWorker(spec) => self.add_worker(spec),
            Op::RemoveWorker { pick: p } => {
                if let Some(w) = pick(self.workers.keys().copied(), p) {
                    let mut returned = self.sched.remove_worker(w).unwrap();
                    returned.sort_unstable();
                    let mut expected: Vec<u64> = self
                        .tasks
                        .iter()
                        .filter(
                            |(_, s)| matches!(s, TaskState::Placed { worker, .. } if *worker == w),
                        )
                        .map(|(&t, _)| t)
                        .collect();
                    expected.sort_unstable();
                    assert_eq!(
                        returned, expected,
                        "remove_worker must return exactly the worker's tasks"
                    );
                    for t in returned {
                        self.tasks.insert(t, TaskState::Gone);
                    }
                    self.workers.remove(&w);
                }
            }
            Op::Heartbeat { pick: p } => {
                if let Some(w) = pick(self.workers.keys().copied(), p) {
                    self.sched.heartbeat(w, self.now).unwrap();
                    self.workers.get_mut(&w).unwrap().deadline = Some(self.now + HEARTBEAT_MS);
                }
            }
            Op::Drain { pick: p, draining } => {
                if let Some(w) = pick(self.workers.keys().copied(), p) {
                    self.sched.set_draining(w, draining).unwrap();
                    self.workers.get_mut(&w).unwrap().draining = draining;
                }
            }
            Op::Expired => self.check_expired(),
            Op::Attach {
                pick_worker,
                pick_task,
                shape,
                gpus,
                timeout_ms,
            } => self.attach(pick_worker, pick_task, shape, gpus, timeout_ms),
        }
        self.check_state();
    }

    fn check_placements(&mut self, placements: &[Placement]) {
        type Rank = (Reverse<u8>, u64, u64);
        // Per shape, the worst-ranked task placed in this round (ranks: priority desc, seq asc).
        let mut worst: HashMap<usize, Rank> = HashMap::new();
        for p in placements {
            let TaskState::Pending {
                shape,
                priority,
                seq,
                timeout_ms,
            } = self.tasks[&p.task].clone()
            else {
                panic!("task {} placed but it was not pending", p.task)
            };
            let spec = &self.shapes[shape].1;
            let w = self
                .workers
                .get(&p.worker)
                .unwrap_or_else(|| panic!("task placed on unknown worker {}", p.worker));
            assert!(
                !w.draining,
                "task {} placed on draining worker {}",
                p.task, p.worker
            );
            assert!(
                static_ok(spec, &w.spec),
                "task {} placed on worker {} failing a hard filter: {spec:?} vs {:?}",
                p.task,
                p.worker,
                w.spec
            );
            assert_eq!(
                p.gpus.len(),
                spec.gpus as usize,
                "wrong GPU count for task {}",
                p.task
            );
            assert!(
                p.gpus.windows(2).all(|g| g[0] < g[1]),
                "GPU indices must be sorted and distinct"
            );
            for &g in &p.gpus {
                let model = *w
                    .spec
                    .gpus
                    .get(g as usize)
                    .unwrap_or_else(|| panic!("GPU {g} out of range"));
                assert!(
                    gpu_ok(spec, model),
                    "GPU {g} of worker {} does not qualify for {spec:?}",
                    p.worker
                );
            }
            let rank = (Reverse(priority), seq, p.task);
            if let Some(prev) = worst.insert(shape, rank) {
                assert!(
                    prev < rank,
                    "tasks of one shape placed out of order: {prev:?} then {rank:?}"
                );
            }
            let deadline = (timeout_ms > 0).then(|| self.now + timeout_ms);
            self.tasks.insert(
                p.task,
                TaskState::Placed {
                    worker: p.worker,
                    gpus: p.gpus.clone(),
                    deadline,
                },
            );
        }
        for (&t, s) in &self.tasks {
            if let TaskState::Pending {
                shape,
                priority,
                seq,
                ..
            } = s
            {
                if let Some(&w) = worst.get(shape) {
                    let rank = (Reverse(*priority), *seq, t);
                    assert!(
                        rank > w,
                        "task {t} {rank:?} left pending behind a placed task {w:?} of its shape"
                    );
                }
            }
        }
    }

    fn attach(
        &mut self,
        pick_worker: usize,
        pick_task: usize,
        shape: usize,
        gpus: usize,
        timeout_ms: u64,
    ) {
        let Some(w) = pick(self.workers.keys().copied(), pick_worker) else {
            return;
        };
        let shape = shape % self.shapes.len();
        let mut taken = BTreeSet::new();
        let mut used = 0;
        for s in self.tasks.values() {
            if let TaskState::Placed { worker, gpus, .. } = s {
                if *worker == w {
                    used += 1;
                    taken.extend(gpus.iter().copied());
                }
            }
        }
        let total = self.workers[&w].spec.gpus.len() as u32;
        let free: Vec<u32> = (0..total)
            .filter(|g| !taken.contains(g))
            .take(gpus)
            .collect();
        // Half the time re-attach a pending task, otherwise a task the queue never saw.
        let pending = self
            .tasks
            .iter()
            .filter(|(_, s)| matches!(s, TaskState::Pending { .. }))
            .map(|(&t, _)| t);
        let task = match pick(pending, pick_task) {
            Some(t) if pick_task.is_multiple_of(2) => t,
            _ => {
                self.next_task += 1;
                self.next_task - 1
            }
        };
        let result = self
            .sched
            .attach(task, w, &free, self.shapes[shape].0, timeout_ms, self.now);
        if used >= self.workers[&w].spec.slots {
            assert!(result.is_err(), "attach to a full worker must fail");
            return;
        }
        result.unwrap();
        let deadline = (timeout_ms > 0).then(|| self.now + timeout_ms);
        self.tasks.insert(
            task,
            TaskState::Placed {
                worker: w,
                gpus: free,
                deadline,
            },
        );
        if let Some(&g) = taken.iter().next() {
            assert!(
                self.sched
                    .attach(u64::MAX, w, &[g], self.shapes[shape].0, 0, self.now)
                    .is_err(),
                "a taken GPU must be refused"
            );
        }
    }

    fn check_expired(&mut self) {
        let (mut lost, mut timed_out) = self.sched.expired(self.now);
        lost.sort_unstable();
        timed_out.sort_unstable();
        let mut want_lost: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.deadline.is_some_and(|d| d <= self.now))
            .map(|(&id, _)| id)
            .collect();
        want_lost.sort_unstable();
        let mut want_timed_out: Vec<u64> = self
            .tasks
            .iter()
            .filter(
                |(_, s)| matches!(s, TaskState::Placed { deadline: Some(d), .. } if *d <= self.now),
            )
            .map(|(&t, _)| t)
            .collect();
        want_timed_out.sort_unstable();
        assert_eq!(lost, want_lost, "expired workers");
        assert_eq!(timed_out, want_timed_out, "expired tasks");
        for id in lost {
            self.workers.get_mut(&id).unwrap().deadline = None;
        }
        for t in timed_out {
            if let Some(TaskState::Placed { deadline, .. }) = self.tasks.get_mut(&t) {
                *deadline = None;
            }
        }
    }

    fn check_state(&mut self) {
        let mut per_worker: HashMap<u64, (u32, BTreeSet<u32>)> = HashMap::new();
        let (mut pending, mut placed) = (0, 0);
        for (&t, s) in &self.tasks {
            match s {
                TaskState::Pending { .. } => {
                    pending += 1;
                    assert!(self.sched.is_pending(t), "task {t} should be pending");
                    assert!(
                        self.sched.placement_of(t).is_none(),
                        "task {t} both pending and placed"
                    );
                }
                TaskState::Placed { worker, gpus, .. } => {
                    placed += 1;
                    assert!(
                        !self.sched.is_pending(t),
                        "task {t} both placed and pending"
                    );
                    assert_eq!(
                        self.sched.placement_of(t),
                        Some((*worker, gpus.as_slice())),
                        "task {t} placement"
                    );
                    let entry = per_worker.entry(*worker).or_default();
                    entry.0 += 1;
                    for &g in gpus {
                        assert!(
                            entry.1.insert(g),
                            "GPU {g} of worker {worker} given to two tasks"
                        );
                    }
                }
                TaskState::Gone => {
                    assert!(
                        !self.sched.is_pending(t) && self.sched.placement_of(t).is_none(),
                        "task {t} should be gone"
                    );
                }
            }
        }
        assert_eq!(self.sched.pending(), pending);
        assert_eq!(self.sched.placed(), placed);
        let by_priority: u64 = self.sched.pending_by_priority().iter().sum();
        assert_eq!(by_priority as usize, pending);
        let (mut total, mut free) = (0u64, 0u64);
        for (&id, w) in &self.workers {
            let used = per_worker.get(&id).map_or(0, |e| e.0);
            assert!(
                used <= w.spec.slots,
                "worker {id} has {used} tasks for {} slots",
                w.spec.slots
            );
            let stats = self.sched.worker_stats(id).unwrap();
            assert_eq!(stats.free_slots, w.spec.slots - used);
            if !w.draining {
                total += u64::from(w.spec.slots);
                free += u64::from(w.spec.slots - used);
            }
        }
        assert_eq!(self.sched.slots(), (total, free));
        assert_eq!(self.sched.workers(), self.workers.len());
        let next_worker = self.workers.values().filter_map(|w| w.deadline);
        let next_task = self.tasks.values().filter_map(|s| match s {
            TaskState::Placed { deadline, .. } => *deadline,
            _ => None,
        });
        assert_eq!(
            self.sched.next_deadline_ms(),
            next_worker.chain(next_task).min(),
            "next deadline"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Slots, GPU exclusivity, hard filters, per-shape order, deadlines and task accounting
    /// hold after every operation.
    #[test]
    fn invariants_hold_over_random_operations(
        fleet in prop::collection::vec(worker_spec(), 0..8),
        shapes in prop::collection::vec(shape_spec(), 1..6),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut model = Model::new(fleet, shapes);
        model.check_state();
        for op in ops {
            model.apply(op);
        }
        // Drain everything placeable; nothing may be lost along the way.
        model.apply(Op::Place { max: usize::MAX });
    }

    /// When every task fits every worker (CPU-only shapes, workers that run every kind), a
    /// round places tasks in global queue order across shapes: a higher class first, FIFO
    /// within a class.
    #[test]
    fn higher_classes_are_placed_first_across_shapes(
        slots in prop::collection::vec(1u32..4, 1..5),
        tasks in prop::collection::vec((0usize..3, 0u8..4, 0u64..30), 1..40),
        max in 1usize..20,
    ) {
        let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
        let shapes: Vec<u64> = KINDS.iter().map(|k| s.shape(ShapeSpec { kind: (*k).into(), ..ShapeSpec::default() }).unwrap()).collect();
        for &n in &slots {
            s.add_worker(n, vec![], "", vec![], vec![], 0).unwrap();
        }
        let mut ranks = Vec::new();
        for (task, &(shape, priority, seq)) in tasks.iter().enumerate() {
            s.push(task as u64, shapes[shape], priority, seq, 0).unwrap();
            ranks.push((Reverse(priority), seq, task as u64));
        }
        ranks.sort();
        let capacity = slots.iter().sum::<u32>() as usize;
        let placed: Vec<_> = s.place(0, max).iter().map(|p| p.task).collect();
        let expected: Vec<_> = ranks.iter().take(max.min(capacity)).map(|r| r.2).collect();
        prop_assert_eq!(placed, expected);
    }
}
