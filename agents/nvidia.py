"""NVIDIA GPUs through NVML (nvidia-ml-py): what to register, live stats and health for heartbeats."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import pynvml

from gpucp.v1 import common_pb2

__all__ = ["DEFAULT_THROTTLE_HEARTBEATS", "NvidiaGpus", "NvidiaUnavailable"]

log = logging.getLogger("gpucp.agent.nvidia")

MIB = 1024 * 1024
DEFAULT_THROTTLE_HEARTBEATS = 3
# Slowdowns the hardware imposes to protect itself (overheating, power brake, a failing sensor or
# PSU). Software power capping and idle clocks are normal operation and do not count.
# (The "throttle reason" names exist in every nvidia-ml-py; the "clocks event" ones, same bits, only in newer.)
_HARDWARE_SLOWDOWN = {
    pynvml.nvmlClocksThrottleReasonHwSlowdown: "HW slowdown",
    pynvml.nvmlClocksThrottleReasonHwThermalSlowdown: "HW thermal slowdown",
    pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown: "HW power brake",
}
_HARDWARE_SLOWDOWN_MASK = sum(_HARDWARE_SLOWDOWN)
T = TypeVar("T")


class NvidiaUnavailable(RuntimeError):
    """NVML cannot be used on this machine; the message says what is missing and what to do."""


@dataclasses.dataclass
class _Health:
    """What the agent knows about one GPU's hardware health, across heartbeats."""

    lost: bool = False
    throttled_heartbeats: int = 0
    # The reason last logged; None while healthy.
    reason: str | None = None


def _cuda_version_text(version: int) -> str:
    """12040 -> "12.4", as NVML encodes it (1000 * major + 10 * minor)."""
    return f"{version // 1000}.{version % 1000 // 10}"


