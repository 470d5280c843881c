"""The environment of a pod the autoscaler creates: the contract between the control plane that
creates the pod and the agent that runs inside it."""

from __future__ import annotations

__all__ = ["POD_COST_ENV", "POD_ID_ENV", "POD_POOL_ENV", "RUNPOD_API_KEY_ENV"]

# Set by the autoscaler at create time, beside gpucp.client.SERVER_ENV (the address its agent dials).
POD_POOL_ENV = "GPUCP_POOL"  # the autoscaler pool the pod belongs to
POD_COST_ENV = "GPUCP_COST_PER_HOUR"  # the pod's price, so its agent need not ask RunPod
# Set by RunPod inside every pod (the key is the pod's own); the control plane reads the key too.
POD_ID_ENV = "RUNPOD_POD_ID"
RUNPOD_API_KEY_ENV = "RUNPOD_API_KEY"
