"""Checks a submitted TaskSpec or an agent's Register and says, in one sentence, what is wrong."""

from __future__ import annotations

import math
import re

from controlplane.errors import InvalidArgument
from gpucp.limits import MAX_MESSAGE_BYTES, MAX_TASK_CONTENT_BYTES
from gpucp.v1 import common_pb2, workers_pb2

BACKENDS = ("", "cuda", "rocm", "cpu")
MAX_GPUS = 64  # on one worker: what a Register may list and a task may ask for
MAX_GPU_MEMORY_MB = 4 * 1024 * 1024  # 4 TiB: far above any GPU, below any typo in bytes
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_RETRIES = 100
MAX_TEXT = 256
MAX_LABELS = 64
MAX_SLOTS = 4096
# Matched with fullmatch: `$` would also match before a final newline ("noop\n").
_KIND = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_PRIORITIES = frozenset(common_pb2.Priority.values())
_WORD = re.compile(r"[^\W_]")  # a letter or a digit: what a word of a GPU model name is made of


def validate_spec(spec: common_pb2.TaskSpec, *, max_payload_bytes: int) -> None:
    """Raise InvalidArgument naming the first problem with `spec`, if any."""
    if not spec.kind:
        raise InvalidArgument("kind is empty: name the handler that should run the task, e.g. 'exec'")
    if not _KIND.fullmatch(spec.kind):
        raise InvalidArgument(
            f"kind {spec.kind[:140]!r} is not a handler name: use 1-128 letters, digits, '_.:-'"
        )
    if len(spec.payload) > max_payload_bytes:
        raise InvalidArgument(
            f"payload is {len(spec.payload)} bytes, over the limit of {max_payload_bytes} bytes: "
            "store large inputs elsewhere and pass a reference"
        )
    size = spec.ByteSize()
    if size > MAX_TASK_CONTENT_BYTES:
        # Payload alone may be under --max-payload while labels and the rest push the Task that
        # carries the spec (to an agent, in GetTask, in a list page) past the message limit.
        raise InvalidArgument(
            f"the spec is {size} bytes serialized, over the limit of {MAX_TASK_CONTENT_BYTES} bytes: every "
            f"message that carries the task must fit in {MAX_MESSAGE_BYTES} bytes; shrink the payload or "
            "labels and store large inputs elsewhere"
        )
    if spec.priority not in _PRIORITIES:
        names = ", ".join(common_pb2.Priority.keys())
        raise InvalidArgument(f"priority {spec.priority} is not one of {names}")
    for name, value in (
        ("tenant", spec.tenant),
        ("idempotency_key", spec.idempotency_key),
        ("affinity_key", spec.affinity_key),
    ):
        if len(value) > MAX_TEXT:
            raise InvalidArgument(f"{name} is {len(value)} characters; the limit is {MAX_TEXT}")
    if len(spec.labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(spec.labels)} labels given; the limit is {MAX_LABELS}")
    if spec.timeout_ms > MAX_TIMEOUT_MS:
        raise InvalidArgument(
            f"timeout_ms {spec.timeout_ms} is over the limit of {MAX_TIMEOUT_MS} (7 days)"
        )
    if spec.HasField("max_retries") and spec.max_retries > MAX_RETRIES:
        raise InvalidArgument(f"max_retries {spec.max_retries} is over the limit of {MAX_RETRIES}")
    _validate_requirements(spec.requirements)


def _validate_requirements(req: common_pb2.Requirements) -> None:
    gpus, memory_mb, cc = req.gpus, req.min_gpu_memory_mb, req.min_compute_capability
    models, labels = req.gpu_models, req.labels  # each read of a repeated field builds a view
    if gpus > MAX_GPUS:
        raise InvalidArgument(f"requirements.gpus is {gpus}; no worker has more than {MAX_GPUS} GPUs")
    if memory_mb > MAX_GPU_MEMORY_MB:
        raise InvalidArgument(
            f"requirements.min_gpu_memory_mb is {memory_mb}: that is more than any GPU "
            "has (the unit is MiB, not bytes)"
        )
    if not _is_compute_capability(cc):
        raise InvalidArgument(
            f"requirements.min_compute_capability {cc} is not a compute capability such as 8.0"
        )
    backend = req.backend
    if backend and backend.lower() not in BACKENDS:
        raise InvalidArgument(
            f"requirements.backend {backend[:40]!r} is not one of 'cuda', 'rocm', 'cpu' or empty"
        )
    if gpus == 0 and (memory_mb > 0 or models or cc > 0):
        raise InvalidArgument(
            "requirements describe GPUs (memory, model or compute capability) but gpus is 0: "
            "set gpus to how many the task needs"
        )
    if gpus > 0 and backend.lower() == "cpu":
        raise InvalidArgument(f"requirements ask for {gpus} GPUs on the 'cpu' backend, which has none")
    if not (models or labels):
        return
    if len(labels) > MAX_LABELS or len(models) > MAX_LABELS:
        raise InvalidArgument(f"requirements list more than {MAX_LABELS} labels or GPU models")
    for text in (*labels, *models):
        if not text or len(text) > MAX_TEXT:
            raise InvalidArgument(
                f"requirements labels and gpu_models must be 1-{MAX_TEXT} characters, got {text[:40]!r}"
            )
    for model in models:
        if not _WORD.search(model):
            # Models match whole words of a GPU's name: one without a word matches no GPU at all.
            raise InvalidArgument(
                f"requirements.gpu_models {model[:40]!r} names no model: give words of a GPU's name, e.g. 'A100'"
            )


def validate_register(reg: workers_pb2.Register) -> None:
    """Raise InvalidArgument naming the first problem with what an agent says it has, if any."""
    if not reg.worker_id or len(reg.worker_id) > 128:
        raise InvalidArgument("register.worker_id must be 1-128 characters")
    if not 1 <= reg.slots <= MAX_SLOTS:
        raise InvalidArgument(f"register.slots is {reg.slots}; it must be 1-{MAX_SLOTS}")
    if len(reg.gpus) > MAX_GPUS:
        raise InvalidArgument(f"register lists {len(reg.gpus)} GPUs; the limit is {MAX_GPUS}")
    if sorted(g.index for g in reg.gpus) != list(range(len(reg.gpus))):
        raise InvalidArgument("register.gpus must be indexed 0..n-1, each index once")
    for gpu in reg.gpus:
        if not _is_compute_capability(gpu.compute_capability):
            raise InvalidArgument(
                f"register.gpus[{gpu.index}].compute_capability is {gpu.compute_capability}; "
                "it must be a compute capability such as 8.0 (0: not known)"
            )
        if gpu.memory_total_mb > MAX_GPU_MEMORY_MB:
            raise InvalidArgument(
                f"register.gpus[{gpu.index}].memory_total_mb is {gpu.memory_total_mb}: more than any GPU "
                "has (the unit is MiB, not bytes)"
            )
    if not (math.isfinite(reg.cost_per_hour) and reg.cost_per_hour >= 0):
        raise InvalidArgument(
            f"register.cost_per_hour is {reg.cost_per_hour}; it must be a finite price >= 0 (0: not known)"
        )


def _is_compute_capability(cc: float) -> bool:
    return 0 <= cc <= 100  # NaN fails every comparison
