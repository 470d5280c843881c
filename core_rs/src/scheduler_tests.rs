//! Unit tests of the engine through its public methods.

use super::*;
use crate::queue::PriorityMode;
use crate::CoreError;
use crate::Policy;
use smallvec::smallvec;

/// Most tests here were written against the composite policy's spreading; the default
/// (fragmentation) has its own tests below.
fn composite() -> SchedulerConfig {
    SchedulerConfig {
        policy: Policy::Composite,
        ..SchedulerConfig::default()
    }
}

fn sched() -> Scheduler {
    Scheduler::new(composite()).unwrap()
}

fn gpu(mb: u64, cc: f64, name: &str) -> GpuSpec {
    GpuSpec {
        memory_total_mb: mb,
        compute_capability: cc,
        name: name.into(),
    }
}

fn cpu_shape(s: &mut Scheduler, kind: &str) -> ShapeId {
    s.shape(ShapeSpec {
        kind: kind.into(),
        ..ShapeSpec::default()
    })
    .unwrap()
}

fn plain_worker(s: &mut Scheduler, slots: u32) -> WorkerId {
    s.add_worker(slots, vec![], "", vec![], vec![], 0).unwrap()
}

fn placed(p: &[Placement]) -> Vec<(TaskId, WorkerId)> {
    p.iter().map(|p| (p.task, p.worker)).collect()
}

#[test]
fn most_available_worker_wins_and_ties_go_to_the_lowest_handle() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 2);
    let b = plain_worker(&mut s, 2);
    for t in 1..=4 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    // a and b tie (lowest handle a first); then b is emptier, then they tie again.
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(1, a), (2, b), (3, a), (4, b)]
    );
    assert_eq!(s.slots(), (4, 0));
}

#[test]
fn never_more_tasks_than_slots() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let w = plain_worker(&mut s, 3);
    for t in 0..10 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    assert_eq!(s.place(0, 100).len(), 3);
    assert_eq!(s.pending(), 7);
    assert!(s.place(0, 100).is_empty(), "a full fleet places nothing");
    s.finish(0, true, 10).unwrap();
    assert_eq!(placed(&s.place(0, 100)), vec![(3, w)]);
}

#[test]
fn a_task_of_one_shape_lowers_the_worker_for_every_other_shape() {
    // A placement re-ranks its worker at once only in its own shape's index; these check that
    // the other indexes listing the worker still see it fuller (see `PlacementIndex::lowered`).
    let mut s = sched();
    let (x, y) = (cpu_shape(&mut s, "x"), cpu_shape(&mut s, "y"));
    let a = plain_worker(&mut s, 2);
    let b = plain_worker(&mut s, 2);
    let c = plain_worker(&mut s, 1);
    assert!(
        s.can_run(x).unwrap() && s.can_run(y).unwrap(),
        "both indexes built"
    );
    s.push(1, x, 1, 1, 0).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(1, a)], "a, b, c tie: a");
    s.push(2, y, 1, 2, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(2, b)],
        "a is half full now, b and c empty: b"
    );
    s.push(3, x, 1, 3, 0).unwrap();
    s.push(4, x, 1, 4, 0).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(3, c), (4, a)]);
    // a and c are full; b has one slot left, and then nothing is free.
    s.push(5, y, 1, 5, 0).unwrap();
    s.push(6, y, 1, 6, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(5, b)],
        "full workers get nothing"
    );
    assert_eq!(s.slots(), (5, 0));
    assert!(
        s.explain(y, 1).unwrap().reason.contains("busy"),
        "a full fleet is busy, not waiting for placement: {}",
        s.explain(y, 1).unwrap().reason
    );
}

#[test]
fn smallest_sufficient_gpu_is_given_and_big_ones_kept_free() {
    let mut s = sched();
    let w = s
        .add_worker(
            4,
            vec![
                gpu(81920, 9.0, "H100"),
                gpu(24576, 8.6, "A10"),
                gpu(40960, 8.0, "A100"),
            ],
            "cuda",
            vec![],
            vec![],
            0,
        )
        .unwrap();
    let any = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 1,
            ..ShapeSpec::default()
        })
        .unwrap();
    let big = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 1,
            min_gpu_memory_mb: 40000,
            ..ShapeSpec::default()
        })
        .unwrap();
    s.push(1, big, 1, 1, 0).unwrap();
    s.push(2, any, 1, 2, 0).unwrap();
    s.push(3, big, 1, 3, 0).unwrap();
    s.push(4, big, 1, 4, 0).unwrap();
    let p = s.place(0, 10);
    assert_eq!(
        p[0],
        Placement {
            task: 1,
            worker: w,
            gpus: smallvec![2]
        },
        "40 GB A100 before the 80 GB H100"
    );
    assert_eq!(
        p[1],
        Placement {
            task: 2,
            worker: w,
            gpus: smallvec![1]
        }
    );
    assert_eq!(
        p[2],
        Placement {
            task: 3,
            worker: w,
            gpus: smallvec![0]
        }
    );
    assert_eq!(p.len(), 3, "no GPU left for task 4 although a slot is free");
    assert_eq!(s.placement_of(3), Some((w, &[0][..])));
    s.release(1).unwrap();
    assert_eq!(
        s.place(0, 10),
        vec![Placement {
            task: 4,
            worker: w,
            gpus: smallvec![2]
        }]
    );
}

#[test]
fn multi_gpu_indices_are_sorted() {
    let mut s = sched();
    s.add_worker(
        1,
        vec![gpu(80, 9.0, "x"), gpu(10, 9.0, "x"), gpu(20, 9.0, "x")],
        "",
        vec![],
        vec![],
        0,
    )
    .unwrap();
    let two = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 2,
            min_gpu_memory_mb: 15,
            ..ShapeSpec::default()
        })
        .unwrap();
    s.push(1, two, 1, 1, 0).unwrap();
    assert_eq!(s.place(0, 1)[0].gpus[..], [0, 2]);
}

#[test]
fn classes_go_in_strict_order_or_share_by_weight_and_stay_fifo_across_shapes() {
    let run = |config: SchedulerConfig| {
        let mut s = Scheduler::new(config).unwrap();
        let a = cpu_shape(&mut s, "a");
        let b = cpu_shape(&mut s, "b");
        plain_worker(&mut s, 10);
        s.push(1, a, 1, 5, 0).unwrap();
        s.push(2, b, 1, 2, 0).unwrap();
        s.push(3, a, 3, 9, 0).unwrap();
        s.push(4, b, 0, 1, 0).unwrap();
        s.push(5, a, 1, 1, 0).unwrap();
        s.place(0, 10)
            .iter()
            .map(|p| p.task)
            .collect::<Vec<TaskId>>()
    };
    // Strict (the default): URGENT, then NORMAL in FIFO order by seq across both shapes, LOW.
    assert_eq!(run(composite()), vec![3, 5, 2, 1, 4]);
    // Shares, by finish tag: URGENT 1/4, NORMAL 1/2, then NORMAL's second (1) ties LOW's first
    // (1) and the higher class wins the tie.
    let shares = SchedulerConfig {
        priority_mode: PriorityMode::Shares,
        ..composite()
    };
    assert_eq!(run(shares), vec![3, 5, 2, 4, 1]);
    // Near-zero weights make shares strict.
    let near_strict = SchedulerConfig {
        priority_weights: [1e-9, 1e-6, 1e-3, 1.0],
        ..shares
    };
    assert_eq!(run(near_strict), vec![3, 5, 2, 1, 4]);
}

#[test]
fn a_shape_nobody_can_take_does_not_block_others() {
    let mut s = sched();
    let w = plain_worker(&mut s, 2);
    let gpu_shape = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 1,
            ..ShapeSpec::default()
        })
        .unwrap();
    let cpu = cpu_shape(&mut s, "k");
    s.push(1, gpu_shape, 3, 1, 0).unwrap();
    s.push(2, gpu_shape, 3, 2, 0).unwrap();
    s.push(3, cpu, 0, 3, 0).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(3, w)]);
    assert_eq!(s.pending(), 2);
    assert_eq!(s.pending_by_priority(), [0, 0, 0, 2]);
}

#[test]
fn max_tasks_bounds_a_round() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    plain_worker(&mut s, 10);
    for t in 0..5 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    assert_eq!(s.place(0, 2).len(), 2);
    assert!(s.place(0, 0).is_empty());
    assert_eq!(s.pending(), 3);
}

#[test]
fn failures_and_slowness_lower_a_workers_score() {
    let mut s = Scheduler::new(SchedulerConfig {
        w_availability: 0.0,
        w_success: 1.0,
        w_speed: 0.0,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 4);
    let b = plain_worker(&mut s, 4);
    s.push(1, shape, 1, 1, 0).unwrap();
    assert_eq!(placed(&s.place(0, 1)), vec![(1, a)]);
    s.finish(1, false, 10).unwrap();
    assert!((s.worker_stats(a).unwrap().success_rate - 0.8).abs() < 1e-9);
    s.push(2, shape, 1, 2, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 1)),
        vec![(2, b)],
        "the worker that failed is ranked lower"
    );

    let mut s = Scheduler::new(SchedulerConfig {
        w_availability: 0.0,
        w_success: 0.0,
        w_speed: 1.0,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 4);
    let b = plain_worker(&mut s, 4);
    s.attach(1, a, &[], shape, 0, 0).unwrap();
    s.finish(1, true, 100).unwrap(); // seeds the kind's runtime EWMA
    s.attach(2, a, &[], shape, 0, 0).unwrap();
    s.finish(2, true, 400).unwrap(); // a is 4x slower than the fleet
    let stats = s.worker_stats(a).unwrap();
    assert!(
        stats.speed < 1.0,
        "speed {} should drop below 1",
        stats.speed
    );
    assert_eq!((stats.succeeded, stats.failed), (2, 0));
    s.push(3, shape, 1, 3, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 1)),
        vec![(3, b)],
        "the slower worker is ranked lower"
    );
}

