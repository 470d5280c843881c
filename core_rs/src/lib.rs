//! Placement core of gpucp: the pending queue, the worker table, placement and deadlines.
//!
//! Everything here is pure Rust and makes decisions only (no I/O, no clock of its own); the
//! PyO3 glue lives in `bindings` behind the `python` feature so `cargo test` and the criterion
//! benches build without Python.

mod affinity;
mod backfill;
pub mod deadlines;
mod decisions;
pub mod demand;
pub mod error;
mod explain;
mod filters;
mod gpu_names;
mod id_hash;
pub mod learning;
mod placed;
pub mod placement;
pub mod policy;
pub mod queue;
mod ranked;
pub mod scheduler;
mod shape_index;
pub mod shapes;
pub mod workers;

#[cfg(feature = "python")]
mod bindings;

pub use decisions::Explanation;
pub use error::CoreError;
pub use explain::{Eta, PendingReason, Reservation};
pub use policy::Policy;
pub use scheduler::{Scheduler, SchedulerConfig, TaskOptions};
pub use shapes::ShapeSpec;
pub use workers::GpuSpec;

/// Caller-chosen task handle.
pub type TaskId = u64;
/// Core-assigned worker handle, never reused within one `Scheduler`.
pub type WorkerId = u64;
/// Interned requirement shape.
pub type ShapeId = u64;

/// Number of priority classes: 0 = LOW, 1 = NORMAL, 2 = HIGH, 3 = URGENT.
pub const PRIORITY_CLASSES: usize = 4;
