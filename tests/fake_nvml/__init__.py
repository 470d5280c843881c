"""Build the fake libnvidia-ml.so.1 and describe the box it pretends to be.

The library answers NVML calls from a KEY=VALUE file named by $FAKE_NVML_CONFIG, re-read on every
call; `FakeBox.write()` replaces that file atomically, so a test can inject failures into a running
agent (ECC errors, a GPU lost, throttling) between two heartbeats.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["CONFIG_ENV", "SOURCE", "FakeBox", "FakeGpu", "build", "mixed_box"]

SOURCE = Path(__file__).with_name("fake_nvml.c")
CONFIG_ENV = "FAKE_NVML_CONFIG"
LIBRARY_NAME = "libnvidia-ml.so.1"

# NVML return codes a test may want to make nvmlInit fail with.
DRIVER_NOT_LOADED = 9


def build(directory: Path) -> Path:
    """Compile the fake into `directory`/libnvidia-ml.so.1 and return its path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("building the fake libnvidia-ml.so.1 needs gcc (or cc) on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    library = directory / LIBRARY_NAME
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", f"-Wl,-soname,{LIBRARY_NAME}"]
        + ["-o", str(library), str(SOURCE)],
        check=True,
        capture_output=True,
    )
    return library


@dataclasses.dataclass
class FakeGpu:
    """One GPU as NVML reports it; None for a query makes NVML answer NOT_SUPPORTED."""

    name: str
    uuid: str
    memory_total_mib: int
    cc: str
    memory_used_mib: int = 0
    ecc_uncorrected: int | None = 0
    utilization: int | None = 0
    temperature: int | None = 35
    power_mw: int | None = 60_000
    throttle_reasons: int | None = 0
    mig: int | None = 0
    mig_uuids: list[str] | None = None
    lost: bool = False


@dataclasses.dataclass
class FakeBox:
    """The machine the fake library describes, written to `path` for the library to read."""

    path: Path
    gpus: list[FakeGpu]
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    init_error: int = 0

    def write(self) -> None:
        lines = [
            f"init_error={self.init_error}",
            f"driver_version={self.driver_version}",
            f"cuda_version={self.cuda_version}",
            f"gpu_count={len(self.gpus)}",
        ]
        for i, gpu in enumerate(self.gpus):
            for field in dataclasses.fields(gpu):
                value = getattr(gpu, field.name)
                if value is None:
                    text = "unsupported"
                elif isinstance(value, bool):
                    text = "1" if value else "0"
                elif isinstance(value, list):
                    text = ",".join(value)
                else:
                    text = str(value)
                lines.append(f"gpu.{i}.{field.name}={text}")
        scratch = self.path.with_name(self.path.name + ".tmp")
        scratch.write_text("\n".join(lines) + "\n")
        os.replace(scratch, self.path)  # the library never sees a half-written file

    def env(self, library_dir: Path) -> dict[str, str]:
        """Environment variables that make a child process load this fake as its NVIDIA driver."""
        path = str(library_dir) + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")
        return {CONFIG_ENV: str(self.path), "LD_LIBRARY_PATH": path.rstrip(os.pathsep)}


def mixed_box(path: Path) -> FakeBox:
    """2x A100 80GB (ECC on) + 1x T4 16GB without ECC counters or a power reading."""
    box = FakeBox(
        path,
        [
            FakeGpu("NVIDIA A100-SXM4-80GB", "GPU-a100-0000", 81920, "8.0", memory_used_mib=1024, power_mw=95_000),
            FakeGpu("NVIDIA A100-SXM4-80GB", "GPU-a100-0001", 81920, "8.0"),
            FakeGpu(
                "Tesla T4", "GPU-t4-0002", 15360, "7.5", ecc_uncorrected=None, power_mw=None, throttle_reasons=None
            ),
        ],
    )
    box.write()
    return box
