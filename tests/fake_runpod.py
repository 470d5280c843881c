"""A fake RunPod API: enough of its GraphQL for the official `runpod` SDK's pod calls.

It serves POST /graphql on 127.0.0.1 (point the SDK at it with RUNPOD_API_BASE_URL), checks the
bearer key, keeps pod state with prices and billing times, fails on demand, and plays the pod's
insides: creating a pod starts a local agent process (`python -m agents --runpod` with the
pod's env, RUNPOD_POD_ID and simulated GPUs of the pod's type); stopping or terminating the pod
kills it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class FakeGpuType:
    id: str
    display_name: str
    memory_gb: int
    secure_price: float
    community_price: float
    sim_model: str  # the agents.inventory model the simulated agent registers

    def price(self, cloud_type: str) -> float:
        if cloud_type == "SECURE":
            return self.secure_price
        if cloud_type == "COMMUNITY":
            return self.community_price
        return min(self.secure_price, self.community_price)


GPU_TYPES = (
    FakeGpuType("NVIDIA A100 80GB PCIe", "A100 80GB", 80, 1.64, 1.19, "A100"),
    FakeGpuType("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34, "RTX4090"),
    FakeGpuType("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.99, 2.69, "H100"),
)


@dataclass
class FakePod:
    id: str
    name: str
    image: str
    gpu_type: FakeGpuType
    gpu_count: int
    cloud_type: str
    env: dict[str, str]
    cost_per_hr: float
    created_at: float
    status: str = "RUNNING"
    stopped_at: float = 0.0
    terminated_at: float = 0.0
    agent: subprocess.Popen[bytes] | None = None

    def uptime_s(self, now: float | None = None) -> float:
        end = self.terminated_at or (now if now is not None else time.time())
        return end - self.created_at

    def billed(self, now: float | None = None) -> float:
        return self.uptime_s(now) * self.cost_per_hr / 3600

    def to_api(self) -> dict[str, Any]:
        running = self.status == "RUNNING"
        return {
            "id": self.id,
            "name": self.name,
            "imageName": self.image,
            "desiredStatus": self.status,
            "gpuCount": self.gpu_count,
            "costPerHr": self.cost_per_hr,
            "env": [f"{k}={v}" for k, v in self.env.items()],
            "uptimeSeconds": int(time.time() - self.created_at) if running else 0,
            "machineId": f"m-{self.id}",
            "machine": {"gpuDisplayName": self.gpu_type.display_name, "podHostId": f"{self.id}-host"},
            "memoryInGb": 62,
            "vcpuCount": 8,
            "containerDiskInGb": 20,
            "volumeInGb": 0,
            "runtime": {"ports": []} if running else None,
        }


@dataclass
class Failure:
    mode: str  # "http500", "rate_limit", "graphql_transient", "invalid", "auth"
    count: int


FAILURE_RESPONSES: dict[str, tuple[int, object]] = {
    "http500": (500, "<html><body>500 Internal Server Error</body></html>"),
    "http502": (502, "<html><body>502 Bad Gateway</body></html>"),
    "rate_limit": (429, {"errors": [{"message": "Rate limit exceeded: too many requests"}]}),
    "graphql_transient": (200, {"errors": [{"message": "Something went wrong. Please try again later."}]}),
    "invalid": (200, {"errors": [{"message": 'Invalid input: gpuCount must be at most 8'}]}),
    "auth": (401, {"error": "Unauthorized"}),
}


@dataclass
class FakeRunPod:
    """The fake API server; `with FakeRunPod(tmp_path) as fake:` starts and stops it."""

    workdir: Path
    api_key: str = "test-runpod-key"
    start_agents: bool = True
    # Seconds between a pod's creation and its agent starting (image pull, boot).
    agent_delay_s: float = 0.0
    # Extra arguments for the simulated agents.
    agent_args: tuple[str, ...] = ()
    gpu_types: tuple[FakeGpuType, ...] = GPU_TYPES
    pods: dict[str, FakePod] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    peak_live_pods: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._failures: dict[str, list[Failure]] = {}
        self._silent: int = 0  # next N pods start no agent (they never register)
        self._server: ThreadingHTTPServer | None = None
        self.home = self.workdir / "runpod-home"
        self.home.mkdir(exist_ok=True)

    # -- control --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def sdk_env(self) -> dict[str, str]:
        """Environment that points the SDK here and keeps real credentials out of reach."""
        return {"RUNPOD_API_BASE_URL": self.url, "RUNPOD_API_KEY": self.api_key, "HOME": str(self.home)}

    def fail_next(self, operation: str, count: int, mode: str) -> None:
        """Make the next `count` calls of `operation` ("create", "terminate", "get", ... or "any") fail."""
        assert mode in FAILURE_RESPONSES, mode
        with self._lock:
            self._failures.setdefault(operation, []).append(Failure(mode, count))

    def next_pods_never_register(self, count: int) -> None:
        with self._lock:
            self._silent += count

    def live_pods(self) -> list[FakePod]:
        with self._lock:
            return [p for p in self.pods.values() if p.status == "RUNNING"]

    def count(self, operation: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r == operation)

    def __enter__(self) -> FakeRunPod:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, payload = fake.handle(self.path, self.headers.get("Authorization", ""), body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-runpod").start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        for pod in list(self.pods.values()):
            self._kill_agent(pod)

    # -- the API ----------------------------------------------------------------------------

    def handle(self, path: str, authorization: str, body: bytes) -> tuple[int, object]:
        if path != "/graphql":
            return 404, {"errors": [{"message": f"no route {path}"}]}
        query = json.loads(body or b"{}").get("query", "")
        operation = _operation(query)
        with self._lock:
            self.requests.append(operation)
            failure = self._take_failure(operation)
        if failure is not None:
            return FAILURE_RESPONSES[failure]
        if authorization != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        try:
            with self._lock:
                return 200, {"data": getattr(self, f"_op_{operation}")(query)}
        except LookupError as exc:
            return 200, {"errors": [{"message": str(exc)}]}

    def _take_failure(self, operation: str) -> str | None:
        for key in (operation, "any"):
            queue = self._failures.get(key) or []
            if queue:
                failure = queue[0]
                failure.count -= 1
                if failure.count <= 0:
                    queue.pop(0)
                return failure.mode
        return None

    def _gpu(self, gpu_id: str) -> FakeGpuType | None:
        return next((g for g in self.gpu_types if g.id == gpu_id), None)

    def _op_gpu_types(self, query: str) -> dict[str, Any]:
        wanted = _arg(query, "id")
        count = int(_arg(query, "gpuCount") or 1)
        types = [g for g in self.gpu_types if wanted is None or g.id == wanted]
        return {
            "gpuTypes": [
                {
                    "id": g.id,
                    "displayName": g.display_name,
                    "memoryInGb": g.memory_gb,
                    "maxGpuCount": 8,
                    "secureCloud": True,
                    "communityCloud": True,
                    "securePrice": g.secure_price,
                    "communityPrice": g.community_price,
                    "lowestPrice": {
                        "minimumBidPrice": g.community_price / 2,
                        "uninterruptablePrice": g.price("ALL") * count,
                    },
                }
                for g in types
            ]
        }

    def _op_create(self, query: str) -> dict[str, Any]:
        gpu = self._gpu(_arg(query, "gpuTypeId") or "")
        if gpu is None:
            raise LookupError("There are no longer any instances available with the requested specifications.")
        cloud = _arg(query, "cloudType", quoted=False) or "ALL"
        count = int(_arg(query, "gpuCount", quoted=False) or 1)
        env = dict(re.findall(r'\{\s*key:\s*"([^"]*)",\s*value:\s*"([^"]*)"\s*\}', query))
        pod = FakePod(
            id=secrets.token_hex(7),
            name=_arg(query, "name") or "",
            image=_arg(query, "imageName") or "",
            gpu_type=gpu,
            gpu_count=count,
            cloud_type=cloud,
            env=env,
            cost_per_hr=round(gpu.price(cloud) * count, 4),
            created_at=time.time(),
        )
        with self._lock:
            self.pods[pod.id] = pod
            self.peak_live_pods = max(self.peak_live_pods, sum(p.status == "RUNNING" for p in self.pods.values()))
            silent = self._silent > 0
            self._silent -= 1 if silent else 0
        if self.start_agents and not silent:
            threading.Timer(self.agent_delay_s, self._start_agent, (pod,)).start()
        api = pod.to_api()
        return {"podFindAndDeployOnDemand": {k: api[k] for k in ("id", "imageName", "env", "machineId", "machine")}}

    def _pod(self, query: str) -> FakePod:
        pod = self.pods.get(_arg(query, "podId") or "")
        if pod is None or pod.status == "TERMINATED":
            raise LookupError("pod not found")
        return pod

    def _op_get(self, query: str) -> dict[str, Any]:
        pod = self.pods.get(_arg(query, "podId") or "")
        return {"pod": pod.to_api() if pod is not None and pod.status != "TERMINATED" else None}

    def _op_list(self, query: str) -> dict[str, Any]:
        return {"myself": {"pods": [p.to_api() for p in self.pods.values() if p.status != "TERMINATED"]}}

    def _op_stop(self, query: str) -> dict[str, Any]:
        pod = self._pod(query)
        pod.status, pod.stopped_at = "EXITED", time.time()
        self._kill_agent(pod)
        return {"podStop": {"id": pod.id, "desiredStatus": pod.status}}

    def _op_resume(self, query: str) -> dict[str, Any]:
        pod = self._pod(query)
        pod.status = "RUNNING"
        if self.start_agents:
            self._start_agent(pod)
        api = pod.to_api()
        return {"podResume": {k: api[k] for k in ("id", "desiredStatus", "imageName", "env", "machineId", "machine")}}

    def _op_terminate(self, query: str) -> dict[str, Any]:
        pod = self._pod(query)
        pod.status, pod.terminated_at = "TERMINATED", time.time()
        self._kill_agent(pod)
        return {"podTerminate": None}

    def _op_unknown(self, query: str) -> dict[str, Any]:
        raise LookupError(f"the fake does not know this query: {query[:80]}")

    # -- the pod's insides ------------------------------------------------------------------

    def _start_agent(self, pod: FakePod) -> None:
        if pod.status != "RUNNING" or pod.agent is not None:
            return
        memory = pod.gpu_type.memory_gb
        env = {
            **os.environ,
            **pod.env,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            "RUNPOD_POD_ID": pod.id,
            # RunPod gives every pod a key of its own; the agent reads its price with it.
            "RUNPOD_API_KEY": self.api_key,
            "RUNPOD_API_BASE_URL": self.url,
            "HOME": str(self.home),
        }
        with open(self.workdir / f"pod-{pod.id}.log", "ab") as log:
            pod.agent = subprocess.Popen(
                [
                    sys.executable, "-m", "agents", "--runpod",
                    "--gpus", f"{pod.gpu_count}x{pod.gpu_type.sim_model}-{memory}GB",
                    *self.agent_args,
                ],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            )

    def _kill_agent(self, pod: FakePod) -> None:
        if pod.agent is not None:
            if pod.agent.poll() is None:
                pod.agent.kill()
            pod.agent.wait()
            pod.agent = None

    def agent_log(self, pod_id: str) -> str:
        path = self.workdir / f"pod-{pod_id}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no agent log)"


def _operation(query: str) -> str:
    for marker, name in (
        ("podFindAndDeployOnDemand", "create"),
        ("podTerminate", "terminate"),
        ("podStop", "stop"),
        ("podResume", "resume"),
        ("gpuTypes", "gpu_types"),
    ):
        if marker in query:
            return name
    if re.search(r"\bpod\s*\(", query):
        return "get"
    if "myself" in query and "pods" in query:
        return "list"
    return "unknown"


def _arg(query: str, name: str, *, quoted: bool = True) -> str | None:
    pattern = rf'\b{name}:\s*"([^"]*)"' if quoted else rf"\b{name}:\s*([A-Za-z0-9_.]+)"
    match = re.search(pattern, query)
    return match.group(1) if match else None
