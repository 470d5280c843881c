//! What a `Scheduler` is built with, and the optional facts of a queued task.

use crate::policy::{Policy, Weights};
use crate::queue::{Fairness, PriorityMode, TenantId};
use crate::{WorkerId, PRIORITY_CLASSES};

/// Construction parameters (the Python constructor's keyword arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    pub heartbeat_timeout_ms: u64,
    pub w_availability: f64,
    pub w_success: f64,
    pub w_speed: f64,
    pub w_affinity: f64,
    pub w_fit: f64,
    pub w_cost: f64,
    /// The policy for every kind without its own (`set_kind_policy`).
    pub policy: Policy,
    /// Priority classes in strict order within a tenant, or sharing by `priority_weights`.
    pub priority_mode: PriorityMode,
    /// Shares of LOW, NORMAL, HIGH, URGENT (priority_mode shares).
    pub priority_weights: [f64; PRIORITY_CLASSES],
    /// A task waiting this long moves up one class (0 = never).
    pub aging_ms: u64,
    /// Tasks a worker may hold beyond its slots (the agent queues them).
    pub prefetch_depth: u32,
    /// Successes over which a new or recovered worker's slots ramp from 1 to full (0 = none).
    pub warmup_successes: u32,
    /// Affinity keys each worker remembers (its last tasks').
    pub affinity_memory: usize,
    /// Placement decisions kept for `explain_placement` (0 = none).
    pub explain_memory: usize,
    /// Delay scheduling (policies affinity and composite): the longest a task whose affinity
    /// key is warm only on busy workers declines cold ones, from the first time it was passed
    /// over. Capped further by the learned cost of a cold start for its kind, since waiting
    /// longer than the model load would take gains nothing. 0 = never wait.
    pub locality_wait_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let w = Weights::default();
        let f = Fairness::default();
        SchedulerConfig {
            heartbeat_timeout_ms: 10_000,
            w_availability: w.availability,
            w_success: w.success,
            w_speed: w.speed,
            w_affinity: w.affinity,
            w_fit: w.fit,
            w_cost: w.cost,
            policy: Policy::Fragmentation,
            priority_mode: f.mode,
            priority_weights: f.class_weights,
            aging_ms: f.aging_ms,
            prefetch_depth: 0,
            warmup_successes: 0,
            affinity_memory: 4,
            explain_memory: 4096,
            locality_wait_ms: 3_000,
        }
    }
}

/// The optional facts of a queued task (keyword arguments in Python).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOptions {
    /// Not placed on this worker while another worker could ever run the task's shape (so a
    /// retried task does not go back to the worker that just failed it).
    pub avoid_worker: Option<WorkerId>,
    pub tenant: TenantId,
    /// Interned affinity key (e.g. a model id); 0 = none.
    pub affinity: u64,
    /// Only workers where the key is warm, while any such worker exists.
    pub hard_affinity: bool,
    /// When it was queued; None = the latest clock the core has seen.
    pub enqueued_ms: Option<u64>,
}
