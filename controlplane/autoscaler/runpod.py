"""RunPod pods through the official `runpod` SDK: the cloud API client the autoscaler drives.

The SDK is synchronous and posts GraphQL to `$RUNPOD_API_BASE_URL/graphql` (read on every call),
so every call here runs in a thread (`asyncio.to_thread`) and goes through one retry policy:
connection errors, timeouts, 5xx answers and rate limits are retried with exponential backoff
and jitter; authentication failures and invalid requests are not, since repeating them cannot
help. The SDK is imported lazily: importing it costs about two seconds (it pulls in its
serverless runtime), paid only when the first call is made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "CLOUD_TYPES",
    "GpuType",
    "Pod",
    "RunPodAuthError",
    "RunPodError",
    "RunPodInvalidRequest",
    "RunPodProvider",
    "RunPodUnavailable",
]

log = logging.getLogger("gpucp.runpod")
T = TypeVar("T")

# Where a pod may be placed: RunPod's secure or community cloud, or whichever offers it.
CLOUD_TYPES = ("ALL", "SECURE", "COMMUNITY")

# Interpolated into GraphQL strings by the SDK without escaping: keep such values plain.
_UNSAFE = re.compile(r'["\\\n\r]')
# QueryError messages that say "try again", as opposed to "your request is wrong".
_TRANSIENT_MESSAGE = re.compile(
    r"rate.?limit|too many requests|try again|temporar|internal|timeout|timed out|unavailable|"
    r"bad gateway|overloaded|something went wrong|5\d\d",
    re.IGNORECASE,
)
_sdk_key_lock = threading.Lock()


class RunPodError(Exception):
    """A RunPod API call failed; the message says what was attempted and why it failed."""

    retryable = False


class RunPodAuthError(RunPodError):
    """The API key is missing or refused. Not retried."""


class RunPodInvalidRequest(RunPodError):
    """RunPod refused the request as it stands (unknown GPU type, bad argument...). Not retried."""


class RunPodUnavailable(RunPodError):
    """RunPod could not be reached or answered with a transient failure. Retried."""

    retryable = True


def classify(what: str, exc: BaseException) -> RunPodError:
    """Map an exception raised by the SDK (or `requests` under it) to a RunPodError."""
    import requests
    from runpod import error as sdk_error

    if isinstance(exc, RunPodError):
        return exc
    if isinstance(exc, sdk_error.AuthenticationError):
        return RunPodAuthError(
            f"{what}: RunPod refused the API key ({exc}); set RUNPOD_API_KEY to a valid key"
        )
    if isinstance(exc, sdk_error.QueryError):
        message = str(exc)
        cls = RunPodUnavailable if _TRANSIENT_MESSAGE.search(message) else RunPodInvalidRequest
        return cls(f"{what}: RunPod answered: {message}")
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        # The SDK parses the body before looking at the status: a 502/503 page from a proxy or
        # an overloaded API ends here.
        return RunPodUnavailable(f"{what}: RunPod answered with something other than JSON (an outage?)")
    if isinstance(exc, requests.exceptions.RequestException):
        return RunPodUnavailable(f"{what}: cannot reach the RunPod API: {exc}")
    if isinstance(exc, ValueError):
        # The SDK validates some inputs itself (unknown GPU id, bad cloud type).
        return RunPodInvalidRequest(f"{what}: {exc}")
    if isinstance(exc, (KeyError, TypeError)):
        return RunPodUnavailable(f"{what}: RunPod's answer was not in the expected shape ({exc!r})")
    return RunPodError(f"{what}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class GpuType:
    """A RunPod GPU type and its on-demand prices per GPU per hour."""

    id: str
    display_name: str
    memory_gb: int
    secure_price: float = 0.0
    community_price: float = 0.0
    max_gpu_count: int = 0

    def price(self, cloud_type: str = "ALL") -> float:
        """Price per GPU-hour in the given cloud ("ALL": the cheaper one that is offered)."""
        offered = {"SECURE": self.secure_price, "COMMUNITY": self.community_price}
        if cloud_type in offered:
            return offered[cloud_type]
        prices = [p for p in offered.values() if p > 0]
        return min(prices) if prices else 0.0


@dataclass
class Pod:
    """What RunPod says about one pod."""

    id: str
    name: str = ""
    desired_status: str = ""
    gpu_count: int = 0
    cost_per_hr: float = 0.0
    image: str = ""
    uptime_s: float = 0.0
    gpu_display_name: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Pod:
        machine = raw.get("machine") or {}
        return cls(
            id=str(raw["id"]),
            name=str(raw.get("name") or ""),
            desired_status=str(raw.get("desiredStatus") or ""),
            gpu_count=int(raw.get("gpuCount") or 0),
            cost_per_hr=float(raw.get("costPerHr") or 0.0),
            image=str(raw.get("imageName") or ""),
            uptime_s=float(raw.get("uptimeSeconds") or 0.0),
            gpu_display_name=str(machine.get("gpuDisplayName") or ""),
            env=_env_dict(raw.get("env")),
        )


def _env_dict(raw: object) -> dict[str, str]:
    """RunPod lists env as ["KEY=value", ...]; accept a mapping too."""
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    out: dict[str, str] = {}
    for item in raw if isinstance(raw, list) else ():
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def _check_plain(what: str, value: str) -> None:
    if _UNSAFE.search(value):
        raise RunPodInvalidRequest(f"{what} {value[:60]!r} contains a quote, backslash or newline")


class RunPodProvider:
    """Pods on RunPod: GPU types and prices, create, get, list, stop, resume, terminate.

    Every method is a coroutine that runs the SDK call in a thread. `on_retry(message)` is called
    before each retry, so the caller can report it (the autoscaler puts it in its decision log).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 10.0,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.api_key = api_key if api_key is not None else os.environ.get("RUNPOD_API_KEY", "")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.on_retry = on_retry

    # -- the retry policy -------------------------------------------------------------------

    def backoff_s(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): exponential, capped, full jitter above half."""
        delay: float = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** (retry - 1))
        return delay * random.uniform(0.5, 1.0)

    def _call_sync(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self.api_key:
            raise RunPodAuthError(f"{what}: no RunPod API key; set RUNPOD_API_KEY")
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # the SDK raises many kinds; classify decides
                err = classify(what, exc)
                if not err.retryable or attempt == self.max_attempts:
                    if attempt > 1:
                        err = type(err)(f"{err} (after {attempt} attempts)")
                    raise err from exc
                delay = self.backoff_s(attempt)
                message = f"{err}; retry {attempt} of {self.max_attempts - 1} in {delay:.2f} s"
                log.warning("%s", message)
                if self.on_retry is not None:
                    self.on_retry(message)
                time.sleep(delay)
        raise AssertionError("unreachable")

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(self._call_sync, what, fn, *args, **kwargs)

    def _with_global_key(self, fn: Callable[..., T]) -> Callable[..., T]:
        """create/stop/resume/terminate take no api_key argument: they read `runpod.api_key`.

        The first provider in a process sets it; one with another key (tests, several accounts)
        swaps it in under a lock for the length of its call.
        """

        def call(*args: Any, **kwargs: Any) -> T:
            import runpod

            if runpod.api_key != self.api_key:
                with _sdk_key_lock:
                    if not runpod.api_key:
                        runpod.api_key = self.api_key
            if runpod.api_key == self.api_key:
                return fn(*args, **kwargs)
            with _sdk_key_lock:
                saved = runpod.api_key
                runpod.api_key = self.api_key
                try:
                    return fn(*args, **kwargs)
                finally:
                    runpod.api_key = saved

        return call

    # -- GPU types --------------------------------------------------------------------------

    async def list_gpu_types(self) -> list[GpuType]:
        """Every GPU type (ids, names and memory; prices need gpu_type())."""
        from runpod.api import ctl_commands

        raw = await self._call("list GPU types", ctl_commands.get_gpus, api_key=self.api_key)
        return [
            GpuType(id=g["id"], display_name=g.get("displayName") or g["id"], memory_gb=int(g.get("memoryInGb") or 0))
            for g in raw
        ]

    async def gpu_type(self, gpu_type_id: str, gpu_count: int = 1) -> GpuType:
        """One GPU type with its prices; RunPodInvalidRequest if RunPod does not know it."""
        from runpod.api import ctl_commands

        _check_plain("GPU type id", gpu_type_id)
        g = await self._call(
            f"look up GPU type {gpu_type_id!r}", ctl_commands.get_gpu, gpu_type_id, gpu_count, api_key=self.api_key
        )
        return GpuType(
            id=g["id"],
            display_name=g.get("displayName") or g["id"],
            memory_gb=int(g.get("memoryInGb") or 0),
            secure_price=float(g.get("securePrice") or 0.0),
            community_price=float(g.get("communityPrice") or 0.0),
            max_gpu_count=int(g.get("maxGpuCount") or 0),
        )

    # -- pods -------------------------------------------------------------------------------

    async def create_pod(
        self,
        name: str,
        *,
        image: str,
        gpu_type_id: str,
        gpu_count: int = 1,
        cloud_type: str = "ALL",
        env: Mapping[str, str] | None = None,
        docker_args: str = "",
        container_disk_gb: int = 20,
        volume_gb: int = 0,
        ports: str | None = None,
    ) -> Pod:
        """Deploy an on-demand GPU pod; returns it as RunPod describes it right after."""
        from runpod.api import ctl_commands

        if cloud_type not in CLOUD_TYPES:
            raise RunPodInvalidRequest(f"cloud_type {cloud_type!r} must be one of {', '.join(CLOUD_TYPES)}")
        if gpu_count < 1:
            raise RunPodInvalidRequest(f"gpu_count is {gpu_count}; a GPU pod needs at least 1")
        plain = (("pod name", name), ("image", image), ("GPU type id", gpu_type_id), ("docker args", docker_args))
        for what, value in plain:
            _check_plain(what, value)
        for key, value in (env or {}).items():
            _check_plain(f"env {key}", f"{key}{value}")
        raw = await self._call(
            f"create a {gpu_count}x {gpu_type_id} pod",
            self._with_global_key(ctl_commands.create_pod),
            name,
            image,
            gpu_type_id,
            cloud_type=cloud_type,
            gpu_count=gpu_count,
            env=dict(env or {}),
            docker_args=docker_args,
            container_disk_in_gb=container_disk_gb,
            volume_in_gb=volume_gb,
            ports=ports,
            support_public_ip=False,
            start_ssh=False,
        )
        if not raw or not raw.get("id"):
            raise RunPodUnavailable(f"create a {gpu_count}x {gpu_type_id} pod: RunPod returned no pod id")
        pod = Pod.from_api(raw)
        pod.name = pod.name or name
        pod.gpu_count = pod.gpu_count or gpu_count
        return pod

    async def get_pod(self, pod_id: str) -> Pod | None:
        """The pod, or None when RunPod does not know it (terminated long ago, or never was)."""
        from runpod.api import ctl_commands

        _check_plain("pod id", pod_id)
        raw = await self._call(f"get pod {pod_id}", ctl_commands.get_pod, pod_id, api_key=self.api_key)
        return Pod.from_api(raw) if raw else None

    async def list_pods(self) -> list[Pod]:
        from runpod.api import ctl_commands

        raw = await self._call("list pods", ctl_commands.get_pods, api_key=self.api_key)
        return [Pod.from_api(p) for p in raw or ()]

    async def stop_pod(self, pod_id: str) -> None:
        """Stop (the GPU is released, the disk is kept and still billed)."""
        from runpod.api import ctl_commands

        _check_plain("pod id", pod_id)
        await self._call(f"stop pod {pod_id}", self._with_global_key(ctl_commands.stop_pod), pod_id)

    async def resume_pod(self, pod_id: str, gpu_count: int) -> None:
        from runpod.api import ctl_commands

        _check_plain("pod id", pod_id)
        await self._call(
            f"resume pod {pod_id}", self._with_global_key(ctl_commands.resume_pod), pod_id, gpu_count
        )

    async def terminate_pod(self, pod_id: str) -> None:
        """Terminate: the pod and its disk are gone and billing stops."""
        from runpod.api import ctl_commands

        _check_plain("pod id", pod_id)
        await self._call(f"terminate pod {pod_id}", self._with_global_key(ctl_commands.terminate_pod), pod_id)
