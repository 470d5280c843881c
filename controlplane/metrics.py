"""Prometheus metrics of one control plane, in a registry of its own.

Counters and histograms move where state changes: the task book's journal hears every task
event (submitted, placed, requeued, finished), and they are plain numbers until scraped. Gauges
are read when scraped from what the control plane already keeps (the book's counts, the core's
queue, the fleet's last heartbeats).

Label sets stay bounded whatever the fleet and the tenants: tenant and kind labels take the first
MAX_LABEL_VALUES values seen and then "other"; the per-GPU gauges (labelled by worker and GPU)
cover the first MAX_GPU_WORKERS workers in the order they joined, and
gpucp_gpu_workers_unreported says how many were left out (10,000 workers of 8 GPUs would be
240,000 series: more than a scrape should carry).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.book import PENDING, RUNNING, Cause, Event
from controlplane.record import TaskRecord
from gpucp.v1 import common_pb2

if TYPE_CHECKING:
    from controlplane.auth import Authority
    from controlplane.autoscaler import Autoscaler
    from controlplane.control import ControlPlane

MAX_LABEL_VALUES = 100
MAX_GPU_WORKERS = 1000
OTHER = "other"
# Seconds: from a few ms (a noop on loopback) to hours (a training run).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, float("inf"))
_REQUEUES = frozenset(
    {
        Cause.RETRYING,
        Cause.REQUEUED_WORKER_LOST,
        Cause.REQUEUED_HANDED_BACK,
        Cause.REQUEUED_ORPHAN,
        Cause.REQUEUED_STORE_FAILED,
    }
)


def _names(enum: type, prefix: str) -> dict[int, str]:
    return {value: name.removeprefix(prefix).lower() for name, value in enum.items()}  # type: ignore[attr-defined]


STATE_NAMES = _names(common_pb2.TaskState, "TASK_STATE_")
PRIORITY_NAMES = _names(common_pb2.Priority, "PRIORITY_")


class Capped:
    """A label's values: the first `limit` seen are themselves, every later one is OTHER."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


