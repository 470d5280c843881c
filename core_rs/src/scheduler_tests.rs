//! Unit tests of the engine through its public methods.

use super::*;
use crate::CoreError;

fn sched() -> Scheduler {
    Scheduler::new(SchedulerConfig::default()).unwrap()
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
            gpus: vec![2]
        },
        "40 GB A100 before the 80 GB H100"
    );
    assert_eq!(
        p[1],
        Placement {
            task: 2,
            worker: w,
            gpus: vec![1]
        }
    );
    assert_eq!(
        p[2],
        Placement {
            task: 3,
            worker: w,
            gpus: vec![0]
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
            gpus: vec![2]
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
    assert_eq!(s.place(0, 1)[0].gpus, vec![0, 2]);
}

#[test]
fn priority_then_fifo_across_shapes() {
    let mut s = sched();
    let a = cpu_shape(&mut s, "a");
    let b = cpu_shape(&mut s, "b");
    plain_worker(&mut s, 10);
    s.push(1, a, 1, 5, 0).unwrap();
    s.push(2, b, 1, 2, 0).unwrap();
    s.push(3, a, 3, 9, 0).unwrap();
    s.push(4, b, 0, 1, 0).unwrap();
    s.push(5, a, 1, 1, 0).unwrap();
    let order: Vec<TaskId> = s.place(0, 10).iter().map(|p| p.task).collect();
    assert_eq!(order, vec![3, 5, 2, 1, 4]);
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
        ..SchedulerConfig::default()
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
        ..SchedulerConfig::default()
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
        ..SchedulerConfig::default()
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
        ..SchedulerConfig::default()
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
        ..SchedulerConfig::default()
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
    assert_eq!(s.explain(render, 1).unwrap(), "no worker is connected");
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
        s.explain(render, 1).unwrap(),
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
        s.explain(rocm, 1).unwrap(),
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
        s.explain(eu, 1).unwrap(),
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
        s.explain(h100, 1).unwrap(),
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
        s.explain(one, 1).unwrap(),
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
        s.explain(both, 1).unwrap(),
        "no connected worker meets all of: kind 'infer', backend 'rocm', 1 GPU"
    );
}

#[test]
fn explain_says_busy_draining_or_waiting() {
    let mut s = sched();
    let shape = cpu_shape(&mut s, "k");
    let a = plain_worker(&mut s, 1);
    let b = plain_worker(&mut s, 1);
    assert_eq!(s.explain(shape, 1).unwrap(), "waiting for placement");
    s.push(1, shape, 3, 1, 0).unwrap();
    s.push(2, shape, 3, 2, 0).unwrap();
    s.place(0, 10);
    s.push(3, shape, 3, 3, 0).unwrap();
    s.push(4, shape, 2, 4, 0).unwrap();
    s.push(5, shape, 1, 5, 0).unwrap();
    assert_eq!(
        s.explain(shape, 1).unwrap(),
        "all 2 workers that can run it are busy; 2 tasks of higher priority are queued"
    );
    assert_eq!(
        s.explain(shape, 2).unwrap(),
        "all 2 workers that can run it are busy; 1 task of higher priority is queued"
    );
    assert_eq!(
        s.explain(shape, 3).unwrap(),
        "all 2 workers that can run it are busy; no task of higher priority is queued"
    );
    s.set_draining(a, true).unwrap();
    assert_eq!(
        s.explain(shape, 3).unwrap(),
        "all 2 workers that can run it are busy (1 of them draining); no task of higher priority is queued"
    );
    s.set_draining(b, true).unwrap();
    assert_eq!(
        s.explain(shape, 3).unwrap(),
        "all 2 workers that can run it are draining"
    );
    s.remove_worker(a).unwrap();
    assert_eq!(
        s.explain(shape, 3).unwrap(),
        "the 1 worker that can run it is draining"
    );
    s.set_draining(b, false).unwrap();
    s.finish(2, true, 5).unwrap();
    assert_eq!(s.explain(shape, 3).unwrap(), "waiting for placement");
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
            gpus: vec![0]
        }]
    );
}

#[test]
fn compacting_stale_deadlines_keeps_current_ones() {
    let mut s = Scheduler::new(SchedulerConfig {
        heartbeat_timeout_ms: 1_000_000,
        ..SchedulerConfig::default()
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
