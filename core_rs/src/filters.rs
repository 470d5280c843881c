//! The hard filters and GPU choice: whether a worker could ever run a shape (kind, backend,
//! labels, which GPUs qualify by memory, model and compute capability) and which of its GPUs a
//! task gets now. The static part only changes when workers join or leave, so the placement
//! index (`shape_index`) runs it once per (worker, shape); GPU choice runs per placement.

use smallvec::SmallVec;

use crate::demand::{free_gpus, Demand};
use crate::gpu_names;
use crate::shapes::Shape;
use crate::workers::{Gpu, Worker};

/// The GPU indices one task gets, sorted. Inline up to four, so finding and recording a placement
/// allocates nothing for the usual task.
pub type Gpus = SmallVec<[u32; 4]>;

/// A share of one GPU a task asks for: thousandths of its compute and MiB of its memory kept
/// for it. `milli` 0 = whole GPUs (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Share {
    pub milli: u32,
    pub memory_mb: u64,
}

/// A GPU's compute in thousandths: what the shares on one GPU sum to at most.
pub const WHOLE_MILLI: u32 = 1000;

impl Share {
    pub fn is_whole(self) -> bool {
        self.milli == 0
    }

    /// Can this share go on `gpu` now: healthy, no task holds it whole, and the shares on it
    /// stay within its compute and their reservations within its memory.
    pub fn fits(self, gpu: &Gpu) -> bool {
        gpu.healthy
            && gpu.holders == 0
            && gpu.milli + self.milli <= WHOLE_MILLI
            && gpu.reserved_mb + self.memory_mb <= gpu.memory_total_mb
    }
}

/// Does this GPU meet the shape's per-GPU requirements?
pub fn gpu_qualifies(shape: &Shape, gpu: &Gpu) -> bool {
    let min_cc = shape.min_compute_capability();
    gpu.memory_total_mb >= shape.min_gpu_memory_mb.max(shape.share.memory_mb)
        && (min_cc <= 0.0 || gpu.compute_capability >= min_cc)
        && (shape.gpu_models.is_empty()
            || shape
                .gpu_models
                .iter()
                .any(|m| gpu_names::matches(&gpu.name_words, m)))
}

/// Do two GPUs look the same to `gpu_qualifies`?
fn same_model(a: &Gpu, b: &Gpu) -> bool {
    a.memory_total_mb == b.memory_total_mb
        && a.compute_capability == b.compute_capability
        && a.name_words == b.name_words
}

/// The static filter. Some(qualifying GPU indices, smallest memory first) if the worker could
/// ever run the shape; None if it never can.
pub fn static_fit(shape: &Shape, w: &Worker) -> Option<Box<[u32]>> {
    if !w.accepts_kind(&shape.kind)
        || !(shape.backend.is_empty() || shape.backend == w.backend)
        || !w.has_labels(&shape.labels)
    {
        return None;
    }
    if shape.gpus == 0 {
        return Some(Box::default());
    }
    // A worker's GPUs are mostly of one model: a GPU like the one before it has its verdict,
    // which spares a name search per GPU when an index is built over the fleet.
    let mut last: Option<(&Gpu, bool)> = None;
    // Sized for every GPU at once: a filter's collect grows from nothing, a reallocation per
    // doubling, for each (shape, worker) an index build checks.
    let mut qualifying: Vec<u32> = Vec::with_capacity(w.gpus.len());
    qualifying.extend((0..w.gpus.len() as u32).filter(|&i| {
        let gpu = &w.gpus[i as usize];
        match last {
            Some((before, verdict)) if same_model(before, gpu) => verdict,
            _ => {
                let verdict = gpu_qualifies(shape, gpu);
                last = Some((gpu, verdict));
                verdict
            }
        }
    }));
    if qualifying.len() < shape.gpus as usize {
        return None;
    }
    // Smallest first keeps the big GPUs free for the tasks that need them.
    qualifying.sort_by_key(|&i| (w.gpus[i as usize].memory_total_mb, i));
    Some(qualifying.into_boxed_slice())
}