#[test]
fn release_does_not_learn() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let w = plain_worker(&mut s, 1);
    s.push(1, shape, 1, 1, 0).unwrap();
    s.place(0, 1);
    assert_eq!(s.release(1).unwrap(), w);
    let stats = s.worker_stats(w).unwrap();
    assert_eq!(
        (
            stats.free_slots,
            stats.succeeded,
            stats.failed,
            stats.success_rate
        ),
        (1, 0, 0, 1.0)
    );
    assert!(matches!(s.release(1), Err(CoreError::UnknownHandle(_))));
    assert!(matches!(
        s.finish(1, true, 1),
        Err(CoreError::UnknownHandle(_))
    ));
}

#[test]
fn bad_arguments_are_refused() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    assert!(matches!(
        s.push(1, 99, 1, 1, 0),
        Err(CoreError::UnknownHandle(_))
    ));
    assert!(matches!(
        s.push(1, shape, 4, 1, 0),
        Err(CoreError::InvalidArgument(_))
    ));
    s.push(1, shape, 1, 1, 0).unwrap();
    assert!(matches!(
        s.push(1, shape, 1, 2, 0),
        Err(CoreError::InvalidArgument(_))
    ));
    plain_worker(&mut s, 1);
    s.place(0, 1);
    assert!(
        matches!(
            s.push(1, shape, 1, 2, 0),
            Err(CoreError::InvalidArgument(_))
        ),
        "a placed task cannot be queued"
    );
    assert!(!s.remove(1), "a placed task is not pending");
    assert!(matches!(
        s.add_worker(0, vec![], "", vec![], vec![], 0),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.heartbeat(42, 0),
        Err(CoreError::UnknownHandle(_))
    ));
    assert!(matches!(
        s.set_draining(42, true),
        Err(CoreError::UnknownHandle(_))
    ));
    assert!(matches!(
        s.remove_worker(42),
        Err(CoreError::UnknownHandle(_))
    ));
    assert!(matches!(
        s.worker_stats(42),
        Err(CoreError::UnknownHandle(_))
    ));
    assert!(matches!(
        s.explain(shape, 7),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(s.explain(77, 1), Err(CoreError::UnknownHandle(_))));
    let bad = SchedulerConfig {
        w_speed: -1.0,
        ..composite()
    };
    assert!(matches!(
        Scheduler::new(bad),
        Err(CoreError::InvalidArgument(_))
    ));
}

#[test]
fn push_many_is_all_or_nothing() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    assert!(s
        .push_many(&[(1, shape, 1, 1, 0), (2, shape, 9, 2, 0)])
        .is_err());
    assert!(
        s.push_many(&[(1, shape, 1, 1, 0), (1, shape, 1, 2, 0)])
            .is_err(),
        "duplicate inside the batch"
    );
    assert_eq!(s.pending(), 0);
    s.push_many(&[(1, shape, 1, 1, 0), (2, shape, 2, 2, 0)])
        .unwrap();
    assert_eq!(s.pending_by_priority(), [0, 1, 1, 0]);
    assert!(s.remove(1));
    assert!(!s.remove(1));
}

#[test]
fn attach_takes_a_slot_and_gpus() {
    let mut s = sched();
    let shape = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 1,
            ..ShapeSpec::default()
        })
        .unwrap();
    let w = s
        .add_worker(
            2,
            vec![gpu(10, 8.0, "a"), gpu(20, 8.0, "b")],
            "",
            vec![],
            vec![],
            0,
        )
        .unwrap();
    s.push(5, shape, 1, 1, 0).unwrap();
    s.attach(5, w, &[0], shape, 0, 0).unwrap();
    assert!(!s.is_pending(5), "an attached task leaves the queue");
    assert_eq!(s.placement_of(5), Some((w, &[0][..])));
    assert!(
        matches!(
            s.attach(5, w, &[1], shape, 0, 0),
            Err(CoreError::InvalidArgument(_))
        ),
        "already placed"
    );
    assert!(
        matches!(
            s.attach(6, w, &[0], shape, 0, 0),
            Err(CoreError::InvalidArgument(_))
        ),
        "GPU taken"
    );
    assert!(
        matches!(
            s.attach(6, w, &[2], shape, 0, 0),
            Err(CoreError::InvalidArgument(_))
        ),
        "GPU out of range"
    );
    assert!(
        matches!(
            s.attach(6, w, &[1, 1], shape, 0, 0),
            Err(CoreError::InvalidArgument(_))
        ),
        "GPU listed twice"
    );
    assert!(matches!(
        s.attach(6, 9, &[], shape, 0, 0),
        Err(CoreError::UnknownHandle(_))
    ));
    s.attach(6, w, &[1], shape, 0, 0).unwrap();
    assert!(
        matches!(
            s.attach(7, w, &[], shape, 0, 0),
            Err(CoreError::InvalidArgument(_))
        ),
        "no free slot"
    );
    s.push(8, shape, 1, 1, 0).unwrap();
    assert!(s.place(0, 10).is_empty());
    assert_eq!(s.worker_stats(w).unwrap().free_slots, 0);
}

#[test]
fn removing_a_worker_returns_its_tasks() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 2);
    for t in 0..2 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    s.place(0, 10);
    let mut tasks = s.remove_worker(a).unwrap();
    tasks.sort_unstable();
    assert_eq!(tasks, vec![0, 1]);
    assert_eq!(s.placed(), 0);
    assert_eq!((s.workers(), s.slots()), (0, (0, 0)));
    assert!(matches!(
        s.finish(0, true, 1),
        Err(CoreError::UnknownHandle(_))
    ));
    let b = plain_worker(&mut s, 1);
    assert_ne!(a, b, "handles are never reused");
    s.push(0, shape, 1, 0, 0).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(0, b)]);
}

#[test]
fn draining_workers_get_no_new_tasks() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 2);
    let b = plain_worker(&mut s, 1);
    s.set_draining(a, true).unwrap();
    assert_eq!(s.slots(), (1, 1));
    for t in 0..3 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    assert_eq!(placed(&s.place(0, 10)), vec![(0, b)]);
    s.set_draining(a, false).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(1, a), (2, a)]);
}

#[test]
fn heartbeat_deadlines_expire_once_and_heartbeats_push_them_back() {
    let mut s = Scheduler::new(SchedulerConfig {
        heartbeat_timeout_ms: 1000,
        ..composite()
    })
    .unwrap();
    assert_eq!(s.next_deadline_ms(), None);
    let a = s.add_worker(1, vec![], "", vec![], vec![], 0).unwrap();
    let b = s.add_worker(1, vec![], "", vec![], vec![], 500).unwrap();
    assert_eq!(s.next_deadline_ms(), Some(1000));
    s.heartbeat(a, 800).unwrap();
    assert_eq!(
        s.next_deadline_ms(),
        Some(1500),
        "a's old deadline is stale"
    );
    assert_eq!(s.expired(1499), (vec![], vec![]));
    assert_eq!(s.expired(1500), (vec![b], vec![]));
    assert_eq!(s.expired(1600), (vec![], vec![]), "b is reported once");
    assert_eq!(s.next_deadline_ms(), Some(1800));
    s.heartbeat(b, 1700).unwrap();
    assert_eq!(
        s.expired(5000),
        (vec![a, b], vec![]),
        "b expires again after a new heartbeat"
    );
    s.remove_worker(a).unwrap();
    s.heartbeat(b, 6000).unwrap();
    s.remove_worker(b).unwrap();
    assert_eq!(
        s.next_deadline_ms(),
        None,
        "removed workers have no deadline"
    );
}

#[test]
fn task_timeouts_expire_unless_finished() {
    let mut s = Scheduler::new(SchedulerConfig {
        heartbeat_timeout_ms: 1_000_000,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "k");
    plain_worker(&mut s, 4);
    s.push(1, shape, 1, 1, 100).unwrap();
    s.push(2, shape, 1, 2, 200).unwrap();
    s.push(3, shape, 1, 3, 0).unwrap();
    s.place(1000, 10);
    assert_eq!(s.next_deadline_ms(), Some(1100));
    s.finish(1, true, 50).unwrap();
    assert_eq!(
        s.next_deadline_ms(),
        Some(1200),
        "a finished task's timeout is gone"
    );
    assert_eq!(s.expired(2000), (vec![], vec![2]));
    assert_eq!(s.expired(3000), (vec![], vec![]));
    assert_eq!(s.placed(), 2, "expired() removes nothing");
    // A task placed again later gets a fresh deadline.
    s.release(2).unwrap();
    s.push(2, shape, 1, 4, 200).unwrap();
    s.place(5000, 10);
    assert_eq!(s.expired(5200), (vec![], vec![2]));
}

#[test]
fn explain_names_the_missing_requirement() {
    let mut s = sched();
    let render = cpu_shape(&mut s, "render");
    assert_eq!(
        s.explain(render, 1).unwrap().reason,
        "no worker is connected"
    );
    s.add_worker(
        1,
        vec![gpu(40960, 8.0, "A100")],
        "cuda",
        vec!["zone=us".into()],
        vec!["infer".into()],
        0,
    )
    .unwrap();
    assert_eq!(
        s.explain(render, 1).unwrap().reason,
        "no connected worker runs tasks of kind 'render'"
    );
    let rocm = s
        .shape(ShapeSpec {
            kind: "infer".into(),
            backend: "ROCm".into(),
            ..ShapeSpec::default()
        })
        .unwrap();
    assert_eq!(
        s.explain(rocm, 1).unwrap().reason,
        "no connected worker has backend 'rocm'"
    );
    let eu = s
        .shape(ShapeSpec {
            kind: "infer".into(),
            labels: vec!["zone=eu".into()],
            ..ShapeSpec::default()
        })
        .unwrap();
    assert_eq!(
        s.explain(eu, 1).unwrap().reason,
        "no connected worker has labels ['zone=eu']"
    );
    let h100 = s
        .shape(ShapeSpec {
            kind: "infer".into(),
            gpus: 2,
            min_gpu_memory_mb: 81920,
            gpu_models: vec!["H100".into()],
            min_compute_capability: 8.0,
            ..ShapeSpec::default()
        })
        .unwrap();
    assert_eq!(
        s.explain(h100, 1).unwrap().reason,
        "no connected worker has 2 GPUs with at least 81920 MB (model any of ['h100'], compute capability >= 8.0)"
    );
    let one = s
        .shape(ShapeSpec {
            kind: "infer".into(),
            gpus: 1,
            min_gpu_memory_mb: 81920,
            ..ShapeSpec::default()
        })
        .unwrap();
    assert_eq!(
        s.explain(one, 1).unwrap().reason,
        "no connected worker has 1 GPU with at least 81920 MB"
    );
    // Each requirement is met by some worker, but not all by one.
    s.add_worker(1, vec![], "rocm", vec![], vec!["infer".into()], 0)
        .unwrap();
    let both = s
        .shape(ShapeSpec {
            kind: "infer".into(),
            gpus: 1,
            backend: "rocm".into(),
            ..ShapeSpec::default()
        })
        .unwrap();
    assert_eq!(
        s.explain(both, 1).unwrap().reason,
        "no connected worker meets all of: kind 'infer', backend 'rocm', 1 GPU"
    );
}

#[test]
fn explain_says_busy_draining_or_waiting() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 1);
    let b = plain_worker(&mut s, 1);
    assert_eq!(s.explain(shape, 1).unwrap().reason, "waiting for placement");
    s.push(1, shape, 3, 1, 0).unwrap();
    s.push(2, shape, 3, 2, 0).unwrap();
    s.place(0, 10);
    s.push(3, shape, 3, 3, 0).unwrap();
    s.push(4, shape, 2, 4, 0).unwrap();
    s.push(5, shape, 1, 5, 0).unwrap();
    assert_eq!(
        s.explain(shape, 1).unwrap().reason,
        "all 2 workers that can run it are busy; 2 tasks of higher priority are queued"
    );
    assert_eq!(
        s.explain(shape, 2).unwrap().reason,
        "all 2 workers that can run it are busy; 1 task of higher priority is queued"
    );
    assert_eq!(
        s.explain(shape, 3).unwrap().reason,
        "all 2 workers that can run it are busy; no task of higher priority is queued"
    );
    s.set_draining(a, true).unwrap();
    assert_eq!(
        s.explain(shape, 3).unwrap().reason,
        "all 2 workers that can run it are busy (1 of them draining); no task of higher priority is queued"
    );
    s.set_draining(b, true).unwrap();
    assert_eq!(
        s.explain(shape, 3).unwrap().reason,
        "all 2 workers that can run it are draining"
    );
    s.remove_worker(a).unwrap();
    assert_eq!(
        s.explain(shape, 3).unwrap().reason,
        "the 1 worker that can run it is draining"
    );
    s.set_draining(b, false).unwrap();
    s.finish(2, true, 5).unwrap();
    assert_eq!(s.explain(shape, 3).unwrap().reason, "waiting for placement");
}

