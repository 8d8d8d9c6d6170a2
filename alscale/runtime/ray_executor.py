"""The Ray executor: the same :class:`ShardWorker` as Ray actors, one per shard.

With :mod:`alscale.runtime.ray_jobs`, the only modules that import ``ray``. ``ray.init()``
with no address starts a local Ray (dashboard on loopback); an address joins a cluster.
Large arguments that go to every worker (e.g. the labelled ids) are put into the object
store once and passed by reference.

Placement: actors ask for ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (fractions
allowed; Ray does not split GPU memory) and are spread over the nodes (Ray's ``SPREAD``
strategy). Unset, both default to the cluster's *available* resources shared evenly (so a
driver running as a Ray job keeps its own CPU). If the actors are not all placed within
``startup_timeout_s`` — the cluster cannot hold the request, or an autoscaler did not add
nodes in time — the executor gives up with an error naming the request and the cluster's
resources instead of waiting forever. The coordinator itself runs in the driver process
(the head node for ``alscale submit``: one CPU, no GPU).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, WorkerLostError
from alscale.runtime.worker import ShardWorker

logger = logging.getLogger(__name__)

_PUT_THRESHOLD_BYTES = 1 << 16
#: Calls that change no worker state: not replayed after a restart.
_STATELESS = frozenset({"ready", "n_rows", "n_candidates", "topk", "count_ahead", "softrank_candidates"})


def _job_runtime_env(py_modules: Sequence[str]) -> dict[str, Any]:
    """``ray.init``'s ``runtime_env`` for a Ray this executor connects itself: ship
    ``py_modules`` (a user strategy's module, see :mod:`alscale.runtime.shipping`) to every
    worker — unless this process is the driver of a submitted job, whose runtime environment
    (``alscale submit``: alscale and the module) applies already."""
    if not py_modules or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return {}
    return {"runtime_env": {"py_modules": list(py_modules)}}


def _actor_runtime_env(ray: Any, py_modules: Sequence[str]) -> dict[str, Any]:
    """The actors' ``runtime_env`` option when Ray was started by someone else: Ray uploads
    local modules only at the job level, so a module the job does not ship already is put on
    the workers' ``PYTHONPATH`` (right on one machine or a shared filesystem; on a remote
    cluster ship it yourself: ``ray.init(runtime_env={"py_modules": [...]})``)."""
    if not py_modules:
        return {}
    job_env = ray.get_runtime_context().runtime_env or {}
    if job_env.get("py_modules") or job_env.get("working_dir"):
        return {}
    dirs = [str(Path(p).parent) for p in py_modules]
    logger.warning("Ray was started outside alscale: the strategy's module %s reaches the workers through "
                   "PYTHONPATH (local paths), not uploaded", ", ".join(py_modules))
    path = os.pathsep.join([*dirs, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"runtime_env": {"env_vars": {"PYTHONPATH": path}}}


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on an explicit ``host:port`` (or ``ray://host:port``) nobody listens on;
    ``ray.init`` itself keeps retrying such an address for minutes."""
    if not address or address in ("local", "auto"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    import socket

    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise AlscaleError(f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}; start it "
                           "(`ray start --head`) or fix runtime.address") from None


