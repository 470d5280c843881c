"""Runs N real agents in one process, for the reconnect-storm trial: `python storm_agents.py ADDR PREFIX N`.

Every registration is appended to the file named by $GPUCP_STORM_LOG as "<worker_id> <monotonic>",
so the test can tell that all of them got back in after the control plane restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys

import agents.runtime as runtime
from agents import Agent


async def main(address: str, prefix: str, count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log_path = os.environ["GPUCP_STORM_LOG"]

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("registered with"):
                with open(log_path, "a") as f:
                    f.write(f"{record.args[1]} {asyncio.get_running_loop().time():.3f}\n")  # type: ignore[index]

    runtime.log.addHandler(Recorder())
    runtime.log.setLevel(logging.INFO)
    runtime.log.propagate = False
    fleet = [
        Agent(server=address, worker_id=f"{prefix}-{i}", slots=1, install_signal_handlers=False)
        for i in range(count)
    ]
    await asyncio.gather(*(agent.run() for agent in fleet))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