#[test]
fn workers_joining_later_are_indexed() {
    let mut s = sched();
    let shape = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 1,
            min_gpu_memory_mb: 40000,
            ..ShapeSpec::default()
        })
        .unwrap();
    s.add_worker(1, vec![gpu(16000, 8.0, "T4")], "", vec![], vec![], 0)
        .unwrap();
    s.push(1, shape, 1, 1, 0).unwrap();
    assert!(
        s.place(0, 10).is_empty(),
        "builds the shape's index with no fitting worker"
    );
    let w = s
        .add_worker(1, vec![gpu(81920, 9.0, "H100")], "", vec![], vec![], 0)
        .unwrap();
    assert_eq!(
        s.place(0, 10),
        vec![Placement {
            task: 1,
            worker: w,
            gpus: smallvec![0]
        }]
    );
}

#[test]
fn compacting_stale_deadlines_keeps_current_ones() {
    let mut s = Scheduler::new(SchedulerConfig {
        heartbeat_timeout_ms: 1_000_000,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "k");
    plain_worker(&mut s, 1);
    // Each finished task leaves a stale timeout entry behind the newest (earliest) one, so the
    // heap fills with stale entries until placement compacts it.
    for t in 0..3000 {
        let timeout = 10_000 - t;
        s.push(t, shape, 1, t, timeout).unwrap();
        s.place(0, 1);
        assert_eq!(
            s.next_deadline_ms(),
            Some(timeout),
            "task {t}'s timeout must survive compaction"
        );
        s.finish(t, true, 1).unwrap();
    }
}

#[test]
fn unhealthy_gpus_are_never_given_and_explain_says_so() {
    let mut s = sched();
    let w = s
        .add_worker(
            4,
            vec![gpu(24576, 8.6, "A10"), gpu(24576, 8.6, "A10")],
            "cuda",
            vec![],
            vec![],
            0,
        )
        .unwrap();
    let one = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 1,
            ..ShapeSpec::default()
        })
        .unwrap();
    let cpu = cpu_shape(&mut s, "k");
    s.set_gpu_healthy(w, 0, false).unwrap();
    assert!(s.set_gpu_healthy(w, 2, false).is_err(), "no GPU 2");
    for t in 1..=3 {
        s.push(t, one, 1, t, 0).unwrap();
    }
    let p = s.place(0, 10);
    assert_eq!(p.len(), 1, "only the healthy GPU is used: {p:?}");
    assert_eq!(p[0].gpus[..], [1]);
    s.set_gpu_healthy(w, 1, false).unwrap();
    s.finish(p[0].task, true, 5).unwrap();
    assert!(s.place(0, 10).is_empty(), "no healthy GPU left");
    assert_eq!(
        s.explain(one, 1).unwrap().reason,
        "1 worker can run it, but it has too few healthy GPUs (unhealthy GPUs are not used)"
    );
    s.push(9, cpu, 1, 9, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(9, w)],
        "a worker without healthy GPUs still runs CPU tasks"
    );
    assert_eq!(s.worker_stats(w).unwrap().unhealthy_gpus, 2);
    s.set_gpu_healthy(w, 0, true).unwrap();
    assert_eq!(s.place(0, 10).len(), 1);
}

#[test]
fn quarantine_and_drain_are_separate_flags() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 2);
    s.push(1, shape, 1, 1, 0).unwrap();
    s.place(0, 10);
    s.set_quarantined(a, true).unwrap();
    assert_eq!(s.slots(), (0, 0), "a quarantined worker offers no slots");
    s.push(2, shape, 1, 2, 0).unwrap();
    assert!(s.place(0, 10).is_empty(), "no new work while quarantined");
    assert_eq!(
        s.explain(shape, 1).unwrap().reason,
        "the 1 worker that can run it is quarantined"
    );
    assert!(s.placement_of(1).is_some(), "running work stays");
    s.set_draining(a, true).unwrap();
    s.set_quarantined(a, false).unwrap();
    assert!(
        s.place(0, 10).is_empty(),
        "lifting quarantine does not undo a drain"
    );
    let stats = s.worker_stats(a).unwrap();
    assert!(stats.draining && !stats.quarantined);
    s.set_quarantined(a, true).unwrap();
    s.set_draining(a, false).unwrap();
    assert!(
        s.place(0, 10).is_empty(),
        "ending a drain does not lift a quarantine"
    );
    s.set_quarantined(a, false).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(2, a)]);
    assert_eq!(s.slots(), (2, 0));
}

#[test]
fn avoided_worker_is_used_only_when_it_is_the_only_one() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 2);
    let avoid = |w| TaskOptions {
        avoid_worker: Some(w),
        ..TaskOptions::default()
    };
    // a is the only worker in the fleet: it is used despite being avoided.
    s.push_with(1, shape, 1, 1, 0, avoid(a)).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(1, a)]);
    let b = plain_worker(&mut s, 1);
    s.push(2, shape, 1, 2, 0).unwrap();
    s.place(0, 10); // task 2 takes b (more available), a has one slot left
    s.push_with(3, shape, 1, 3, 0, avoid(a)).unwrap();
    s.push(4, shape, 1, 4, 0).unwrap();
    // 3 must wait for b; 4 behind it in FIFO order still takes a's free slot.
    assert_eq!(placed(&s.place(0, 10)), vec![(4, a)]);
    assert!(s.is_pending(3));
    s.finish(2, true, 5).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(3, b)]);
    // push_many carries the option too.
    s.finish(3, true, 5).unwrap();
    s.finish(1, true, 5).unwrap();
    s.push_many_with(&[(5, shape, 1, 5, 0, avoid(b))]).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(5, a)]);
}

fn with_policy(policy: Policy) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        policy,
        ..composite()
    })
    .unwrap()
}

fn affine(affinity: u64, hard: bool) -> TaskOptions {
    TaskOptions {
        affinity,
        hard_affinity: hard,
        ..TaskOptions::default()
    }
}

#[test]
fn affinity_keeps_a_model_on_its_warm_worker() {
    for policy in [Policy::Affinity, Policy::Composite] {
        let mut s = with_policy(policy);
        let shape = cpu_shape(&mut s, "infer");
        let a = plain_worker(&mut s, 4);
        let b = plain_worker(&mut s, 4);
        s.push_with(1, shape, 1, 1, 0, affine(7, false)).unwrap();
        let first = s.place(0, 1)[0].worker;
        // The other worker is now more available, but model 7 is warm on the first one.
        for t in 2..=3 {
            s.push_with(t, shape, 1, t, 0, affine(7, false)).unwrap();
            assert_eq!(
                s.place(0, 1)[0].worker,
                first,
                "{policy}: model 7 stays warm"
            );
        }
        s.push_with(9, shape, 1, 9, 0, affine(8, false)).unwrap();
        let other = if first == a { b } else { a };
        assert_eq!(
            s.place(0, 1)[0].worker,
            other,
            "{policy}: a new model goes where there is room"
        );
        assert_eq!(s.explain_placement(9).unwrap().policy, policy);
    }
}

#[test]
fn among_warm_workers_the_least_loaded_gets_the_task() {
    for policy in [Policy::Affinity, Policy::Composite] {
        let mut s = with_policy(policy);
        let infer = cpu_shape(&mut s, "infer");
        let prep = cpu_shape(&mut s, "prep");
        s.set_kind_policy("prep", Policy::RoundRobin);
        let a = plain_worker(&mut s, 4);
        let b = plain_worker(&mut s, 4);
        // Model 7 warms both workers, which go idle again.
        for t in 1..=2 {
            s.push_with(t, prep, 1, t, 0, affine(7, false)).unwrap();
        }
        for p in s.place(0, 2) {
            s.finish(p.task, true, 10).unwrap();
        }
        // Both warm and idle: the tie goes to the lowest handle. Its rank then falls, and the
        // next task with model 7 goes to the other warm worker, now the less loaded.
        for (t, expected) in [(3, a), (4, b), (5, a), (6, b)] {
            s.push_with(t, infer, 1, t, 0, affine(7, false)).unwrap();
            let placed = s.place(0, 1);
            assert_eq!(placed[0].worker, expected, "{policy}: task {t}");
        }
    }
}

