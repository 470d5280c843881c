"""The identity an agent running inside a RunPod pod registers with.

The control plane's autoscaler creates pods (controlplane.autoscaler.runpod); this is the other
end: the agent in the pod reads who it is from the environment RunPod and the autoscaler gave it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpucp.pods import POD_COST_ENV, POD_ID_ENV, POD_POOL_ENV, RUNPOD_API_KEY_ENV

__all__ = ["PodIdentity", "apply_pod_identity", "pod_identity"]

log = logging.getLogger("gpucp.runpod")


@dataclass(frozen=True)
class PodIdentity:
    """Who an agent inside a RunPod pod is: registered as provider "runpod"."""

    pod_id: str
    pool: str = ""
    cost_per_hour: float = 0.0

    @property
    def labels(self) -> list[str]:
        labels = [f"pod={self.pod_id}"]
        if self.pool:
            labels.append(f"pool={self.pool}")
        return labels


def pod_identity(env: Mapping[str, str] | None = None) -> PodIdentity:
    """Read the pod's identity from its environment. Raises ValueError when RUNPOD_POD_ID is unset.

    The price is GPUCP_COST_PER_HOUR when the autoscaler set it at create time (no API call, no
    two-second SDK import on the agent's start); otherwise the API's `get_pod(RUNPOD_POD_ID)
    .costPerHr`, read with the RUNPOD_API_KEY RunPod puts into every pod.
    """
    env = os.environ if env is None else env
    pod_id = env.get(POD_ID_ENV, "").strip()
    if not pod_id:
        raise ValueError(f"--runpod needs {POD_ID_ENV} in the environment (RunPod sets it inside every pod)")
    try:
        cost = float(env.get(POD_COST_ENV, "") or 0.0)
    except ValueError:
        raise ValueError(f"{POD_COST_ENV}={env[POD_COST_ENV]!r} is not a number") from None
    if not cost and env.get(RUNPOD_API_KEY_ENV):
        cost = _price_from_api(pod_id, env[RUNPOD_API_KEY_ENV])
    return PodIdentity(pod_id=pod_id, pool=env.get(POD_POOL_ENV, ""), cost_per_hour=cost)


def _price_from_api(pod_id: str, api_key: str) -> float:
    """The pod's price as RunPod states it; 0 when it cannot be read (the agent still serves)."""
    try:
        from runpod.api import ctl_commands

        raw = ctl_commands.get_pod(pod_id, api_key=api_key)
        return float((raw or {}).get("costPerHr") or 0.0)
    except Exception as exc:  # no SDK, no network, a refused key: none of them should stop the agent
        log.warning("cannot read this pod's price from RunPod (registering 0/hour): %s", exc)
        return 0.0


def apply_pod_identity(args: Any, env: Mapping[str, str] | None = None) -> PodIdentity:
    """Fill `gpucp agent` flags the user left unset from the pod's identity (worker id, provider,
    labels, price); flags given explicitly win."""
    identity = pod_identity(env)
    args.worker_id = args.worker_id or identity.pod_id
    args.provider = args.provider or "runpod"
    given = {label.partition("=")[0] for label in args.label}
    args.label = [*args.label, *(label for label in identity.labels if label.partition("=")[0] not in given)]
    if not args.cost_per_hour:
        args.cost_per_hour = identity.cost_per_hour
    return identity
