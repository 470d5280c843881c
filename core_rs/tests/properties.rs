//! Property tests: random fleets, shapes and operation sequences against a simple model.
//!
//! The model tracks where every task is (pending, placed, gone) and every deadline; after each
//! operation the scheduler must agree with it, and every placement must respect slots, GPU
//! exclusivity, the hard filters and the queue order.

use std::collections::{BTreeSet, HashMap};

use gpucp_core::scheduler::Placement;
use gpucp_core::{GpuSpec, Scheduler, SchedulerConfig, ShapeSpec, TaskOptions};
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
            ..ShapeSpec::default()
        })
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        shape: usize,
        priority: u8,
        seq: u64,
        timeout_ms: u64,
        /// Some(pick) = avoid a live worker.
        avoid: Option<usize>,
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
    Quarantine {
        pick: usize,
        on: bool,
    },
    GpuHealth {
        pick: usize,
        gpu: u32,
        healthy: bool,
    },
    /// The agent starts a placed task.
    Start {
        pick: usize,
    },
    Steal {
        max: usize,
    },
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
        6 => (0usize..8, 0u8..4, 0u64..40, prop::sample::select(vec![0u64, 0, 300, 2000]), prop::option::weighted(0.2, any::<usize>()))
            .prop_map(|(shape, priority, seq, timeout_ms, avoid)| Op::Push { shape, priority, seq, timeout_ms, avoid }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, on)| Op::Quarantine { pick, on }),
        1 => (any::<usize>(), 0u32..4, any::<bool>()).prop_map(|(pick, gpu, healthy)| Op::GpuHealth { pick, gpu, healthy }),
        2 => any::<usize>().prop_map(|pick| Op::Start { pick }),
        1 => (0usize..4).prop_map(|max| Op::Steal { max }),
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
        avoid: Option<u64>,
    },
    Placed {
        worker: u64,
        gpus: Vec<u32>,
        deadline: Option<u64>,
        started: bool,
    },
    Gone,
}

struct ModelWorker {
    spec: WorkerSpec,
    draining: bool,
    quarantined: bool,
    unhealthy: BTreeSet<u32>,
    /// Heartbeat deadline, None once reported by expired().
    deadline: Option<u64>,
}