#[test]
fn a_warm_worker_is_found_however_many_workers_of_other_shapes_share_the_key() {
    let mut s = sched();
    let etl = cpu_shape(&mut s, "etl");
    let infer = s
        .shape(ShapeSpec {
            kind: "infer".into(),
            gpus: 1,
            ..ShapeSpec::default()
        })
        .unwrap();
    s.set_kind_policy("etl", Policy::RoundRobin);
    let cpus: Vec<WorkerId> = (0..40).map(|_| plain_worker(&mut s, 16)).collect();
    let gpus = || vec![gpu(24_576, 8.6, "NVIDIA A10"); 4];
    let boxes: Vec<WorkerId> = (0..3)
        .map(|_| s.add_worker(4, gpus(), "", vec![], vec![], 0).unwrap())
        .collect();
    // Model 7 warms one GPU box, which stays busy with it...
    s.push_with(1, infer, 1, 1, 0, affine(7, false)).unwrap();
    let warm = s.place(0, 1)[0].worker;
    assert!(boxes.contains(&warm));
    // ...and 40 CPU workers, idle again and so more available than the box.
    for t in 2..42 {
        s.push_with(t, etl, 1, t, 0, affine(7, false)).unwrap();
    }
    let spread = s.place(0, 100);
    assert!(spread.iter().all(|p| cpus.contains(&p.worker)));
    for p in spread {
        s.finish(p.task, true, 10).unwrap();
    }
    // A GPU task with model 7 still finds the warm box among the workers where 7 is warm.
    s.push_with(50, infer, 1, 50, 0, affine(7, false)).unwrap();
    assert_eq!(s.place(0, 1)[0].worker, warm);
}

#[test]
fn hard_affinity_waits_for_a_warm_worker_while_one_exists() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "infer");
    let a = plain_worker(&mut s, 1);
    let b = plain_worker(&mut s, 1);
    s.push_with(1, shape, 1, 1, 0, affine(5, true)).unwrap();
    let warm = s.place(0, 1)[0].worker;
    s.push_with(2, shape, 1, 2, 0, affine(5, true)).unwrap();
    s.push(3, shape, 1, 3, 0).unwrap();
    // 2 waits for the warm (busy) worker; 3 behind it takes the other one.
    let cold = if warm == a { b } else { a };
    assert_eq!(placed(&s.place(0, 10)), vec![(3, cold)]);
    s.finish(1, true, 10).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(2, warm)]);
    assert!(s.explain_placement(2).unwrap().hard_affinity);
    // Once the warm worker is gone, any worker will do.
    s.remove_worker(warm).unwrap();
    s.finish(3, true, 10).unwrap();
    s.push_with(4, shape, 1, 4, 0, affine(5, true)).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(4, cold)]);
}

#[test]
fn best_fit_places_more_big_tasks_than_greedy() {
    // 4 small workers (16 GB GPU) and 2 big ones (80 GB GPU), one slot each, big ones first so
    // greedy ties go to them. Backlog: 4 small tasks, then 2 tasks that need 80 GB.
    let run = |policy: Policy| {
        let mut s = with_policy(policy);
        for _ in 0..2 {
            s.add_worker(1, vec![gpu(81920, 9.0, "H100")], "cuda", vec![], vec![], 0)
                .unwrap();
        }
        for _ in 0..4 {
            s.add_worker(1, vec![gpu(16384, 7.5, "T4")], "cuda", vec![], vec![], 0)
                .unwrap();
        }
        let small = s
            .shape(ShapeSpec {
                kind: "k".into(),
                gpus: 1,
                min_gpu_memory_mb: 8000,
                ..ShapeSpec::default()
            })
            .unwrap();
        let big = s
            .shape(ShapeSpec {
                kind: "k".into(),
                gpus: 1,
                min_gpu_memory_mb: 60000,
                ..ShapeSpec::default()
            })
            .unwrap();
        for t in 0..4 {
            s.push(t, small, 2, t, 0).unwrap();
        }
        for t in 4..6 {
            s.push(t, big, 1, t, 0).unwrap();
        }
        let p = s.place(0, 100);
        p.iter().filter(|p| p.task >= 4).count()
    };
    let greedy = run(Policy::LeastLoaded);
    let fit = run(Policy::Composite);
    assert!(
        fit > greedy,
        "best fit placed {fit} big tasks, greedy {greedy}"
    );
    assert_eq!(fit, 2);
}

#[test]
fn performance_and_cost_policies_follow_what_was_learned() {
    let mut s = with_policy(Policy::Performance);
    let shape = s
        .shape(ShapeSpec {
            kind: "train".into(),
            gpus: 1,
            ..ShapeSpec::default()
        })
        .unwrap();
    let slow = s
        .add_worker_with(
            4,
            vec![gpu(16384, 7.5, "T4")],
            "cuda",
            vec![],
            vec![],
            0,
            0.5,
        )
        .unwrap();
    let fast = s
        .add_worker_with(
            4,
            vec![gpu(81920, 9.0, "H100")],
            "cuda",
            vec![],
            vec![],
            0,
            4.0,
        )
        .unwrap();
    assert_eq!(s.predict_runtime_ms(shape, fast).unwrap(), None);
    // Teach the core: the T4 takes 400 ms, the H100 100 ms.
    for t in 0..6 {
        s.attach(t, if t % 2 == 0 { slow } else { fast }, &[0], shape, 0, 0)
            .unwrap();
        s.finish(t, true, if t % 2 == 0 { 400 } else { 100 })
            .unwrap();
    }
    let h100 = s.predict_runtime_ms(shape, fast).unwrap().unwrap();
    let t4 = s.predict_runtime_ms(shape, slow).unwrap().unwrap();
    assert!(h100 < t4, "H100 {h100} ms, T4 {t4} ms");
    s.push(10, shape, 1, 10, 0).unwrap();
    assert_eq!(
        s.place(0, 1)[0].worker,
        fast,
        "performance picks the faster worker"
    );
    let why = s.explain_placement(10).unwrap();
    assert_eq!(
        (why.policy, why.kind.as_str(), why.runner_up),
        (Policy::Performance, "train", Some(slow))
    );
    assert!(why.score > why.runner_up_score, "{why:?}");
    // Per kind: cost. The H100 costs 8x per hour but is only 4x faster: the T4 is cheaper.
    s.set_kind_policy("train", Policy::Cost);
    s.push(11, shape, 1, 11, 0).unwrap();
    assert_eq!(
        s.place(0, 1)[0].worker,
        slow,
        "cost picks the cheaper $ per task"
    );
    let why = s.explain_placement(11).unwrap();
    assert_eq!(
        (why.policy, why.terms[0]),
        (Policy::Cost, ("cost_per_hour", 0.5))
    );
}

#[test]
fn round_robin_rotates_and_least_loaded_balances() {
    let mut s = with_policy(Policy::RoundRobin);
    let shape = cpu_shape(&mut s, "k");
    let ws: Vec<_> = (0..3).map(|_| plain_worker(&mut s, 4)).collect();
    let mut order = Vec::new();
    for t in 0..6 {
        s.push(t, shape, 1, t, 0).unwrap();
        let p = s.place(0, 1);
        order.push(p[0].worker);
        s.finish(t, true, 5).unwrap();
    }
    assert_eq!(
        order,
        [ws.clone(), ws.clone()].concat(),
        "each in turn, idle or not"
    );
    let mut s = with_policy(Policy::LeastLoaded);
    let shape = cpu_shape(&mut s, "k");
    let big = plain_worker(&mut s, 8);
    let small = plain_worker(&mut s, 2);
    for t in 0..5 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    let on_big = s.place(0, 10).iter().filter(|p| p.worker == big).count();
    assert_eq!(on_big, 4, "load follows capacity");
    let why = s.explain_placement(4).unwrap();
    assert_eq!(why.terms, [("availability", why.score.unwrap())], "{why:?}");
    let _ = small;
}

#[test]
fn composite_explanation_names_terms_and_runner_up() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 2);
    let b = plain_worker(&mut s, 2);
    s.push(1, shape, 1, 1, 0).unwrap();
    s.place(0, 1);
    let why = s.explain_placement(1).unwrap();
    let names: Vec<_> = why.terms.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "availability",
            "success",
            "speed",
            "fit",
            "cost",
            "affinity"
        ]
    );
    assert_eq!(why.terms[..2], [("availability", 0.5), ("success", 0.3)]);
    let total: f64 = why.terms.iter().map(|(_, v)| v).sum();
    assert!((why.score.unwrap() - total).abs() < 1e-9, "{why:?}");
    assert_eq!((why.worker, why.runner_up), (a, Some(b)));
    assert_eq!(why.runner_up_score, why.score, "two idle twins tie");
    assert!(s.explain_placement(99).is_err());
}