/// Pick `n` healthy GPUs from `qualifying` (ordered smallest memory first): free ones first,
/// then, with prefetch, ones held by fewer than 1 + depth tasks (least held first); sorted
/// indices, or None if fewer than `n` can be had. Without prefetch: only free GPUs. Whole GPUs
/// are never ones that shares use. A share gets one GPU, see `choose_share` (`packing`).
pub fn choose_gpus(
    w: &Worker,
    qualifying: &[u32],
    n: u32,
    share: Share,
    packing: Option<&Demand>,
) -> Option<Gpus> {
    choose_gpus_where(w, qualifying, n, share, packing, |_| true)
}

/// choose_gpus() among the qualifying GPUs that `allowed` accepts.
pub fn choose_gpus_where(
    w: &Worker,
    qualifying: &[u32],
    n: u32,
    share: Share,
    packing: Option<&Demand>,
    allowed: impl Fn(u32) -> bool,
) -> Option<Gpus> {
    if !share.is_whole() {
        let g = choose_share(w, qualifying, share, packing, allowed)?;
        return Some(smallvec::smallvec![g]);
    }
    let mut chosen = Gpus::with_capacity(n as usize);
    for level in 0..=w.prefetch_depth {
        for &i in qualifying {
            if chosen.len() == n as usize {
                break;
            }
            let gpu = &w.gpus[i as usize];
            if gpu.healthy && gpu.holders == level && gpu.milli == 0 && allowed(i) {
                chosen.push(i);
            }
        }
    }
    if chosen.len() < n as usize {
        return None;
    }
    chosen.sort_unstable();
    Some(chosen)
}

/// The GPU a share goes on, of the qualifying GPUs it fits (see `Share::fits`): with the recent
/// demand (`packing`, the fragmentation policy), the one where it costs the demand least (see
/// `Demand::share_lost`: a rest the shares in demand can use beats a smaller one they cannot);
/// then, and without it, the one its shares already fill most (the first of those in
/// `qualifying` order), so shares pack onto GPUs already split and whole GPUs stay free for
/// whole tasks. Shares are never prefetched: a share placed on a GPU runs beside the others
/// there at once.
pub fn choose_share(
    w: &Worker,
    qualifying: &[u32],
    share: Share,
    packing: Option<&Demand>,
    allowed: impl Fn(u32) -> bool,
) -> Option<u32> {
    let free = packing.map_or(0, |_| free_gpus(w));
    let cost = |used: u32| {
        packing.map_or(0.0, |d| {
            d.share_lost(free, used, share.milli, w.shapes.iter().map(|&(s, _)| s))
        })
    };
    let mut best: Option<(u32, f64, u32)> = None;
    for &i in qualifying {
        let gpu = &w.gpus[i as usize];
        if !(share.fits(gpu) && allowed(i)) {
            continue;
        }
        let c = cost(gpu.milli);
        if best.is_none_or(|(_, bc, bm)| c < bc || (c == bc && gpu.milli > bm)) {
            best = Some((i, c, gpu.milli));
        }
    }
    best.map(|(i, _, _)| i)
}

