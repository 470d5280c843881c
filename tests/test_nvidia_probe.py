"""agents.nvidia in this process: the real pynvml over the fake libnvidia-ml.so.1 (tests/fake_nvml)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

import fake_nvml
from fake_nvml import FakeBox, FakeGpu

pynvml = pytest.importorskip("pynvml")

from agents.nvidia import NvidiaGpus  # noqa: E402 (imports pynvml: only once importorskip found it)

HW_SLOWDOWN = pynvml.nvmlClocksEventReasonHwSlowdown
SW_POWER_CAP = pynvml.nvmlClocksEventReasonSwPowerCap


@pytest.fixture(scope="module")
def fake_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    library = fake_nvml.build(tmp_path_factory.mktemp("fake-nvml"))
    # pynvml opens "libnvidia-ml.so.1" by name; the dynamic loader hands back this already-loaded
    # library because its soname is that name.
    return ctypes.CDLL(str(library))


@pytest.fixture
def box(tmp_path: Path, fake_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> FakeBox:
    box = fake_nvml.mixed_box(tmp_path / "nvml.cfg")
    monkeypatch.setenv(fake_nvml.CONFIG_ENV, str(box.path))
    return box


@pytest.fixture
def nvidia(box: FakeBox) -> Iterator[NvidiaGpus]:
    gpus = NvidiaGpus.open(throttle_heartbeats=3)
    yield gpus
    gpus.close()


def test_discovers_every_gpu_of_a_mixed_box(nvidia: NvidiaGpus) -> None:
    gpus = nvidia.discover()
    assert [(g.index, g.name, g.uuid, g.memory_total_mb, g.compute_capability, g.mig) for g in gpus] == [
        (0, "NVIDIA A100-SXM4-80GB", "GPU-a100-0000", 81920, 8.0, False),
        (1, "NVIDIA A100-SXM4-80GB", "GPU-a100-0001", 81920, 8.0, False),
        (2, "Tesla T4", "GPU-t4-0002", 15360, 7.5, False),
    ]
    assert gpus[0].memory_free_mb == 81920 - 1024, "free memory must be total minus what is in use"
    assert nvidia.labels() == ["driver=550.54.15", "cuda=12.4"]


def test_queries_nvml_does_not_support_keep_their_defaults(nvidia: NvidiaGpus, box: FakeBox) -> None:
    box.gpus[2].temperature = None  # the T4 already reports no ECC, power or clock reasons
    box.write()
    gpus = nvidia.discover()
    a100, _, t4 = nvidia.stats(gpus)
    assert (a100.power_w, a100.temperature_c, a100.memory_used_mb, a100.healthy) == (95.0, 35.0, 1024, True)
    assert (t4.index, t4.power_w, t4.temperature_c, t4.healthy) == (2, 0.0, 0.0, True), (
        "a GPU without ECC counters, power or temperature readings is healthy with those fields left at 0"
    )


def test_uncorrected_ecc_errors_make_only_that_gpu_unhealthy(nvidia: NvidiaGpus, box: FakeBox) -> None:
    gpus = nvidia.discover()
    box.gpus[1].ecc_uncorrected = 2
    box.write()
    assert [s.healthy for s in nvidia.stats(gpus)] == [True, False, True]


def test_throttling_counts_only_when_sustained_and_hardware_imposed(nvidia: NvidiaGpus, box: FakeBox) -> None:
    gpus = nvidia.discover()
    box.gpus[0].throttle_reasons = HW_SLOWDOWN
    box.gpus[1].throttle_reasons = SW_POWER_CAP  # a power cap someone set is normal operation
    box.write()
    seen = [[s.healthy for s in nvidia.stats(gpus)] for _ in range(4)]
    assert seen == [[True, True, True], [True, True, True], [False, True, True], [False, True, True]], (
        "HW slowdown must make GPU 0 unhealthy from the 3rd consecutive heartbeat on, and never GPU 1"
    )
    box.gpus[0].throttle_reasons = 0
    box.write()
    assert [s.healthy for s in nvidia.stats(gpus)] == [True, True, True], "throttling that stops heals the GPU"


def test_a_lost_gpu_stays_unhealthy_and_the_others_keep_reporting(nvidia: NvidiaGpus, box: FakeBox) -> None:
    gpus = nvidia.discover()
    box.gpus[0].lost = True
    box.write()
    lost, other, _ = nvidia.stats(gpus)
    assert (lost.healthy, lost.power_w) == (False, 0.0)
    assert (other.healthy, other.power_w) == (True, 60.0)
    box.gpus[0].lost = False  # NVML answering again does not make a GPU that fell off the bus trustworthy
    box.write()
    assert not nvidia.stats(gpus)[0].healthy


def test_a_gpu_lost_before_discovery_is_not_offered(nvidia: NvidiaGpus, box: FakeBox) -> None:
    box.gpus[1].lost = True
    box.write()
    assert [g.index for g in nvidia.discover()] == [0, 2]


def test_mig_gpus_give_tasks_their_instance_uuids(box: FakeBox) -> None:
    box.gpus[0] = FakeGpu("NVIDIA H100 80GB HBM3", "GPU-h100", 81559, "9.0", mig=1, mig_uuids=["MIG-aaa", "MIG-bbb"])
    box.write()
    nvidia = NvidiaGpus.open()
    try:
        gpus = nvidia.discover()
        assert [g.mig for g in gpus] == [True, False, False]
        assert nvidia.task_env([0, 2]) == {
            "CUDA_VISIBLE_DEVICES": "MIG-aaa,MIG-bbb,2",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
        assert nvidia.task_env([1])["CUDA_VISIBLE_DEVICES"] == "1"
    finally:
        nvidia.close()
