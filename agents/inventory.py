"""Simulated GPU inventory: GPUs described by a short spec, for tests, demos and benches."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from gpucp.gpus import COMPUTE_CAPABILITY
from gpucp.v1 import common_pb2

__all__ = ["parse_gpus", "simulated_gpu_stats"]

_EXPECTED_FORMAT = (
    "expected comma-separated entries of the form [COUNTx]MODEL-MEMGB, "
    'e.g. "2xA100-80GB,1xT4-16GB"'
)
_ENTRY = re.compile(r"^(?:(?P<count>\d+)\s*x\s*)?(?P<model>[A-Za-z0-9]+)-(?P<mem>\d+)\s*GB$", re.IGNORECASE)
# A worker with more simulated GPUs than this is almost certainly a typo.
_MAX_GPUS = 1024


def parse_gpus(spec: str, worker_id: str = "sim") -> list[common_pb2.Gpu]:
    """Return the simulated GPUs a spec such as "2xA100-80GB,1xT4-16GB" describes.

    GPUs are indexed 0..n-1 in the order given; an empty spec means no GPUs.
    Raises ValueError naming the expected format or the known models.
    """
    known = {model.upper(): model for model in COMPUTE_CAPABILITY}
    gpus: list[common_pb2.Gpu] = []
    if not spec.strip():
        return gpus
    for raw in spec.split(","):
        entry = raw.strip()
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"bad GPU spec entry {entry!r}: {_EXPECTED_FORMAT}.")
        count = int(match["count"]) if match["count"] is not None else 1
        model = known.get(match["model"].upper())
        memory_gb = int(match["mem"])
        if model is None:
            raise ValueError(
                f"unknown GPU model {match['model']!r} in {entry!r}; "
                f"known models: {', '.join(COMPUTE_CAPABILITY)}."
            )
        if count < 1 or memory_gb < 1:
            raise ValueError(f"bad GPU spec entry {entry!r}: count and memory must be at least 1; {_EXPECTED_FORMAT}.")
        if len(gpus) + count > _MAX_GPUS:
            raise ValueError(f"GPU spec {spec!r} describes more than {_MAX_GPUS} GPUs.")
        for _ in range(count):
            index = len(gpus)
            memory_mb = memory_gb * 1024
            gpus.append(
                common_pb2.Gpu(
                    index=index,
                    uuid=f"GPU-sim-{worker_id}-{index}",
                    name=f"NVIDIA {model} {memory_gb}GB",
                    memory_total_mb=memory_mb,
                    memory_free_mb=memory_mb,
                    compute_capability=COMPUTE_CAPABILITY[model],
                    mig=False,
                )
            )
    return gpus


def simulated_gpu_stats(gpus: Sequence[common_pb2.Gpu], busy: Iterable[int]) -> list[common_pb2.GpuStats]:
    """Return plausible stats for simulated GPUs: the ones in `busy` work hard, the others idle.

    Utilization is in percent (0-100), as nvidia-smi and NVML report it.
    """
    busy_set = set(busy)
    stats = []
    for gpu in gpus:
        working = gpu.index in busy_set
        stats.append(
            common_pb2.GpuStats(
                index=gpu.index,
                utilization=95.0 if working else 0.0,
                memory_used_mb=gpu.memory_total_mb * 6 // 10 if working else 0,
                temperature_c=70.0 if working else 35.0,
                power_w=300.0 if working else 50.0,
                healthy=True,
            )
        )
    return stats
