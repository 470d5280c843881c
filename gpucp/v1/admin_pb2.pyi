from gpucp.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClusterStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStats(_message.Message):
    __slots__ = ("workers", "slots_total", "slots_free", "tasks_by_state", "queue_depth_by_priority", "placements_per_second", "stale_updates")
    class TasksByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class QueueDepthByPriorityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    TASKS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_BY_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    STALE_UPDATES_FIELD_NUMBER: _ClassVar[int]
    workers: int
    slots_total: int
    slots_free: int
    tasks_by_state: _containers.ScalarMap[str, int]
    queue_depth_by_priority: _containers.ScalarMap[str, int]
    placements_per_second: float
    stale_updates: int
    def __init__(self, workers: _Optional[int] = ..., slots_total: _Optional[int] = ..., slots_free: _Optional[int] = ..., tasks_by_state: _Optional[_Mapping[str, int]] = ..., queue_depth_by_priority: _Optional[_Mapping[str, int]] = ..., placements_per_second: _Optional[float] = ..., stale_updates: _Optional[int] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "provider", "slots", "slots_free", "gpus", "backend", "labels", "kinds", "cost_per_hour", "health", "success_rate", "speed", "tasks_succeeded", "tasks_failed", "connected_at_ms", "last_heartbeat_ms", "gpu_stats")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    TASKS_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_STATS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    provider: str
    slots: int
    slots_free: int
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.Gpu]
    backend: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    cost_per_hour: float
    health: str
    success_rate: float
    speed: float
    tasks_succeeded: int
    tasks_failed: int
    connected_at_ms: int
    last_heartbeat_ms: int
    gpu_stats: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuStats]
    def __init__(self, worker_id: _Optional[str] = ..., provider: _Optional[str] = ..., slots: _Optional[int] = ..., slots_free: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.Gpu, _Mapping]]] = ..., backend: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[str]] = ..., cost_per_hour: _Optional[float] = ..., health: _Optional[str] = ..., success_rate: _Optional[float] = ..., speed: _Optional[float] = ..., tasks_succeeded: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., connected_at_ms: _Optional[int] = ..., last_heartbeat_ms: _Optional[int] = ..., gpu_stats: _Optional[_Iterable[_Union[_common_pb2.GpuStats, _Mapping]]] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
