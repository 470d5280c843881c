"""The RunPod autoscaler: keeps each pool of pods between its min and max, following the queue.

- config.py: the config file and its schema, checked before the control plane listens;
- view.py: the read-only view of the control plane it works from (control_view.py builds it);
- plan.py: its decisions, pure functions from what it sees to actions;
- driver.py: the I/O around them (timers, RunPod calls through runpod.py, the decision log);
- shapes.py: which pending tasks a pool's pods could run; costs.py: pod bills and tenants' shares.
"""

from controlplane.autoscaler.config import AutoscaleConfig, AutoscaleConfigError, PoolConfig, load_config, parse_config
from controlplane.autoscaler.control_view import ControlPlaneView
from controlplane.autoscaler.driver import Autoscaler

__all__ = [
    "AutoscaleConfig",
    "AutoscaleConfigError",
    "Autoscaler",
    "ControlPlaneView",
    "PoolConfig",
    "load_config",
    "parse_config",
]