#[test]
fn warming_ramps_a_new_worker_and_restarts_after_quarantine() {
    let mut s = Scheduler::new(SchedulerConfig {
        warmup_successes: 3,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "k");
    let w = plain_worker(&mut s, 4);
    for t in 0..10 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    let mut widths = Vec::new();
    for _ in 0..4 {
        let p = s.place(0, 10);
        widths.push(p.len());
        for x in p {
            s.finish(x.task, true, 5).unwrap();
        }
    }
    // 1 slot; after 1 success 2; after 3 successes all 4; then the last 3 tasks.
    assert_eq!(
        widths,
        vec![1, 2, 4, 3],
        "1 slot, then one more per success"
    );
    s.set_quarantined(w, true).unwrap();
    s.set_quarantined(w, false).unwrap();
    assert_eq!(
        s.worker_stats(w).unwrap().effective_slots,
        1,
        "cooling after quarantine"
    );
}

#[test]
fn prefetch_holds_extra_tasks_and_idle_workers_steal_them() {
    let mut s = Scheduler::new(SchedulerConfig {
        prefetch_depth: 2,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 1);
    for t in 0..5 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    assert_eq!(s.place(0, 10).len(), 3, "1 slot + 2 prefetched");
    assert_eq!(s.slots(), (1, 0));
    s.mark_started(0, None).unwrap();
    assert!(
        s.mark_started(1, None).is_err(),
        "never more started tasks than slots"
    );
    assert!(s.steal_candidates(10).is_empty(), "no idle worker yet");
    let b = plain_worker(&mut s, 1);
    let c = plain_worker(&mut s, 1);
    let moves = s.steal_candidates(10);
    // Most recently placed first; each thief once; never the started task 0.
    assert_eq!(moves, vec![(2, a, b), (1, a, c)]);
    assert_eq!(s.steal_candidates(1).len(), 1);
    // The control plane revokes, releases and requeues; the task then runs elsewhere once.
    s.release(2).unwrap();
    s.push(2, shape, 3, 2, 0).unwrap();
    let p = s.place(0, 1);
    assert_eq!(p[0].task, 2);
    assert_ne!(p[0].worker, a);
    s.mark_started(2, None).unwrap();
    assert!(
        s.steal_candidates(10)
            .iter()
            .all(|&(t, _, _)| t != 2 && t != 0),
        "started tasks are never candidates"
    );
}

#[test]
fn a_workers_prefetch_depth_can_be_raised_and_lowered_while_it_holds_tasks() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 1);
    for t in 0..6 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    assert_eq!(s.place(0, 10).len(), 1, "no prefetch: one task per slot");
    s.set_prefetch_depth(a, 3).unwrap();
    assert_eq!(s.place(0, 10).len(), 3, "three more, queued by its agent");
    assert_eq!(s.worker_stats(a).unwrap().held, 4);
    s.set_prefetch_depth(a, 0).unwrap();
    s.finish(0, true, 1).unwrap();
    assert!(
        s.place(0, 10).is_empty(),
        "it still holds more than its new capacity"
    );
    assert!(s.set_prefetch_depth(99, 1).is_err(), "no such worker");
}

#[test]
fn can_run_ignores_load_but_not_static_filters() {
    let mut s = sched();
    let render = cpu_shape(&mut s, "render");
    assert!(!s.can_run(render).unwrap(), "no worker at all");
    let w = s
        .add_worker(1, vec![], "", vec![], vec!["infer".into()], 0)
        .unwrap();
    assert!(
        !s.can_run(render).unwrap(),
        "the only worker runs another kind"
    );
    let any = plain_worker(&mut s, 1);
    assert!(s.can_run(render).unwrap());
    // Busy or draining workers could still run it later: only static filters count.
    s.push(1, render, 1, 1, 0).unwrap();
    s.place(0, 10);
    s.set_draining(any, true).unwrap();
    assert!(s.can_run(render).unwrap());
    s.remove_worker(any).unwrap();
    assert!(
        !s.can_run(render).unwrap(),
        "it left with the only fitting worker"
    );
    s.remove_worker(w).unwrap();
}

#[test]
fn a_prefetched_task_times_out_from_its_start_not_its_placement() {
    let mut s = Scheduler::new(SchedulerConfig {
        prefetch_depth: 1,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "k");
    let _w = plain_worker(&mut s, 1);
    s.push(1, shape, 1, 1, 100).unwrap();
    s.push(2, shape, 1, 2, 100).unwrap();
    assert_eq!(s.place(0, 10).len(), 2, "one runs, one is prefetched");
    s.mark_started(1, Some(0)).unwrap();
    s.finish(1, true, 90).unwrap();
    s.mark_started(2, Some(90)).unwrap();
    assert_eq!(
        s.expired(150).1,
        Vec::<TaskId>::new(),
        "queued time must not count"
    );
    assert_eq!(s.expired(190).1, vec![2]);
}

/// Two 1-slot workers under `policy`, having learned that a task of kind "infer" takes 1 s warm
/// and 9 s cold (an 8 s model load); model 7 is warm on the first, which is free. The locality
/// wait is the default 3 s.
fn learned_fleet(policy: Policy) -> (Scheduler, ShapeId, WorkerId, WorkerId) {
    let mut s = with_policy(policy);
    let shape = cpu_shape(&mut s, "infer");
    let warm = plain_worker(&mut s, 1);
    let cold = plain_worker(&mut s, 1);
    s.push_with(1, shape, 1, 1, 0, affine(7, false)).unwrap();
    assert_eq!(placed(&s.place(0, 1)), vec![(1, warm)]);
    s.finish(1, true, 9_000).unwrap();
    s.push_with(2, shape, 1, 2, 0, affine(7, false)).unwrap();
    assert_eq!(placed(&s.place(0, 1)), vec![(2, warm)], "model 7 is warm");
    s.finish(2, true, 1_000).unwrap();
    (s, shape, warm, cold)
}

#[test]
fn a_busy_warm_worker_gets_the_task_over_a_free_cold_one_within_the_wait() {
    for policy in [Policy::Affinity, Policy::Composite] {
        let (mut s, shape, warm, _) = learned_fleet(policy);
        s.push_with(3, shape, 1, 3, 0, affine(7, false)).unwrap();
        s.push_with(4, shape, 1, 4, 0, affine(7, false)).unwrap();
        assert_eq!(placed(&s.place(10_000, 10)), vec![(3, warm)], "{policy}");
        assert_eq!(
            s.next_locality_ms(),
            Some(13_000),
            "{policy}: task 4 waits up to 3 s from the round that passed it over"
        );
        assert!(s.place(12_999, 10).is_empty(), "{policy}: still waiting");
        s.finish(3, true, 1_000).unwrap();
        assert_eq!(
            placed(&s.place(12_999, 10)),
            vec![(4, warm)],
            "{policy}: the warm worker freed within the wait"
        );
        assert_eq!(s.next_locality_ms(), None);
    }
}

#[test]
fn after_the_locality_wait_a_task_takes_any_worker() {
    for policy in [Policy::Affinity, Policy::Composite] {
        let (mut s, shape, warm, cold) = learned_fleet(policy);
        s.push_with(3, shape, 1, 3, 0, affine(7, false)).unwrap();
        s.push_with(4, shape, 1, 4, 0, affine(7, false)).unwrap();
        assert_eq!(placed(&s.place(10_000, 10)), vec![(3, warm)]);
        assert_eq!(
            placed(&s.place(13_000, 10)),
            vec![(4, cold)],
            "{policy}: waited 3 s, goes cold"
        );
    }
}

#[test]
fn the_wait_never_exceeds_the_learned_load_cost() {
    let mut s = Scheduler::new(SchedulerConfig {
        policy: Policy::Affinity,
        locality_wait_ms: 60_000,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "infer");
    let warm = plain_worker(&mut s, 1);
    let cold = plain_worker(&mut s, 1);
    // Learn: 1 s warm, 3 s cold (a 2 s load).
    for (task, ms) in [(1, 3_000), (2, 1_000)] {
        s.push_with(task, shape, 1, task, 0, affine(7, false))
            .unwrap();
        assert_eq!(placed(&s.place(0, 1)), vec![(task, warm)]);
        s.finish(task, true, ms).unwrap();
    }
    s.push_with(3, shape, 1, 3, 0, affine(7, false)).unwrap();
    s.push_with(4, shape, 1, 4, 0, affine(7, false)).unwrap();
    assert_eq!(placed(&s.place(10_000, 10)), vec![(3, warm)]);
    assert_eq!(s.next_locality_ms(), Some(12_000), "capped at the 2 s load");
    assert_eq!(placed(&s.place(12_000, 10)), vec![(4, cold)]);
}

#[test]
fn a_model_in_demand_beyond_its_warm_workers_spreads_at_once() {
    let (mut s, shape, warm, cold) = learned_fleet(Policy::Affinity);
    // 10 tasks of model 7, 1 s each, on the 1 warm slot: the last would wait ~10 s for it,
    // longer than the 8 s load, so the free worker loads the model now.
    for t in 3..13 {
        s.push_with(t, shape, 1, t, 0, affine(7, false)).unwrap();
    }
    assert_eq!(placed(&s.place(10_000, 10)), vec![(3, warm), (4, cold)]);
    assert_eq!(s.next_locality_ms(), None, "nothing waits");
}

#[test]
fn a_waiting_task_holds_its_flow_while_other_flows_take_the_free_worker() {
    let (mut s, shape, warm, cold) = learned_fleet(Policy::Affinity);
    // The first worker runs a model-7 task; model 8 becomes warm on the second worker.
    s.push_with(3, shape, 1, 3, 0, affine(7, false)).unwrap();
    s.push_with(4, shape, 1, 4, 0, affine(8, false)).unwrap();
    assert_eq!(placed(&s.place(1_000, 10)), vec![(3, warm), (4, cold)]);
    s.finish(4, true, 1_000).unwrap();
    let in_tenant = |tenant, affinity| TaskOptions {
        tenant,
        affinity,
        ..TaskOptions::default()
    };
    // Tenant 0: a model-7 task (warm only on the busy worker), then a model-8 task behind it
    // in the same flow. Tenant 1: a model-8 task.
    s.push_with(5, shape, 1, 5, 0, in_tenant(0, 7)).unwrap();
    s.push_with(6, shape, 1, 6, 0, in_tenant(0, 8)).unwrap();
    s.push_with(7, shape, 1, 7, 0, in_tenant(1, 8)).unwrap();
    assert_eq!(
        placed(&s.place(10_000, 10)),
        vec![(7, cold)],
        "5 waits for the warm worker, 6 stays behind it (FIFO in its flow), the other \
         tenant's task takes the free worker where its model is warm"
    );
    s.finish(3, true, 1_000).unwrap();
    assert_eq!(placed(&s.place(10_500, 10)), vec![(5, warm)]);
    s.finish(7, true, 1_000).unwrap();
    assert_eq!(placed(&s.place(10_500, 10)), vec![(6, cold)]);
}

#[test]
fn stealing_does_not_trade_a_warm_start_for_a_load() {
    let mut s = Scheduler::new(SchedulerConfig {
        policy: Policy::Affinity,
        prefetch_depth: 1,
        ..composite()
    })
    .unwrap();
    let shape = cpu_shape(&mut s, "infer");
    let a = plain_worker(&mut s, 1);
    for t in 1..=2 {
        s.push_with(t, shape, 1, t, 0, affine(7, false)).unwrap();
    }
    assert_eq!(placed(&s.place(1_000, 10)), vec![(1, a), (2, a)]);
    s.mark_started(1, None).unwrap();
    let b = plain_worker(&mut s, 1);
    assert!(
        s.steal_candidates(10).is_empty(),
        "task 2 is warm where it waits, cold on the idle worker"
    );
    s.heartbeat(b, 4_000).unwrap();
    assert_eq!(
        s.steal_candidates(10),
        vec![(2, a, b)],
        "after the locality wait it may go cold"
    );
}

// -- fragmentation (the default policy)

fn gpu_worker(s: &mut Scheduler, gpus: u32, model: &str) -> WorkerId {
    let specs = (0..gpus).map(|_| gpu(16_384, 7.5, model)).collect();
    s.add_worker(gpus, specs, "", vec![], vec![], 0).unwrap()
}

fn gpu_shape(s: &mut Scheduler, gpus: u32, models: &[&str]) -> ShapeId {
    let shape = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus,
            gpu_models: models.iter().map(|&m| m.into()).collect(),
            ..ShapeSpec::default()
        })
        .unwrap();
    // Builds the shape's index, so the workers it lists serve it from now on.
    s.can_run(shape).unwrap();
    shape
}

