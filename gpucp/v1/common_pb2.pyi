from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
    PRIORITY_URGENT: _ClassVar[Priority]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_ASSIGNED: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]
    TASK_STATE_TIMED_OUT: _ClassVar[TaskState]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LOW: Priority
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority
PRIORITY_URGENT: Priority
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_ASSIGNED: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState
TASK_STATE_TIMED_OUT: TaskState

class Requirements(_message.Message):
    __slots__ = ("gpus", "min_gpu_memory_mb", "gpu_models", "backend", "labels", "min_compute_capability", "gpu_milli", "gpu_memory_mb")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MIN_GPU_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    GPU_MODELS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MIN_COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    GPU_MILLI_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    gpus: int
    min_gpu_memory_mb: int
    gpu_models: _containers.RepeatedScalarFieldContainer[str]
    backend: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    min_compute_capability: float
    gpu_milli: int
    gpu_memory_mb: int
    def __init__(self, gpus: _Optional[int] = ..., min_gpu_memory_mb: _Optional[int] = ..., gpu_models: _Optional[_Iterable[str]] = ..., backend: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., min_compute_capability: _Optional[float] = ..., gpu_milli: _Optional[int] = ..., gpu_memory_mb: _Optional[int] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("kind", "payload", "priority", "tenant", "requirements", "timeout_ms", "max_retries", "idempotency_key", "affinity_key", "labels", "hard_affinity", "expected_runtime_ms", "runtime_class")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HARD_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_RUNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_CLASS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    payload: bytes
    priority: Priority
    tenant: str
    requirements: Requirements
    timeout_ms: int
    max_retries: int
    idempotency_key: str
    affinity_key: str
    labels: _containers.ScalarMap[str, str]
    hard_affinity: bool
    expected_runtime_ms: int
    runtime_class: str
    def __init__(self, kind: _Optional[str] = ..., payload: _Optional[bytes] = ..., priority: _Optional[_Union[Priority, str]] = ..., tenant: _Optional[str] = ..., requirements: _Optional[_Union[Requirements, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., max_retries: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., affinity_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., hard_affinity: _Optional[bool] = ..., expected_runtime_ms: _Optional[int] = ..., runtime_class: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "spec", "state", "attempt", "worker_id", "result", "error", "pending_reason", "created_at_ms", "started_at_ms", "finished_at_ms", "gpu_indices", "attempt_errors", "placement", "progress")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: TaskSpec
    state: TaskState
    attempt: int
    worker_id: str
    result: bytes
    error: str
    pending_reason: str
    created_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    attempt_errors: _containers.RepeatedScalarFieldContainer[str]
    placement: str
    progress: float
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ..., pending_reason: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., attempt_errors: _Optional[_Iterable[str]] = ..., placement: _Optional[str] = ..., progress: _Optional[float] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("index", "uuid", "name", "memory_total_mb", "memory_free_mb", "compute_capability", "mig")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_MB_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    MIG_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_free_mb: int
    compute_capability: float
    mig: bool
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., memory_total_mb: _Optional[int] = ..., memory_free_mb: _Optional[int] = ..., compute_capability: _Optional[float] = ..., mig: _Optional[bool] = ...) -> None: ...

class GpuStats(_message.Message):
    __slots__ = ("index", "utilization", "memory_used_mb", "temperature_c", "power_w", "healthy")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_MB_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    index: int
    utilization: float
    memory_used_mb: int
    temperature_c: float
    power_w: float
    healthy: bool
    def __init__(self, index: _Optional[int] = ..., utilization: _Optional[float] = ..., memory_used_mb: _Optional[int] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., healthy: _Optional[bool] = ...) -> None: ...
