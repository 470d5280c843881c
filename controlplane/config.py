"""Settings of one control-plane process, with the defaults `gpucp serve` uses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    db: str = "gpucp.db"
    # "NORMAL" survives a crash of the process; "FULL" also survives power loss.
    db_synchronous: str = "NORMAL"
    heartbeat_timeout_s: float = 10.0
    max_queue: int = 100_000
    max_payload_bytes: int = 4 * 1024 * 1024
    default_timeout_ms: int = 3_600_000
    default_max_retries: int = 3
    retry_base_s: float = 0.5
    retry_cap_s: float = 30.0
    # A task that keeps losing its worker may be what kills it: fail it after this many losses.
    max_worker_losses: int = 5
    # Scoring weights of the placement core.
    w_availability: float = 0.5
    w_success: float = 0.3
    w_speed: float = 0.2

    @property
    def heartbeat_interval_ms(self) -> int:
        # Three heartbeats per timeout: one lost packet never kills a worker.
        return max(50, int(self.heartbeat_timeout_s * 1000 / 3))
