//! Criterion benches of the core: the pending queue, and batch placement with full filtering and
//! scoring over mixed fleets of 1,000 and 10,000 workers.
//!
//! Placement is measured in steady state: each iteration queues a batch of mixed tasks
//! (untimed), places it (timed), then finishes every placed task (untimed) so the fleet is back
//! to idle, with the learned success/speed EWMAs drifting as they would in production.

use std::cmp::Reverse;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gpucp_core::queue::{PendingQueue, PendingTask};
use gpucp_core::{GpuSpec, Scheduler, SchedulerConfig, ShapeId, ShapeSpec};

/// Tasks queued and placed per iteration.
const BATCH: u64 = 1_000;

/// A small deterministic generator, so every run benches the same workload.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
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

fn bench_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("push_pop_10k", |b| {
        let mut rng = Lcg(7);
        b.iter(|| {
            let mut q = PendingQueue::default();
            for task in 0..10_000u64 {
                let pending = PendingTask {
                    shape: rng.next() % 4,
                    priority: (rng.next() % 4) as u8,
                    seq: task,
                    timeout_ms: 0,
                };
                q.push(task, pending).unwrap();
            }
            for shape in 0..4 {
                while let Some((Reverse(_), _, task)) = q.head(shape) {
                    black_box(q.remove(task));
                }
            }
            q
        });
    });
    group.finish();
}

fn bench_place(c: &mut Criterion) {
    let mut group = c.benchmark_group("place");
    group.throughput(Throughput::Elements(BATCH));
    for workers in [1_000usize, 10_000] {
        let mut s = fleet(workers);
        let shapes = shapes(&mut s);
        let mut rng = Lcg(42);
        let mut next_task = 0u64;
        group.bench_with_input(
            BenchmarkId::new("batch_1000_tasks", workers),
            &workers,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        for _ in 0..BATCH {
                            let shape = shapes[(rng.next() % shapes.len() as u64) as usize];
                            s.push(next_task, shape, (rng.next() % 4) as u8, next_task, 0)
                                .unwrap();
                            next_task += 1;
                        }
                        let start = Instant::now();
                        let placed = black_box(s.place(0, BATCH as usize));
                        timed += start.elapsed();
                        assert_eq!(
                            placed.len() as u64,
                            BATCH,
                            "the fleet has room for the whole batch"
                        );
                        for p in placed {
                            s.finish(
                                p.task,
                                !rng.next().is_multiple_of(20),
                                50 + rng.next() % 200,
                            )
                            .unwrap();
                        }
                    }
                    timed
                });
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_queue, bench_place
}
criterion_main!(benches);
