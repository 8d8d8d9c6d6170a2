"""A real Ray cluster on loopback for the tests that submit jobs: a head (``ray start --head
--block``: dashboard and Jobs API) and, optionally, worker nodes (``ray start --address ...
--block``). Every port is its own (the dashboard agent's default 52365 is taken by any other
Ray on the machine, and then no job can be submitted), and so is every node's temp dir and
session: a worker node is killed whole — raylet, agents and shard workers — by its session,
and nothing of another Ray on the machine is touched. Token auth is on."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
          "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
_NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
               "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
#: Node-death detection in about 2 s (Ray's defaults take ~30 s to call a silent node dead).
FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                      "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(bin_dir: Path) -> dict[str, str]:
    """The environment of a client of the head: ``bin_dir`` first on PATH, a fresh token."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


def _session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (``/proc/PID/stat`` field 6), zombies excluded."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@dataclass
class Node:
    """One ``ray start --block`` process (its session holds every process of the node)."""

    proc: subprocess.Popen
    log: Path
    _raylet: int | None = None

    @property
    def raylet_pid(self) -> int | None:
        if self._raylet is None:
            out = subprocess.run(["pgrep", "-g", str(self.proc.pid), "-f", "raylet/raylet"], capture_output=True,
                                 text=True).stdout.split()
            self._raylet = int(out[0]) if out else None
        return self._raylet

    @property
    def node_id(self) -> str:
        """The node's Ray id (its raylet's ``--node_id``)."""
        pid = self.raylet_pid
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
        return next((a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--node_id=")), "")



class LoopbackCluster:
    """A head and worker nodes on 127.0.0.1 (see the module docstring); :meth:`close` stops all."""

    def __init__(self, bin_dir: Path, env: dict[str, str], root: Path, *, head_cpus: int = 3,
                 head_env: dict[str, str] | None = None, cwd: Path | None = None,
                 system_config: dict[str, Any] | None = None) -> None:
        self.bin_dir, self.env, self.root, self.cwd = bin_dir, env, root, cwd
        self.tmp = tempfile.mkdtemp(prefix="alscale-ray-", dir="/tmp")  # short: socket paths must fit 107 bytes
        self.ports = [free_port() for _ in _PORTS]
        self.url = f"http://127.0.0.1:{self.ports[1]}"
        self.gcs = f"127.0.0.1:{self.ports[0]}"
        extra = [f"--system-config={json.dumps(system_config)}"] if system_config else []
        self.head = self._start("head", [
            "--head", "--dashboard-host=127.0.0.1", f"--num-cpus={head_cpus}", f"--temp-dir={self.tmp}",
            *(f"--{name}={port}" for name, port in zip(_PORTS, self.ports)), *extra], head_env or env)
        self.workers: list[Node] = []

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Node:
        log = self.root / f"{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen([str(self.bin_dir / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                                     "--num-gpus=0", "--disable-usage-stats", *args], env=env, cwd=self.cwd,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        return Node(proc, log)

    def wait_for_head(self, timeout: float = 180) -> str:
        """Wait until the dashboard answers; its URL."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/version", timeout=2)
                return self.url
            except urllib.error.HTTPError:  # it answers (401 without the token): it is up
                return self.url
            except OSError:
                if self.head.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not come up: {self.head.log.read_text()[-2000:]}")
                time.sleep(0.5)

    def add_workers(self, n: int, num_cpus: int = 1, object_store_bytes: int = 100 << 20) -> list[Node]:
        """Start ``n`` worker nodes at once (each its own temp dir), once the head's GCS listens."""
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.ports[0]), timeout=2).close()
                break
            except OSError:
                if self.head.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not come up: {self.head.log.read_text()[-2000:]}")
                time.sleep(0.3)
        new = []
        for _ in range(n):
            i = len(self.workers)
            new.append(self._start(f"worker{i}", [
                f"--address={self.gcs}", f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_bytes}",
                f"--temp-dir={self.tmp}/w{i}", *(f"--{name}={free_port()}" for name in _NODE_PORTS)], self.env))
            self.workers.append(new[-1])
        return new

    def wait_for_workers(self, nodes: list[Node], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            while "Ray runtime started" not in node.log.read_text():
                if node.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray worker node did not come up: {node.log.read_text()[-2000:]}")
                time.sleep(0.3)

    def busy_node(self, title: str) -> Node | None:
        """The first worker node with a worker process titled ``title`` now (Ray's process
        title, e.g. ``ray::ShardWorker.score_chunk`` while that method runs): one pass over
        ``/proc``, fast enough to catch calls of a few milliseconds."""
        from tests.runtime.killing import child_running

        raylets = {node.raylet_pid: node for node in self.workers}
        hit = child_running(raylets, title)
        return None if hit is None else raylets[hit[1]]

    def kill(self, node: Node) -> None:
        """Lose a whole worker node at once: SIGKILL to every process of its session — ``ray
        start``, raylet, agents and the shard workers, which the raylet puts in process groups
        of their own (a process-group kill would leave them serving calls for a while)."""
        for _ in range(50):
            pids = _session_pids(node.proc.pid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        node.proc.wait(30)
        self.workers.remove(node)

    def close(self) -> None:
        for node in list(self.workers):
            self.kill(node)
        try:
            os.killpg(self.head.proc.pid, signal.SIGTERM)
            self.head.proc.wait(3)  # (then SIGKILL: a head with lost nodes drains for up to 30 s)
        except subprocess.TimeoutExpired:
            os.killpg(self.head.proc.pid, signal.SIGKILL)
            self.head.proc.wait(30)
        except ProcessLookupError:  # it had already exited
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def loopback_head(bin_dir: Path, env: dict[str, str], log: Path, *, head_env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Iterator[str]:
    """A head alone (3 CPUs); wait (at most 3 minutes) until its dashboard answers, yield its
    URL; stop it by its process group (SIGTERM, then SIGKILL after 3 s) and remove its temp dir."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cluster = LoopbackCluster(bin_dir, env, log.parent, head_env=head_env, cwd=cwd)
    try:
        yield cluster.wait_for_head()
    finally:
        cluster.close()
