"""A spec the control plane accepts fits in every message that later carries it, and no larger one is accepted."""

from __future__ import annotations

import grpc
import pytest

from gpucp import GpucpError, task_spec
from gpucp.limits import MAX_MESSAGE_BYTES, MAX_TASK_CONTENT_BYTES
from gpucp.v1 import common_pb2

# Payloads up to the whole bound: the spec's size, not the payload's, is what these tests reach.
WHOLE_BOUND = pytest.mark.parametrize("controlplane", [("--max-payload", str(MAX_TASK_CONTENT_BYTES))], indirect=True)


def spec_of_size(size: int) -> common_pb2.TaskSpec:
    """A sleep-0 spec whose serialized size is exactly `size`, made large by its payload and a
    few labels (each label is bounded on its own)."""
    spec = task_spec("sleep", b"0", task_labels={f"label-{i}": "x" * 200 for i in range(10)})
    filler = size - spec.ByteSize()
    # The payload's length prefix grows with it: shrink the filler until the total is exact.
    while True:
        spec.payload = b"0" + b" " * filler  # JSON: zero seconds, then white space
        over = spec.ByteSize() - size
        if over == 0:
            return spec
        filler -= over


@WHOLE_BOUND
def test_a_spec_over_the_bound_is_refused_with_its_size_and_the_limit(client):
    # Payload under --max-payload, labels filling the rest: before the bound, such a spec was
    # accepted and its Assignment, once the control plane added its fields, broke the agent's stream.
    spec = spec_of_size(MAX_TASK_CONTENT_BYTES + 1)
    with pytest.raises(GpucpError) as info:
        client.submit_spec(spec)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    message = info.value.message
    assert f"the spec is {MAX_TASK_CONTENT_BYTES + 1} bytes" in message, message
    assert f"limit of {MAX_TASK_CONTENT_BYTES} bytes" in message, message
    assert str(MAX_MESSAGE_BYTES) in message, message
    assert list(client.list()) == [], "a refused spec left a task behind"


@WHOLE_BOUND
def test_a_spec_at_the_bound_runs_and_reads_back_in_one_message(client, start_agent):
    spec = spec_of_size(MAX_TASK_CONTENT_BYTES)
    task_id = client.submit_spec(spec)
    # Its Assignment, with everything the control plane adds, reaches the agent in one message.
    start_agent("big-1")
    task = client.wait(task_id, 60)
    assert task.state == common_pb2.TASK_STATE_SUCCEEDED, f"{common_pb2.TaskState.Name(task.state)}: {task.error}"
    assert task.attempt == 1, f"the agent's stream broke and the task was requeued: {list(task.attempt_errors)}"
    assert task.spec.payload == spec.payload and task.spec.labels == spec.labels
    assert [t.id for t in client.list()] == [task_id]
