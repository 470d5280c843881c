"""A task's trace: the client's span (in-memory exporter), then the control plane's and the agent's
(real processes exporting over OTLP/HTTP to a collector at the edge), one trace, parent to child."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cluster import ROOT, ControlPlaneProcess, _env, eventually
from gpucp import AsyncClient, Client
from gpucp.testing import LocalCluster
from gpucp.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]


class Collector:
    """An OTLP/HTTP trace receiver on loopback: what the control plane and agents export, decoded."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        collector = self

        class Receive(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
                    )
                    for scope in resource_spans.scope_spans:
                        collector.spans.extend(
                            Span(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                 {a.key: str(a.value.string_value or a.value.int_value) for a in s.attributes})
                            for s in scope.spans
                        )
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name: str, trace_id: str) -> Span | None:
        return next((s for s in self.spans if s.name == name and s.trace_id == trace_id), None)


@pytest.fixture(scope="module")
def client_spans() -> InMemorySpanExporter:
    """This process's spans: the client's side of the trace."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # set once per process; later modules add to it
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[LocalCluster, Collector]]:
    collector = Collector()
    # Exported every 100 ms instead of every 5 s: the test reads them soon after.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with LocalCluster(ControlPlaneProcess(tmp_path, env=env)) as cluster:
        cluster.add_agent("w1")
        yield cluster, collector
    collector.server.shutdown()
    collector.server.server_close()


def the_trace(collector: Collector, client_span: Span) -> list[Span]:
    """The control plane's and the agent's spans of the task, once all three were exported, in order."""
    tid = client_span.trace_id

    def found() -> list[Span] | None:
        spans = [collector.named(n, tid) for n in ("gpucp.submit", "gpucp.queue", "gpucp.run")]
        return [s for s in spans if s is not None] if all(spans) else None

    return eventually(found, 20, f"the spans of trace {tid}: got {[(s.service, s.name) for s in collector.spans]}")


# A Client submits on its Session stream (the context in each submit message), or with unary
# calls (the context in the call's metadata).
@pytest.mark.parametrize(("session", "client_span_name"), [
    (True, "gpucp.v1.Scheduler/Session"), (False, "gpucp.v1.Scheduler/RunTask"),
])
def test_a_task_is_one_trace_from_the_client_through_the_control_plane_to_the_agent(
    traced: tuple[LocalCluster, Collector], client_spans: InMemorySpanExporter, session: bool, client_span_name: str
) -> None:
    cluster, collector = traced
    client_spans.clear()
    with Client(cluster.address, session=session) as client:
        task = client.run("noop", "traced", wait_s=30)
        assert task.state == common_pb2.TASK_STATE_SUCCEEDED
    [sent] = [s for s in client_spans.get_finished_spans() if s.name == client_span_name]
    client_span = Span("client", sent.name, f"{sent.context.trace_id:032x}", f"{sent.context.span_id:016x}", "", {})
    submit, queue, run = the_trace(collector, client_span)
    assert (submit.service, queue.service, run.service) == ("gpucp-controlplane", "gpucp-controlplane", "gpucp-agent")
    # Each hop is the child of the one before it: the context crossed gRPC metadata, then the Assignment.
    assert submit.parent_id == client_span.span_id
    assert queue.parent_id == submit.span_id
    assert run.parent_id == queue.span_id
    assert run.attributes["gpucp.task_id"] == task.id and run.attributes["gpucp.worker_id"] == "w1"
    assert queue.attributes["gpucp.attempt"] == "1"


def test_the_async_client_starts_the_trace_too(
    traced: tuple[LocalCluster, Collector], client_spans: InMemorySpanExporter
) -> None:
    cluster, collector = traced
    client_spans.clear()

    async def submit_and_wait() -> list[str]:
        async with AsyncClient(cluster.address) as client:
            ids = await client.submit_many([common_pb2.TaskSpec(kind="noop"), common_pb2.TaskSpec(kind="noop")])
            await client.gather(ids, timeout_s=30)
            return ids

    ids = asyncio.run(submit_and_wait())
    [sent] = [s for s in client_spans.get_finished_spans() if s.name == "gpucp.v1.Scheduler/SubmitTasks"]
    tid = f"{sent.context.trace_id:032x}"
    # One submission of two tasks: both run in its trace.
    runs = eventually(
        lambda: sorted(s.attributes["gpucp.task_id"] for s in collector.spans if s.name == "gpucp.run"
                       and s.trace_id == tid) == sorted(ids),
        20, "both tasks' runs in the submission's trace",
    )
    assert runs


def test_an_untraced_submission_adds_no_spans_downstream(
    traced: tuple[LocalCluster, Collector], client_spans: InMemorySpanExporter
) -> None:
    cluster, collector = traced
    # A bare stub sends no trace context: the control plane and the agent start no trace of their own.
    request = scheduler_pb2.RunTaskRequest(spec=common_pb2.TaskSpec(kind="noop"), timeout_ms=30_000)
    with grpc.insecure_channel(cluster.address) as channel:
        untraced = scheduler_pb2_grpc.SchedulerStub(channel).RunTask(request, timeout=40)
    client_spans.clear()
    with Client(cluster.address) as client:
        marker = client.run("noop", wait_s=30)  # traced, and run after it on the same agent
    eventually(
        lambda: any(s.attributes.get("gpucp.task_id") == marker.id for s in collector.spans if s.name == "gpucp.run"),
        20, "the traced task's run span",
    )
    assert not [s for s in collector.spans if s.attributes.get("gpucp.task_id") == untraced.id]


# A service with no tracer provider of its own that carries a trace it was handed (from the
# request it serves, say): its run() makes no span, and the control plane's spans join that trace.
# In a process of its own: this one set a provider for the tests above.
UPSTREAM_TRACE, UPSTREAM_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
_CARRIED = f"""
import sys
from opentelemetry import context, propagate
from gpucp import Client
context.attach(propagate.extract({{"traceparent": "00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"}}))
with Client(sys.argv[1]) as client:
    print(client.run("noop", wait_s=30).id)
"""


def test_a_run_without_a_tracer_provider_carries_the_trace_it_is_in(
    traced: tuple[LocalCluster, Collector],
) -> None:
    cluster, collector = traced
    done = subprocess.run(
        [sys.executable, "-c", _CARRIED, cluster.address], env=_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, f"the run failed: {done.stderr}"
    submit = eventually(lambda: collector.named("gpucp.submit", UPSTREAM_TRACE), 20,
                        f"the control plane's submit span in the carried trace: got {collector.spans}")
    assert submit.parent_id == UPSTREAM_SPAN, "the submit span is not a child of the span the caller was in"
    run = eventually(lambda: collector.named("gpucp.run", UPSTREAM_TRACE), 20, "the agent's run span in that trace")
    assert run.attributes["gpucp.task_id"] == done.stdout.strip()
