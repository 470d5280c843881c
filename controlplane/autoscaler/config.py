"""The autoscaler's config file, checked against its schema before the control plane listens.

The schema is the two dataclasses below: every key of the file must be one of their fields and
hold a value of the field's type (a whole number where an int is declared, a list of strings
for a tuple of strings, ...). Nothing is converted behind the user's back: `max = "4"` and
`labels = "zone=eu"` are refused with a sentence naming the file and the key, not turned into
something else. load_config() also checks what the autoscaler will need once running (the
`runpod` SDK, RUNPOD_API_KEY), so a missing one stops `gpucp serve` before it says "listening".
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from controlplane.autoscaler.runpod import CLOUD_TYPES
from gpucp.pods import RUNPOD_API_KEY_ENV

__all__ = ["AutoscaleConfig", "AutoscaleConfigError", "PoolConfig", "load_config", "parse_config"]

# Pool names go into pod names ("gpucp-<pool>-<hex>") and GraphQL strings: keep them plain.
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
REQUIRED_POOL_KEYS = ("name", "gpu_type_id", "image")


class AutoscaleConfigError(ValueError):
    """The autoscaler config is wrong or cannot be used; the message says where and how to fix it."""


@dataclass(frozen=True)
class PoolConfig:
    """One pool: pods of one GPU type and count, between min and max."""

    name: str
    gpu_type_id: str
    image: str
    gpu_count: int = 1
    min: int = 0
    max: int = 1
    cloud_type: str = "ALL"
    idle_timeout_s: float = 300.0
    scale_up_cooldown_s: float = 60.0
    scale_down_cooldown_s: float = 120.0
    # Pending tasks (beyond what cold-starting pods absorb) that trigger a scale-up.
    scale_up_threshold: int = 1
    # Also scale up when the pool's pending tasks would wait longer than this, at the runtime the
    # core has learned for them on the pool's pods (0 = off). Grows to the size that meets it.
    scale_up_wait_s: float = 0.0
    # Pending tasks one new pod is expected to absorb; 0 = its slots.
    tasks_per_pod: int = 0
    # Slots the pod's agent registers; 0 = gpu_count (the agent's default).
    slots_per_pod: int = 0
    register_timeout_s: float = 600.0
    docker_args: str = ""
    container_disk_gb: int = 20
    volume_gb: int = 0
    env: dict[str, str] = field(default_factory=dict)
    # What the pod's agent will register, for matching tasks to the pool before any pod exists.
    gpu_name: str = ""  # default: the GPU type id (e.g. "NVIDIA A100 80GB PCIe")
    gpu_memory_gb: int = 0  # default: RunPod's memoryInGb for the GPU type
    compute_capability: float = 0.0  # default: from the model in the GPU name
    backend: str = "cuda"
    labels: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # empty: any kind

    @property
    def slots(self) -> int:
        return self.slots_per_pod or max(1, self.gpu_count)

    @property
    def absorb(self) -> int:
        return self.tasks_per_pod or self.slots


@dataclass(frozen=True)
class AutoscaleConfig:
    pools: tuple[PoolConfig, ...]
    interval_s: float = 1.0
    # The address pods dial; default: the address the control plane listens on.
    server_address: str = ""
    agent_token: str = ""
    max_events: int = 1000
    api_max_attempts: int = 4
    api_backoff_base_s: float = 0.5
    api_backoff_cap_s: float = 10.0
    # From the environment (load_config), never from the file: a key does not belong in a config.
    api_key: str = field(default="", repr=False)


# Keys of the file: the top level, its [api] table (api.x is AutoscaleConfig.api_x), each [[pool]].
_API_PREFIX = "api_"
_TOP_KEYS = {f.name for f in fields(AutoscaleConfig)} - {"pools", "api_key"}
_API_KEYS = {k.removeprefix(_API_PREFIX) for k in _TOP_KEYS if k.startswith(_API_PREFIX)}
_TOP_KEYS = {k for k in _TOP_KEYS if not k.startswith(_API_PREFIX)}
_POOL_KEYS = {f.name for f in fields(PoolConfig)}


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AutoscaleConfig:
    """Read and check an autoscaler config (TOML, or JSON for a .json file) and what running it
    needs: the runpod SDK and RUNPOD_API_KEY. AutoscaleConfigError says what is wrong and where."""
    path = Path(path)
    env = os.environ if env is None else env
    try:
        text = path.read_text()
    except OSError as exc:
        raise AutoscaleConfigError(f"cannot read the autoscaler config {path}: {exc.strerror}") from None
    fmt = "JSON" if path.suffix == ".json" else "TOML"
    try:
        raw = json.loads(text) if fmt == "JSON" else tomllib.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise AutoscaleConfigError(f"{path} is not valid {fmt}: {exc}") from None
    if not isinstance(raw, dict):
        raise AutoscaleConfigError(f"{path}: the top level must be a table of settings")
    config = parse_config(raw, str(path))
    if importlib.util.find_spec("runpod") is None:
        raise AutoscaleConfigError(
            f"--autoscale {path}: the autoscaler drives RunPod through the runpod SDK, which is not "
            "installed; install it with: pip install 'gpucp[runpod]'"
        )
    api_key = env.get(RUNPOD_API_KEY_ENV, "").strip()
    if not api_key:
        raise AutoscaleConfigError(
            f"--autoscale {path}: the autoscaler needs a RunPod API key; set {RUNPOD_API_KEY_ENV} in the "
            "environment of gpucp serve"
        )
    return replace(config, api_key=api_key)


def parse_config(raw: Mapping[str, Any], where: str = "the autoscaler config") -> AutoscaleConfig:
    """Check a parsed config against the schema; AutoscaleConfigError names the file and the key."""
    _refuse_unknown(raw, _TOP_KEYS | {"pool", "api"}, where, "")
    pools_raw = raw.get("pool")
    if not isinstance(pools_raw, list) or not pools_raw:
        raise AutoscaleConfigError(f"{where}: define at least one [[pool]] with name, gpu_type_id and image")
    pools = tuple(_parse_pool(p, where, i + 1) for i, p in enumerate(pools_raw))
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise AutoscaleConfigError(f"{where}: pool names must be unique, got {names}")
    api = raw.get("api", {})
    if not isinstance(api, dict):
        raise AutoscaleConfigError(f"{where}: api must be a table ([api]), not {_shown(api)}")
    _refuse_unknown(api, _API_KEYS, where, "api.")
    values = {k: v for k, v in raw.items() if k not in ("pool", "api")}
    values.update({_API_PREFIX + k: v for k, v in api.items()})
    config = AutoscaleConfig(pools=pools, **_typed(AutoscaleConfig, values, where, _file_key))
    _at_least(where, "interval_s", config.interval_s, 0.001)
    _at_least(where, "max_events", config.max_events, 1)
    _at_least(where, "api.max_attempts", config.api_max_attempts, 1)
    _at_least(where, "api.backoff_base_s", config.api_backoff_base_s, 0)
    _at_least(where, "api.backoff_cap_s", config.api_backoff_cap_s, 0)
    return config


def _parse_pool(raw: object, file: str, number: int) -> PoolConfig:
    if not isinstance(raw, dict):
        raise AutoscaleConfigError(f"{file}: pool {number} must be a table ([[pool]]), not {_shown(raw)}")
    name = raw.get("name")
    # Named as the user knows it once it has a name, else by its place in the file.
    where = f"{file}: pool {name!r}" if isinstance(name, str) and name else f"{file}: pool {number}"
    _refuse_unknown(raw, _POOL_KEYS, where, "")
    missing = [k for k in REQUIRED_POOL_KEYS if not raw.get(k)]
    if missing:
        raise AutoscaleConfigError(f"{where}: {', '.join(missing)} must be set")
    pool = PoolConfig(**_typed(PoolConfig, raw, where, str))
    if not POOL_NAME.fullmatch(pool.name):
        raise AutoscaleConfigError(
            f"{where}: the name must be 1 to 40 letters, digits, '-' or '_' (it becomes part of the pods' names)"
        )
    if pool.cloud_type not in CLOUD_TYPES:
        raise AutoscaleConfigError(
            f"{where}: cloud_type {pool.cloud_type!r} must be one of {', '.join(CLOUD_TYPES)}"
        )
    _at_least(where, "gpu_count", pool.gpu_count, 1)
    if not 0 <= pool.min <= pool.max or pool.max < 1:
        raise AutoscaleConfigError(
            f"{where}: need 0 <= min <= max and max >= 1, got min {pool.min}, max {pool.max}"
        )
    _at_least(where, "scale_up_threshold", pool.scale_up_threshold, 1)
    for key in ("idle_timeout_s", "scale_up_cooldown_s", "scale_down_cooldown_s", "register_timeout_s",
                "scale_up_wait_s", "tasks_per_pod", "slots_per_pod", "container_disk_gb", "volume_gb",
                "gpu_memory_gb", "compute_capability"):
        _at_least(where, key, getattr(pool, key), 0)
    return pool


def _typed(cls: type, raw: Mapping[str, Any], where: str, key_name: Callable[[str], str]) -> dict[str, Any]:
    """raw's values checked against cls's field types (only the fields raw sets)."""
    hints = typing.get_type_hints(cls)
    return {key: _checked(value, hints[key], f"{where}: {key_name(key)}") for key, value in raw.items()}


def _checked(value: object, hint: Any, what: str) -> object:
    """value if it has the type `hint` declares (ints are accepted for floats); else a sentence."""
    origin = typing.get_origin(hint)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise AutoscaleConfigError(f"{what} must be a whole number, not {_shown(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise AutoscaleConfigError(f"{what} must be a finite number, not {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise AutoscaleConfigError(f"{what} must be a string (in quotes), not {_shown(value)}")
    if origin is tuple:  # tuple[str, ...]: a list in the file
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise AutoscaleConfigError(f'{what} must be a list of strings, such as ["a", "b"], not {_shown(value)}')
    if origin is dict:  # dict[str, str]: a table of strings
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        raise AutoscaleConfigError(f'{what} must be a table of strings, such as {{ KEY = "value" }}, '
                                   f"not {_shown(value)}")
    raise TypeError(f"the autoscaler schema has no rule for {hint}")  # a field type added without one


def _shown(value: object) -> str:
    """A value and its type as a person reads them: "the string '4'", "the number 1.5"."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _refuse_unknown(raw: Mapping[str, Any], known: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise AutoscaleConfigError(
            f"{where}: unknown settings {[prefix + k for k in unknown]}; known: {sorted(prefix + k for k in known)}"
        )


def _at_least(where: str, key: str, value: float, least: float) -> None:
    if value < least:
        raise AutoscaleConfigError(f"{where}: {key} must be at least {least:g}, got {value:g}")


def _file_key(field_name: str) -> str:
    """How the file spells a field: api_max_attempts is max_attempts in [api]."""
    if field_name.startswith(_API_PREFIX):
        return "api." + field_name.removeprefix(_API_PREFIX)
    return field_name
