//! `Scheduler::explain`: why a pending task is not running. The reason is a sentence an operator
//! can act on (add a worker with X, wait for Y) that names requirements, never a worker; the
//! estimate and the reservation are numbers and a worker handle, for the caller to word with the
//! worker's name.

use crate::filters::gpu_qualifies;
use crate::shapes::Shape;
use crate::workers::WorkerTable;
use crate::WorkerId;

/// Why a pending task waits.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingReason {
    /// "waiting for placement" when a worker could take it now; else which requirement no
    /// connected worker meets, or why the workers that could run it cannot take it now.
    pub reason: String,
    /// Once runtimes of its kind are learned and a worker that can run it takes work.
    pub eta: Option<Eta>,
    /// The reservation the last placement round made for its shape (see `backfill`).
    pub reservation: Option<Reservation>,
    /// It waits for busy workers, and nothing says how long its kind runs: no run of it was
    /// learned and no submitter gave an expected runtime.
    pub no_estimate: bool,
}

impl PendingReason {
    pub fn new(reason: impl Into<String>) -> PendingReason {
        PendingReason {
            reason: reason.into(),
            eta: None,
            reservation: None,
            no_estimate: false,
        }
    }
}

/// A task of its kind takes about `runtime_ms` here, so it should start in about `start_in_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eta {
    pub runtime_ms: f64,
    pub start_in_ms: f64,
}

/// `worker` is reserved for it (these GPUs), free in about `free_in_ms` (None: a task on them
/// has no estimate yet); shorter tasks fill the gap meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub worker: WorkerId,
    pub gpus: Vec<u32>,
    pub free_in_ms: Option<f64>,
}

/// No live worker passes the static filters: name the requirement nobody meets, checking each
/// on its own in the order kind, backend, labels, GPUs, so the sentence points at one fix.
pub fn no_fit(shape: &Shape, workers: &WorkerTable) -> String {
    if workers.live() == 0 {
        return "no worker is connected".to_owned();
    }
    let any = |test: &dyn Fn(&crate::workers::Worker) -> bool| workers.iter().any(|(_, w)| test(w));
    if !any(&|w| w.accepts_kind(&shape.kind)) {
        return format!("no connected worker runs tasks of kind '{}'", shape.kind);
    }
    if !shape.backend.is_empty() && !any(&|w| w.backend == shape.backend) {
        return format!("no connected worker has backend '{}'", shape.backend);
    }
    if !shape.labels.is_empty() && !any(&|w| w.has_labels(&shape.labels)) {
        return format!("no connected worker has labels {}", py_list(&shape.labels));
    }
    let enough_gpus = |w: &crate::workers::Worker| {
        w.gpus.iter().filter(|g| gpu_qualifies(shape, g)).count() >= shape.gpus as usize
    };
    if shape.gpus > 0 && !any(&enough_gpus) {
        return format!("no connected worker has {}", gpu_phrase(shape));
    }
    format!("no connected worker meets all of: {}", requirements(shape))
}

/// Why the workers that could run a shape are unavailable, counted once each in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unavailable {
    pub draining: usize,
    pub quarantined: usize,
    /// Too few healthy qualifying GPUs even when idle.
    pub unhealthy: usize,
}

impl Unavailable {
    fn total(&self) -> usize {
        self.draining + self.quarantined + self.unhealthy
    }

    fn parts(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if self.draining > 0 {
            parts.push(format!("{} draining", self.draining));
        }
        if self.quarantined > 0 {
            parts.push(format!("{} quarantined", self.quarantined));
        }
        if self.unhealthy > 0 {
            parts.push(format!("{} with too few healthy GPUs", self.unhealthy));
        }
        parts
    }
}

/// Some workers could run the shape but none can take it now.
pub fn busy(eligible: usize, unavailable: Unavailable, queued_above: u64) -> String {
    let subject = if eligible == 1 {
        "the 1 worker that can run it is".to_owned()
    } else {
        format!("all {eligible} workers that can run it are")
    };
    if unavailable.draining == eligible {
        return format!("{subject} draining");
    }
    if unavailable.quarantined == eligible {
        return format!("{subject} quarantined");
    }
    if unavailable.unhealthy == eligible {
        let what = if eligible == 1 { "it has" } else { "they have" };
        return format!(
            "{} can run it, but {what} too few healthy GPUs (unhealthy GPUs are not used)",
            if eligible == 1 {
                "1 worker".to_owned()
            } else {
                format!("{eligible} workers")
            }
        );
    }
    if unavailable.total() == eligible {
        return format!("{subject} unavailable: {}", unavailable.parts().join(", "));
    }
    // "(1 of them draining, 2 quarantined)"
    let note = unavailable
        .parts()
        .join(", ")
        .split_once(' ')
        .map(|(n, rest)| format!(" ({n} of them {rest})"))
        .unwrap_or_default();
    let queue = match queued_above {
        0 => "no task of higher priority is queued".to_owned(),
        1 => "1 task of higher priority is queued".to_owned(),
        n => format!("{n} tasks of higher priority are queued"),
    };
    format!("{subject} busy{note}; {queue}")
}

fn requirements(shape: &Shape) -> String {
    let mut parts = vec![format!("kind '{}'", shape.kind)];
    if !shape.backend.is_empty() {
        parts.push(format!("backend '{}'", shape.backend));
    }
    if !shape.labels.is_empty() {
        parts.push(format!("labels {}", py_list(&shape.labels)));
    }
    if shape.gpus > 0 {
        parts.push(gpu_phrase(shape));
    }
    parts.join(", ")
}

/// e.g. "2 GPUs with at least 81920 MB (model any of ['h100'], compute capability >= 8.0)".
fn gpu_phrase(shape: &Shape) -> String {
    let mut phrase = if shape.share.is_whole() {
        plural(u64::from(shape.gpus), "GPU", "GPUs")
    } else {
        format!("a GPU to share ({} of 1000 thousandths)", shape.share.milli)
    };
    let memory_mb = shape.min_gpu_memory_mb.max(shape.share.memory_mb);
    if memory_mb > 0 {
        phrase.push_str(&format!(" with at least {memory_mb} MB"));
    }
    let mut details = Vec::new();
    if !shape.gpu_models.is_empty() {
        details.push(format!("model any of {}", py_list(&shape.gpu_models)));
    }
    let cc = shape.min_compute_capability();
    if cc > 0.0 {
        details.push(format!("compute capability >= {cc:?}"));
    }
    if !details.is_empty() {
        phrase.push_str(&format!(" ({})", details.join(", ")));
    }
    phrase
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Render like Python's repr of a list of str, the language the operator reads the spec in.
fn py_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// When a task should start: the tasks ahead of it spread over the slots that could run it, one
/// learned runtime of its kind per wave.
pub fn eta(runtime_ms: f64, ahead: u64, slots: u64) -> Eta {
    let waves = ahead / slots.max(1) + 1;
    Eta {
        runtime_ms,
        start_in_ms: runtime_ms * waves as f64,
    }
}
