//! Sentences for `Scheduler::explain`: why a pending task is not running, in words an operator
//! can act on (add a worker with X, wait for Y).

use crate::filters::gpu_qualifies;
use crate::shapes::Shape;
use crate::workers::WorkerTable;

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
    let mut phrase = plural(u64::from(shape.gpus), "GPU", "GPUs");
    if shape.min_gpu_memory_mb > 0 {
        phrase.push_str(&format!(" with at least {} MB", shape.min_gpu_memory_mb));
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

/// "; tasks of kind 'k' take about 1.2 s here, so it should start in about 3.6 s": the wait is
/// the tasks ahead of it spread over the slots that could run it, one runtime per wave.
pub fn eta(kind: &str, runtime_ms: f64, ahead: u64, slots: u64) -> String {
    let waves = ahead / slots.max(1) + 1;
    format!(
        "; tasks of kind '{kind}' take about {} here, so it should start in about {}",
        duration(runtime_ms),
        duration(runtime_ms * waves as f64)
    )
}

/// "; worker 7 is reserved for it (GPUs [0, 1]), free in about 12.0 s; shorter tasks fill the
/// gap": the reservation the last placement round made for its shape.
pub fn reserved(worker: u64, gpus: &[u32], wait_ms: f64) -> String {
    format!(
        "; worker {worker} is reserved for it (GPUs {gpus:?}), free in about {}; shorter tasks \
         fill the gap",
        duration(wait_ms.max(0.0))
    )
}

/// A duration for a person: "850 ms", "3.6 s", "12 min".
pub fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 120_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{:.0} min", ms / 60_000.0)
    }
}
