from gpucp.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_VIEW_UNSPECIFIED: _ClassVar[TaskView]
    TASK_VIEW_BASIC: _ClassVar[TaskView]
    TASK_VIEW_FULL: _ClassVar[TaskView]
TASK_VIEW_UNSPECIFIED: TaskView
TASK_VIEW_BASIC: TaskView
TASK_VIEW_FULL: TaskView

class SubmitTaskRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.TaskSpec
    def __init__(self, spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ...) -> None: ...

class SubmitTaskResponse(_message.Message):
    __slots__ = ("task_id", "duplicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    duplicate: bool
    def __init__(self, task_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SubmitTasksRequest(_message.Message):
    __slots__ = ("specs",)
    SPECS_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskSpec]
    def __init__(self, specs: _Optional[_Iterable[_Union[_common_pb2.TaskSpec, _Mapping]]] = ...) -> None: ...

class SubmitTasksResponse(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class WaitTaskRequest(_message.Message):
    __slots__ = ("task_id", "timeout_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    timeout_ms: int
    def __init__(self, task_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class RunTaskRequest(_message.Message):
    __slots__ = ("spec", "timeout_ms")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.TaskSpec
    timeout_ms: int
    def __init__(self, spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.TaskState
    def __init__(self, state: _Optional[_Union[_common_pb2.TaskState, str]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("state", "tenant", "limit", "page_token", "kind", "view")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.TaskState
    tenant: str
    limit: int
    page_token: str
    kind: str
    view: TaskView
    def __init__(self, state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., tenant: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., kind: _Optional[str] = ..., view: _Optional[_Union[TaskView, str]] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchTasksRequest(_message.Message):
    __slots__ = ("task_ids", "tenant")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    tenant: str
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., tenant: _Optional[str] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("task_id", "state", "attempt", "worker_id", "at_ms", "progress", "error", "reason", "cause", "seq")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: _common_pb2.TaskState
    attempt: int
    worker_id: str
    at_ms: int
    progress: float
    error: str
    reason: str
    cause: str
    seq: int
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., at_ms: _Optional[int] = ..., progress: _Optional[float] = ..., error: _Optional[str] = ..., reason: _Optional[str] = ..., cause: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class GetTaskEventsRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskEventsResponse(_message.Message):
    __slots__ = ("events", "omitted")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OMITTED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TaskEvent]
    omitted: int
    def __init__(self, events: _Optional[_Iterable[_Union[TaskEvent, _Mapping]]] = ..., omitted: _Optional[int] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("open", "submit", "follow")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    submit: SessionSubmit
    follow: SessionFollow
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., submit: _Optional[_Union[SessionSubmit, _Mapping]] = ..., follow: _Optional[_Union[SessionFollow, _Mapping]] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("session_id", "events")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    events: bool
    def __init__(self, session_id: _Optional[str] = ..., events: _Optional[bool] = ...) -> None: ...

class SessionSubmit(_message.Message):
    __slots__ = ("seq", "specs", "follow", "resend", "trace_context", "answer_with_outcome_ms")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    RESEND_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_WITH_OUTCOME_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    specs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskSpec]
    follow: bool
    resend: bool
    trace_context: _containers.ScalarMap[str, str]
    answer_with_outcome_ms: int
    def __init__(self, seq: _Optional[int] = ..., specs: _Optional[_Iterable[_Union[_common_pb2.TaskSpec, _Mapping]]] = ..., follow: _Optional[bool] = ..., resend: _Optional[bool] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., answer_with_outcome_ms: _Optional[int] = ...) -> None: ...

class SessionFollow(_message.Message):
    __slots__ = ("seq", "task_ids")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("opened", "accepted", "rejected", "outcomes", "event")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    accepted: SessionAccepted
    rejected: SessionRejected
    outcomes: SessionOutcomes
    event: TaskEvent
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., accepted: _Optional[_Union[SessionAccepted, _Mapping]] = ..., rejected: _Optional[_Union[SessionRejected, _Mapping]] = ..., outcomes: _Optional[_Union[SessionOutcomes, _Mapping]] = ..., event: _Optional[_Union[TaskEvent, _Mapping]] = ...) -> None: ...

class SessionOutcomes(_message.Message):
    __slots__ = ("tasks", "accepted")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    accepted: _containers.RepeatedCompositeFieldContainer[SessionAccepted]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., accepted: _Optional[_Iterable[_Union[SessionAccepted, _Mapping]]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "max_outstanding")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    max_outstanding: int
    def __init__(self, session_id: _Optional[str] = ..., max_outstanding: _Optional[int] = ...) -> None: ...

class SessionAccepted(_message.Message):
    __slots__ = ("seq", "task_ids")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionRejected(_message.Message):
    __slots__ = ("seq", "code", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    code: int
    message: str
    def __init__(self, seq: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
