"""The HTTP listener (`gpucp serve --http`): metrics, health and a JSON API for people with curl.

Served by aiohttp on the control plane's own event loop, so every answer reads the same state the
gRPC services do, without locks. Every request passes `authorize` first. Answers are bounded:
lists are paged (at most MAX_PAGE items), and tasks are shown without payloads or results (their
sizes instead). Errors are JSON objects with one sentence: {"error": "..."}.

Callers are who gRPC callers are: the same bearer tokens (`Authorization: Bearer ...`), the same
roles and tenants (auth.py). /healthz and /readyz answer everyone (probes carry no token and
learn nothing); /metrics, stats and workers need admin.read; tasks need read, and another
tenant's task is 404 in the same words as a missing one. It speaks HTTPS with the gRPC port's
certificate (and asks for client certificates under mTLS); without TLS a token from another
machine is refused, as it is on plaintext gRPC. `/` is the live dashboard (controlplane/dashboard).
"""

from __future__ import annotations

import bisect
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.auth import Authority, Denied, Permission, Principal, authorize, listed_tenants, local_address
from controlplane.control import ControlPlane
from controlplane.dashboard import Dashboard
from controlplane.errors import ControlError, InvalidArgument, NotFound, ResourceExhausted
from controlplane.metrics import STATE_NAMES, Metrics
from controlplane.record import TaskRecord
from gpucp.v1 import common_pb2

log = logging.getLogger("gpucp.http")

