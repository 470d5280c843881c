"""The autoscaler's config file and its idea of which pending tasks a pool's pods could run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster import PYTHONPATH
from controlplane.autoscaler import AutoscaleConfigError, load_config, parse_config
from controlplane.autoscaler.shapes import PoolProbe, describe_need
from controlplane.core import shape_key
from gpucp.client import task_spec
from gpucp.testing import child_env

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
    config = load_config(path, {"RUNPOD_API_KEY": "k"})
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
    a100, cheap = (PoolProbe(pool, pool.gpu_memory_gb) for pool in load_config(path, {"RUNPOD_API_KEY": "k"}).pools)

    def fits(probe: PoolProbe, **req: Any) -> bool:
        return probe.fits(shape_key(task_spec(req.pop("kind", "sleep"), **req)))

    assert fits(a100, gpus=2, min_gpu_memory_mb=40 * 1024)
    assert not fits(a100, gpus=3), "a 2-GPU pod cannot run a 3-GPU task"
    assert not fits(a100, gpus=1, gpu_models=["h100"])
    assert fits(a100, gpus=1, gpu_models=["a100"], min_compute_capability=8.0, labels=["zone=eu"])
    assert fits(a100, gpus=1, labels=["pool=a100"]) and not fits(cheap, gpus=1, labels=["pool=a100"])
    assert not fits(cheap, gpus=1, min_gpu_memory_mb=40 * 1024)
    assert not fits(cheap, kind="sleep") and fits(cheap, kind="embed"), "the cheap pool only runs embed"
    assert describe_need(shape_key(task_spec("x", gpus=1, min_gpu_memory_mb=40 * 1024))) == "1 GPU with >= 40 GB"


# -- defect 11: every bad config is refused with a sentence naming the file and the key ------------

GOOD_POOL = '[[pool]]\nname = "a100"\ngpu_type_id = "NVIDIA A100 80GB PCIe"\nimage = "acme/agent:1"\n'
BAD_CONFIGS = [
    # (what the file says beyond a good pool, what the refusal must say)
    ('labels = "zone=eu"',
     "pool 'a100': labels must be a list of strings, such as [\"a\", \"b\"], not the string 'zone=eu'"),
    ('kinds = "embed"', "pool 'a100': kinds must be a list of strings"),
    ('max = "4"', "pool 'a100': max must be a whole number, not the string '4'"),
    ("gpu_count = 1.5", "pool 'a100': gpu_count must be a whole number, not the number 1.5"),
    ("gpu_count = true", "pool 'a100': gpu_count must be a whole number, not the boolean true"),
    ("min = 3\nmax = 2", "pool 'a100': need 0 <= min <= max and max >= 1, got min 3, max 2"),
    ("idle_timout_s = 5", "pool 'a100': unknown settings ['idle_timout_s']"),
    ('idle_timeout_s = "5m"', "pool 'a100': idle_timeout_s must be a finite number, not the string '5m'"),
    ("idle_timeout_s = nan", "pool 'a100': idle_timeout_s must be a finite number, not the number nan"),
    ("scale_down_cooldown_s = -1", "pool 'a100': scale_down_cooldown_s must be at least 0, got -1"),
    ("env = { HF_HOME = 1 }", "pool 'a100': env must be a table of strings"),
    ("image = 7", "pool 'a100': image must be a string (in quotes), not the number 7"),
    ('name = "a100 big"', "pool 'a100 big': the name must be 1 to 40 letters, digits, '-' or '_'"),
]


def write_config(tmp_path: Path, pool_extra: str, top: str = "") -> Path:
    lines = [line for line in GOOD_POOL.splitlines() if line.partition(" ")[0] not in pool_extra]
    path = tmp_path / "bad.toml"
    path.write_text(top + "\n".join(lines) + "\n" + pool_extra + "\n")
    return path


@pytest.mark.parametrize(("extra", "sentence"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_value_is_refused_naming_the_file_and_the_key(tmp_path: Path, extra: str, sentence: str) -> None:
    path = write_config(tmp_path, extra)
    with pytest.raises(AutoscaleConfigError) as err:
        load_config(path, {"RUNPOD_API_KEY": "k"})
    assert str(err.value).startswith(f"{path}: {sentence}"), str(err.value)


@pytest.mark.parametrize(
    ("top", "sentence"),
    [
        ('interval_s = "1"\n', "interval_s must be a finite number, not the string '1'"),
        ("interval_s = 0\n", "interval_s must be at least 0.001, got 0"),
        ("[api]\nmax_attempts = 2.5\n", "api.max_attempts must be a whole number, not the number 2.5"),
        ("[api]\nmax_attempt = 2\n", "unknown settings ['api.max_attempt']"),
        ("pools = 2\n", "unknown settings ['pools']"),
        ('api_key = "k"\n', "unknown settings ['api_key']"),
    ],
)
def test_bad_top_level_settings_are_refused(tmp_path: Path, top: str, sentence: str) -> None:
    path = tmp_path / "bad.toml"
    # The [api] table, when there is one, must come after the top-level keys and before [[pool]].
    path.write_text(top + GOOD_POOL)
    with pytest.raises(AutoscaleConfigError, match=f"^{path}: ") as err:
        load_config(path, {"RUNPOD_API_KEY": "k"})
    assert sentence in str(err.value), str(err.value)


def test_labels_given_as_a_list_are_kept_whole(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'labels = ["zone=eu"]')
    assert load_config(path, {"RUNPOD_API_KEY": "k"}).pools[0].labels == ("zone=eu",)


def test_a_missing_api_key_is_refused_by_load_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    with pytest.raises(AutoscaleConfigError, match="needs a RunPod API key; set RUNPOD_API_KEY"):
        load_config(path, {"RUNPOD_API_KEY": "  "})


def test_a_missing_runpod_sdk_is_refused_by_load_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "runpod", None)  # what importlib reports when it is not installed
    path = write_config(tmp_path, "")
    sentence = r"runpod SDK, which is not installed.*pip install 'gpucp\[runpod\]'"
    with pytest.raises(AutoscaleConfigError, match=sentence):
        load_config(path, {"RUNPOD_API_KEY": "k"})


def serve(tmp_path: Path, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpucp", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "gpucp.db"),
         "--autoscale", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=child_env(PYTHONPATH, env),
    )


@pytest.mark.parametrize(
    ("extra", "key", "sentence"),
    [
        ('labels = "zone=eu"', "k", "pool 'a100': labels must be a list of strings"),
        ('max = "4"', "k", "pool 'a100': max must be a whole number, not the string '4'"),
        ("min = 3\nmax = 1", "k", "need 0 <= min <= max"),
        ("", "", "needs a RunPod API key; set RUNPOD_API_KEY"),
    ],
    ids=["labels-string", "max-string", "min-over-max", "no-api-key"],
)
def test_serve_refuses_a_bad_autoscale_config_before_listening(
    tmp_path: Path, extra: str, key: str, sentence: str
) -> None:
    config = write_config(tmp_path, extra)
    done = serve(tmp_path, config, {"RUNPOD_API_KEY": key})
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"gpucp serve started with a bad autoscaler config:\n{output}"
    assert sentence in done.stderr and str(config) in done.stderr, done.stderr
    assert "listening" not in output, f"gpucp serve listened before refusing its config:\n{output}"
    assert "Traceback" not in output, output
