"""What following the serving replica costs a client: one address against a list and a dns:/// name.

A single HOST:PORT keeps grpc's default policy; a list (here a dead address and the live one) and
a dns:/// name get round_robin with client-side health checks (gpucp/channels.py). Starts one
`gpucp serve` on loopback and prints, per form of address, the first call through a new Client
(connect, the health check's first answer, the call) and later calls on the same Client.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

from common import start_control_plane, stop_processes
from gpucp import Client


def dead_address() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=30, help="new Clients per form of address")
    parser.add_argument("--calls", type=int, default=20, help="later calls per Client")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        address, process = start_control_plane(Path(tmp))
        try:
            port = address.rpartition(":")[2]
            forms = {"one address": address, "list: dead, serving": f"{dead_address()},{address}",
                     "dns:///localhost": f"dns:///localhost:{port}"}
            print(f"{'address':22s} {'first call p50':>15s} {'later calls p50':>16s}")
            for name, server in forms.items():
                first, later = [], []
                for _ in range(args.clients):
                    start = time.perf_counter()
                    with Client(server) as client:
                        client.stats()
                        first.append(time.perf_counter() - start)
                        for _ in range(args.calls):
                            start = time.perf_counter()
                            client.stats()
                            later.append(time.perf_counter() - start)
                print(f"{name:22s} {statistics.median(first) * 1e3:12.2f} ms {statistics.median(later) * 1e3:13.3f} ms")
        finally:
            stop_processes([process])


if __name__ == "__main__":
    main()
