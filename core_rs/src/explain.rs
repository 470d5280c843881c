//! Sentences for `Scheduler::explain`: why a pending task is not running, in words an operator
//! can act on (add a worker with X, wait for Y).

use crate::placement::gpu_qualifies;
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

/// Some workers could run the shape but none can take it now.
pub fn busy(eligible: usize, draining: usize, queued_above: u64) -> String {
    let subject = if eligible == 1 {
        "the 1 worker that can run it is".to_owned()
    } else {
        format!("all {eligible} workers that can run it are")
    };
    if draining == eligible {
        return format!("{subject} draining");
    }
    let drain_note = if draining > 0 {
        format!(" ({draining} of them draining)")
    } else {
        String::new()
    };
    let queue = match queued_above {
        0 => "no task of higher priority is queued".to_owned(),
        1 => "1 task of higher priority is queued".to_owned(),
        n => format!("{n} tasks of higher priority are queued"),
    };
    format!("{subject} busy{drain_note}; {queue}")
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
