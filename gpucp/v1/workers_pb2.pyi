from gpucp.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "update", "updates")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    update: TaskUpdate
    updates: TaskUpdates
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., update: _Optional[_Union[TaskUpdate, _Mapping]] = ..., updates: _Optional[_Union[TaskUpdates, _Mapping]] = ...) -> None: ...

class TaskUpdates(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[TaskUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[TaskUpdate, _Mapping]]] = ...) -> None: ...

class RunningTask(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("worker_id", "provider", "slots", "gpus", "backend", "labels", "kinds", "cost_per_hour", "running", "accepts_batches", "instance_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_BATCHES_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    provider: str
    slots: int
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.Gpu]
    backend: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    cost_per_hour: float
    running: _containers.RepeatedCompositeFieldContainer[RunningTask]
    accepts_batches: bool
    instance_id: str
    def __init__(self, worker_id: _Optional[str] = ..., provider: _Optional[str] = ..., slots: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.Gpu, _Mapping]]] = ..., backend: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[str]] = ..., cost_per_hour: _Optional[float] = ..., running: _Optional[_Iterable[_Union[RunningTask, _Mapping]]] = ..., accepts_batches: _Optional[bool] = ..., instance_id: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("gpus", "active", "draining")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuStats]
    active: int
    draining: bool
    def __init__(self, gpus: _Optional[_Iterable[_Union[_common_pb2.GpuStats, _Mapping]]] = ..., active: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class TaskUpdate(_message.Message):
    __slots__ = ("task_id", "attempt", "state", "result", "error", "progress", "task_error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TASK_ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    state: _common_pb2.TaskState
    result: bytes
    error: str
    progress: float
    task_error: bool
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ..., progress: _Optional[float] = ..., task_error: _Optional[bool] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("registered", "assign", "cancel", "drain", "assign_many", "undrain")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_MANY_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    assign: Assignment
    cancel: CancelAssignment
    drain: Drain
    assign_many: Assignments
    undrain: Undrain
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., assign: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[CancelAssignment, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., assign_many: _Optional[_Union[Assignments, _Mapping]] = ..., undrain: _Optional[_Union[Undrain, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("worker_id", "heartbeat_interval_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    heartbeat_interval_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("task", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class CancelAssignment(_message.Message):
    __slots__ = ("task_id", "attempt", "if_not_started")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    IF_NOT_STARTED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    if_not_started: bool
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., if_not_started: _Optional[bool] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Undrain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