struct Model {
    sched: Scheduler,
    depth: u32,
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

/// A default scheduler with one CPU-only shape per kind in KINDS and a CPU worker of each of
/// `slots`' sizes: every task fits every worker, so only the queue's order decides.
fn cpu_fleet(slots: &[u32]) -> (Scheduler, Vec<u64>) {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let shapes = KINDS
        .iter()
        .map(|k| {
            s.shape(ShapeSpec {
                kind: (*k).into(),
                ..ShapeSpec::default()
            })
            .unwrap()
        })
        .collect();
    for &n in slots {
        s.add_worker(n, vec![], "", vec![], vec![], 0).unwrap();
    }
    (s, shapes)
}

fn pick<T: Copy + Ord>(items: impl Iterator<Item = T>, pick: usize) -> Option<T> {
    let mut v: Vec<T> = items.collect();
    v.sort();
    (!v.is_empty()).then(|| v[pick % v.len()])
}

impl Model {
    fn new(fleet: Vec<WorkerSpec>, shapes: Vec<ShapeSpec>, depth: u32) -> Model {
        let sched = Scheduler::new(SchedulerConfig {
            heartbeat_timeout_ms: HEARTBEAT_MS,
            prefetch_depth: depth,
            ..SchedulerConfig::default()
        })
        .unwrap();
        let mut m = Model {
            sched,
            depth,
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
                quarantined: false,
                unhealthy: BTreeSet::new(),
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
                avoid,
            } => {
                let shape = shape % self.shapes.len();
                let task = self.next_task;
                self.next_task += 1;
                let avoid = avoid.and_then(|p| pick(self.workers.keys().copied(), p));
                let options = TaskOptions {
                    avoid_worker: avoid,
                    ..TaskOptions::default()
                };
                self.sched
                    .push_with(
                        task,
                        self.shapes[shape].0,
                        priority,
                        seq,
                        timeout_ms,
                        options,
                    )
                    .unwrap();
                self.tasks.insert(
                    task,
                    TaskState::Pending {
                        shape,
                        priority,
                        seq,
                        timeout_ms,
                        avoid,
                    },
                );
            }
            Op::Quarantine { pick: p, on } => {
                if let Some(w) = pick(self.workers.keys().copied(), p) {
                    self.sched.set_quarantined(w, on).unwrap();
                    self.workers.get_mut(&w).unwrap().quarantined = on;
                }
            }
            Op::GpuHealth {
                pick: p,
                gpu,
                healthy,
            } => {
                if let Some(w) = pick(self.workers.keys().copied(), p) {
                    let n = self.workers[&w].spec.gpus.len() as u32;
                    let result = self.sched.set_gpu_healthy(w, gpu, healthy);
                    if gpu >= n {
                        assert!(result.is_err(), "GPU {gpu} of {n} must be refused");
                    } else {
                        result.unwrap();
                        let set = &mut self.workers.get_mut(&w).unwrap().unhealthy;
                        if healthy {
                            set.remove(&gpu);
                        } else {
                            set.insert(gpu);
                        }
                    }
                }
            }
            Op::Start { pick: p } => {
                if let Some(task) = pick(self.placed_tasks(), p) {
                    let TaskState::Placed {
                        worker, started, ..
                    } = self.tasks[&task].clone()
                    else {
                        unreachable!()
                    };
                    let running = self.started_on(worker);
                    let TaskState::Placed { gpus: mine, .. } = self.tasks[&task].clone() else {
                        unreachable!()
                    };
                    let gpu_running = self.tasks.iter().any(|(&t, s)| {
                        t != task
                            && matches!(s, TaskState::Placed { worker: w, started: true, gpus, .. }
                                if *w == worker && gpus.iter().any(|g| mine.contains(g)))
                    });
                    let result = self.sched.mark_started(task, None);
                    if started {
                        assert!(result.is_ok(), "starting twice is a no-op");
                    } else if running >= self.workers[&worker].spec.slots || gpu_running {
                        assert!(
                            result.is_err(),
                            "more started tasks than slots, or a shared GPU"
                        );
                    } else {
                        result.unwrap();
                        if let Some(TaskState::Placed { started, .. }) = self.tasks.get_mut(&task) {
                            *started = true;
                        }
                    }
                }
            }
            Op::Steal { max } => self.check_steal(max),
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
        // Per (shape, class), the last task placed in this round: FIFO by (seq, task) holds
        // inside one tenant, class and shape (one tenant here, and no aging this early).
        let mut worst: HashMap<(usize, u8), (u64, u64)> = HashMap::new();
        for p in placements {
            let TaskState::Pending {
                shape,
                priority,
                seq,
                timeout_ms,
                avoid,
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
                !w.draining && !w.quarantined,
                "task {} placed on draining or quarantined worker {}",
                p.task,
                p.worker
            );
            if avoid == Some(p.worker) {
                let others = self.workers.iter().filter(|(&id, o)| {
                    id != p.worker
                        && static_ok(spec, &o.spec)
                        && o.spec.gpus.iter().filter(|&&g| gpu_ok(spec, g)).count()
                            >= spec.gpus as usize
                });
                assert_eq!(
                    others.count(),
                    0,
                    "task {} placed on the worker it avoids while others could run it",
                    p.task
                );
            }
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
                assert!(
                    !w.unhealthy.contains(&g),
                    "unhealthy GPU {g} of worker {} given to task {}",
                    p.worker,
                    p.task
                );
            }
            let rank = (seq, p.task);
            if let Some(prev) = worst.insert((shape, priority), rank) {
                assert!(
                    prev < rank,
                    "tasks of one shape and class placed out of order: {prev:?} then {rank:?}"
                );
            }
            let deadline = (timeout_ms > 0).then(|| self.now + timeout_ms);
            self.tasks.insert(
                p.task,
                TaskState::Placed {
                    worker: p.worker,
                    gpus: p.gpus.to_vec(),
                    deadline,
                    started: false,
                },
            );
        }
        for (&t, s) in &self.tasks {
            // A task that avoids a worker may wait while the tasks behind it use that worker.
            if let TaskState::Pending {
                shape,
                priority,
                seq,
                avoid: None,
                ..
            } = s
            {
                if let Some(&w) = worst.get(&(*shape, *priority)) {
                    let rank = (*seq, t);
                    assert!(
                        rank > w,
                        "task {t} {rank:?} left pending behind a placed task {w:?} of its shape and class"
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
        let slots = self.workers[&w].spec.slots;
        if self.started_on(w) >= slots || used >= slots + self.depth {
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
                started: true,
            },
        );
        let running: BTreeSet<u32> = self
            .tasks
            .values()
            .filter_map(|s| match s {
                TaskState::Placed {
                    worker,
                    gpus,
                    started: true,
                    ..
                } if *worker == w => Some(gpus.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        if let Some(&g) = running.iter().next() {
            assert!(
                self.sched
                    .attach(u64::MAX, w, &[g], self.shapes[shape].0, 0, self.now)
                    .is_err(),
                "a GPU running a task must be refused"
            );
        }
    }

    fn started_on(&self, w: u64) -> u32 {
        self.tasks
            .values()
            .filter(
                |s| matches!(s, TaskState::Placed { worker, started: true, .. } if *worker == w),
            )
            .count() as u32
    }

    /// Candidates are placed, not started, on their from_worker; each task and each thief
    /// appears once; the thief is another worker that accepts work, has a free slot and
    /// nothing queued, and passes the task's static filters.
    fn check_steal(&mut self, max: usize) {
        let candidates = self.sched.steal_candidates(max);
        assert!(candidates.len() <= max);
        let mut tasks = BTreeSet::new();
        let mut thieves = BTreeSet::new();
        for &(task, from, to) in &candidates {
            assert!(tasks.insert(task), "task {task} offered twice");
            assert!(thieves.insert(to), "worker {to} offered two tasks");
            assert_ne!(from, to);
            let Some(TaskState::Placed {
                worker, started, ..
            }) = self.tasks.get(&task)
            else {
                panic!("steal candidate {task} is not placed")
            };
            assert_eq!(*worker, from);
            assert!(!started, "a started task must never be stolen");
            let thief = &self.workers[&to];
            assert!(!thief.draining && !thief.quarantined);
            let held = self
                .tasks
                .values()
                .filter(|s| matches!(s, TaskState::Placed { worker, .. } if *worker == to))
                .count() as u32;
            assert!(held < thief.spec.slots, "the thief has a free slot");
            assert_eq!(held, self.started_on(to), "the thief has nothing queued");
            let from_held = self
                .tasks
                .values()
                .filter(|s| matches!(s, TaskState::Placed { worker, .. } if *worker == from))
                .count() as u32;
            assert!(
                from_held > self.workers[&from].spec.slots,
                "only a backlogged worker is stolen from"
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
        let mut holders: HashMap<(u64, u32), u32> = HashMap::new();
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
                TaskState::Placed {
                    worker,
                    gpus,
                    started,
                    ..
                } => {
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
                        let holders = holders.entry((*worker, g)).or_insert(0u32);
                        *holders += 1;
                        assert!(
                            *holders <= 1 + self.depth,
                            "GPU {g} of worker {worker} held by {holders} tasks (prefetch depth {})",
                            self.depth
                        );
                        if *started {
                            assert!(
                                entry.1.insert(g),
                                "GPU {g} of worker {worker} runs two started tasks"
                            );
                        }
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
                used <= w.spec.slots + self.depth,
                "worker {id} holds {used} tasks for {} slots + {} prefetch",
                w.spec.slots,
                self.depth
            );
            let started = self.started_on(id);
            assert!(
                started <= w.spec.slots,
                "worker {id} runs {started} started tasks on {} slots",
                w.spec.slots
            );
            let stats = self.sched.worker_stats(id).unwrap();
            assert_eq!(stats.free_slots, w.spec.slots.saturating_sub(used));
            assert_eq!((stats.held, stats.started), (used, started));
            assert_eq!(stats.quarantined, w.quarantined);
            if !w.draining && !w.quarantined {
                total += u64::from(w.spec.slots);
                free += u64::from(w.spec.slots.saturating_sub(used));
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
        depth in 0u32..3,
    ) {
        let mut model = Model::new(fleet, shapes, depth);
        model.check_state();
        for op in ops {
            model.apply(op);
        }
        // Drain everything placeable; nothing may be lost along the way.
        model.apply(Op::Place { max: usize::MAX });
    }

    /// When every task fits every worker (CPU-only shapes, workers that run every kind), a
    /// round places each class's tasks in FIFO order across shapes, and what it places from
    /// each class is that class's oldest tasks.
    #[test]
    fn each_class_is_fifo_across_shapes(
        slots in prop::collection::vec(1u32..4, 1..5),
        tasks in prop::collection::vec((0usize..3, 0u8..4, 0u64..30), 1..40),
        max in 1usize..20,
    ) {
        let (mut s, shapes) = cpu_fleet(&slots);
        let mut by_class: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 4];
        for (task, &(shape, priority, seq)) in tasks.iter().enumerate() {
            s.push(task as u64, shapes[shape], priority, seq, 0).unwrap();
            by_class[priority as usize].push((seq, task as u64));
        }
        let capacity = slots.iter().sum::<u32>() as usize;
        let placed = s.place(0, max);
        prop_assert_eq!(placed.len(), max.min(capacity).min(tasks.len()));
        for (class, mut queued) in by_class.into_iter().enumerate() {
            queued.sort();
            let got: Vec<u64> = placed.iter().map(|p| p.task).filter(|t| queued.iter().any(|q| q.1 == *t)).collect();
            let want: Vec<u64> = queued.iter().take(got.len()).map(|q| q.1).collect();
            prop_assert_eq!(got, want, "class {} not FIFO", class);
        }
    }

    /// Strict priority (the default) when every task fits every worker: a round places the
    /// pending tasks highest class first, FIFO by (seq, task) within a class across shapes.
    #[test]
    fn strict_priority_places_every_higher_class_first(
        slots in prop::collection::vec(1u32..4, 1..5),
        tasks in prop::collection::vec((0usize..3, 0u8..4, 0u64..30), 1..40),
        max in 1usize..20,
    ) {
        let (mut s, shapes) = cpu_fleet(&slots);
        let mut want = Vec::new();
        for (task, &(shape, priority, seq)) in tasks.iter().enumerate() {
            s.push(task as u64, shapes[shape], priority, seq, 0).unwrap();
            want.push((std::cmp::Reverse(priority), seq, task as u64));
        }
        want.sort();
        let got: Vec<u64> = s.place(0, max).iter().map(|p| p.task).collect();
        let want: Vec<u64> = want.iter().take(got.len()).map(|w| w.2).collect();
        prop_assert_eq!(got, want);
    }

    /// Strict priority as work keeps arriving at one busy slot: each task it takes next is the
    /// best one pending then, whatever was placed before (no class is owed turns).
    #[test]
    fn strict_priority_holds_as_work_arrives(
        batches in prop::collection::vec(prop::collection::vec((0usize..3, 0u8..4), 0..4), 1..30),
    ) {
        let (mut s, shapes) = cpu_fleet(&[1]);
        let mut pending = BTreeSet::new();
        let mut next = 0u64;
        for batch in &batches {
            for &(shape, priority) in batch {
                s.push(next, shapes[shape], priority, next, 0).unwrap();
                pending.insert((std::cmp::Reverse(priority), next));
                next += 1;
            }
            let placed = s.place(0, 1);
            prop_assert_eq!(placed.first().map(|p| p.task), pending.pop_first().map(|p| p.1));
            for p in placed {
                s.finish(p.task, true, 1).unwrap();
            }
        }
    }

    /// With affinity keys and delay scheduling at work (tasks waiting for warm workers, free
    /// workers taking tasks warm on them), every (tenant, class, shape) flow is still placed in
    /// FIFO order, and every task is placed in the end.
    #[test]
    fn flows_stay_fifo_while_tasks_wait_for_warm_workers(
        policy in prop::sample::select(vec!["affinity", "composite"]),
        slots in prop::collection::vec(1u32..3, 1..5),
        tasks in prop::collection::vec((0usize..2, 0u32..2, 0u8..2, 1u64..4), 1..60),
        runtimes in prop::collection::vec(1u64..4000, 1..16),
    ) {
        let mut s = Scheduler::new(SchedulerConfig {
            policy: policy.parse().unwrap(),
            aging_ms: 0,
            ..SchedulerConfig::default()
        }).unwrap();
        let shapes: Vec<u64> = KINDS[..2].iter().map(|k| s.shape(ShapeSpec { kind: (*k).into(), ..ShapeSpec::default() }).unwrap()).collect();
        for &n in &slots {
            s.add_worker(n, vec![], "", vec![], vec![], 0).unwrap();
        }
        let mut flow_of = HashMap::new();
        for (task, &(shape, tenant, priority, affinity)) in tasks.iter().enumerate() {
            let task = task as u64;
            let options = TaskOptions { tenant, affinity, ..TaskOptions::default() };
            s.push_with(task, shapes[shape], priority, task, 0, options).unwrap();
            flow_of.insert(task, (shape, tenant, priority));
        }
        let mut last: HashMap<(usize, u32, u8), u64> = HashMap::new();
        let mut running: Vec<u64> = Vec::new();
        let (mut now, mut step) = (0u64, 0usize);
        while s.pending() > 0 || !running.is_empty() {
            for p in s.place(now, usize::MAX) {
                let flow = flow_of[&p.task];
                if let Some(&before) = last.get(&flow) {
                    prop_assert!(p.task > before, "flow {:?}: task {} placed after {}", flow, p.task, before);
                }
                last.insert(flow, p.task);
                running.push(p.task);
            }
            // Finish the oldest running task; runtimes (and so the learned load cost) vary.
            if !running.is_empty() {
                let task = running.remove(0);
                s.finish(task, true, runtimes[step % runtimes.len()]).unwrap();
            }
            step += 1;
            now += 500;
            prop_assert!(step < 10_000, "tasks left waiting forever");
        }
    }

    /// Two tenants that stay backlogged get placements in proportion to their weights: after
    /// every placement, |n_a / w_a - n_b / w_b| stays within one task's worth of each.
    #[test]
    fn tenant_shares_converge_to_weights(
        wa in 1u32..6,
        wb in 1u32..6,
        priorities in prop::collection::vec(0u8..4, 1..4),
    ) {
        let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
        let shape = s.shape(ShapeSpec { kind: "k".into(), ..ShapeSpec::default() }).unwrap();
        s.add_worker(1, vec![], "", vec![], vec![], 0).unwrap();
        s.set_tenant_weight(1, f64::from(wa)).unwrap();
        s.set_tenant_weight(2, f64::from(wb)).unwrap();
        let per_tenant = 120u64;
        for i in 0..per_tenant {
            for tenant in [1u32, 2] {
                let task = i * 2 + u64::from(tenant) - 1;
                let priority = priorities[(i as usize) % priorities.len()];
                let options = TaskOptions { tenant, ..TaskOptions::default() };
                s.push_with(task, shape, priority, task, 0, options).unwrap();
            }
        }
        let (mut na, mut nb) = (0f64, 0f64);
        let bound = 1.0 / f64::from(wa) + 1.0 / f64::from(wb) + 1e-9;
        for _ in 0..per_tenant {
            let placed = s.place(0, 1);
            let [p] = &placed[..] else { panic!("one placement per round") };
            if p.task % 2 == 0 { na += 1.0 } else { nb += 1.0 }
            s.finish(p.task, true, 1).unwrap();
            let gap = (na / f64::from(wa) - nb / f64::from(wb)).abs();
            prop_assert!(gap <= bound, "after {} placements: {} vs {} (weights {} {})", na + nb, na, nb, wa, wb);
        }
    }

    /// Under a steady stream of URGENT work that always fills the only slot, a LOW task with a
    /// vanishing share is still placed once aging has lifted it: its wait is bounded by about
    /// 3 aging periods, not by the stream.
    #[test]
    fn aging_bounds_low_waits(aging_ms in 50u64..400, step_ms in 5u64..40, low_at in 0u64..20) {
        let mut s = Scheduler::new(SchedulerConfig {
            priority_weights: [1e-9, 1e-6, 1e-3, 1.0],
            aging_ms,
            ..SchedulerConfig::default()
        }).unwrap();
        let shape = s.shape(ShapeSpec { kind: "k".into(), ..ShapeSpec::default() }).unwrap();
        s.add_worker(1, vec![], "", vec![], vec![], 0).unwrap();
        let low = u64::MAX;
        let mut placed_low_at = None;
        let mut now = 0;
        for i in 0..1000u64 {
            // Two URGENT tasks arrive per step: the backlog of URGENT work only grows.
            for j in 0..2 {
                s.push_with(i * 2 + j, shape, 3, i * 2 + j, 0, TaskOptions { enqueued_ms: Some(now), ..TaskOptions::default() }).unwrap();
            }
            if i == low_at {
                s.push_with(low, shape, 0, 0, 0, TaskOptions { enqueued_ms: Some(now), ..TaskOptions::default() }).unwrap();
            }
            for p in s.place(now, 1) {
                if p.task == low { placed_low_at = Some(now); }
                s.finish(p.task, true, step_ms).unwrap();
            }
            if placed_low_at.is_some() { break; }
            now += step_ms;
        }
        let enqueued = low_at * step_ms;
        let waited = placed_low_at.expect("the LOW task was placed") - enqueued;
        prop_assert!(waited <= 3 * aging_ms + 4 * step_ms, "LOW waited {} ms with aging {} ms", waited, aging_ms);
    }
}
