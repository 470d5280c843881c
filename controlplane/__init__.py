"""gpucp control plane: gRPC services, durable store and dispatch over the Rust core."""

from controlplane.config import ServerConfig
from controlplane.server import run, serve

__all__ = ["ServerConfig", "run", "serve"]
