//! The PyO3 glue: the `controlplane._core` module. The only file that touches Python.
//!
//! The engine sits in a `Mutex` inside a frozen class, so it is sound whether or not the GIL is
//! held: long calls (place, push_many) release the GIL and lock inside `py.detach`; short ones
//! lock directly (nothing holding the lock ever waits for the GIL, so this cannot deadlock).

use std::sync::{Mutex, MutexGuard};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::decisions::Explanation;
use crate::error::CoreError as EngineError;
use crate::explain::PendingReason as EnginePendingReason;
use crate::policy::Policy;
use crate::queue::PriorityMode;
use crate::scheduler::{Scheduler, SchedulerConfig, TaskOptions, WorkerStats as EngineWorkerStats};
use crate::shapes::ShapeSpec;
use crate::workers::GpuSpec;
use crate::{ShapeId, TaskId, WorkerId};

mod placements;

use placements::PyPlacements;

create_exception!(
    controlplane._core,
    CoreError,
    PyException,
    "Base class of every error the core raises."
);
create_exception!(
    controlplane._core,
    UnknownHandle,
    CoreError,
    "A task or worker handle the core does not know."
);
create_exception!(
    controlplane._core,
    InvalidArgument,
    CoreError,
    "An argument outside its range (e.g. a priority above 3, a weight below 0)."
);

impl From<EngineError> for PyErr {
    fn from(err: EngineError) -> PyErr {
        match err {
            EngineError::UnknownHandle(msg) => UnknownHandle::new_err(msg),
            EngineError::InvalidArgument(msg) => InvalidArgument::new_err(msg),
        }
    }
}

/// Python ints arrive as i64 so that a negative or oversized value is our InvalidArgument,
/// with a sentence naming the argument, rather than a bare OverflowError.
fn in_range<T: TryFrom<i64>>(name: &str, value: i64) -> Result<T, EngineError> {
    T::try_from(value)
        .map_err(|_| EngineError::InvalidArgument(format!("{name} out of range: {value}")))
}

/// `in_range` for an argument that Python may leave out as None.
fn optional_in_range<T: TryFrom<i64>>(
    name: &str,
    value: Option<i64>,
) -> Result<Option<T>, EngineError> {
    value.map(|v| in_range(name, v)).transpose()
}

/// `controlplane.config.SchedulerConfig`, read attribute by attribute. Ints arrive as i64 and
/// are range-checked with sentences naming the field (see `in_range`).
#[derive(FromPyObject)]
struct ConfigArg {
    heartbeat_timeout_ms: i64,
    policy: String,
    w_availability: f64,
    w_success: f64,
    w_speed: f64,
    w_affinity: f64,
    w_fit: f64,
    w_cost: f64,
    priority_mode: String,
    priority_weights: Vec<f64>,
    aging_ms: i64,
    prefetch_depth: i64,
    warmup_successes: i64,
    locality_wait_ms: i64,
    affinity_memory: i64,
    explain_memory: i64,
}

impl ConfigArg {
    fn into_engine(self) -> Result<SchedulerConfig, EngineError> {
        let weights = self.priority_weights;
        let priority_weights = <[f64; 4]>::try_from(weights.as_slice()).map_err(|_| {
            EngineError::InvalidArgument(format!(
                "priority_weights needs 4 numbers (LOW, NORMAL, HIGH, URGENT), got {}",
                weights.len()
            ))
        })?;
        Ok(SchedulerConfig {
            heartbeat_timeout_ms: in_range("heartbeat_timeout_ms", self.heartbeat_timeout_ms)?,
            w_availability: self.w_availability,
            w_success: self.w_success,
            w_speed: self.w_speed,
            w_affinity: self.w_affinity,
            w_fit: self.w_fit,
            w_cost: self.w_cost,
            policy: self.policy.parse::<Policy>()?,
            priority_mode: self.priority_mode.parse::<PriorityMode>()?,
            priority_weights,
            aging_ms: in_range("aging_ms", self.aging_ms)?,
            prefetch_depth: in_range("prefetch_depth", self.prefetch_depth)?,
            warmup_successes: in_range("warmup_successes", self.warmup_successes)?,
            affinity_memory: in_range("affinity_memory", self.affinity_memory)?,
            explain_memory: in_range("explain_memory", self.explain_memory)?,
            locality_wait_ms: in_range("locality_wait_ms", self.locality_wait_ms)?,
        })
    }
}

