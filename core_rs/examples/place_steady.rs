//! A fixed number of steady-state batch placements, as `benches/placement.rs` times them: the
//! deterministic workload `benches/bench_instructions.py` counts instructions and cache misses
//! of under callgrind, where wall time on a shared machine is too noisy to compare small changes.
//!
//!     cargo run --release --example place_steady -- WORKERS ROUNDS
//!
//! Only `place_batch` is meant to be counted (callgrind `--toggle-collect`); the first batch,
//! which builds the shape indexes, is placed outside it, as criterion's warm-up does.

use std::hint::black_box;

use gpucp_core::scheduler::Placement;
use gpucp_core::Scheduler;

#[path = "../benches/support/fleet.rs"]
mod fleet;
use fleet::{Steady, BATCH};

#[inline(never)]
fn place_batch(s: &mut Scheduler) -> Vec<Placement> {
    s.place(0, BATCH as usize)
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args().nth(n).map_or(default, |a| {
        a.parse().expect("WORKERS and ROUNDS are counts")
    })
}

fn main() {
    let (workers, rounds) = (arg(1, 10_000), arg(2, 40));
    let mut steady = Steady::new(workers, 42);
    let warm_up = steady.scheduler.place(0, BATCH as usize);
    steady.refill(warm_up);
    for _ in 0..rounds {
        let placed = black_box(place_batch(&mut steady.scheduler));
        assert_eq!(
            placed.len() as u64,
            BATCH,
            "the fleet has room for the whole batch"
        );
        steady.refill(placed);
    }
}