/// choose_gpus().is_some() without building the list.
pub fn has_gpus(w: &Worker, qualifying: &[u32], n: u32, share: Share) -> bool {
    if !share.is_whole() {
        return qualifying.iter().any(|&i| share.fits(&w.gpus[i as usize]));
    }
    let limit = 1 + w.prefetch_depth;
    qualifying
        .iter()
        .filter(|&&i| {
            let gpu = &w.gpus[i as usize];
            gpu.healthy && gpu.holders < limit && gpu.milli == 0
        })
        .take(n as usize)
        .count()
        == n as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fit;
    use crate::shapes::{ShapeSpec, ShapeTable};
    use crate::workers::GpuSpec;
    use smallvec::smallvec;

    fn gpu(mb: u64, cc: f64, name: &str) -> GpuSpec {
        GpuSpec {
            memory_total_mb: mb,
            compute_capability: cc,
            name: name.into(),
        }
    }

    fn shape(spec: ShapeSpec) -> Shape {
        let mut table = ShapeTable::default();
        let id = table.intern(spec).unwrap();
        table.get(id).unwrap().clone()
    }

    #[test]
    fn smallest_sufficient_gpus_are_chosen() {
        let w = Worker::new(
            4,
            vec![
                gpu(81920, 9.0, "H100"),
                gpu(24576, 8.6, "A10"),
                gpu(40960, 8.0, "A100"),
                gpu(49152, 8.9, "L40S"),
            ],
            "cuda",
            vec![],
            vec![],
        )
        .unwrap();
        let s = shape(ShapeSpec {
            gpus: 1,
            min_gpu_memory_mb: 40000,
            ..ShapeSpec::default()
        });
        let q = static_fit(&s, &w).unwrap();
        assert_eq!(&*q, &[2, 3, 0], "qualifying GPUs, smallest memory first");
        assert_eq!(
            choose_gpus(&w, &q, 1, Share::default(), None),
            Some(smallvec![2])
        );
        assert_eq!(
            choose_gpus(&w, &q, 2, Share::default(), None),
            Some(smallvec![2, 3])
        );
        let two = shape(ShapeSpec {
            gpus: 2,
            gpu_models: vec!["h100".into(), "A10".into()],
            ..ShapeSpec::default()
        });
        // "A10" names the A10 only, not the A100 (whole words of the name).
        assert_eq!(&*static_fit(&two, &w).unwrap(), &[1, 0]);
        let cc = shape(ShapeSpec {
            gpus: 2,
            min_compute_capability: 8.9,
            ..ShapeSpec::default()
        });
        assert_eq!(&*static_fit(&cc, &w).unwrap(), &[3, 0]);
        let too_many = shape(ShapeSpec {
            gpus: 3,
            min_compute_capability: 8.9,
            ..ShapeSpec::default()
        });
        assert!(static_fit(&too_many, &w).is_none());
    }

    #[test]
    fn busy_gpus_are_skipped() {
        let mut w = Worker::new(
            2,
            vec![gpu(16, 8.0, "a"), gpu(32, 8.0, "b")],
            "",
            vec![],
            vec![],
        )
        .unwrap();
        w.gpus[0].holders = 1;
        assert_eq!(
            choose_gpus(&w, &[0, 1], 1, Share::default(), None),
            Some(smallvec![1])
        );
        assert_eq!(choose_gpus(&w, &[0, 1], 2, Share::default(), None), None);
    }

    #[test]
    fn static_filter_checks_kind_backend_labels() {
        let w = Worker::new(
            1,
            vec![],
            "CUDA",
            vec!["zone=eu".into(), "ssd".into()],
            vec!["infer".into()],
        )
        .unwrap();
        let ok = shape(ShapeSpec {
            kind: "infer".into(),
            backend: "cuda".into(),
            labels: vec!["ssd".into()],
            ..ShapeSpec::default()
        });
        assert!(static_fit(&ok, &w).is_some());
        let kind = shape(ShapeSpec {
            kind: "train".into(),
            ..ShapeSpec::default()
        });
        assert!(static_fit(&kind, &w).is_none());
        let backend = shape(ShapeSpec {
            kind: "infer".into(),
            backend: "rocm".into(),
            ..ShapeSpec::default()
        });
        assert!(static_fit(&backend, &w).is_none());
        let labels = shape(ShapeSpec {
            kind: "infer".into(),
            labels: vec!["zone=us".into()],
            ..ShapeSpec::default()
        });
        assert!(static_fit(&labels, &w).is_none());
        let any = Worker::new(1, vec![], "", vec![], vec![]).unwrap();
        assert!(
            static_fit(&kind, &any).is_some(),
            "a worker with no kinds runs every kind"
        );
    }

    #[test]
    fn small_tasks_fit_small_workers_better() {
        let small = Worker::new(1, vec![gpu(16384, 8.0, "T4")], "", vec![], vec![]).unwrap();
        let big = Worker::new(1, vec![gpu(81920, 9.0, "H100")], "", vec![], vec![]).unwrap();
        let eight = Worker::new(8, vec![gpu(16384, 8.0, "T4"); 8], "", vec![], vec![]).unwrap();
        let cpu = Worker::new(8, vec![], "", vec![], vec![]).unwrap();
        let one = shape(ShapeSpec {
            gpus: 1,
            min_gpu_memory_mb: 12000,
            ..ShapeSpec::default()
        });
        let f = |w: &Worker| fit(&one, w, &static_fit(&one, w).unwrap());
        assert!(f(&small) > f(&big), "16 GB GPU fits a 12 GB task better");
        assert!(
            f(&small) > f(&eight),
            "a 1-GPU box fits a 1-GPU task better"
        );
        let etl = shape(ShapeSpec::default());
        assert!(
            fit(&etl, &cpu, &[]) > fit(&etl, &small, &[]),
            "CPU work off GPU boxes"
        );
    }
}
