"""Kill shard worker processes of *this* test session's Ray only (other Ray instances may run
on the machine: their workers carry the same process titles)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time


def raylet_pids() -> list[int]:
    """The raylet processes of the Ray this process is connected to and started (their
    children are its worker processes)."""
    import ray

    node = ray._private.worker._global_node
    return [p.process.pid for p in node.all_processes.get("raylet", [])] if node is not None else []


def kill_when(title: str, killed: list, parents: list[int] | None = None, timeout: float = 120) -> threading.Thread:
    """Kill the first worker process (a child of one of ``parents``, by default this session's
    raylets) whose title shows it is running ``title`` (Ray sets ``ray::ShardWorker.<method>``
    while a method runs)."""
    parents = raylet_pids() if parents is None else parents
    assert parents, "no raylet of this session to find its workers by"

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not killed:
            for parent in parents:
                pids = subprocess.run(["pgrep", "-P", str(parent), "-f", f"ray::ShardWorker.{title}"],
                                      capture_output=True, text=True).stdout.split()
                if pids:
                    os.kill(int(pids[0]), signal.SIGKILL)
                    killed.append(int(pids[0]))
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