/// A frozen Python class of named, read-only fields, built by the core and read by the caller,
/// with a repr like a dataclass's so a printed value reads as what it holds.
macro_rules! py_record {
    (
        $(#[$doc:meta])*
        $name:ident {
            $($(#[$field_doc:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$doc])*
        #[pyclass(module = "controlplane._core", frozen, get_all)]
        pub struct $name {
            $($(#[$field_doc])* $field: $ty,)*
        }

        #[pymethods]
        impl $name {
            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                let fields: Vec<String> = vec![$(
                    format!(
                        "{}={}",
                        stringify!($field),
                        self.$field.clone().into_bound_py_any(py)?.repr()?
                    ),
                )*];
                Ok(format!("{}({})", stringify!($name), fields.join(", ")))
            }
        }
    };
}

py_record! {
    /// What the core knows about one worker (see the stub for each field).
    WorkerStats {
        slots: u32,
        free_slots: u32,
        success_rate: f64,
        speed: f64,
        succeeded: u64,
        failed: u64,
        draining: bool,
        quarantined: bool,
        unhealthy_gpus: u32,
        held: u32,
        started: u32,
        prefetched: u32,
        effective_slots: u32,
        cost_per_hour: f64,
    }
}

impl From<EngineWorkerStats> for WorkerStats {
    fn from(s: EngineWorkerStats) -> WorkerStats {
        WorkerStats {
            slots: s.slots,
            free_slots: s.free_slots,
            success_rate: s.success_rate,
            speed: s.speed,
            succeeded: s.succeeded,
            failed: s.failed,
            draining: s.draining,
            quarantined: s.quarantined,
            unhealthy_gpus: s.unhealthy_gpus,
            held: s.held,
            started: s.started,
            prefetched: s.held.saturating_sub(s.started),
            effective_slots: s.effective_slots,
            cost_per_hour: s.cost_per_hour,
        }
    }
}

py_record! {
    /// Why a placed task went where it went (see the stub for each field).
    PlacementExplanation {
        policy: String,
        kind: String,
        worker: WorkerId,
        terms: Vec<(String, f64)>,
        score: Option<f64>,
        warm: bool,
        affinity: u64,
        hard_affinity: bool,
        runner_up: Option<WorkerId>,
        runner_up_score: Option<f64>,
    }
}

impl From<Explanation> for PlacementExplanation {
    fn from(e: Explanation) -> PlacementExplanation {
        PlacementExplanation {
            policy: e.policy.to_string(),
            kind: e.kind,
            worker: e.worker,
            terms: e
                .terms
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect(),
            score: e.score,
            warm: e.warm,
            affinity: e.affinity,
            hard_affinity: e.hard_affinity,
            runner_up: e.runner_up,
            runner_up_score: e.runner_up_score,
        }
    }
}

py_record! {
    /// Why a pending task is not running (see the stub for each field).
    PendingReason {
        reason: String,
        runtime_ms: Option<f64>,
        start_in_ms: Option<f64>,
        reserved_worker: Option<WorkerId>,
        reserved_gpus: Vec<u32>,
        reserved_free_in_ms: Option<f64>,
        no_estimate: bool,
    }
}

impl From<EnginePendingReason> for PendingReason {
    fn from(p: EnginePendingReason) -> PendingReason {
        let reservation = p.reservation;
        PendingReason {
            reason: p.reason,
            runtime_ms: p.eta.map(|e| e.runtime_ms),
            start_in_ms: p.eta.map(|e| e.start_in_ms),
            reserved_worker: reservation.as_ref().map(|r| r.worker),
            reserved_free_in_ms: reservation.as_ref().and_then(|r| r.free_in_ms),
            no_estimate: p.no_estimate,
            reserved_gpus: reservation.map(|r| r.gpus).unwrap_or_default(),
        }
    }
}

#[pyclass(name = "Scheduler", module = "controlplane._core", frozen)]
pub struct PyScheduler {
    engine: Mutex<Scheduler>,
}

impl PyScheduler {
    fn engine(&self) -> PyResult<MutexGuard<'_, Scheduler>> {
        // A poisoned lock means a panic mid-update: the state may be inconsistent, so refuse.
        self.engine
            .lock()
            .map_err(|_| CoreError::new_err("the scheduler is unusable after an internal panic"))
    }

    /// Run a long engine call with the GIL released.
    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Scheduler) -> Result<T, EngineError> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut engine = self.engine.lock().map_err(|_| {
                CoreError::new_err("the scheduler is unusable after an internal panic")
            })?;
            f(&mut engine).map_err(PyErr::from)
        })
    }
}

