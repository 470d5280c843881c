//! `benches/bench_core.py`'s 10,000-worker measures of a blocked gang in Rust alone, so the cost
//! it adds can be counted where wall time is too noisy to compare (a shared machine):
//!
//!     cargo build --release -p gpucp-core --example blocked_gang
//!     valgrind --tool=callgrind --toggle-collect='blocked_gang::timed_place' \
//!         target/release/examples/blocked_gang batch gang 5     # or: batch free 5
//!     valgrind ... blocked_gang single gang 20000                # or: single free 20000
//!
//! `batch`: rounds of 20,000 tasks of mixed shapes placed with one `place()`, then finished and
//! removed; `single`: one task placed per `place()` and finished. `gang`: first, a long task on
//! one GPU of every H100 worker and an 8-GPU H100 task queued that none can take, so every
//! `place()` finds it first and keeps (or plans) its hold. Only `timed_place` is counted; the
//! rate printed is wall time.
use std::time::Instant;

use gpucp_core::{GpuSpec, Scheduler, SchedulerConfig, ShapeId, ShapeSpec};

const KINDS: [(u64, f64, &str); 4] = [
    (81920, 8.0, "NVIDIA A100 80GB"),
    (16384, 7.5, "Tesla T4"),
    (81920, 9.0, "NVIDIA H100"),
    (24576, 8.9, "NVIDIA L4"),
];
const GANG: u64 = 1_000_000_000;

/// A shape: `kind` on `gpus` GPUs of at least `mb` MiB, and (models, backend, labels, minimum
/// compute capability).
fn shape(
    s: &mut Scheduler,
    kind: &str,
    (gpus, mb): (u32, u64),
    (models, backend, labels, cc): (&[&str], &str, &[&str], f64),
) -> ShapeId {
    let strings = |xs: &[&str]| xs.iter().map(|x| (*x).to_owned()).collect();
    s.shape(ShapeSpec {
        kind: kind.into(),
        gpus,
        min_gpu_memory_mb: mb,
        gpu_models: strings(models),
        backend: backend.into(),
        labels: strings(labels),
        min_compute_capability: cc,
        ..ShapeSpec::default()
    })
    .unwrap()
}

fn build(workers: usize, gang: bool) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
    for i in 0..workers {
        if i % 5 == 4 {
            s.add_worker(8, vec![], "cpu", vec!["zone=eu".into()], vec![], 0)
                .unwrap();
        } else {
            let (mb, cc, name) = KINDS[i % 4];
            let g = GpuSpec {
                memory_total_mb: mb,
                compute_capability: cc,
                name: name.into(),
            };
            let label = if i % 2 == 1 { "zone=eu" } else { "zone=us" };
            s.add_worker(8, vec![g; 8], "cuda", vec![label.into()], vec![], 0)
                .unwrap();
        }
    }
    if gang {
        let pin = shape(&mut s, "pin", (1, 0), (&["h100"], "cuda", &[], 0.0));
        for i in 0..workers {
            if i % 5 != 4 && KINDS[i % 4].2 == "NVIDIA H100" {
                s.attach(GANG + 1 + i as u64, i as u64, &[0], pin, 0, 0)
                    .unwrap();
            }
        }
        let train = shape(&mut s, "train", (8, 0), (&["h100"], "cuda", &[], 0.0));
        s.push(GANG, train, 3, 0, 0).unwrap();
    }
    s
}

/// The call callgrind counts (`--toggle-collect=blocked_gang::timed_place`).
#[inline(never)]
fn timed_place(s: &mut Scheduler, max: usize) -> Vec<gpucp_core::scheduler::Placement> {
    s.place(1, max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gang = args[2] == "gang";
    let n: u64 = args[3].parse().unwrap();
    let mut s = build(10_000, gang);
    let t0 = Instant::now();
    let mut placed = 0u64;
    if args[1] == "single" {
        let infer = shape(&mut s, "infer", (1, 40_000), (&[], "", &[], 0.0));
        for task in 0..n {
            s.push(task, infer, 1, task, 0).unwrap();
            let p = timed_place(&mut s, 1);
            s.finish(p[0].task, true, 10).unwrap();
            placed += 1;
        }
    } else {
        let kinds = [
            shape(&mut s, "infer", (1, 40_000), (&[], "", &[], 0.0)),
            shape(&mut s, "infer", (1, 0), (&[], "", &[], 0.0)),
            shape(&mut s, "batch", (0, 0), (&[], "", &[], 0.0)),
            shape(
                &mut s,
                "train",
                (2, 0),
                (&["h100", "a100"], "cuda", &[], 8.0),
            ),
            shape(&mut s, "eval", (1, 0), (&[], "cuda", &["zone=eu"], 0.0)),
        ];
        let mut rng = 12345u64;
        let mut handle = 0u64;
        let mut spent = 0.0;
        for _ in 0..n {
            let mut tasks = Vec::new();
            for t in handle..handle + 20_000 {
                rng = rng
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let r = rng >> 33;
                tasks.push((t, kinds[(r % 5) as usize], ((r / 5) % 4) as u8, t, 0));
            }
            handle += 20_000;
            s.push_many(&tasks).unwrap();
            let t1 = Instant::now();
            let result = timed_place(&mut s, 20_000);
            spent += t1.elapsed().as_secs_f64();
            placed += result.len() as u64;
            for p in result {
                s.finish(p.task, true, 10).unwrap();
            }
            for t in &tasks {
                s.remove(t.0);
            }
        }
        println!("place() alone: {:.0}/s", placed as f64 / spent);
    }
    println!(
        "{} {}: {placed} in {:.3}s",
        args[1],
        args[2],
        t0.elapsed().as_secs_f64()
    );
}
