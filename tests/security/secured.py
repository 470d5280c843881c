"""A control plane started with --auth and the principals the security tests call it as."""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from cluster import SECURITY_REPORT, ControlPlaneProcess
from gpucp import Client
from gpucp.client import CHANNEL_OPTIONS
from gpucp.v1 import scheduler_pb2_grpc, workers_pb2, workers_pb2_grpc

# name -> (role, tenants, workers); each principal's token is "token-<name>".
PRINCIPALS: dict[str, tuple[str, list[str], list[str]]] = {
    "viewer-a": ("viewer", ["team-a"], []),
    "submitter-a": ("submitter", ["team-a"], []),
    "submitter-b": ("submitter", ["team-b", "team-b2"], []),
    "operator": ("operator", [], []),
    "admin": ("admin", [], ["*"]),
    "agent-box": ("agent", [], ["box-*"]),
    "agent-other": ("agent", [], ["other-1"]),
}


def token(name: str) -> str:
    return f"token-{name}"


def auth_file(path: Path, tenant_tables: str = "") -> Path:
    """Write the --auth TOML for PRINCIPALS, tokens stored as their SHA-256 only, and `tenant_tables`
    ([tenant.NAME] tables) after them."""
    lines = []
    for name, (role, tenants, workers) in PRINCIPALS.items():
        digest = hashlib.sha256(token(name).encode()).hexdigest()
        lines += ["[[principal]]", f'name = "{name}"', f'token_sha256 = "{digest}"', f'role = "{role}"']
        if tenants:
            lines.append(f"tenants = {tenants!r}".replace("'", '"'))
        if workers:
            lines.append(f"workers = {workers!r}".replace("'", '"'))
    path.write_text("\n".join(lines) + "\n" + tenant_tables)
    return path


def start_secured(workdir: Path, *extra: str, tenants: str = "") -> ControlPlaneProcess:
    return ControlPlaneProcess(workdir, "--auth", str(auth_file(workdir / "auth.toml", tenants)), *extra).start()


def client_as(cp: ControlPlaneProcess, name: str | None) -> Client:
    """A Client presenting `name`'s token (None: no token at all)."""
    return Client(cp.address, token=token(name) if name else "", timeout_s=10)


def metadata(name: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(name)}"),) if name else ()


def scheduler(cp: ControlPlaneProcess) -> scheduler_pb2_grpc.SchedulerStub:
    return scheduler_pb2_grpc.SchedulerStub(grpc.insecure_channel(cp.address, options=CHANNEL_OPTIONS))


class RawAgent:
    """A hand-driven Workers.Connect stream as `name`, to send exactly what an attacker would."""

    def __init__(self, address: str, name: str | None, register: workers_pb2.Register, token: str = "") -> None:
        """`token`: present this token instead of `name`'s."""
        self._out: queue.Queue[workers_pb2.AgentMessage | None] = queue.Queue()
        self._out.put(workers_pb2.AgentMessage(register=register))
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        stub = workers_pb2_grpc.WorkersStub(self._channel)
        meta = (("authorization", f"Bearer {token}"),) if token else metadata(name)
        self._in: Iterator[workers_pb2.ControlMessage] = stub.Connect(
            iter(self._out.get, None), metadata=meta, timeout=30
        )

    def first(self) -> workers_pb2.ControlMessage | grpc.StatusCode:
        """The first reply (Registered), or the status code the stream ended with."""
        try:
            return next(self._in)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._out.put(None)
        self._channel.close()


def code_of(call: object) -> str:
    """The status code name a finished call or an RpcError stands for ("OK" for a reply)."""
    if isinstance(call, grpc.RpcError):
        return call.code().name  # type: ignore[no-any-return]
    if isinstance(call, grpc.StatusCode):
        return call.name
    return "OK"


@dataclass
class Probe:
    """One row of the security report: what was tried, what must happen, what did."""

    probe: str
    expected: str
    observed: str

    def check(self) -> None:
        SECURITY_REPORT.append({"probe": self.probe, "expected": self.expected, "observed": self.observed})
        assert self.observed == self.expected, f"{self.probe}: expected {self.expected}, observed {self.observed}"


def probe(name: str, expected: str, observed: str) -> None:
    Probe(name, expected, observed).check()