#[pymethods]
impl PyScheduler {
    #[new]
    #[pyo3(signature = (config = None))]
    fn new(py: Python<'_>, config: Option<ConfigArg>) -> PyResult<Self> {
        let config = match config {
            Some(config) => config,
            // The defaults live in the Python dataclass alone.
            None => py
                .import("controlplane.config")?
                .getattr("SchedulerConfig")?
                .call0()?
                .extract()?,
        };
        Ok(PyScheduler {
            engine: Mutex::new(Scheduler::new(config.into_engine()?)?),
        })
    }

    /// Intern a requirement shape and return its id (the same inputs give the same id).
    #[pyo3(
        signature = (kind, gpus, min_gpu_memory_mb, gpu_models, backend, labels, min_compute_capability, *, gpu_milli = 0, gpu_memory_mb = 0, runtime_class = String::new()),
        text_signature = "(self, /, kind, gpus, min_gpu_memory_mb, gpu_models, backend, labels, min_compute_capability, *, gpu_milli=0, gpu_memory_mb=0, runtime_class='')"
    )]
    #[allow(clippy::too_many_arguments)]
    fn shape(
        &self,
        kind: String,
        gpus: i64,
        min_gpu_memory_mb: i64,
        gpu_models: Vec<String>,
        backend: String,
        labels: Vec<String>,
        min_compute_capability: f64,
        gpu_milli: i64,
        gpu_memory_mb: i64,
        runtime_class: String,
    ) -> PyResult<ShapeId> {
        let spec = ShapeSpec {
            kind,
            gpus: in_range("gpus", gpus)?,
            min_gpu_memory_mb: in_range("min_gpu_memory_mb", min_gpu_memory_mb)?,
            gpu_models,
            backend,
            labels,
            min_compute_capability,
            gpu_milli: in_range("gpu_milli", gpu_milli)?,
            gpu_memory_mb: in_range("gpu_memory_mb", gpu_memory_mb)?,
            runtime_class,
        };
        Ok(self.engine()?.shape(spec)?)
    }

    /// Tasks of this shape are expected to take `ms` (0 = no estimate): predictions of its kind
    /// and runtime class use it until a run is learned.
    fn expect_runtime(&self, shape: ShapeId, ms: i64) -> PyResult<()> {
        let ms = in_range("expected_runtime_ms", ms)?;
        Ok(self.engine()?.expect_runtime(shape, ms)?)
    }

    /// Queue a task. Order: see the stub. timeout_ms 0 = none.
    #[pyo3(
        signature = (task, shape, priority, seq, timeout_ms, *, avoid_worker = None, tenant = 0, affinity = 0, hard_affinity = false, now_ms = None),
        text_signature = "(self, /, task, shape, priority, seq, timeout_ms, *, avoid_worker=None, tenant=0, affinity=0, hard_affinity=False, now_ms=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        task: TaskId,
        shape: ShapeId,
        priority: i64,
        seq: u64,
        timeout_ms: i64,
        avoid_worker: Option<i64>,
        tenant: i64,
        affinity: i64,
        hard_affinity: bool,
        now_ms: Option<i64>,
    ) -> PyResult<()> {
        let priority = in_range("priority", priority)?;
        let timeout_ms = in_range("timeout_ms", timeout_ms)?;
        let options = TaskOptions {
            avoid_worker: optional_in_range("avoid_worker", avoid_worker)?,
            tenant: in_range("tenant", tenant)?,
            affinity: in_range("affinity", affinity)?,
            hard_affinity,
            enqueued_ms: optional_in_range("now_ms", now_ms)?,
        };
        Ok(self
            .engine()?
            .push_with(task, shape, priority, seq, timeout_ms, options)?)
    }

    /// push() for many tasks in one call.
    #[pyo3(
        signature = (tasks, shapes, priorities, seqs, timeouts_ms, *, avoid_workers = None, tenants = None, affinities = None, hard_affinities = None, now_ms = None),
        text_signature = "(self, /, tasks, shapes, priorities, seqs, timeouts_ms, *, avoid_workers=None, tenants=None, affinities=None, hard_affinities=None, now_ms=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn push_many(
        &self,
        py: Python<'_>,
        tasks: Vec<TaskId>,
        shapes: Vec<ShapeId>,
        priorities: Vec<i64>,
        seqs: Vec<u64>,
        timeouts_ms: Vec<i64>,
        avoid_workers: Option<Vec<Option<i64>>>,
        tenants: Option<Vec<i64>>,
        affinities: Option<Vec<i64>>,
        hard_affinities: Option<Vec<bool>>,
        now_ms: Option<i64>,
    ) -> PyResult<()> {
        let n = tasks.len();
        let optional = [
            avoid_workers.as_ref().map(Vec::len),
            tenants.as_ref().map(Vec::len),
            affinities.as_ref().map(Vec::len),
            hard_affinities.as_ref().map(Vec::len),
        ];
        if [
            shapes.len(),
            priorities.len(),
            seqs.len(),
            timeouts_ms.len(),
        ]
        .iter()
        .chain(optional.iter().flatten())
        .any(|&l| l != n)
        {
            return Err(InvalidArgument::new_err(
                "push_many needs lists of one length",
            ));
        }
        let at =
            |v: &Option<Vec<i64>>, i: usize, default: i64| v.as_ref().map_or(default, |v| v[i]);
        let enqueued_ms = optional_in_range("now_ms", now_ms)?;
        let mut batch = Vec::with_capacity(n);
        for i in 0..n {
            let avoid_worker = avoid_workers.as_ref().and_then(|v| v[i]);
            let options = TaskOptions {
                avoid_worker: optional_in_range("avoid_worker", avoid_worker)?,
                tenant: in_range("tenant", at(&tenants, i, 0))?,
                affinity: in_range("affinity", at(&affinities, i, 0))?,
                hard_affinity: hard_affinities.as_ref().is_some_and(|h| h[i]),
                enqueued_ms,
            };
            batch.push((
                tasks[i],
                shapes[i],
                in_range("priority", priorities[i])?,
                seqs[i],
                in_range("timeout_ms", timeouts_ms[i])?,
                options,
            ));
        }
        self.detached(py, move |engine| engine.push_many_with(&batch))
    }

    /// Drop a pending task from the queue; False if it was not pending.
    fn remove(&self, task: TaskId) -> PyResult<bool> {
        Ok(self.engine()?.remove(task))
    }

    fn pending(&self) -> PyResult<usize> {
        Ok(self.engine()?.pending())
    }

    /// Queue depth for LOW, NORMAL, HIGH, URGENT.
    fn pending_by_priority(&self) -> PyResult<Vec<u64>> {
        Ok(self.engine()?.pending_by_priority().to_vec())
    }

    /// Register a worker; gpus are (memory_total_mb, compute_capability, name) by index.
    #[pyo3(signature = (slots, gpus, backend, labels, kinds, now_ms, *, cost_per_hour = 0.0))]
    #[allow(clippy::too_many_arguments)]
    fn add_worker(
        &self,
        slots: i64,
        gpus: Vec<(i64, f64, String)>,
        backend: String,
        labels: Vec<String>,
        kinds: Vec<String>,
        now_ms: u64,
        cost_per_hour: f64,
    ) -> PyResult<WorkerId> {
        let slots = in_range("slots", slots)?;
        let gpus = gpus
            .into_iter()
            .map(|(mb, cc, name)| {
                Ok(GpuSpec {
                    memory_total_mb: in_range("memory_total_mb", mb)?,
                    compute_capability: cc,
                    name,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(self.engine()?.add_worker_with(
            slots,
            gpus,
            &backend,
            labels,
            kinds,
            now_ms,
            cost_per_hour,
        )?)
    }

    /// Forget a worker; returns the tasks that were placed on it (no longer tracked).
    fn remove_worker(&self, worker: WorkerId) -> PyResult<Vec<TaskId>> {
        Ok(self.engine()?.remove_worker(worker)?)
    }

    /// Push the worker's liveness deadline to now_ms + heartbeat_timeout_ms.
    fn heartbeat(&self, worker: WorkerId, now_ms: u64) -> PyResult<()> {
        Ok(self.engine()?.heartbeat(worker, now_ms)?)
    }

    /// A draining worker keeps its tasks but receives no new ones.
    fn set_draining(&self, worker: WorkerId, draining: bool) -> PyResult<()> {
        Ok(self.engine()?.set_draining(worker, draining)?)
    }

    /// Let one worker hold `depth` tasks beyond its slots (prefetched; see SchedulerConfig).
    fn set_prefetch_depth(&self, worker: WorkerId, depth: u32) -> PyResult<()> {
        Ok(self.engine()?.set_prefetch_depth(worker, depth)?)
    }

    /// Like draining, but a separate flag (reputation quarantine); clear both to take work.
    fn set_quarantined(&self, worker: WorkerId, quarantined: bool) -> PyResult<()> {
        Ok(self.engine()?.set_quarantined(worker, quarantined)?)
    }

    /// Mark one GPU healthy or not; an unhealthy GPU is never given to a task.
    fn set_gpu_healthy(&self, worker: WorkerId, gpu_index: i64, healthy: bool) -> PyResult<()> {
        let gpu = in_range("gpu_index", gpu_index)?;
        Ok(self.engine()?.set_gpu_healthy(worker, gpu, healthy)?)
    }

    /// A tenant's share relative to other tenants (default 1).
    fn set_tenant_weight(&self, tenant: i64, weight: f64) -> PyResult<()> {
        let tenant = in_range("tenant", tenant)?;
        Ok(self.engine()?.set_tenant_weight(tenant, weight)?)
    }

    /// Cap the GPUs a tenant's placed tasks hold together (None = no cap): at its cap the
    /// tenant's tasks stay queued while other tenants' are placed.
    #[pyo3(signature = (tenant, max_gpus), text_signature = "(self, /, tenant, max_gpus)")]
    fn set_tenant_max_gpus(&self, tenant: i64, max_gpus: Option<i64>) -> PyResult<()> {
        let tenant = in_range("tenant", tenant)?;
        let max_gpus = optional_in_range("max_gpus", max_gpus)?;
        self.engine()?.set_tenant_max_gpus(tenant, max_gpus);
        Ok(())
    }

    /// (GPUs the tenant's placed tasks hold, its cap or None).
    fn tenant_gpus(&self, tenant: i64) -> PyResult<(u32, Option<u32>)> {
        let tenant = in_range("tenant", tenant)?;
        Ok(self.engine()?.tenant_gpus(tenant))
    }

    /// Count an attached task's GPUs against its tenant's cap (placed tasks are counted by
    /// place()); once per task.
    fn charge_tenant(&self, task: TaskId, tenant: i64) -> PyResult<()> {
        let tenant = in_range("tenant", tenant)?;
        Ok(self.engine()?.charge_tenant(task, tenant)?)
    }

    /// Place tasks of `kind` by `policy` (overrides the constructor's policy).
    fn set_kind_policy(&self, kind: &str, policy: &str) -> PyResult<()> {
        let policy = policy.parse::<Policy>()?;
        self.engine()?.set_kind_policy(kind, policy);
        Ok(())
    }

    /// Predicted runtime of a task of `shape` on `worker`, or None before any run of the kind.
    fn predict_runtime_ms(&self, shape: ShapeId, worker: WorkerId) -> PyResult<Option<f64>> {
        Ok(self.engine()?.predict_runtime_ms(shape, worker)?)
    }

    /// The agent started a placed task (its RUNNING update).
    #[pyo3(signature = (task, now_ms = None), text_signature = "(self, /, task, now_ms=None)")]
    fn mark_started(&self, task: TaskId, now_ms: Option<i64>) -> PyResult<()> {
        let now_ms = optional_in_range("now_ms", now_ms)?;
        Ok(self.engine()?.mark_started(task, now_ms)?)
    }

    /// (task, from_worker, to_worker) moves that let idle workers run prefetched work.
    #[pyo3(name = "steal_candidates", signature = (max))]
    fn steal_candidates(&self, max: i64) -> PyResult<Vec<(TaskId, WorkerId, WorkerId)>> {
        let max = usize::try_from(max).unwrap_or(0);
        Ok(self.engine()?.steal_candidates(max))
    }

    /// Why a placed task went where it went.
    fn explain_placement(&self, task: TaskId) -> PyResult<PlacementExplanation> {
        Ok(self.engine()?.explain_placement(task)?.into())
    }

    /// Everything the core knows about a worker.
    fn worker_stats(&self, worker: WorkerId) -> PyResult<WorkerStats> {
        Ok(self.engine()?.worker_stats(worker)?.into())
    }

    fn workers(&self) -> PyResult<usize> {
        Ok(self.engine()?.workers())
    }

    /// (total, free) over live, non-draining workers.
    fn slots(&self) -> PyResult<(u64, u64)> {
        Ok(self.engine()?.slots())
    }

    /// GPUs given to placed tasks: (held whole, split among shares, thousandths shares hold).
    fn gpu_allocation(&self) -> PyResult<(u64, u64, u64)> {
        Ok(self.engine()?.gpu_allocation())
    }

    /// Place up to max_tasks queued tasks: a sequence of (task, worker, gpu_indices), each
    /// made a tuple when read (see `placements`). Releases the GIL.
    fn place(&self, py: Python<'_>, now_ms: u64, max_tasks: i64) -> PyResult<PyPlacements> {
        // A negative max places nothing, like max_tasks=0.
        let max_tasks = usize::try_from(max_tasks).unwrap_or(0);
        let placements = self.detached(py, move |engine| Ok(engine.place(now_ms, max_tasks)))?;
        Ok(PyPlacements::new(placements))
    }

    /// Record a task already running on a worker (re-attached after a reconnect or restart).
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &self,
        task: TaskId,
        worker: WorkerId,
        gpu_indices: Vec<i64>,
        shape: ShapeId,
        timeout_ms: i64,
        now_ms: u64,
    ) -> PyResult<()> {
        let gpus = gpu_indices
            .into_iter()
            .map(|g| in_range("gpu index", g))
            .collect::<Result<Vec<u32>, EngineError>>()?;
        let timeout_ms = in_range("timeout_ms", timeout_ms)?;
        Ok(self
            .engine()?
            .attach(task, worker, &gpus, shape, timeout_ms, now_ms)?)
    }

    /// A placed task ended: free its slot and GPUs, learn from it; returns its worker.
    fn finish(&self, task: TaskId, succeeded: bool, runtime_ms: i64) -> PyResult<WorkerId> {
        // A clock step can make a measured runtime negative: treat it as unknown (no sample).
        let runtime_ms = u64::try_from(runtime_ms).unwrap_or(0);
        Ok(self.engine()?.finish(task, succeeded, runtime_ms)?)
    }

    /// A placed task left its worker without an outcome (cancelled, lost); returns the worker.
    fn release(&self, task: TaskId) -> PyResult<WorkerId> {
        Ok(self.engine()?.release(task)?)
    }

    /// Whether any connected worker could ever run tasks of this shape (its static filters).
    fn can_run(&self, shape: ShapeId) -> PyResult<bool> {
        Ok(self.engine()?.can_run(shape)?)
    }

    /// Why a pending task of this shape and priority is not running.
    fn explain(&self, shape: ShapeId, priority: i64) -> PyResult<PendingReason> {
        let priority = in_range("priority", priority)?;
        Ok(self.engine()?.explain(shape, priority)?.into())
    }

    /// The earliest heartbeat or task deadline, or None when nothing is tracked.
    fn next_deadline_ms(&self) -> PyResult<Option<u64>> {
        Ok(self.engine()?.next_deadline_ms())
    }

    /// When the earliest task the last place() left waiting for a warm worker stops waiting.
    fn next_locality_ms(&self) -> PyResult<Option<u64>> {
        Ok(self.engine()?.next_locality_ms())
    }

    /// (workers whose heartbeats stopped, placed tasks past their timeout) as of now_ms.
    fn expired(&self, now_ms: u64) -> PyResult<(Vec<WorkerId>, Vec<TaskId>)> {
        Ok(self.engine()?.expired(now_ms))
    }
}

/// Placement core of gpucp (Rust, PyO3): the queue, the worker table, placement and deadlines.
#[pymodule]
mod _core {
    #[pymodule_export]
    use super::{
        CoreError, InvalidArgument, PendingReason, PlacementExplanation, PyPlacements, PyScheduler,
        UnknownHandle, WorkerStats,
    };

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.setattr("__version__", env!("CARGO_PKG_VERSION"))?;
        // PyO3 fills in `__all__`; the hand-written stub is the module's declared surface (a
        // private module, imported by name), so drop it rather than keep two lists in sync.
        if m.hasattr("__all__")? {
            m.delattr("__all__")?;
        }
        Ok(())
    }
}
