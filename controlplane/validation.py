"""Checks a submitted TaskSpec or an agent's Register and says, in one sentence, what is wrong."""

from __future__ import annotations

import math
import re

from controlplane.errors import InvalidArgument
from gpucp.limits import MAX_MESSAGE_BYTES, MAX_TASK_CONTENT_BYTES
from gpucp.v1 import common_pb2, workers_pb2

BACKENDS = ("", "cuda", "rocm", "cpu")
# Physical limits: a worker that claims more is lying (it would draw the work of a fleet).
MAX_GPUS = 32  # on one machine: what a Register may list and a task may ask for
MAX_GPU_MEMORY_MB = 1024 * 1024  # 1 TiB: several times any GPU made, below any typo in bytes
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_EXPECTED_RUNTIME_MS = 365 * 24 * 3600 * 1000
MAX_RETRIES = 100
MAX_TEXT = 256  # bytes (UTF-8) of a free-form string: keys, labels, names
MAX_ID = 128  # bytes of an id or a name: tenant, worker id
MAX_LABELS = 64
MAX_LABELS_BYTES = 16 * 1024  # all labels of a spec or a Register together
MAX_SLOTS = 4096
# A reconnecting agent lists what it still runs: its slots and what it queued beyond them.
MAX_RUNNING = 2 * MAX_SLOTS
# Matched with fullmatch: `$` would also match before a final newline ("noop\n").
_KIND = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_PRIORITIES = frozenset(common_pb2.Priority.values())
_WORD = re.compile(r"[^\W_]")  # a letter or a digit: what a word of a GPU model name is made of


def is_id(text: str) -> bool:
    """Whether `text` may name a tenant or a worker: 1-MAX_ID bytes, printable, no spaces (so
    that it can neither forge a log line nor hide in one)."""
    return 0 < len(text.encode()) <= MAX_ID and text.isprintable() and not any(c.isspace() for c in text)


def _text(name: str, value: str, limit: int = MAX_TEXT) -> None:
    size = len(value.encode())
    if size > limit:
        raise InvalidArgument(f"{name} is {size} bytes; the limit is {limit}")


