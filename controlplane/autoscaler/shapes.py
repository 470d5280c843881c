"""Which pending tasks a pool's pods could run, decided by the placement core itself.

Tasks are grouped by shape (kind and requirements). Each pool has a private core with one worker
shaped like its pods; a shape fits the pool when that core would place it there. The answer per
shape is kept: a pool's pods do not change shape.
"""

from __future__ import annotations

from controlplane._core import Scheduler
from controlplane.autoscaler.config import PoolConfig
from controlplane.core import ShapeKey, core_shape
from gpucp.gpus import compute_capability_of

__all__ = ["PoolProbe", "describe_need"]


def describe_need(key: ShapeKey) -> str:
    """A shape's requirements in words: "1 GPU with >= 40 GB"."""
    kind, gpus, mem_mb, models, backend, labels, cc, milli, reserve_mb, _ = key
    words = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
    if milli:
        words = f"{milli / 1000:g} of a GPU" + (f" and {reserve_mb / 1024:g} GB of its memory" if reserve_mb else "")
    if mem_mb:
        words += f" with >= {mem_mb / 1024:g} GB"
    if models:
        words += f" of model {' or '.join(models)}"
    if cc:
        words += f", compute capability >= {cc:g}"
    if backend:
        words += f", backend {backend}"
    if labels:
        words += f", labels {','.join(labels)}"
    return words


class PoolProbe:
    """Answers "could a pod of this pool run a task of this shape?" with a private placement core."""

    def __init__(self, config: PoolConfig, gpu_memory_gb: int) -> None:
        name = config.gpu_name or config.gpu_type_id
        cc = config.compute_capability or compute_capability_of(name)
        self._core = Scheduler()
        self._core.add_worker(
            max(config.slots, config.gpu_count),
            [(gpu_memory_gb * 1024, cc, name)] * config.gpu_count,
            config.backend,
            [*config.labels, f"pool={config.name}"],
            list(config.kinds),
            0,
        )
        self._fits: dict[ShapeKey, bool] = {}
        self._seq = 0

    def fits(self, key: ShapeKey) -> bool:
        known = self._fits.get(key)
        if known is not None:
            return known
        self._seq += 1
        task = self._seq
        shape = core_shape(self._core, key)
        self._core.push(task, shape, 1, task, 0)
        fits = bool(self._core.place(0, 1))
        # Leave the probe worker empty for the next question.
        if fits:
            self._core.release(task)
        else:
            self._core.remove(task)
        self._fits[key] = fits
        return fits