class RayExecutor:
    """``n_workers`` Ray actors running :class:`ShardWorker`.

    Args:
        n_workers: number of shard actors.
        address: Ray cluster address (``None``: join ``RAY_ADDRESS`` if set, else start a
            local Ray; ``"local"`` forces a new local instance).
        cpus_per_worker: CPUs reserved per actor (default: the cluster's CPUs shared evenly).
        gpus_per_worker: GPUs per actor; ``None`` shares the cluster's GPUs evenly (at most
            one each), 0 keeps workers on CPU.
        startup_timeout_s: how long to wait for every actor to be placed and started.
        max_restarts: how often one worker may die and be rebuilt before the job fails.
    """

    name = "ray"

    def __init__(
        self,
        n_workers: int,
        *,
        address: str | None = None,
        cpus_per_worker: float | None = None,
        gpus_per_worker: float | None = None,
        startup_timeout_s: float = 300.0,
        max_restarts: int = 3,
        py_modules: Sequence[str] = (),
    ) -> None:
        import ray

        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            # Ray >= 2.59 turns on token auth for local clusters; keep the caller's choice,
            # and default to "disabled" only for a Ray this process starts itself.
            if address in (None, "local") and not os.environ.get("RAY_ADDRESS"):
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                # A new local Ray, never a `ray start` cluster that happens to run on this
                # machine (or a stale record of one); runtime.address: auto joins that.
                address = "local"
            _check_reachable(address)
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=True, **_job_runtime_env(py_modules))
            except ConnectionError as exc:
                raise AlscaleError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
            self._owns_ray = True
        total, free = ray.cluster_resources(), ray.available_resources()
        free_cpus = float(free.get("CPU", total.get("CPU", 1.0)))
        free_gpus = float(free.get("GPU", 0.0))
        if cpus_per_worker is None:
            cpus_per_worker = max(0.01, math.floor(100 * free_cpus / n_workers) / 100)
        if gpus_per_worker is None:
            gpus_per_worker = min(1.0, math.floor(100 * free_gpus / n_workers) / 100) if free_gpus else 0.0
        self.cpus_per_worker = float(cpus_per_worker)
        self.gpus_per_worker = float(gpus_per_worker)
        self.max_restarts = int(max_restarts)
        self._history: list[list[tuple[str, tuple]]] = [[] for _ in range(n_workers)]
        self._deaths = [0] * n_workers
        threads = max(1, int(self.cpus_per_worker))
        actor_cls = ray.remote(ShardWorker)
        env = {} if self._owns_ray else _actor_runtime_env(ray, py_modules)
        self.actors = [
            actor_cls.options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                              scheduling_strategy="SPREAD", max_restarts=max_restarts,
                              max_task_retries=0, **env).remote(threads)
            for _ in range(n_workers)
        ]
        # Wait until every actor process is up (imports done), so start-up is not billed
        # to the first real call; give up with a clear error when they cannot be placed.
        pending = [actor.ready.remote() for actor in self.actors]
        ready, not_ready = ray.wait(pending, num_returns=len(pending), timeout=startup_timeout_s)
        if not_ready:
            self.close()
            raise AlscaleError(
                f"Ray could not start {len(not_ready)} of {n_workers} shard workers within {startup_timeout_s:.0f} s: "
                f"each asks for {self.cpus_per_worker:g} CPU and {self.gpus_per_worker:g} GPU; the cluster has "
                f"{float(total.get('CPU', 0)):g} CPUs ({free_cpus:g} free) and {float(total.get('GPU', 0)):g} GPUs "
                f"({free_gpus:g} free); lower runtime.shards, runtime.cpus_per_worker or runtime.gpus_per_worker, "
                "or add nodes")
        ray.get(ready)

    @property
    def n_workers(self) -> int:
        return len(self.actors)

    def map(self, method: str, args_per_worker: Sequence[tuple]) -> list:
        """Call ``method`` on every actor concurrently; results in worker order.

        A worker whose process dies is restarted by Ray (``max_restarts``) and brought back to
        the state it had by replaying, in order, every call it had completed (loading, model
        start-up, scoring chunks, selection steps: all deterministic, so the rebuilt state is
        bit-identical), then the failed call is retried. After ``max_restarts`` deaths of one
        worker the job fails with :class:`WorkerLostError`.
        """
        puts: dict[int, Any] = {}

        def by_ref(arg: Any) -> Any:
            # The same large array sent to every worker goes into the object store once.
            if isinstance(arg, np.ndarray) and arg.nbytes >= _PUT_THRESHOLD_BYTES:
                if id(arg) not in puts:
                    puts[id(arg)] = self._ray.put(arg)
                return puts[id(arg)]
            return arg

        calls = [tuple(by_ref(a) for a in args) for args in args_per_worker]
        if len(calls) != len(self.actors):
            raise ValueError(f"{len(calls)} argument tuples for {len(self.actors)} workers")
        refs = [getattr(actor, method).remote(*args) for actor, args in zip(self.actors, calls)]
        results: list[Any] = [None] * len(refs)
        for i, ref in enumerate(refs):
            results[i] = self._get_or_recover(i, ref, method, calls[i])
        if method not in _STATELESS:
            for i, args in enumerate(calls):
                if method == "load":  # a new shard: only the model built for it still matters
                    self._history[i] = [c for c in self._history[i] if c[0] == "prepare_model"][-1:]
                self._history[i].append((method, args))
        return results

    def _get_or_recover(self, i: int, ref: Any, method: str, args: tuple) -> Any:
        ray = self._ray
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise cause from None
            except ray.exceptions.RayActorError as exc:
                self._deaths[i] += 1
                if self._deaths[i] > self.max_restarts:
                    raise WorkerLostError(
                        f"shard worker {i} died during {method} ({type(exc).__name__}) "
                        f"{self._deaths[i]} time(s), more than runtime.max_restarts={self.max_restarts}; "
                        "nothing was written") from None
                logger.warning("shard worker %d died during %s; restarting it and replaying its %d completed calls",
                               i, method, len(self._history[i]))
                ref = self._replay(i, method, args)

    def _replay(self, i: int, method: str, args: tuple) -> Any:
        """Rebuild worker ``i``'s state on its restarted process, then resubmit the failed call."""
        actor = self.actors[i]
        ray = self._ray
        deadline = time.monotonic() + 300
        while True:  # the restarted process may take a moment; calls before it is up fail
            try:
                ray.get(actor.ready.remote())
                break
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        for past_method, past_args in self._history[i]:
            ray.get(getattr(actor, past_method).remote(*past_args))
        return getattr(actor, method).remote(*args)

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()

    def describe(self) -> dict:
        return {
            "executor": self.name,
            "workers": self.n_workers,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            "ray_version": self._ray.__version__,
        }
