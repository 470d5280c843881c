"""The live dashboard at `/` of the HTTP listener: a page, its assets, and the JSON it reads.

The page (static/, plain HTML, CSS and JS, served from the package: no CDN, no build step) holds
no data; everything it shows comes from endpoints behind the same bearer tokens as the rest of the
HTTP API. A token the user types in once stays in the tab's sessionStorage and goes in an
Authorization header; the live feed is read with fetch streaming rather than EventSource, which
cannot send headers.

- `/api/v1/dashboard/stream`: server-sent events. `summary` every TICK_S (fleet and GPU counts,
  queue by priority and tenant, task counts, wait and run percentiles over the last hour, the
  autoscaler's pools, pods, spend and decisions); `history` once at the start (the last hour of
  samples) and `sample` each time one is taken. A principal holds at most
  MAX_STREAMS_PER_PRINCIPAL streams (a few tabs), the listener MAX_STREAMS.
- `/api/v1/dashboard/workers`: the fleet a page at a time, filtered by state and id, each worker
  with its GPUs' last heartbeat. Recently lost workers are listed as "lost".
- Tasks, a task's events, placement and pending reason: the JSON API's own endpoints (web.py).

Who sees what: a summary needs `read`, and shows a reader the queues of its own tenants only; the
fleet, the cluster-wide counts, the history and the autoscaler need `admin.read`, as /api/v1/stats
and /api/v1/workers do.

The history is a ring of HISTORY samples taken every SAMPLE_S (one hour), kept here so the page
works without Prometheus. A sample holds the counters' running totals, so a rate or a percentile
over the window is the difference between its newest and oldest samples.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.message import Message

from controlplane.auth import ROLES, Permission, Principal
from controlplane.book import ASSIGNED, PENDING, RUNNING
from controlplane.control import ControlPlane
from controlplane.errors import InvalidArgument, ResourceExhausted, Unavailable
from controlplane.fleet import WorkerConn
from controlplane.metrics import BUCKETS, PRIORITY_NAMES, STATE_NAMES, Metrics
from controlplane.notify import wall_ms

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}  # served under /dashboard/
SAMPLE_S = 10.0
HISTORY = 360  # samples: one hour
TICK_S = 1.0
POLL_S = 0.1
MAX_STREAMS_PER_PRINCIPAL = 4
MAX_STREAMS = 64
MAX_TENANTS_SHOWN = 20
MAX_PODS_SHOWN = 200
MAX_SCALING_EVENTS = 50
WORKER_STATES = ("connected", "draining", "quarantined", "disconnected", "lost")
QUANTILES = (0.5, 0.9, 0.99)

Caller = Callable[[web.Request, Permission], Principal]
AsDict = Callable[[Message], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Sample:
    """The control plane at one moment: queues now, counters as running totals."""

    at_ms: int
    pending_by_priority: dict[str, int]
    pending_by_tenant: dict[str, int]  # the MAX_TENANTS_SHOWN longest queues
    submitted: int
    finished: int
    wait: tuple[int, ...]  # bucket counts (BUCKETS), every kind summed
    run: tuple[int, ...]

    def point(self, before: Sample | None) -> dict[str, Any]:
        """The sample as the page plots it: queues, and rates since the sample `before`."""
        seconds = (self.at_ms - before.at_ms) / 1000 if before is not None else 0.0
        submitted = finished = 0.0
        if before is not None and seconds > 0:
            submitted = round((self.submitted - before.submitted) / seconds, 3)
            finished = round((self.finished - before.finished) / seconds, 3)
        return {
            "at_ms": self.at_ms,
            "pending_by_priority": self.pending_by_priority,
            "pending_by_tenant": self.pending_by_tenant,
            "submitted_per_s": submitted,
            "finished_per_s": finished,
        }


class Dashboard:
    def __init__(
        self, cp: ControlPlane, metrics: Metrics, caller: Caller, limit: Callable[[web.Request], int], as_dict: AsDict
    ) -> None:
        """`caller`, `limit` and `as_dict` are the JSON API's (web.py): who asks, a page's size, a message as JSON."""
        self.cp = cp
        self.metrics = metrics
        self.caller = caller
        self.limit = limit
        self.as_dict = as_dict
        self.samples: collections.deque[Sample] = collections.deque(maxlen=HISTORY)
        self.streams: collections.Counter[str] = collections.Counter()  # open streams by principal
        self.closing = asyncio.Event()
        self._sampler: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page),
            web.get("/dashboard/{name}", self.asset),
            web.get("/api/v1/dashboard/stream", self.stream),
            web.get("/api/v1/dashboard/workers", self.workers),
        ]

    def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample_every(SAMPLE_S), name="dashboard-sampler")

    async def stop(self) -> None:
        """End every stream (an open page would otherwise hold the listener's shutdown) and sampling."""
        self.closing.set()
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)

    # -- the page -------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.FileResponse:
        # No token asked: the page holds no data, and a browser cannot send one to open it.
        return web.FileResponse(STATIC / "index.html", headers=_STATIC_HEADERS)

    async def asset(self, request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={**_STATIC_HEADERS, "Content-Type": ASSETS[name]})

    # -- the history ----------------------------------------------------------------------------

    async def _sample_every(self, seconds: float) -> None:
        while True:
            self.samples.append(self.sample())
            await asyncio.sleep(seconds)

    def sample(self) -> Sample:
        m = self.metrics
        tenants = self.cp.book.pending_by_tenant.most_common(MAX_TENANTS_SHOWN)
        return Sample(
            at_ms=wall_ms(),
            pending_by_priority=self._pending_by_priority(),
            pending_by_tenant={t: n for t, n in tenants if n > 0},
            submitted=sum(m.submitted.values()),
            finished=sum(m.finished.values()),
            wait=m.bucket_totals(m.wait),
            run=m.bucket_totals(m.run),
        )

    def _pending_by_priority(self) -> dict[str, int]:
        by_prio = self.cp.core.scheduler.pending_by_priority()
        return {PRIORITY_NAMES[i + 1]: n for i, n in enumerate(by_prio)}

    def history(self) -> list[dict[str, Any]]:
        samples = list(self.samples)
        return [s.point(samples[i - 1] if i else None) for i, s in enumerate(samples)]

    def percentiles(self) -> dict[str, dict[str, float | None]]:
        """Wait and run time quantiles (seconds) of the tasks placed or finished in the last hour
        (since start, before the ring is full); None where no task counts."""
        oldest = self.samples[0] if self.samples else None
        out = {}
        m = self.metrics
        for name, now in (("wait", m.bucket_totals(m.wait)), ("run", m.bucket_totals(m.run))):
            then = getattr(oldest, name) if oldest is not None else (0,) * len(BUCKETS)
            counts = [a - b for a, b in zip(now, then, strict=True)]
            out[name] = {f"p{round(q * 100)}": _quantile(counts, q) for q in QUANTILES} | {"count": sum(counts)}
        return out

    # -- the live feed --------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        principal = self.caller(request, Permission.READ)
        if self.closing.is_set():
            raise Unavailable("the control plane is shutting down: reload the page in a moment")
        if self.streams[principal.name] >= MAX_STREAMS_PER_PRINCIPAL:
            raise ResourceExhausted(
                f"{principal.name} has {MAX_STREAMS_PER_PRINCIPAL} dashboard streams open already: "
                "close a dashboard tab and reload"
            )
        if self.streams.total() >= MAX_STREAMS:
            raise ResourceExhausted(f"the dashboard serves at most {MAX_STREAMS} live pages at once: try again later")
        admin = _may(principal, Permission.ADMIN_READ)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        self.streams[principal.name] += 1
        try:
            await response.prepare(request)
            seen = self.samples[-1].at_ms if self.samples else 0
            if admin:
                await response.write(_event("history", self.history()))
            while True:
                await response.write(_event("summary", self.summary(principal, admin)))
                if admin and self.samples and self.samples[-1].at_ms != seen:
                    newest = list(itertools.islice(reversed(self.samples), 2))
                    seen = newest[0].at_ms
                    await response.write(_event("sample", newest[0].point(newest[1] if len(newest) > 1 else None)))
                if not await self._pause(request):
                    break
        except ConnectionError:
            pass  # the page went away
        finally:
            self.streams[principal.name] -= 1
            if not self.streams[principal.name]:
                del self.streams[principal.name]
        return response

    async def _pause(self, request: web.Request) -> bool:
        """Wait for the next summary; False once the page has gone or the control plane closes.

        A page that went away is noticed within POLL_S (its connection is gone), not only when the
        next write fails: a reloaded page would otherwise count against its principal's streams
        for up to a tick, and a few quick reloads would be refused."""
        for _ in range(round(TICK_S / POLL_S)):
            if self.closing.is_set() or request.transport is None:
                return False
            await asyncio.sleep(POLL_S)
        return True

    def summary(self, principal: Principal, admin: bool) -> dict[str, Any]:
        """What the page shows outside its tables; `admin`: the principal may see the cluster."""
        book = self.cp.book
        tenants = [(t, n) for t, n in book.pending_by_tenant.items() if n > 0 and principal.sees(t)]
        tenants.sort(key=lambda tn: (-tn[1], tn[0]))
        out: dict[str, Any] = {
            "at_ms": wall_ms(),
            "principal": {"name": principal.name, "role": principal.role},
            "queue_by_tenant": dict(tenants[:MAX_TENANTS_SHOWN]),
            "tenants_waiting": len(tenants),
            # Changes whenever a task changes state or place: the page reloads its task table then.
            "version": self._version(),
            "admin": admin,
        }
        if admin:
            out |= {
                "fleet": self.fleet(),
                "tasks_by_state": {STATE_NAMES[s]: n for s, n in book.counts.items() if n > 0},
                "queue_by_priority": self._pending_by_priority(),
                "placements_per_second": round(self.cp.dispatcher.placements_per_second(), 1),
                "percentiles": self.percentiles(),
                "autoscaler": self.autoscaler(),
            }
        return out

    def _version(self) -> str:
        m = self.metrics
        counts = self.cp.book.counts
        parts = (m.placements, sum(m.finished.values()), sum(m.submitted.values()), sum(m.requeues.values()),
                 counts[PENDING], counts[ASSIGNED], counts[RUNNING])
        return ".".join(map(str, parts))

    def fleet(self) -> dict[str, Any]:
        fleet = self.cp.fleet
        now = time.monotonic()
        states = dict.fromkeys(WORKER_STATES, 0)
        gpus = unhealthy = slots = free = 0
        util_sum = 0.0
        mem_used = mem_total = 0
        stats_of = self.cp.core.scheduler.worker_stats
        for conn in fleet.workers.values():
            states[fleet.state(conn, now)] += 1
            stats = stats_of(conn.handle)
            slots += stats.slots
            free += stats.free_slots
            gpus += len(conn.register.gpus)
            unhealthy += sum(1 for ok in conn.gpu_health.values() if not ok)
            mem_total += sum(g.memory_total_mb for g in conn.register.gpus)
            for s in conn.gpu_stats:
                util_sum += s.utilization
                mem_used += s.memory_used_mb
        states["lost"] = sum(1 for w, _, _ in fleet.lost_recently if w not in fleet.workers)
        return {
            "workers": states,
            "gpus": gpus,
            "gpus_unhealthy": unhealthy,
            "gpu_utilization_mean": round(util_sum / gpus, 1) if gpus else 0.0,
            "gpu_memory_used_mb": mem_used,
            "gpu_memory_total_mb": mem_total,
            "slots": slots,
            "slots_free": free,
        }

    def autoscaler(self) -> dict[str, Any] | None:
        autoscaler = self.metrics.autoscaler
        if autoscaler is None:
            return None
        message_dict = self.as_dict
        report = autoscaler.cost_report()
        live = [p for p in report.pods if p.state != "terminated"]
        return {
            "pools": [message_dict(p) for p in report.pools],
            "pods": [message_dict(p) for p in live[:MAX_PODS_SHOWN]],
            "pods_total": len(live),
            "tenants": [message_dict(t) for t in sorted(report.tenants, key=lambda t: -t.cost)[:MAX_TENANTS_SHOWN]],
            "total_cost": report.total_cost,
            "total_cost_per_hour": report.total_cost_per_hour,
            "attributed_cost": report.attributed_cost,
            "events": [message_dict(e) for e in reversed(autoscaler.scaling_events(MAX_SCALING_EVENTS))],
        }

    # -- the fleet, a page at a time ------------------------------------------------------------

    async def workers(self, request: web.Request) -> web.Response:
        """Workers in id order: ?state=&q= (id contains) &after=WORKER_ID &limit=N."""
        self.caller(request, Permission.ADMIN_READ)
        q = request.query
        state = q.get("state", "")
        if state and state not in WORKER_STATES:
            raise InvalidArgument(f"state {state[:40]!r} is not one of {', '.join(WORKER_STATES)}")
        needle = q.get("q", "")[:128]
        limit = self.limit(request)
        after = q.get("after", "")
        fleet = self.cp.fleet
        now = time.monotonic()
        lost = {w: (reason, at) for w, reason, at in fleet.lost_recently if w not in fleet.workers}
        rows: list[dict[str, Any]] = []
        more = False
        for worker_id in sorted(itertools.chain(fleet.workers, lost)):
            if (after and worker_id <= after) or needle not in worker_id:
                continue
            conn = fleet.workers.get(worker_id)
            row_state = fleet.state(conn, now) if conn is not None else "lost"
            if state and row_state != state:
                continue
            if len(rows) == limit:
                more = True
                break
            if conn is None:
                reason, at_ms = lost[worker_id]
                rows.append({"worker_id": worker_id, "state": "lost", "reason": reason, "lost_at_ms": at_ms,
                             "gpus": []})
            else:
                rows.append(self._worker(conn, row_state))
        return web.json_response({"workers": rows, "next_after": rows[-1]["worker_id"] if more else ""},
                                 dumps=_dumps)

    def _worker(self, conn: WorkerConn, state: str) -> dict[str, Any]:
        stats = self.cp.core.scheduler.worker_stats(conn.handle)
        reported = {s.index: s for s in conn.gpu_stats}
        gpus = []
        for gpu in conn.register.gpus:
            s = reported.get(gpu.index)
            gpus.append({
                "index": gpu.index,
                "name": gpu.name,
                "memory_total_mb": gpu.memory_total_mb,
                "utilization": s.utilization if s else None,
                "memory_used_mb": s.memory_used_mb if s else None,
                "temperature_c": s.temperature_c if s else None,
                "healthy": conn.gpu_health.get(gpu.index, True),
            })
        return {
            "worker_id": conn.worker_id,
            "state": state,
            "health": self.cp.fleet.health(conn),
            "reason": conn.lost_reason,
            "provider": conn.register.provider,
            "slots": stats.slots,
            "slots_free": stats.free_slots,
            "cost_per_hour": conn.register.cost_per_hour,
            "last_heartbeat_ms": conn.last_heartbeat_ms,
            "gpus": gpus,
        }


_STATIC_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # Only gpucp's own assets run on the page, and it talks only to gpucp.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def _may(principal: Principal, permission: Permission) -> bool:
    return permission in ROLES[principal.role]


def _quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (seconds) of bucketed observations, linear within its bucket; the last finite
    bound when it falls past it."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            upper = BUCKETS[i]
            lower = BUCKETS[i - 1] if i else 0.0
            if upper == float("inf"):
                return lower
            return round(lower + (upper - lower) * (rank - seen) / n, 4)
        seen += n
    return BUCKETS[-2]


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()
