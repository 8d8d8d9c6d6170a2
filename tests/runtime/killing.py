"""Kill shard worker processes of *this* test session's Ray only (other Ray instances may run
on the machine: their workers carry the same process titles)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path


def raylet_pids() -> list[int]:
    """The raylet processes of the Ray this process is connected to and started (their
    children are its worker processes)."""
    import ray

    node = ray._private.worker._global_node
    return [p.process.pid for p in node.all_processes.get("raylet", [])] if node is not None else []


def child_running(parents: Iterable[int | None], title: str) -> tuple[int, int] | None:
    """``(pid, parent)`` of a child of one of ``parents`` whose process title starts with
    ``title`` (Ray sets ``ray::ShardWorker.<method>`` while a method runs), or None: one pass
    over ``/proc`` — no subprocess per poll, so calls of a few milliseconds are caught."""
    wanted = {p for p in parents if p is not None}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid in wanted and (stat.parent / "cmdline").read_bytes().startswith(title.encode()):
                return int(stat.parent.name), ppid
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    return None


def kill_when(title: str, killed: list, parents: list[int] | None = None, timeout: float = 120) -> threading.Thread:
    """Kill the first worker process (a child of one of ``parents``, by default this session's
    raylets) whose title shows it is running ``title`` (Ray sets ``ray::ShardWorker.<method>``
    while a method runs)."""
    parents = raylet_pids() if parents is None else parents
    assert parents, "no raylet of this session to find its workers by"

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not killed:
            hit = child_running(parents, f"ray::ShardWorker.{title}")
            if hit is not None:
                os.kill(hit[0], signal.SIGKILL)
                killed.append(hit[0])
                return
            time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
