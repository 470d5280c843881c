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
    __slots__ = ("workers", "slots_total", "slots_free", "tasks_by_state", "queue_depth_by_priority", "placements_per_second", "stale_updates", "queue_depth_by_tenant")
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
    class QueueDepthByTenantEntry(_message.Message):
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
    QUEUE_DEPTH_BY_TENANT_FIELD_NUMBER: _ClassVar[int]
    workers: int
    slots_total: int
    slots_free: int
    tasks_by_state: _containers.ScalarMap[str, int]
    queue_depth_by_priority: _containers.ScalarMap[str, int]
    placements_per_second: float
    stale_updates: int
    queue_depth_by_tenant: _containers.ScalarMap[str, int]
    def __init__(self, workers: _Optional[int] = ..., slots_total: _Optional[int] = ..., slots_free: _Optional[int] = ..., tasks_by_state: _Optional[_Mapping[str, int]] = ..., queue_depth_by_priority: _Optional[_Mapping[str, int]] = ..., placements_per_second: _Optional[float] = ..., stale_updates: _Optional[int] = ..., queue_depth_by_tenant: _Optional[_Mapping[str, int]] = ...) -> None: ...

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

class UndrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class UndrainWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PodCost(_message.Message):
    __slots__ = ("pod_id", "pool", "worker_id", "gpu_type_id", "gpu_count", "cost_per_hour", "uptime_s", "cost", "state", "created_at_ms", "terminated_at_ms")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    pool: str
    worker_id: str
    gpu_type_id: str
    gpu_count: int
    cost_per_hour: float
    uptime_s: float
    cost: float
    state: str
    created_at_ms: int
    terminated_at_ms: int
    def __init__(self, pod_id: _Optional[str] = ..., pool: _Optional[str] = ..., worker_id: _Optional[str] = ..., gpu_type_id: _Optional[str] = ..., gpu_count: _Optional[int] = ..., cost_per_hour: _Optional[float] = ..., uptime_s: _Optional[float] = ..., cost: _Optional[float] = ..., state: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., terminated_at_ms: _Optional[int] = ...) -> None: ...

class PoolCost(_message.Message):
    __slots__ = ("pool", "gpu_type_id", "min_pods", "max_pods", "pods", "pods_starting", "pending_demand", "cost", "cost_per_hour")
    POOL_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_PODS_FIELD_NUMBER: _ClassVar[int]
    MAX_PODS_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    PODS_STARTING_FIELD_NUMBER: _ClassVar[int]
    PENDING_DEMAND_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    pool: str
    gpu_type_id: str
    min_pods: int
    max_pods: int
    pods: int
    pods_starting: int
    pending_demand: int
    cost: float
    cost_per_hour: float
    def __init__(self, pool: _Optional[str] = ..., gpu_type_id: _Optional[str] = ..., min_pods: _Optional[int] = ..., max_pods: _Optional[int] = ..., pods: _Optional[int] = ..., pods_starting: _Optional[int] = ..., pending_demand: _Optional[int] = ..., cost: _Optional[float] = ..., cost_per_hour: _Optional[float] = ...) -> None: ...

class TenantCost(_message.Message):
    __slots__ = ("tenant", "gpu_seconds", "cost", "attempts")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    gpu_seconds: float
    cost: float
    attempts: int
    def __init__(self, tenant: _Optional[str] = ..., gpu_seconds: _Optional[float] = ..., cost: _Optional[float] = ..., attempts: _Optional[int] = ...) -> None: ...

class CostReport(_message.Message):
    __slots__ = ("pods", "pools", "tenants", "total_cost", "total_cost_per_hour", "attributed_cost", "at_ms")
    PODS_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTED_COST_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[PodCost]
    pools: _containers.RepeatedCompositeFieldContainer[PoolCost]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantCost]
    total_cost: float
    total_cost_per_hour: float
    attributed_cost: float
    at_ms: int
    def __init__(self, pods: _Optional[_Iterable[_Union[PodCost, _Mapping]]] = ..., pools: _Optional[_Iterable[_Union[PoolCost, _Mapping]]] = ..., tenants: _Optional[_Iterable[_Union[TenantCost, _Mapping]]] = ..., total_cost: _Optional[float] = ..., total_cost_per_hour: _Optional[float] = ..., attributed_cost: _Optional[float] = ..., at_ms: _Optional[int] = ...) -> None: ...

class ListScalingEventsRequest(_message.Message):
    __slots__ = ("limit", "pool")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    limit: int
    pool: str
    def __init__(self, limit: _Optional[int] = ..., pool: _Optional[str] = ...) -> None: ...

class ScalingEvent(_message.Message):
    __slots__ = ("at_ms", "pool", "action", "from_pods", "to_pods", "pod_id", "message")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FROM_PODS_FIELD_NUMBER: _ClassVar[int]
    TO_PODS_FIELD_NUMBER: _ClassVar[int]
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    pool: str
    action: str
    from_pods: int
    to_pods: int
    pod_id: str
    message: str
    def __init__(self, at_ms: _Optional[int] = ..., pool: _Optional[str] = ..., action: _Optional[str] = ..., from_pods: _Optional[int] = ..., to_pods: _Optional[int] = ..., pod_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ListScalingEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ScalingEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ScalingEvent, _Mapping]]] = ...) -> None: ...