class NvidiaGpus:
    """The GPUs of this machine as NVML sees them; open() initialises NVML, close() shuts it down."""

    def __init__(self, throttle_heartbeats: int = DEFAULT_THROTTLE_HEARTBEATS) -> None:
        if throttle_heartbeats < 1:
            raise ValueError(f"throttle_heartbeats must be at least 1, got {throttle_heartbeats}.")
        self.throttle_heartbeats = throttle_heartbeats
        self.driver_version = ""
        self.cuda_version = ""
        self._handles: dict[int, Any] = {}
        self._mig_uuids: dict[int, list[str]] = {}
        self._health: dict[int, _Health] = {}
        self._unsupported: set[tuple[int, str]] = set()
        self._open = False

    @classmethod
    def open(cls, throttle_heartbeats: int = DEFAULT_THROTTLE_HEARTBEATS) -> NvidiaGpus:
        """Initialise NVML; raise NvidiaUnavailable naming what is missing when there is no driver."""
        gpus = cls(throttle_heartbeats)
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            raise NvidiaUnavailable(
                "NVIDIA driver not found: libnvidia-ml.so.1 could not be loaded; "
                "install the driver, or run with --cpu-fallback to serve CPU tasks"
            ) from None
        except pynvml.NVMLError_DriverNotLoaded:
            raise NvidiaUnavailable(
                "NVIDIA driver not loaded: libnvidia-ml.so.1 was found but the kernel driver is not running "
                "(nvmlInit: Driver Not Loaded); load it (see nvidia-smi), or run with --cpu-fallback to serve CPU tasks"
            ) from None
        except pynvml.NVMLError as exc:
            raise NvidiaUnavailable(
                f"NVIDIA driver unusable: nvmlInit failed ({exc}); "
                "fix the driver installation (see nvidia-smi), or run with --cpu-fallback to serve CPU tasks"
            ) from None
        gpus._open = True
        gpus.driver_version = gpus._system(pynvml.nvmlSystemGetDriverVersion, "driver version") or ""
        cuda = gpus._system(pynvml.nvmlSystemGetCudaDriverVersion_v2, "CUDA version")
        if cuda is None:
            cuda = gpus._system(pynvml.nvmlSystemGetCudaDriverVersion, "CUDA version")
        gpus.cuda_version = _cuda_version_text(cuda) if cuda else ""
        return gpus

    def close(self) -> None:
        """Shut NVML down; safe to call twice."""
        if self._open:
            self._open = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("nvmlShutdown failed: %s", exc)

    # ----- registration -----------------------------------------------------------------------

    def labels(self) -> list[str]:
        """Worker labels describing the driver: "driver=550.54.15", "cuda=12.4" (those NVML knows)."""
        labels = []
        if self.driver_version:
            labels.append(f"driver={self.driver_version}")
        if self.cuda_version:
            labels.append(f"cuda={self.cuda_version}")
        return labels

    def discover(self) -> list[common_pb2.Gpu]:
        """Return the usable GPUs, indexed as NVML indexes them; a GPU already lost is left out."""
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            raise NvidiaUnavailable(f"NVML cannot count the GPUs ({exc}); check nvidia-smi") from None
        gpus = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except pynvml.NVMLError as exc:
                log.error("GPU %d is not usable and will not be offered: %s", index, exc)
                continue
            self._handles[index] = handle
            self._health[index] = _Health()
            gpu = common_pb2.Gpu(index=index)
            gpu.name = self._query(index, "name", pynvml.nvmlDeviceGetName, handle) or ""
            gpu.uuid = self._query(index, "UUID", pynvml.nvmlDeviceGetUUID, handle) or ""
            memory = self._query(index, "memory", pynvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                gpu.memory_total_mb = memory.total // MIB
                gpu.memory_free_mb = memory.free // MIB
            capability = self._query(index, "compute capability", pynvml.nvmlDeviceGetCudaComputeCapability, handle)
            if capability is not None:
                major, minor = capability
                gpu.compute_capability = float(f"{major}.{minor}")
            mig_mode = self._query(index, "MIG mode", pynvml.nvmlDeviceGetMigMode, handle)
            gpu.mig = mig_mode is not None and mig_mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            if gpu.mig:
                self._mig_uuids[index] = self._mig_instances(index, handle)
            if self._health[index].lost:
                log.error("GPU %d fell off the bus while being discovered and will not be offered", index)
                continue
            log.info(
                "GPU %d: %s, %d MiB, compute capability %.1f, %s%s",
                index,
                gpu.name,
                gpu.memory_total_mb,
                gpu.compute_capability,
                gpu.uuid,
                f", MIG with {len(self._mig_uuids[index])} instance(s)" if gpu.mig else "",
            )
            gpus.append(gpu)
        return gpus

    def _mig_instances(self, index: int, handle: Any) -> list[str]:
        """UUIDs of the MIG instances configured on a MIG-enabled GPU (slots that are empty are skipped)."""
        uuids = []
        for slot in range(self._query(index, "MIG device count", pynvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                uuids.append(pynvml.nvmlDeviceGetUUID(mig))
            except pynvml.NVMLError_NotFound:
                continue
            except pynvml.NVMLError as exc:
                log.warning("GPU %d: cannot read MIG instance %d: %s", index, slot, exc)
        return uuids

    def task_env(self, indices: Sequence[int]) -> dict[str, str]:
        """Environment of a task given these GPUs: CUDA_VISIBLE_DEVICES (MIG instance UUIDs on MIG GPUs).

        CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA number GPUs as NVML does, so index i is the same GPU.
        """
        devices: list[str] = []
        for index in indices:
            devices.extend(self._mig_uuids.get(index) or [str(index)])
        return {"CUDA_VISIBLE_DEVICES": ",".join(devices), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    # ----- heartbeats -------------------------------------------------------------------------

    def stats(self, gpus: Sequence[common_pb2.Gpu], busy: Iterable[int] = ()) -> list[common_pb2.GpuStats]:
        """Return live stats of `gpus` with healthy=False for a GPU the hardware says is failing.

        Matches the Agent's gpu_stats signature; `busy` is not needed, NVML measures the load.
        """
        return [self._gpu_stats(gpu.index) for gpu in gpus]

    def _gpu_stats(self, index: int) -> common_pb2.GpuStats:
        stats = common_pb2.GpuStats(index=index)
        health = self._health.setdefault(index, _Health())
        handle = self._handles.get(index)
        ecc = reasons = None
        if handle is not None and not health.lost:
            utilization = self._query(index, "utilization", pynvml.nvmlDeviceGetUtilizationRates, handle)
            if utilization is not None:
                stats.utilization = float(utilization.gpu)
            memory = self._query(index, "memory", pynvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                stats.memory_used_mb = memory.used // MIB
            temperature = self._query(
                index, "temperature", pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
            )
            if temperature is not None:
                stats.temperature_c = float(temperature)
            milliwatts = self._query(index, "power", pynvml.nvmlDeviceGetPowerUsage, handle)
            if milliwatts is not None:
                stats.power_w = milliwatts / 1000
            ecc = self._query(
                index,
                "ECC errors",
                pynvml.nvmlDeviceGetTotalEccErrors,
                handle,
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_VOLATILE_ECC,
            )
            reasons = self._query(index, "clock event reasons", _clock_event_reasons, handle)
        reason = self._judge(index, health, ecc, reasons)
        stats.healthy = reason is None
        return stats

    def _judge(self, index: int, health: _Health, ecc: int | None, reasons: int | None) -> str | None:
        """Return why the GPU is unhealthy now, or None; log when that changes."""
        slowdown = (reasons or 0) & _HARDWARE_SLOWDOWN_MASK
        health.throttled_heartbeats = health.throttled_heartbeats + 1 if slowdown else 0
        reason = None
        if health.lost:
            # A GPU that fell off the bus does not come back without a reset or a reboot.
            reason = "fell off the bus (NVML: GPU is lost); it needs a reset or a reboot"
        elif ecc:
            reason = f"{ecc} uncorrected ECC error(s) since the driver loaded; memory contents cannot be trusted"
        elif health.throttled_heartbeats >= self.throttle_heartbeats:
            names = ", ".join(name for bit, name in _HARDWARE_SLOWDOWN.items() if slowdown & bit)
            reason = f"hardware is slowing its clocks ({names}) for {self.throttle_heartbeats}+ consecutive heartbeats"
        if reason != health.reason:
            if reason is not None:
                log.warning("GPU %d is unhealthy: %s", index, reason)
            else:
                log.info("GPU %d is healthy again", index)
            health.reason = reason
        return reason

    # ----- NVML calls -------------------------------------------------------------------------

    def _query(self, index: int, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Call one NVML device query; None when NVML cannot answer (the field keeps its default)."""
        health = self._health.setdefault(index, _Health())
        if health.lost:
            return None  # every query of a lost GPU fails, and on real hardware slowly
        try:
            return fn(*args)
        except pynvml.NVMLError_NotSupported:
            if (index, what) not in self._unsupported:
                self._unsupported.add((index, what))
                log.debug("GPU %d does not report %s", index, what)
        except pynvml.NVMLError_GpuIsLost:
            health.lost = True
        except pynvml.NVMLError as exc:
            log.warning("GPU %d: cannot read %s: %s", index, what, exc)
        return None

    def _system(self, fn: Callable[[], T], what: str) -> T | None:
        try:
            return fn()
        except pynvml.NVMLError as exc:
            log.debug("NVML does not report the %s: %s", what, exc)
            return None


def _clock_event_reasons(handle: Any) -> int:
    """Why clocks are reduced now; drivers (and nvidia-ml-py) older than r535 only know the "throttle reasons" name."""
    current = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if current is not None:
        try:
            return int(current(handle))
        except pynvml.NVMLError_FunctionNotFound:
            pass
    return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
