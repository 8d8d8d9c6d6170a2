"""A real Ray head on loopback (``ray start --head --block``) for the tests that submit jobs:
every port its own (the dashboard agent's default 52365 is taken by any other Ray on the
machine, and then no job can be submitted), its own temp dir and process group, token auth on."""

from __future__ import annotations

import contextlib
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
from pathlib import Path

import pytest

_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
          "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


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


@contextlib.contextmanager
def loopback_head(bin_dir: Path, env: dict[str, str], log: Path, *, head_env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Iterator[str]:
    """Start the head, wait (at most 3 minutes) until its dashboard answers, yield its URL;
    stop it by its process group (SIGTERM, then SIGKILL) and remove its temp dir."""
    ports = [free_port() for _ in _PORTS]
    ray_tmp = tempfile.mkdtemp(prefix="alscale-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    with open(log, "w") as fh:
        head = subprocess.Popen(
            [str(bin_dir / "ray"), "start", "--head", "--block", "--dashboard-host=127.0.0.1", "--num-cpus=3",
             "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={ray_tmp}",
             *(f"--{name}={port}" for name, port in zip(_PORTS, ports))],
            env=head_env or env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports[1]}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # it answers (401 without the token): it is up
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not come up: {log.read_text()[-2000:]}")
                time.sleep(1)
        yield url
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(8)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
        except ProcessLookupError:  # it had already exited
            pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