MAX_PAGE = 1000
DEFAULT_PAGE = 100
_PRINCIPAL = "gpucp.principal"  # the request key its caller's principal is kept under
_STATES = {name: value for value, name in STATE_NAMES.items() if value != common_pb2.TASK_STATE_UNSPECIFIED}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpApi:
    def __init__(self, cp: ControlPlane, metrics: Metrics, authority: Authority) -> None:
        self.cp = cp
        self.metrics = metrics
        self.authority = authority
        self.ready = False  # true from the end of start-up until shutdown begins
        self.waiting = "starting"  # what it is while not ready, before shutdown
        self.app = web.Application(middlewares=[self._guard])
        self.dashboard = Dashboard(cp, metrics, self._caller, _limit, _dict)
        self.app.add_routes(
            [
                web.get("/metrics", self.prometheus),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/api/v1/stats", self.stats),
                web.get("/api/v1/workers", self.workers),
                web.get("/api/v1/tasks", self.tasks),
                web.get("/api/v1/tasks/{task_id}", self.task),
                web.get("/api/v1/tasks/{task_id}/events", self.events),
                *self.dashboard.routes(),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Serve on a socket bound beforehand (the server binds it before it opens the database);
        HTTPS with `tls`."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=tls).start()
        self.dashboard.start()

    async def stop(self) -> None:
        await self.dashboard.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer every error as JSON with a sentence (401 and 403 for who asks)."""
        if request.path.startswith("/api/") and not self.ready and self.cp.accepting:
            # A standby (or a leader cut from its database) holds no state worth reading.
            return _error(503, f"this control plane is {self.waiting}: ask the replica whose /readyz says ready")
        try:
            return await handler(request)
        except Denied as exc:
            status = 401 if exc.code == grpc.StatusCode.UNAUTHENTICATED else 403
            who = request.get(_PRINCIPAL)
            self.authority.refuse(exc, f"{request.method} {request.path[:200]}", who, request.remote or "")
            return _error(status, str(exc))
        except ControlError as exc:
            status = {NotFound: 404, InvalidArgument: 400, ResourceExhausted: 429}.get(type(exc), 503)
            return _error(status, str(exc))
        except web.HTTPNotFound:
            return _error(404, f"no endpoint at {request.path[:200]}: see / (the dashboard), /api/v1/stats, "
                               "/api/v1/workers, /api/v1/tasks, /metrics, /healthz, /readyz")
        except web.HTTPMethodNotAllowed:
            return _error(405, f"{request.method} is not allowed here: every endpoint answers GET")
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason)

    def _caller(self, request: web.Request, permission: Permission) -> Principal:
        """Who asks (from the bearer token), if they may do `permission`; Denied otherwise."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        principal = self.authority.principal(
            token.strip() if scheme.lower() == "bearer" else None,
            cert_cn=_common_name(request),
            remote=not local_address(request.remote or ""),
        )
        request[_PRINCIPAL] = principal  # for the audit line of a refusal further on
        authorize(principal, permission)
        return principal

    async def _visible(self, request: web.Request, principal: Principal) -> TaskRecord:
        task_id = request.match_info["task_id"]
        rec = await self.cp.get(task_id)
        if not principal.sees(rec.tenant):
            raise self.cp.not_found(task_id)
        return rec

    # -- health and metrics ---------------------------------------------------------------------

    async def prometheus(self, request: web.Request) -> web.Response:
        self._caller(request, Permission.ADMIN_READ)
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready and self.cp.accepting:
            return web.json_response({"status": "ready"})
        why = "shutting down" if not self.cp.accepting else self.waiting
        return _error(503, f"the control plane is {why}: send traffic to another replica")

    # -- JSON API -------------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        self._caller(request, Permission.ADMIN_READ)
        return _json(_dict(self.cp.views.cluster_stats()))

    async def workers(self, request: web.Request) -> web.Response:
        """Workers in id order, a page at a time: ?limit=N (at most MAX_PAGE) &after=WORKER_ID."""
        self._caller(request, Permission.ADMIN_READ)
        limit = _limit(request)
        after = request.query.get("after", "")
        ids = sorted(self.cp.fleet.workers)
        page = ids[bisect.bisect_right(ids, after) if after else 0 :][:limit]
        infos = {w.worker_id: w for w in self.cp.views.worker_infos(page)}
        more = bool(page) and page[-1] != ids[-1]
        return _json({"workers": [_dict(infos[w]) for w in page], "next_after": page[-1] if more else ""})

    async def tasks(self, request: web.Request) -> web.Response:
        """Tasks in submission order: ?state=&tenant=&kind=&limit=&page_token=, never payloads."""
        principal = self._caller(request, Permission.READ)
        q = request.query
        tenants = listed_tenants(principal, q.get("tenant", ""))
        state_name = q.get("state", "").lower()
        if state_name and state_name not in _STATES:
            raise InvalidArgument(f"state {state_name[:40]!r} is not one of {', '.join(_STATES)}")
        recs, token = await self.cp.list(
            _STATES.get(state_name, 0), tenants, q.get("kind", ""), _limit(request),
            q.get("page_token", ""),
        )
        return _json({"tasks": [self._task(r) for r in recs], "next_page_token": token})

    async def task(self, request: web.Request) -> web.Response:
        return _json(self._task(await self._visible(request, self._caller(request, Permission.READ))))

    async def events(self, request: web.Request) -> web.Response:
        rec = await self._visible(request, self._caller(request, Permission.READ))
        events, omitted = await self.cp.events(rec.id)
        return _json({"events": [_dict(e) for e in events], "omitted": omitted})

    def _task(self, rec: TaskRecord) -> dict[str, Any]:
        """A task without its payload and result, which may weigh megabytes: their sizes instead."""
        out = _dict(self.cp.views.describe(rec, full=False))
        del out["spec"]["payload"], out["result"]  # empty here (full=False), but printed as zero values
        out["payload_bytes"] = rec.payload_bytes
        out["result_bytes"] = len(rec.result)
        return out


def _common_name(request: web.Request) -> str | None:
    """The common name of the client certificate the TLS layer verified (mTLS), if any."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "")
    if not text:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidArgument(f"limit {text[:40]!r}: give a whole number from 1 to {MAX_PAGE}")
    return int(text)


def _dict(message: Message) -> dict[str, Any]:
    # Zeros shown, not left out: a person reading `"utilization": 0.0` need not know proto3's rules.
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body, separators=(",", ":")), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