def _labels(name: str, labels: list[str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(labels)} {name} given; the limit is {MAX_LABELS}")
    total = 0
    for label in labels:
        size = len(label.encode())
        if size > MAX_TEXT:
            raise InvalidArgument(f"{name} {label[:40]!r}... is {size} bytes; the limit is {MAX_TEXT}")
        total += size
    if total > MAX_LABELS_BYTES:
        raise InvalidArgument(f"{name} weigh {total} bytes together; the limit is {MAX_LABELS_BYTES}")


def validate_spec(spec: common_pb2.TaskSpec, *, max_payload_bytes: int) -> int:
    """Raise InvalidArgument naming the first problem with `spec`, if any; else its serialized size."""
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
    if spec.tenant and not is_id(spec.tenant):
        raise InvalidArgument(
            f"tenant {spec.tenant[:40]!r} is not a name: use 1-{MAX_ID} bytes of printable characters, no spaces"
        )
    _text("idempotency_key", spec.idempotency_key)
    _text("affinity_key", spec.affinity_key)
    _labels("labels", [text for pair in spec.labels.items() for text in pair])
    if spec.timeout_ms > MAX_TIMEOUT_MS:
        raise InvalidArgument(
            f"timeout_ms {spec.timeout_ms} is over the limit of {MAX_TIMEOUT_MS} (7 days)"
        )
    if spec.HasField("max_retries") and spec.max_retries > MAX_RETRIES:
        raise InvalidArgument(f"max_retries {spec.max_retries} is over the limit of {MAX_RETRIES}")
    if spec.expected_runtime_ms > MAX_EXPECTED_RUNTIME_MS:
        raise InvalidArgument(
            f"expected_runtime_ms {spec.expected_runtime_ms} is over a year ({MAX_EXPECTED_RUNTIME_MS} ms): "
            "the unit is milliseconds"
        )
    if spec.runtime_class and not _KIND.fullmatch(spec.runtime_class):
        raise InvalidArgument(
            f"runtime_class {spec.runtime_class[:140]!r} is not a class name: use 1-128 letters, digits, '_.:-'"
        )
    _validate_requirements(spec.requirements)
    return size


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
    _validate_share(req)
    if gpus == 0 and not req.gpu_milli and (memory_mb > 0 or models or cc > 0):
        raise InvalidArgument(
            "requirements describe GPUs (memory, model or compute capability) but gpus is 0: "
            "set gpus to how many the task needs"
        )
    if gpus > 0 and backend.lower() == "cpu":
        raise InvalidArgument(f"requirements ask for {gpus} GPUs on the 'cpu' backend, which has none")
    if not (models or labels):
        return
    _labels("requirements.labels", list(labels))
    _labels("requirements.gpu_models", list(models))
    for text in (*labels, *models):
        if not text:
            raise InvalidArgument("requirements labels and gpu_models must not be empty")
    for model in models:
        if not _WORD.search(model):
            # Models match whole words of a GPU's name: one without a word matches no GPU at all.
            raise InvalidArgument(
                f"requirements.gpu_models {model[:40]!r} names no model: give words of a GPU's name, e.g. 'A100'"
            )


def _validate_share(req: common_pb2.Requirements) -> None:
    milli, reserve_mb = req.gpu_milli, req.gpu_memory_mb
    if milli >= 1000:
        raise InvalidArgument(
            f"requirements.gpu_milli is {milli}: a share of one GPU is 1 to 999 thousandths; "
            "for whole GPUs leave it 0 and set gpus"
        )
    if milli and req.gpus > 1:
        raise InvalidArgument(
            f"requirements.gpu_milli asks for a share of one GPU, but gpus is {req.gpus}: "
            "ask for whole GPUs (gpu_milli 0) or for a share of one (gpus 0 or 1)"
        )
    if reserve_mb and not milli:
        raise InvalidArgument(
            "requirements.gpu_memory_mb reserves memory for a share of a GPU: set gpu_milli too, "
            "or use min_gpu_memory_mb for whole GPUs"
        )
    if reserve_mb > MAX_GPU_MEMORY_MB:
        raise InvalidArgument(
            f"requirements.gpu_memory_mb is {reserve_mb}: that is more than any GPU has (the unit is MiB)"
        )
    if milli and req.backend.lower() == "cpu":
        raise InvalidArgument("requirements ask for a share of a GPU on the 'cpu' backend, which has none")


def validate_register(reg: workers_pb2.Register) -> None:
    """Raise InvalidArgument naming the first problem with what an agent says it has, if any."""
    if not is_id(reg.worker_id):
        raise InvalidArgument(
            f"register.worker_id {reg.worker_id[:40]!r} is not a name: use 1-{MAX_ID} bytes of printable "
            "characters, no spaces"
        )
    if not 1 <= reg.slots <= MAX_SLOTS:
        raise InvalidArgument(f"register.slots is {reg.slots}; it must be 1-{MAX_SLOTS}")
    if len(reg.gpus) > MAX_GPUS:
        raise InvalidArgument(f"register lists {len(reg.gpus)} GPUs; the limit is {MAX_GPUS}")
    if sorted(g.index for g in reg.gpus) != list(range(len(reg.gpus))):
        raise InvalidArgument("register.gpus must be indexed 0..n-1, each index once")
    _labels("register.labels", list(reg.labels))
    _labels("register.kinds", list(reg.kinds))
    for kind in reg.kinds:
        if not _KIND.fullmatch(kind):
            raise InvalidArgument(
                f"register.kinds {kind[:40]!r} is not a handler name: use 1-128 letters, digits, '_.:-'"
            )
    for name, value in (("provider", reg.provider), ("backend", reg.backend), ("instance_id", reg.instance_id)):
        _text(f"register.{name}", value, MAX_ID)
    if len(reg.running) > MAX_RUNNING:
        raise InvalidArgument(f"register.running lists {len(reg.running)} tasks; the limit is {MAX_RUNNING}")
    for gpu in reg.gpus:
        _text(f"register.gpus[{gpu.index}].name", gpu.name)
        _text(f"register.gpus[{gpu.index}].uuid", gpu.uuid)
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
