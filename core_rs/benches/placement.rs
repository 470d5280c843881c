//! Criterion benches of the core: the fair pending queue at 100,000 tasks, and batch placement
//! with full filtering and composite scoring over mixed fleets of 1,000, 10,000 and 100,000
//! workers with 100,000 tasks queued.
//!
//! Placement is measured in steady state: the queue holds 100,000 mixed tasks (4 tenants, 4
//! classes, 4 shapes, 16 affinity keys); each iteration places a batch (timed), then finishes
//! every placed task and queues as many new ones (untimed), so the backlog stays at 100,000 and
//! the learned success/speed EWMAs drift as they would in production. A second placement case
//! keeps the fleet saturated (see `bench_saturated`), where most lookups find no free worker.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gpucp_core::queue::{Fairness, PendingQueue, PendingTask, Round};

#[path = "support/fleet.rs"]
mod fleet;
use fleet::{Lcg, Steady, BACKLOG, BATCH};

fn queued(rng: &mut Lcg, task: u64) -> PendingTask {
    let mut p = PendingTask::basic(rng.next() % 4, (rng.next() % 4) as u8, task, 0);
    p.tenant = (rng.next() % 4) as u32;
    p.affinity = 1 + rng.next() % 16;
    p
}

fn bench_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(BACKLOG));
    group.bench_function("push_100k", |b| {
        let mut rng = Lcg(7);
        b.iter(|| {
            let mut q = PendingQueue::new(Fairness::default()).unwrap();
            for task in 0..BACKLOG {
                q.push(task, queued(&mut rng, task)).unwrap();
            }
            q
        });
    });
    group.bench_function("push_then_take_100k_in_fair_order", |b| {
        let mut rng = Lcg(7);
        b.iter(|| {
            let mut q = PendingQueue::new(Fairness::default()).unwrap();
            for task in 0..BACKLOG {
                q.push(task, queued(&mut rng, task)).unwrap();
            }
            let mut round = Round::default();
            while let Some((task, _)) = q.next(&mut round) {
                black_box(q.take(task, false));
            }
            q.end_round(&mut round);
            q
        });
    });
    group.finish();
}

fn bench_place(c: &mut Criterion) {
    let mut group = c.benchmark_group("place");
    group.throughput(Throughput::Elements(BATCH));
    for workers in [1_000usize, 10_000, 100_000] {
        let mut steady = Steady::new(workers, 42);
        group.bench_with_input(
            BenchmarkId::new("batch_1000_of_100k_queued", workers),
            &workers,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let placed = black_box(steady.scheduler.place(0, BATCH as usize));
                        timed += start.elapsed();
                        assert_eq!(
                            placed.len() as u64,
                            BATCH,
                            "the fleet has room for the whole batch"
                        );
                        steady.refill(placed);
                    }
                    timed
                });
            },
        );
    }
    group.finish();
}

/// A saturated fleet: the backlog (100,000 tasks) is larger than the fleet, so every round fills
/// the fleet and then finds most shapes dead. Each iteration finishes 1,000 random running tasks
/// (untimed), places into what they freed (timed), then queues as many new tasks as were placed
/// (untimed). Measures the time per round, not per placement: a round places at most what was
/// freed, and less when what was freed does not suit the tasks at the head of the queue.
fn bench_saturated(c: &mut Criterion) {
    let mut group = c.benchmark_group("place");
    for workers in [1_000usize, 10_000] {
        let mut steady = Steady::new(workers, 43);
        let first = steady.scheduler.place(0, usize::MAX);
        let mut running: Vec<u64> = first.iter().map(|p| p.task).collect();
        let s = &mut steady.scheduler;
        assert!(
            s.pending() > 0 && s.place(0, usize::MAX).is_empty(),
            "the backlog outgrows the fleet"
        );
        for _ in 0..running.len() {
            steady.push();
        }
        group.bench_with_input(
            BenchmarkId::new("saturated_refill_1000_of_100k_queued", workers),
            &workers,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        for _ in 0..BATCH {
                            let i = (steady.rng.next() % running.len() as u64) as usize;
                            steady.finish(running.swap_remove(i));
                        }
                        let start = Instant::now();
                        let placed = black_box(steady.scheduler.place(0, usize::MAX));
                        timed += start.elapsed();
                        for p in placed {
                            running.push(p.task);
                            steady.push();
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
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = bench_queue, bench_place, bench_saturated
}
criterion_main!(benches);
