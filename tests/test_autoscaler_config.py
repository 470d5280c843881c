"""The autoscaler's config file and its idea of which pending tasks a pool's pods could run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.autoscaler import Autoscaler, describe_need, load_config, parse_config, shape_key
from gpucp.client import task_spec

EXAMPLE = """
interval_s = 0.5
server_address = "cp.example.com:50051"
[api]
max_attempts = 5
[[pool]]
name = "a100"
gpu_type_id = "NVIDIA A100 80GB PCIe"
image = "acme/agent:1"
gpu_count = 2
max = 4
gpu_memory_gb = 80
labels = ["zone=eu"]
env = { HF_HOME = "/workspace/hf" }
[[pool]]
name = "cheap"
gpu_type_id = "NVIDIA GeForce RTX 4090"
image = "acme/agent:1"
max = 2
gpu_memory_gb = 24
kinds = ["embed"]
"""


def test_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "autoscale.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert (config.interval_s, config.server_address, config.api_max_attempts) == (0.5, "cp.example.com:50051", 5)
    a100, cheap = config.pools
    assert (a100.gpu_count, a100.min, a100.max, a100.slots, a100.labels) == (2, 0, 4, 2, ("zone=eu",))
    assert a100.env == {"HF_HOME": "/workspace/hf"} and cheap.kinds == ("embed",)


@pytest.mark.parametrize(
    ("pool", "error"),
    [
        ({"gpu_type_id": "x", "image": "i"}, "name must be set"),
        ({"name": "p", "gpu_type_id": "x", "image": "i", "min": 2, "max": 1}, "need 0 <= min <= max"),
        ({"name": "p", "gpu_type_id": "x", "image": "i", "cloud_type": "CHEAP"}, "cloud_type 'CHEAP' must be one of"),
        ({"name": "p", "gpu_type_id": "x", "image": "i", "idle_timout_s": 5}, "unknown settings \\['idle_timout_s'\\]"),
    ],
)
def test_bad_pools_are_refused_with_a_reason(pool: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_config({"pool": [pool]})


def test_no_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one \\[\\[pool\\]\\]"):
        parse_config({"interval_s": 1})


def test_pools_match_tasks_as_the_placement_core_would(tmp_path: Path) -> None:
    path = tmp_path / "autoscale.toml"
    path.write_text(EXAMPLE)
    scaler = Autoscaler(None, load_config(path), server_address="x:1", api_key="k")  # type: ignore[arg-type]
    a100, cheap = scaler.pools["a100"], scaler.pools["cheap"]

    def fits(pool: Any, **req: Any) -> bool:
        return scaler._fits(pool, shape_key(task_spec(req.pop("kind", "sleep"), **req)))

    assert fits(a100, gpus=2, min_gpu_memory_mb=40 * 1024)
    assert not fits(a100, gpus=3), "a 2-GPU pod cannot run a 3-GPU task"
    assert not fits(a100, gpus=1, gpu_models=["h100"])
    assert fits(a100, gpus=1, gpu_models=["a100"], min_compute_capability=8.0, labels=["zone=eu"])
    assert fits(a100, gpus=1, labels=["pool=a100"]) and not fits(cheap, gpus=1, labels=["pool=a100"])
    assert not fits(cheap, gpus=1, min_gpu_memory_mb=40 * 1024)
    assert not fits(cheap, kind="sleep") and fits(cheap, kind="embed"), "the cheap pool only runs embed"
    assert describe_need(shape_key(task_spec("x", gpus=1, min_gpu_memory_mb=40 * 1024))) == "1 GPU with >= 40 GB"