/// Queue tasks of `shapes` in turn (ids from `first`), so the demand mix is theirs, and take
/// them out again unplaced.
fn learn_mix(s: &mut Scheduler, shapes: &[ShapeId], first: TaskId, n: u64) {
    for i in 0..n {
        let shape = shapes[(i % shapes.len() as u64) as usize];
        s.push(first + i, shape, 1, first + i, 0).unwrap();
        assert!(s.remove(first + i));
    }
}

#[test]
fn fragmentation_is_the_default_policy() {
    assert_eq!(SchedulerConfig::default().policy, Policy::Fragmentation);
}

#[test]
fn a_small_task_fills_a_gap_and_keeps_whole_nodes_for_whole_node_tasks() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let big = gpu_worker(&mut s, 8, "G2");
    let other_big = gpu_worker(&mut s, 8, "G2");
    let small = gpu_worker(&mut s, 2, "G2");
    let (one, eight) = (gpu_shape(&mut s, 1, &[]), gpu_shape(&mut s, 8, &[]));
    learn_mix(&mut s, &[one, eight], 100, 64);
    for t in 1..=3 {
        s.push(t, one, 1, t, 0).unwrap();
    }
    s.push(4, eight, 1, 4, 0).unwrap();
    s.push(5, eight, 1, 5, 0).unwrap();
    let got = placed(&s.place(0, 10));
    // The third 1-GPU task breaks one 8-GPU node (the lower handle), so only one 8-GPU task
    // can start; spreading would have broken both.
    assert_eq!(got, vec![(1, small), (2, small), (3, big), (4, other_big)]);
}

#[test]
fn a_node_only_constrained_tasks_can_use_is_kept_for_them() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let t4 = gpu_worker(&mut s, 2, "T4");
    let v100 = gpu_worker(&mut s, 2, "V100");
    let (any, only_t4) = (gpu_shape(&mut s, 1, &[]), gpu_shape(&mut s, 1, &["T4"]));
    learn_mix(&mut s, &[any, only_t4], 100, 64);
    s.push(1, any, 1, 1, 0).unwrap();
    s.push(2, any, 1, 2, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(1, v100), (2, v100)],
        "tasks that run anywhere leave the T4s to T4-only tasks"
    );
    s.push(3, only_t4, 1, 3, 0).unwrap();
    s.push(4, only_t4, 1, 4, 0).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(3, t4), (4, t4)]);
}

#[test]
fn a_scarce_models_gpu_is_kept_for_a_task_that_asks_for_it_before_one_ever_has() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let common: Vec<_> = (0..3).map(|_| gpu_worker(&mut s, 8, "G2")).collect();
    let scarce = gpu_worker(&mut s, 1, "V100M16");
    gpu_worker(&mut s, 2, "T4");
    let (any, only_t4) = (gpu_shape(&mut s, 1, &[]), gpu_shape(&mut s, 1, &["T4"]));
    // Tasks name GPU models, though none yet names V100M16.
    learn_mix(&mut s, &[any, only_t4], 100, 64);
    // Best fit alone would fill the 1-GPU worker exactly; the one GPU of its model is worth
    // more to a task that may only run there than a G2 among 24 is.
    s.push(1, any, 1, 1, 0).unwrap();
    let got = placed(&s.place(0, 10));
    assert!(
        common.contains(&got[0].1),
        "placed on {:?}, not a G2",
        got[0].1
    );
    let only_scarce = gpu_shape(&mut s, 1, &["V100M16"]);
    s.push(2, only_scarce, 1, 2, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(2, scarce)],
        "the first V100M16-only task starts at once"
    );
}

#[test]
fn a_scarce_models_gpu_still_takes_a_task_that_would_otherwise_wait() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let common = gpu_worker(&mut s, 8, "G2");
    let scarce = gpu_worker(&mut s, 1, "V100M16");
    let g3 = gpu_worker(&mut s, 8, "G3");
    let (any, only_g3) = (gpu_shape(&mut s, 1, &[]), gpu_shape(&mut s, 8, &["G3"]));
    learn_mix(&mut s, &[any, only_g3], 100, 64);
    s.push(1, only_g3, 1, 1, 0).unwrap();
    for t in 2..=10 {
        s.push(t, any, 1, t, 0).unwrap();
    }
    let got = placed(&s.place(0, 10));
    assert_eq!(got.len(), 10, "{got:?}");
    assert_eq!(got[0], (1, g3));
    assert_eq!(got.iter().filter(|&&(_, w)| w == common).count(), 8);
    assert_eq!(
        got.last(),
        Some(&(10, scarce)),
        "the last one goes where it can start"
    );
}

#[test]
fn a_task_starts_on_a_free_worker_rather_than_queue_behind_a_running_one() {
    let mut s = Scheduler::new(SchedulerConfig {
        prefetch_depth: 1,
        ..SchedulerConfig::default()
    })
    .unwrap();
    let busy = gpu_worker(&mut s, 1, "G2");
    let roomy = gpu_worker(&mut s, 8, "G2");
    let one = gpu_shape(&mut s, 1, &[]);
    s.push(1, one, 1, 1, 0).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(1, busy)], "the tightest fit");
    s.push(2, one, 1, 2, 0).unwrap();
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(2, roomy)],
        "a full worker leaves nothing to strand, but the task would wait there"
    );
}

#[test]
fn a_multi_gpu_task_loads_a_worker_as_many_times_as_its_gpus() {
    let mut s = Scheduler::new(SchedulerConfig {
        policy: Policy::LeastLoaded,
        ..SchedulerConfig::default()
    })
    .unwrap();
    let a = gpu_worker(&mut s, 8, "G2");
    let b = gpu_worker(&mut s, 8, "G2");
    let (one, four) = (gpu_shape(&mut s, 1, &[]), gpu_shape(&mut s, 4, &[]));
    s.push(1, four, 1, 1, 0).unwrap();
    s.push(2, one, 1, 2, 0).unwrap();
    s.push(3, one, 1, 3, 0).unwrap();
    // After the 4-GPU task a has half its GPUs free; two 1-GPU tasks on b leave it 6 of 8.
    assert_eq!(placed(&s.place(0, 10)), vec![(1, a), (2, b), (3, b)]);
}

proptest::proptest! {
    /// Whatever the fleet has been through, the worker fragmentation picks scores best among
    /// the workers that could take the task: a placement that raises a worker's score for
    /// other shapes reaches their indexes at once.
    #[test]
    fn fragmentation_picks_the_best_scoring_worker(
        sizes in proptest::collection::vec(proptest::sample::select(vec![1u32, 2, 4, 8]), 2..8),
        ops in proptest::collection::vec((0usize..4, proptest::bool::ANY, 0usize..64), 1..80),
    ) {
        let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
        for &n in &sizes {
            gpu_worker(&mut s, n, "G2");
        }
        let shapes: Vec<ShapeId> = [1, 2, 4, 8].iter().map(|&k| gpu_shape(&mut s, k, &[])).collect();
        let mut running: Vec<TaskId> = Vec::new();
        for (task, (shape, finish, which)) in ops.into_iter().enumerate() {
            let task = task as TaskId;
            if finish && !running.is_empty() {
                let done = running.swap_remove(which % running.len());
                s.finish(done, true, 10).unwrap();
                continue;
            }
            let k = [1, 2, 4, 8][shape];
            s.push(task, shapes[shape], 1, task, 0).unwrap();
            let best = s
                .workers
                .iter()
                .filter(|(_, w)| w.is_ready() && crate::demand::free_gpus(w) >= k)
                .map(|(_, w)| s.workers.learning.demand.score(w, crate::demand::free_gpus(w), k, 0.0))
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            let got = s.place(0, 1);
            match (best, got.first()) {
                (None, None) => assert!(s.remove(task)),
                (Some(best), Some(p)) => {
                    let w = s.workers.get(p.worker).unwrap();
                    // Scored as it was before the task took its GPUs.
                    let free = crate::demand::free_gpus(w) + k;
                    let served = w.shapes.iter().map(|&(id, _)| id);
                    let lost = s.workers.learning.demand.lost(free, k, served);
                    let left = f64::from(free - k) / w.gpus.len() as f64;
                    let score = 1.0 / (1.0 + lost + 1e-3 * left);
                    proptest::prop_assert!(score >= best - 1e-12, "placed at {score}, best {best}");
                    running.push(p.task);
                }
                (best, got) => proptest::prop_assert!(false, "best {best:?} but placed {got:?}"),
            }
        }
    }
}

