//! A task the core has placed (or that was attached) and still tracks: the record the scheduler
//! keeps per task from placement to finish, and that reservations (`backfill`) read to predict
//! when a worker's GPUs free.

use crate::filters::{Gpus, Share};
use crate::learning::{KindId, Start};
use crate::{ShapeId, WorkerId};

#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) worker: WorkerId,
    pub(crate) gpus: Gpus,
    /// Whole GPUs, or its share of its one GPU.
    pub(crate) share: Share,
    pub(crate) shape: ShapeId,
    pub(crate) kind: KindId,
    /// Generation of the task's timeout entry in the deadline heap.
    pub(crate) generation: u64,
    /// Its execution time limit (0 = none), counted again from the start of a prefetched task.
    pub(crate) timeout_ms: u64,
    /// The agent reported it running (a placed task that is not started is prefetched).
    pub(crate) started: bool,
    /// When it started (valid once `started`), for predicting when it ends.
    pub(crate) started_ms: u64,
    /// Its affinity key (0 = none) and whether it was warm on the worker when placed.
    pub(crate) affinity: u64,
    pub(crate) hard_affinity: bool,
    pub(crate) start: Start,
    /// When it was placed (for stealing: how long it has waited in a prefetch queue).
    pub(crate) placed_ms: u64,
}
