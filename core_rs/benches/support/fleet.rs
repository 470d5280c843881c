//! The workload the placement benches share: a mixed fleet, mixed task shapes and a backlog kept
//! at a steady size. Included by `benches/placement.rs` (criterion, wall time) and by
//! `examples/place_steady.rs` (instruction counts under callgrind, `benches/bench_instructions.py`).

// Each includer uses part of it.
#![allow(dead_code)]

use gpucp_core::scheduler::Placement;
use gpucp_core::{GpuSpec, Scheduler, SchedulerConfig, ShapeId, ShapeSpec, TaskOptions};

/// Tasks placed per iteration.
pub const BATCH: u64 = 1_000;
/// Tasks kept queued.
pub const BACKLOG: u64 = 100_000;

/// A small deterministic generator, so every run benches the same workload.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn gpus(n: usize, mb: u64, cc: f64, name: &str) -> Vec<GpuSpec> {
    (0..n)
        .map(|_| GpuSpec {
            memory_total_mb: mb,
            compute_capability: cc,
            name: name.into(),
        })
        .collect()
}

/// A mixed fleet: 8x H100 boxes, 4x A10 boxes, 1x L4 RunPod pods and CPU-only workers.
fn fleet(workers: usize) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let zones = ["zone=eu", "zone=us"];
    for i in 0..workers {
        let zone = vec![zones[i % 2].to_owned()];
        match i % 10 {
            0..=2 => s.add_worker(
                8,
                gpus(8, 81_920, 9.0, "NVIDIA H100 80GB HBM3"),
                "cuda",
                zone,
                vec![],
                0,
            ),
            3..=5 => s.add_worker(
                4,
                gpus(4, 24_576, 8.6, "NVIDIA A10"),
                "cuda",
                zone,
                vec![],
                0,
            ),
            6..=7 => s.add_worker(
                1,
                gpus(1, 24_576, 8.9, "NVIDIA L4"),
                "cuda",
                zone,
                vec![],
                0,
            ),
            _ => s.add_worker(
                16,
                vec![],
                "cpu",
                zone,
                vec!["etl".into(), "embed".into()],
                0,
            ),
        }
        .unwrap();
    }
    s
}

/// Mixed task shapes: one big GPU, any GPU, two big GPUs in a zone, CPU-only.
fn shapes(s: &mut Scheduler) -> Vec<ShapeId> {
    let mut shape = |kind: &str, gpus, mb, labels: &[&str]| {
        s.shape(ShapeSpec {
            kind: kind.into(),
            gpus,
            min_gpu_memory_mb: mb,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            ..ShapeSpec::default()
        })
        .unwrap()
    };
    vec![
        shape("infer-large", 1, 40_000, &[]),
        shape("infer", 1, 0, &[]),
        shape("train", 2, 40_000, &["zone=eu"]),
        shape("etl", 0, 0, &[]),
    ]
}

fn push_one(s: &mut Scheduler, rng: &mut Lcg, shapes: &[ShapeId], task: u64) {
    let shape = shapes[(rng.next() % shapes.len() as u64) as usize];
    let options = TaskOptions {
        tenant: (rng.next() % 4) as u32,
        affinity: 1 + rng.next() % 16,
        ..TaskOptions::default()
    };
    s.push_with(task, shape, (rng.next() % 4) as u8, task, 0, options)
        .unwrap();
}

/// A fleet with `BACKLOG` tasks queued, kept at that: after each batch, `refill` finishes every
/// placed task (one in twenty fails, runtimes vary, so the learned EWMAs drift as in production)
/// and queues as many new ones.
pub struct Steady {
    pub scheduler: Scheduler,
    shapes: Vec<ShapeId>,
    pub rng: Lcg,
    next_task: u64,
}

impl Steady {
    pub fn new(workers: usize, seed: u64) -> Steady {
        let mut scheduler = fleet(workers);
        let shapes = shapes(&mut scheduler);
        let mut steady = Steady {
            scheduler,
            shapes,
            rng: Lcg(seed),
            next_task: 0,
        };
        for _ in 0..BACKLOG {
            steady.push();
        }
        steady
    }

    /// Queue one more task.
    pub fn push(&mut self) {
        push_one(
            &mut self.scheduler,
            &mut self.rng,
            &self.shapes,
            self.next_task,
        );
        self.next_task += 1;
    }

    /// Finish a running task: one in twenty fails, the runtime varies.
    pub fn finish(&mut self, task: u64) {
        let ok = !self.rng.next().is_multiple_of(20);
        let runtime_ms = 50 + self.rng.next() % 200;
        self.scheduler.finish(task, ok, runtime_ms).unwrap();
    }

    pub fn refill(&mut self, placed: Vec<Placement>) {
        for p in placed {
            self.finish(p.task);
            self.push();
        }
    }
}