class _Histogram:
    """Counts by bucket and a sum: what a Prometheus histogram shows, kept as plain numbers."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value


class Metrics:
    """The counters and histograms, moved by every task event; rendered with the gauges when scraped.

    Plain integers, not prometheus_client's Counter and Histogram: every task makes four events,
    and a labelled prometheus_client metric costs a lock and a lookup of its child per update.
    """

    def __init__(self, cp: ControlPlane, authority: Authority | None = None) -> None:
        self.cp = cp
        self.authority = authority  # its refusals are counted; None: no credentials are checked
        self.autoscaler: Autoscaler | None = None  # set by the server when it runs with --autoscale
        self.tenant = Capped()
        self.kind = Capped()
        self.submitted: collections.Counter[tuple[str, str]] = collections.Counter()  # (tenant, priority)
        self.finished: collections.Counter[tuple[str, str]] = collections.Counter()  # (tenant, state)
        self.requeues: collections.Counter[str] = collections.Counter()  # by cause
        self.placements = 0
        self.wait: dict[str, _Histogram] = {}  # by kind
        self.run: dict[str, _Histogram] = {}
        # What each cause moves; plain str keys, as events carry their cause.
        self._on: dict[str, Callable[[TaskRecord, Event], None]] = {
            str(Cause.ASSIGNED): self._assigned,
            str(Cause.SUBMITTED): self._submitted,
            str(Cause.FINISHED): self._finished,
            **{str(cause): self._requeued for cause in _REQUEUES},
        }
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Counts(self))
        self.registry.register(_Gauges(self))
        cp.book.journal(self.record)

    def record(self, rec: TaskRecord, event: Event) -> None:
        """One task event: move the counters and histograms it concerns."""
        on = self._on.get(event.cause)
        if on is not None:
            on(rec, event)

    def _assigned(self, rec: TaskRecord, event: Event) -> None:
        self.placements += 1
        if rec.attempt == 1:
            self._histogram(self.wait, rec).observe(max(0, event.at_ms - rec.created_at_ms) / 1000)

    def _submitted(self, rec: TaskRecord, event: Event) -> None:
        self.submitted[(self.tenant(rec.tenant), PRIORITY_NAMES.get(rec.spec.priority, "normal"))] += 1

    def _finished(self, rec: TaskRecord, event: Event) -> None:
        self.finished[(self.tenant(rec.tenant), STATE_NAMES[rec.state])] += 1
        if rec.started_at_ms:
            self._histogram(self.run, rec).observe(max(0, rec.finished_at_ms - rec.started_at_ms) / 1000)

    def _requeued(self, rec: TaskRecord, event: Event) -> None:
        self.requeues[event.cause] += 1

    def _histogram(self, by_kind: dict[str, _Histogram], rec: TaskRecord) -> _Histogram:
        kind = self.kind(rec.spec.kind)
        found = by_kind.get(kind)
        if found is None:
            found = by_kind[kind] = _Histogram()
        return found

    @staticmethod
    def bucket_totals(by_kind: dict[str, _Histogram]) -> tuple[int, ...]:
        """A histogram's (self.wait's or self.run's) counts by bucket, every kind summed."""
        return tuple(map(sum, zip(*(h.counts for h in by_kind.values()), strict=True))) or (0,) * len(BUCKETS)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Counts(Collector):
    """The counters and histograms as Prometheus families."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        for name, doc, labels, values in (
            ("gpucp_tasks_submitted", "Tasks accepted", ["tenant", "priority"], m.submitted),
            ("gpucp_tasks_finished", "Tasks that ended, by final state", ["tenant", "state"], m.finished),
        ):
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, n in sorted(values.items()):
                family.add_metric(list(key), n)
            yield family
        family = CounterMetricFamily("gpucp_requeues", "Tasks sent back to the queue, by cause", labels=["reason"])
        for cause, n in sorted(m.requeues.items()):
            family.add_metric([cause], n)
        yield family
        yield CounterMetricFamily("gpucp_placements", "Attempts placed on a worker", value=m.placements)
        family = CounterMetricFamily("gpucp_auth_refused", "Calls refused for their credential, by reason",
                                     labels=["reason"])
        for reason, n in sorted((m.authority.refused if m.authority is not None else {}).items()):
            family.add_metric([reason.value], n)
        yield family
        for name, doc, by_kind in (
            ("gpucp_task_wait_seconds", "From submission to the first placement", m.wait),
            ("gpucp_task_run_seconds", "From the last attempt's placement to the end", m.run),
        ):
            histogram = HistogramMetricFamily(name, doc, labels=["kind"])
            for kind, h in sorted(by_kind.items()):
                cumulative = list(itertools.accumulate(h.counts))
                buckets = [(_le(bound), n) for bound, n in zip(BUCKETS, cumulative, strict=True)]
                histogram.add_metric([kind], buckets, sum_value=h.total)
            yield histogram


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Gauges(Collector):
    """The gauges, read at scrape time from what the control plane keeps anyway."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        cp = self.m.cp
        pending = GaugeMetricFamily("gpucp_tasks_pending", "Tasks in the queue, by priority class", labels=["priority"])
        for i, n in enumerate(cp.core.scheduler.pending_by_priority()):
            pending.add_metric([PRIORITY_NAMES[i + 1]], n)
        yield pending
        yield GaugeMetricFamily("gpucp_tasks_running", "Tasks placed on a worker (assigned or running)",
                                value=cp.book.counts[RUNNING] + cp.book.counts[common_pb2.TASK_STATE_ASSIGNED])
        yield GaugeMetricFamily("gpucp_tasks_waiting", "Unfinished tasks not on a worker (queued or backing off)",
                                value=cp.book.counts[PENDING])
        yield from self._allocation()
        yield from self._fleet()
        yield from self._pods()

    def _allocation(self) -> Iterator[Metric]:
        whole, split, milli = self.m.cp.core.scheduler.gpu_allocation()
        family = GaugeMetricFamily("gpucp_gpus_allocated", "GPUs given to placed tasks: held whole, or split "
                                   "among tasks that asked for a share (gpu_milli)", labels=["how"])
        family.add_metric(["whole"], whole)
        family.add_metric(["shared"], split)
        yield family
        yield GaugeMetricFamily("gpucp_gpu_shares_allocated", "GPUs' worth of compute the placed shares hold "
                                "(the sum of their gpu_milli over 1000)", value=milli / 1000)

    def _fleet(self) -> Iterator[Metric]:
        fleet = self.m.cp.fleet
        now = time.monotonic()
        workers = {"connected": 0, "draining": 0, "quarantined": 0, "disconnected": 0}
        gpus: dict[tuple[str, str], int] = {}
        util = GaugeMetricFamily("gpucp_gpu_utilization_ratio", "GPU utilization at the last heartbeat (0 to 1)",
                                 labels=["worker", "gpu"])
        memory = GaugeMetricFamily("gpucp_gpu_memory_used_bytes", "GPU memory in use at the last heartbeat",
                                   labels=["worker", "gpu"])
        temperature = GaugeMetricFamily("gpucp_gpu_temperature_celsius", "GPU temperature at the last heartbeat",
                                        labels=["worker", "gpu"])
        reported = 0
        for conn in fleet.workers.values():
            workers[fleet.state(conn, now)] += 1
            for gpu in conn.register.gpus:
                key = (gpu.name, "healthy" if conn.gpu_health.get(gpu.index, True) else "unhealthy")
                gpus[key] = gpus.get(key, 0) + 1
            if conn.gpu_stats and reported < MAX_GPU_WORKERS:
                reported += 1
                for stats in conn.gpu_stats:
                    labels = [conn.worker_id, str(stats.index)]
                    util.add_metric(labels, stats.utilization / 100)
                    memory.add_metric(labels, stats.memory_used_mb * 1024 * 1024)
                    temperature.add_metric(labels, stats.temperature_c)
        family = GaugeMetricFamily("gpucp_workers", "Connected workers, by state", labels=["state"])
        for state, n in workers.items():
            family.add_metric([state], n)
        yield family
        yield CounterMetricFamily("gpucp_workers_lost", "Workers lost without draining (silent, or gone past the "
                                  "reconnect grace)", value=fleet.lost_total)
        family = GaugeMetricFamily("gpucp_gpus", "GPUs of connected workers, by model and health",
                                   labels=["model", "state"])
        for (model, state), n in sorted(gpus.items()):
            family.add_metric([model, state], n)
        yield family
        yield util
        yield memory
        yield temperature
        with_stats = sum(1 for conn in fleet.workers.values() if conn.gpu_stats)
        yield GaugeMetricFamily("gpucp_gpu_workers_unreported",
                                f"Workers whose GPU gauges are left out (only the first {MAX_GPU_WORKERS} are shown)",
                                value=with_stats - reported)

    def _pods(self) -> Iterator[Metric]:
        autoscaler = self.m.autoscaler
        if autoscaler is None:
            return
        report = autoscaler.cost_report()
        pods: dict[tuple[str, str], int] = {}
        for pod in report.pods:
            pods[(pod.pool, pod.state)] = pods.get((pod.pool, pod.state), 0) + 1
        family = GaugeMetricFamily("gpucp_pods", "Autoscaled pods, by pool and state", labels=["pool", "state"])
        for (pool_name, state), n in sorted(pods.items()):
            family.add_metric([pool_name, state], n)
        yield family
        # Per pool, what an alert needs to tell "at its maximum with tasks still waiting for it".
        for name, doc, field in (
            ("gpucp_pool_pods", "Pods a pool counts toward its size (starting or serving)", "pods"),
            ("gpucp_pool_max_pods", "A pool's maximum number of pods", "max_pods"),
            ("gpucp_pool_pending_demand", "Pending tasks given to a pool at the autoscaler's last look",
             "pending_demand"),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["pool"])
            for pool in report.pools:
                gauge.add_metric([pool.pool], getattr(pool, field))
            yield gauge
        # The cost report splits spend by pool and, apart, by tenant (not by both): a pool's spend
        # is under tenant "", a tenant's under pool "".
        spend: dict[tuple[str, str], float] = {}
        for pool in report.pools:
            spend[(pool.pool, "")] = pool.cost
        for tenant in report.tenants:
            key = ("", self.m.tenant(tenant.tenant))
            spend[key] = spend.get(key, 0.0) + tenant.cost
        cost = CounterMetricFamily("gpucp_cost_dollars", "Dollars spent on pods so far", labels=["pool", "tenant"])
        for labels, dollars in sorted(spend.items()):
            cost.add_metric(list(labels), dollars)
        yield cost
