"""GPU models as both sides name them: compute capability per model, and the model in a GPU name."""

from __future__ import annotations

__all__ = ["COMPUTE_CAPABILITY", "compute_capability_of"]

# Compute capability per model; the spelling here is also the one put into simulated GPU names.
COMPUTE_CAPABILITY: dict[str, float] = {
    "V100": 7.0,
    "T4": 7.5,
    "A10": 8.6,
    "A10G": 8.6,
    "A100": 8.0,
    "L4": 8.9,
    "L40S": 8.9,
    "RTX4090": 8.9,
    "H100": 9.0,
    "H200": 9.0,
    "B200": 10.0,
}


def compute_capability_of(gpu_name: str) -> float:
    """The compute capability of the model named in a GPU name ("NVIDIA A100 80GB" -> 8.0; 0 if unknown)."""
    squashed = gpu_name.upper().replace(" ", "").replace("-", "")
    matches = [m for m in COMPUTE_CAPABILITY if m.upper() in squashed]
    return COMPUTE_CAPABILITY[max(matches, key=len)] if matches else 0.0
