//! What `place()` hands Python: the round's placements as the core made them, in one object.
//!
//! A batch of 20,000 placements as a list of tuples was 60,000 Python objects built while the
//! caller waited (a fifth of a batch's instructions), and the collector walked them, tracked,
//! again and again until they were dropped. Here a batch is one object over the core's own
//! vector; each placement becomes a tuple only when Python reads it, and a tuple read in a loop
//! is freed before the next one is made, so the allocator reuses it and the collector never
//! sees a crowd. Read in order or by index, each placement is `(task, worker, gpu_indices)`.

use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::scheduler::Placement;

/// The placements of one `place()` call, in the order they were made: a read-only sequence of
/// (task, worker, gpu_indices).
#[pyclass(name = "Placements", module = "controlplane._core", frozen, sequence)]
pub struct PyPlacements {
    items: Vec<Placement>,
}

impl PyPlacements {
    pub fn new(items: Vec<Placement>) -> Self {
        PyPlacements { items }
    }
}

/// One placement as Python sees it: (task, worker, gpu_indices).
fn as_tuple<'py>(py: Python<'py>, p: &Placement) -> PyResult<Bound<'py, PyTuple>> {
    let gpus = PyTuple::new(py, p.gpus.iter())?;
    (p.task, p.worker, gpus).into_pyobject(py)
}

#[pymethods]
impl PyPlacements {
    fn __len__(&self) -> usize {
        self.items.len()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, index: isize) -> PyResult<Bound<'py, PyTuple>> {
        // Negative indices count from the end, as in a list.
        let at = if index < 0 {
            index.checked_add_unsigned(self.items.len())
        } else {
            Some(index)
        };
        match at
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| self.items.get(at))
        {
            Some(p) => as_tuple(py, p),
            None => Err(PyIndexError::new_err(format!(
                "placement index {index} out of range: this round placed {}",
                self.items.len()
            ))),
        }
    }

    fn __iter__(slf: Py<Self>) -> PlacementsIter {
        PlacementsIter {
            placements: slf,
            next: AtomicUsize::new(0),
        }
    }

    fn __repr__(&self) -> String {
        let items: Vec<String> = self
            .items
            .iter()
            .map(|p| {
                let gpus: Vec<String> = p.gpus.iter().map(u32::to_string).collect();
                let comma = if gpus.len() == 1 { "," } else { "" };
                format!("({}, {}, ({}{comma}))", p.task, p.worker, gpus.join(", "))
            })
            .collect();
        format!("Placements([{}])", items.join(", "))
    }
}

/// Iterates a `Placements` in order.
#[pyclass(module = "controlplane._core", frozen)]
pub struct PlacementsIter {
    placements: Py<PyPlacements>,
    /// An atomic only because a frozen class may be shared; every call holds the GIL.
    next: AtomicUsize,
}

#[pymethods]
impl PlacementsIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let at = self.next.load(Ordering::Relaxed);
        let Some(p) = self.placements.get().items.get(at) else {
            return Ok(None);
        };
        self.next.store(at + 1, Ordering::Relaxed);
        as_tuple(py, p).map(Some)
    }
}