#[test]
fn a_tenant_at_its_gpu_cap_waits_while_others_are_placed() {
    let mut s = sched();
    let one = s
        .shape(ShapeSpec {
            kind: "k".into(),
            gpus: 1,
            ..ShapeSpec::default()
        })
        .unwrap();
    let cpu = cpu_shape(&mut s, "k");
    let w = s
        .add_worker(8, vec![gpu(10, 8.0, "a"); 6], "", vec![], vec![], 0)
        .unwrap();
    s.set_tenant_max_gpus(1, Some(2));
    let of = |tenant| TaskOptions {
        tenant,
        ..TaskOptions::default()
    };
    // Tenant 1 queued first, four GPU tasks and one CPU task; tenant 2 two GPU tasks.
    for t in 0..4 {
        s.push_with(t, one, 1, t, 0, of(1)).unwrap();
    }
    s.push_with(4, cpu, 1, 4, 0, of(1)).unwrap();
    for t in 10..12 {
        s.push_with(t, one, 1, t, 0, of(2)).unwrap();
    }
    let mut first: Vec<TaskId> = s.place(0, 10).iter().map(|p| p.task).collect();
    first.sort_unstable();
    assert_eq!(
        first,
        vec![0, 1, 10, 11],
        "two of tenant 1's, both of tenant 2's"
    );
    assert_eq!(s.tenant_gpus(1), (2, Some(2)));
    assert_eq!(s.tenant_gpus(2), (2, None));
    assert!(
        s.is_pending(4),
        "the CPU task waits behind the tenant's head"
    );

    // A freed GPU lets the next one in, and only one.
    s.finish(0, true, 5).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(2, w)]);
    // Lifting the cap places the rest; a lost worker frees what it held.
    s.set_tenant_max_gpus(1, None);
    let rest: Vec<TaskId> = s.place(0, 10).iter().map(|p| p.task).collect();
    assert_eq!(rest, vec![3, 4]);
    assert_eq!(s.tenant_gpus(1), (3, None));
    s.remove_worker(w).unwrap();
    assert_eq!(s.tenant_gpus(1), (0, None));

    // A re-attached task counts once it is charged.
    let v = s
        .add_worker(2, vec![gpu(10, 8.0, "a"); 2], "", vec![], vec![], 0)
        .unwrap();
    s.attach(20, v, &[0], one, 0, 0).unwrap();
    s.charge_tenant(20, 1).unwrap();
    s.charge_tenant(20, 1).unwrap();
    assert_eq!(s.tenant_gpus(1), (1, None), "charged once");
    assert!(matches!(
        s.charge_tenant(21, 1),
        Err(CoreError::UnknownHandle(_))
    ));
    s.release(20).unwrap();
    assert_eq!(s.tenant_gpus(1), (0, None));
}

fn share_shape(s: &mut Scheduler, milli: u32, memory_mb: u64) -> ShapeId {
    s.shape(ShapeSpec {
        kind: "k".into(),
        gpu_milli: milli,
        gpu_memory_mb: memory_mb,
        ..ShapeSpec::default()
    })
    .unwrap()
}

#[test]
fn shares_pack_onto_one_gpu_and_leave_whole_gpus_free() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let specs = vec![gpu(16_384, 8.0, "T4"); 2];
    let w = s.add_worker(8, specs, "", vec![], vec![], 0).unwrap();
    let third = share_shape(&mut s, 300, 4_000);
    let whole = gpu_shape(&mut s, 1, &[]);
    for t in 1..=3 {
        s.push(t, third, 1, t, 0).unwrap();
    }
    s.push(4, whole, 1, 4, 0).unwrap();
    let got = s.place(0, 10);
    let gpus: Vec<_> = got.iter().map(|p| (p.task, p.gpus.to_vec())).collect();
    assert_eq!(
        gpus,
        vec![(1, vec![0]), (2, vec![0]), (3, vec![0]), (4, vec![1])],
        "three shares on one GPU, the whole task on the other"
    );
    for t in 1..=4 {
        s.mark_started(t, Some(0)).unwrap();
    }
    s.push(5, third, 1, 5, 0).unwrap();
    assert!(
        s.place(0, 10).is_empty(),
        "900 + 300 thousandths do not fit one GPU, and the other is used whole"
    );
    s.finish(4, true, 10).unwrap();
    assert_eq!(s.place(0, 10)[0].gpus.to_vec(), vec![1]);
    // Memory: 4,000 MiB reserved thrice on GPU 0 and once on GPU 1; 13,000 more fits neither.
    let big = share_shape(&mut s, 50, 13_000);
    s.push(6, big, 1, 6, 0).unwrap();
    assert!(s.place(0, 10).is_empty(), "its memory fits no GPU's rest");
    s.finish(5, true, 10).unwrap();
    let got = s.place(0, 10);
    assert_eq!((got[0].worker, got[0].gpus.to_vec()), (w, vec![1]));
}

#[test]
fn a_share_no_gpu_has_the_memory_for_says_so() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    s.add_worker(4, vec![gpu(16_384, 8.0, "T4")], "", vec![], vec![], 0)
        .unwrap();
    let big = share_shape(&mut s, 250, 20_000);
    assert_eq!(
        s.explain(big, 1).unwrap().reason,
        "no connected worker has a GPU to share (250 of 1000 thousandths) with at least 20000 MB"
    );
}

#[test]
fn a_share_refuses_to_attach_past_its_gpu() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let w = s
        .add_worker(4, vec![gpu(16_384, 8.0, "T4")], "", vec![], vec![], 0)
        .unwrap();
    let most = share_shape(&mut s, 700, 0);
    s.attach(1, w, &[0], most, 0, 0).unwrap();
    let err = s.attach(2, w, &[0], most, 0, 0).unwrap_err().to_string();
    assert!(err.contains("already taken"), "{err}");
    let whole = gpu_shape(&mut s, 1, &[]);
    assert!(
        s.attach(3, w, &[0], whole, 0, 0).is_err(),
        "a GPU with shares is not given whole"
    );
    let small = share_shape(&mut s, 300, 0);
    s.attach(4, w, &[0], small, 0, 0).unwrap();
}

proptest::proptest! {
    /// Whatever is pushed, placed, started and finished: the shares on a GPU never sum past
    /// 1000 thousandths, their memory never past the GPU's, and a GPU with shares is never also
    /// given whole.
    #[test]
    fn shares_never_exceed_a_gpu(
        fragmentation in proptest::bool::ANY,
        ops in proptest::collection::vec((0u32..1000, 0u64..20_000, 0u32..3, 0usize..64), 1..120),
    ) {
        let policy = if fragmentation { Policy::Fragmentation } else { Policy::Composite };
        let mut s = Scheduler::new(SchedulerConfig { policy, prefetch_depth: 1, ..SchedulerConfig::default() }).unwrap();
        for n in [1u32, 2, 4] {
            let specs = (0..n).map(|i| gpu(8_192 * u64::from(1 + i % 2), 8.0, "G")).collect();
            s.add_worker(3 * n, specs, "", vec![], vec![], 0).unwrap();
        }
        let mut placed: Vec<TaskId> = Vec::new();
        for (task, (milli, memory_mb, op, which)) in ops.into_iter().enumerate() {
            let task = task as TaskId;
            match op {
                0 if !placed.is_empty() => {
                    let done = placed.swap_remove(which % placed.len());
                    s.finish(done, true, 10).unwrap();
                }
                1 if !placed.is_empty() => {
                    // Starts may be refused (a whole GPU still running); that is the point.
                    let _ = s.mark_started(placed[which % placed.len()], Some(0));
                }
                _ => {
                    let shape = if milli == 0 {
                        gpu_shape(&mut s, 1 + (which % 2) as u32, &[])
                    } else {
                        share_shape(&mut s, milli, memory_mb % 9_000)
                    };
                    s.push(task, shape, 1, task, 0).unwrap();
                }
            }
            placed.extend(s.place(0, 4).iter().map(|p| p.task));
            let mut milli_on = std::collections::HashMap::<(WorkerId, u32), (u32, u64)>::new();
            let mut whole_on = std::collections::HashSet::new();
            for p in s.placed.values() {
                for &g in &p.gpus {
                    if p.share.is_whole() {
                        whole_on.insert((p.worker, g));
                    } else {
                        let e = milli_on.entry((p.worker, g)).or_default();
                        e.0 += p.share.milli;
                        e.1 += p.share.memory_mb;
                    }
                }
            }
            for ((w, g), (milli, mb)) in milli_on {
                let total = s.workers.get(w).unwrap().gpus[g as usize].memory_total_mb;
                proptest::prop_assert!(milli <= 1000, "GPU {g} of {w} shared {milli}/1000");
                proptest::prop_assert!(mb <= total, "GPU {g} of {w} reserves {mb} of {total} MiB");
                proptest::prop_assert!(!whole_on.contains(&(w, g)), "GPU {g} of {w} shared and whole");
            }
        }
    }
}

fn a100s(n: usize) -> Vec<GpuSpec> {
    vec![gpu(81_920, 8.0, "A100"); n]
}

/// Teach the core that tasks of `shape` take `ms` on `worker` (task ids from 1000 on).
fn learn_runtime(s: &mut Scheduler, shape: ShapeId, worker: WorkerId, gpus: &[u32], ms: u64) {
    let task = 1000 + s.placed() as u64 + 100 * shape;
    s.attach(task, worker, gpus, shape, 0, 0).unwrap();
    s.finish(task, true, ms).unwrap();
}

fn kind_shape(s: &mut Scheduler, kind: &str, gpus: u32) -> ShapeId {
    s.shape(ShapeSpec {
        kind: kind.into(),
        gpus,
        ..ShapeSpec::default()
    })
    .unwrap()
}

proptest::proptest! {
    /// Whatever finishes, starts and arrives between rounds (tasks of one GPU and of four,
    /// whose finishes give a gang its GPUs at once), the hold kept for a blocked gang is the
    /// one a plan over every member would make, or none when that plan makes none.
    #[test]
    fn a_kept_hold_is_as_soon_as_a_fresh_plan(
        sizes in proptest::collection::vec(4u32..9, 2..6),
        ops in proptest::collection::vec((0u8..4, 0usize..64), 1..60),
    ) {
        let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
        let workers: Vec<WorkerId> = sizes
            .iter()
            .map(|&n| s.add_worker(n, a100s(n as usize), "", vec![], vec![], 0).unwrap())
            .collect();
        let gang = kind_shape(&mut s, "gang", 4);
        let one = kind_shape(&mut s, "one", 1);
        let wide = kind_shape(&mut s, "wide", 4);
        learn_runtime(&mut s, gang, workers[0], &[0, 1], 1_000);
        learn_runtime(&mut s, wide, workers[0], &[0, 1, 2, 3], 900);
        for (i, &w) in workers.iter().enumerate() {
            learn_runtime(&mut s, one, w, &[0], 500 + 700 * i as u64);
        }
        // Every worker busy, so the gang waits; it goes first in every round.
        for task in 0..sizes.iter().sum::<u32>() as u64 {
            s.push(task, one, 1, task, 0).unwrap();
        }
        let mut placed: Vec<u64> = s.place(0, 100).iter().map(|p| p.task).collect();
        s.push(999, gang, 3, 0, 0).unwrap();
        let mut next = 100u64;
        for (op, which) in ops {
            match op {
                0 if !placed.is_empty() => {
                    let done = placed.swap_remove(which % placed.len());
                    s.finish(done, true, 500).unwrap();
                    if done == 999 {
                        s.push(999, gang, 3, 0, 0).unwrap();
                    }
                }
                1 if !placed.is_empty() => {
                    let _ = s.mark_started(placed[which % placed.len()], Some(0));
                }
                2 => {
                    s.push(next, wide, 1, next, 0).unwrap();
                    next += 1;
                }
                _ => {
                    s.push(next, one, 1, next, 0).unwrap();
                    next += 1;
                }
            }
            placed.extend(s.place(0, 1).iter().map(|p| p.task));
            if s.placement_of(999).is_some() {
                continue;
            }
            let kept = s.holds.iter().find(|h| h.shape == gang).map(|h| h.usable_ms);
            let Some(index) = s.placement.built(gang) else {
                continue;
            };
            let forecast = crate::backfill::Forecast {
                placed: &s.placed,
                workers: &s.workers,
                now_ms: 0,
                refused: &Default::default(),
            };
            let fresh = forecast.outlook(gang, index, &[]).worth_holding().map(|h| h.usable_ms);
            if kept.is_some() || fresh.is_none() {
                proptest::prop_assert_eq!(kept, fresh);
            }
        }
    }
}

proptest::proptest! {
    /// Runtimes predicted exactly, 4-GPU tasks among 1-GPU ones on workers of 4 and 8 GPUs, a
    /// gang of 4 behind them and a stream of 1-GPU tasks behind it: whether the gang reserves
    /// GPUs or waits for a 4-GPU task to give back its GPUs at once, it starts no later than
    /// the tasks ahead of it are done.
    #[test]
    fn a_gang_with_or_without_a_hold_starts_by_the_time_the_tasks_ahead_are_done(
        sizes in proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(4u32), proptest::strategy::Just(8u32)], 1..4),
        ahead in proptest::collection::vec(0usize..3, 1..24),
        stream in 1usize..40,
    ) {
        let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
        let workers: Vec<WorkerId> = sizes
            .iter()
            .map(|&n| s.add_worker(n, a100s(n as usize), "", vec![], vec![], 0).unwrap())
            .collect();
        // (shape, GPUs, runtime ms): two 1-GPU kinds and a 4-GPU kind; the gang of 4 takes 1 s.
        let kinds = [
            (kind_shape(&mut s, "short", 1), 1, 3_000u64),
            (kind_shape(&mut s, "long", 1), 1, 7_000),
            (kind_shape(&mut s, "wide", 4), 4, 5_000),
        ];
        let gang = kind_shape(&mut s, "gang", 4);
        let all: [u32; 4] = [0, 1, 2, 3];
        for &(shape, gpus, ms) in &kinds {
            learn_runtime(&mut s, shape, workers[0], &all[..gpus], ms);
        }
        learn_runtime(&mut s, gang, workers[0], &all, 1_000);
        let mut runtime = Vec::new();
        for (task, &k) in ahead.iter().enumerate() {
            s.push(task as u64, kinds[k].0, 1, task as u64, 0).unwrap();
            runtime.push(kinds[k].2);
        }
        let gang_task = ahead.len() as u64;
        s.push(gang_task, gang, 1, gang_task, 0).unwrap();
        runtime.push(1_000);
        for i in 0..stream as u64 {
            let task = gang_task + 1 + i;
            s.push(task, kinds[(i % 2) as usize].0, 1, task, 0).unwrap();
            runtime.push(kinds[(i % 2) as usize].2);
        }
        let mut ends: Vec<Option<u64>> = vec![None; runtime.len()];
        let mut running: Vec<(u64, u64)> = Vec::new();
        let mut now = 0u64;
        loop {
            for p in s.place(now, 1_000) {
                s.mark_started(p.task, Some(now)).unwrap();
                let end = now + runtime[p.task as usize];
                ends[p.task as usize] = Some(end);
                running.push((end, p.task));
            }
            if ends[gang_task as usize].is_some() || running.is_empty() {
                break;
            }
            running.sort_unstable();
            let (end, task) = running.remove(0);
            now = end;
            s.finish(task, true, runtime[task as usize]).unwrap();
        }
        let started = ends[gang_task as usize].map(|end| end - 1_000);
        // The tasks ahead all run before the gang or beside it; the last of them to end.
        let ahead_done = ends[..ahead.len()].iter().map(|e| e.unwrap_or(u64::MAX)).max().unwrap();
        proptest::prop_assert!(
            started.is_some_and(|at| at <= ahead_done),
            "the gang started at {started:?}, the tasks ahead were done at {ahead_done}"
        );
    }
}

#[test]
fn an_expected_runtime_lets_a_task_backfill_before_its_kind_ever_ran() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let w = s.add_worker(2, a100s(2), "", vec![], vec![], 0).unwrap();
    let long = kind_shape(&mut s, "long", 1);
    let gang = kind_shape(&mut s, "gang", 2);
    let quick = kind_shape(&mut s, "quick", 1);
    learn_runtime(&mut s, long, w, &[0], 10_000);
    s.push(1, long, 1, 1, 0).unwrap();
    assert_eq!(placed(&s.place(0, 10)), vec![(1, w)]);
    s.mark_started(1, Some(0)).unwrap();
    s.push(2, gang, 1, 2, 0).unwrap();
    s.push(3, quick, 1, 3, 0).unwrap();
    assert!(
        s.place(0, 10).is_empty(),
        "the gang holds the worker, and nothing says how long the quick task takes"
    );
    s.expect_runtime(quick, 1_000).unwrap();
    assert_eq!(
        placed(&s.place(0, 10)),
        vec![(3, w)],
        "expected to take 1 s, it ends before the long task frees the gang's GPUs"
    );
}

#[test]
fn runtimes_are_learned_per_runtime_class() {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    let w = s.add_worker(1, a100s(1), "", vec![], vec![], 0).unwrap();
    let class = |s: &mut Scheduler, runtime_class: &str| {
        s.shape(ShapeSpec {
            kind: "train".into(),
            gpus: 1,
            runtime_class: runtime_class.into(),
            ..ShapeSpec::default()
        })
        .unwrap()
    };
    let (short, long, plain) = (
        class(&mut s, "short"),
        class(&mut s, "long"),
        class(&mut s, ""),
    );
    learn_runtime(&mut s, short, w, &[0], 1_000);
    learn_runtime(&mut s, long, w, &[0], 600_000);
    assert_eq!(s.predict_runtime_ms(short, w).unwrap(), Some(1_000.0));
    assert_eq!(s.predict_runtime_ms(long, w).unwrap(), Some(600_000.0));
    assert_eq!(
        s.predict_runtime_ms(plain, w).unwrap(),
        None,
        "the kind alone learned nothing"
    );
    s.expect_runtime(plain, 5_000).unwrap();
    assert_eq!(s.predict_runtime_ms(plain, w).unwrap(), Some(5_000.0));
    s.expect_runtime(long, 5_000).unwrap();
    assert_eq!(
        s.predict_runtime_ms(long, w).unwrap(),
        Some(600_000.0),
        "what was learned wins over what was expected"
    );
}

#[test]
fn an_index_tells_apart_workers_that_differ_in_one_static_part_only() {
    // A shape's index checks each static profile once: a worker differing from one that fits
    // in a single label, GPU model, memory, compute capability, backend or kind must still be
    // refused, and its twin and a worker that fits another way accepted.
    let mut s = sched();
    let h100 = gpu(81920, 9.0, "NVIDIA H100");
    let add = |s: &mut Scheduler, g: GpuSpec, backend: &str, zone: &str, kinds: &[&str]| {
        let kinds = kinds.iter().map(|k| (*k).to_owned()).collect();
        s.add_worker(4, vec![g; 2], backend, vec![zone.into()], kinds, 0)
            .unwrap()
    };
    let fits = add(&mut s, h100.clone(), "cuda", "zone=eu", &[]);
    let others = [
        add(&mut s, h100.clone(), "cuda", "zone=us", &[]),
        add(
            &mut s,
            gpu(81920, 9.0, "NVIDIA A100"),
            "cuda",
            "zone=eu",
            &[],
        ),
        add(
            &mut s,
            gpu(40960, 9.0, "NVIDIA H100"),
            "cuda",
            "zone=eu",
            &[],
        ),
        add(
            &mut s,
            gpu(81920, 7.0, "NVIDIA H100"),
            "cuda",
            "zone=eu",
            &[],
        ),
        add(&mut s, h100.clone(), "rocm", "zone=eu", &[]),
        add(&mut s, h100.clone(), "cuda", "zone=eu", &["train"]),
    ];
    let twin = add(&mut s, h100.clone(), "cuda", "zone=eu", &[]);
    let also = add(&mut s, h100, "cuda", "zone=eu", &["infer", "train"]);
    let shape = s
        .shape(ShapeSpec {
            kind: "infer".into(),
            gpus: 1,
            min_gpu_memory_mb: 80_000,
            gpu_models: vec!["h100".into()],
            backend: "cuda".into(),
            labels: vec!["zone=eu".into()],
            min_compute_capability: 8.0,
            ..ShapeSpec::default()
        })
        .unwrap();
    for t in 1..=8 {
        s.push(t, shape, 1, t, 0).unwrap();
    }
    let mut used: Vec<WorkerId> = s.place(0, 100).iter().map(|p| p.worker).collect();
    used.sort_unstable();
    used.dedup();
    assert_eq!(
        used,
        vec![fits, twin, also],
        "only the three that fit, never {others:?}"
    );
    assert_eq!(s.pending(), 2, "two GPUs each on the three that fit");
}
