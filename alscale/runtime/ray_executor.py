"""The Ray executor: the same :class:`ShardWorker` as Ray actors, one per shard.

With :mod:`alscale.runtime.ray_jobs`, the only modules that import ``ray``. ``ray.init()``
with no address starts a local Ray (dashboard on loopback); an address joins a cluster.
Large arguments that go to every worker (e.g. the labelled ids) are put into the object
store once and passed by reference.

Placement: actors ask for ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (fractions
allowed; Ray does not split GPU memory) and are spread over the nodes (Ray's ``SPREAD``
strategy). Unset, both default to the cluster's *available* resources shared evenly. If
the actors are not all placed within ``startup_timeout_s`` — the cluster cannot hold the
request, or an autoscaler did not add nodes in time — the executor gives up with an error
naming the request and the cluster's resources instead of waiting forever. The coordinator
itself runs in the driver process (the head node for ``alscale submit``, which reserves no
Ray resources for it, so that Ray keeps it there and a lost worker node never takes the
coordinator with it).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, WorkerLostError
from alscale.runtime.worker import READS, SHARD_STATE, ShardWorker

logger = logging.getLogger(__name__)

_PUT_THRESHOLD_BYTES = 1 << 16
#: Defaults of the restart log's bounds: a snapshot after this many state calls of one worker,
#: or once their arguments pass this many bytes.
SNAPSHOT_EVERY = 16
SNAPSHOT_LOG_BYTES = 64 << 20


def _mutates(method: str, args: Sequence[tuple]) -> bool:
    """Whether a call may change worker state (logged for a restart): not a method declared
    read-only (``ShardWorker.effect_of``), nor a shard op declared read-only
    (``@shard_op(mutates=False)``)."""
    if ShardWorker.effect_of(method) == READS:
        return False
    if method == "call" and args and args[0]:
        from alscale.strategies.shards import op_mutates

        try:
            return op_mutates(str(args[0][0]))
        except KeyError:  # not importable here: assume it changes state
            return True
    return True


def _state_call(method: str) -> bool:
    """Whether ``method`` changes only the shard state (a snapshot replaces it in the log)."""
    return ShardWorker.effect_of(method) == SHARD_STATE


def _arg_bytes(args: tuple) -> int:
    return sum(int(a.nbytes) if isinstance(a, np.ndarray) else 0 for a in args)


def _whoami(worker: Any) -> tuple[str, int]:
    """(node id, pid) of the actor process running ``worker``: a restart changes it."""
    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid()


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


def _connect(ray: Any, address: str | None, py_modules: Sequence[str]) -> bool:
    """Join or start Ray unless this process already has; returns whether it started it."""
    if ray.is_initialized():
        return False
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
    return True


def _free(total: dict[str, float], free: dict[str, float]) -> tuple[float, float]:
    """The cluster's free CPUs and GPUs."""
    return float(free.get("CPU", total.get("CPU", 1.0))), float(free.get("GPU", 0.0))


def _shares(total: dict[str, float], free: dict[str, float], n_workers: int, cpus_per_worker: float | None,
            gpus_per_worker: float | None) -> tuple[float, float]:
    """CPUs and GPUs per actor: as asked, else the cluster's free ones shared evenly (at most
    one GPU each)."""
    free_cpus, free_gpus = _free(total, free)
    if cpus_per_worker is None:
        cpus_per_worker = max(0.01, math.floor(100 * free_cpus / n_workers) / 100)
    if gpus_per_worker is None:
        gpus_per_worker = min(1.0, math.floor(100 * free_gpus / n_workers) / 100) if free_gpus else 0.0
    return float(cpus_per_worker), float(gpus_per_worker)


class RayExecutor:
    """``n_workers`` Ray actors running :class:`ShardWorker`.

    Args:
        n_workers: number of shard actors.
        address: Ray cluster address (``None``: join ``RAY_ADDRESS`` if set, else start a
            local Ray; ``"local"`` forces a new local instance).
        cpus_per_worker: CPUs reserved per actor (default: the cluster's CPUs shared evenly).
        gpus_per_worker: GPUs per actor; ``None`` shares the cluster's GPUs evenly (at most
            one each), 0 keeps workers on CPU.
        startup_timeout_s: how long to wait for every actor to be placed and started, and
            for a dead one to be restarted (e.g. on another node when its node was lost).
        max_restarts: how often one worker may die and be rebuilt before the job fails.
        snapshot_every, snapshot_log_bytes: the restart log's bounds (see :meth:`map`).
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
        snapshot_every: int = SNAPSHOT_EVERY,
        snapshot_log_bytes: int = SNAPSHOT_LOG_BYTES,
        py_modules: Sequence[str] = (),
    ) -> None:
        import ray

        self._ray = ray
        self._owns_ray = _connect(ray, address, py_modules)
        total, free = ray.cluster_resources(), ray.available_resources()
        self.cpus_per_worker, self.gpus_per_worker = _shares(total, free, n_workers, cpus_per_worker, gpus_per_worker)
        self.max_restarts = int(max_restarts)
        self.startup_timeout_s = float(startup_timeout_s)
        self.snapshot_every = max(1, int(snapshot_every))
        self.snapshot_log_bytes = int(snapshot_log_bytes)
        # Per worker, what a restarted process replays: ("call", method, args) and
        # ("snapshot", ref) entries; the state calls since the last snapshot, and their bytes.
        self._log: list[list[tuple]] = [[] for _ in range(n_workers)]
        self._tail = [0] * n_workers
        self._tail_bytes = [0] * n_workers
        self._snapshots_ok = [True] * n_workers
        self._snapshot_bytes = [0] * n_workers
        self._deaths = [0] * n_workers
        self._who: list[tuple[str, int] | None] = [None] * n_workers
        self._stats = {"restarts": 0, "replayed_calls": 0, "replayed_state_calls": 0, "snapshot_restores": 0,
                       "snapshots": 0, "snapshot_seconds": 0.0, "recovery_seconds": [], "lost_nodes": []}
        threads = max(1, int(self.cpus_per_worker))
        actor_cls = ray.remote(ShardWorker)
        env = {} if self._owns_ray else _actor_runtime_env(ray, py_modules)
        self.actors = [
            actor_cls.options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                              scheduling_strategy="SPREAD", max_restarts=max_restarts,
                              max_task_retries=0, **env).remote(threads)
            for _ in range(n_workers)
        ]
        self._wait_ready(total, free)

    def _wait_ready(self, total: dict[str, float], free: dict[str, float]) -> None:
        """Wait until every actor process is up (imports done), so start-up is not billed to
        the first real call; give up with a clear error when they cannot be placed."""
        ray, n_workers = self._ray, len(self.actors)
        pending = [actor.ready.remote() for actor in self.actors]
        ready, not_ready = ray.wait(pending, num_returns=len(pending), timeout=self.startup_timeout_s)
        if not_ready:
            self.close()
            free_cpus, free_gpus = _free(total, free)
            raise AlscaleError(
                f"Ray could not start {len(not_ready)} of {n_workers} shard workers within "
                f"{self.startup_timeout_s:.0f} s: each asks for {self.cpus_per_worker:g} CPU and "
                f"{self.gpus_per_worker:g} GPU; the cluster has {float(total.get('CPU', 0)):g} CPUs ({free_cpus:g} "
                f"free) and {float(total.get('GPU', 0)):g} GPUs ({free_gpus:g} free); lower runtime.shards, "
                "runtime.cpus_per_worker or runtime.gpus_per_worker, or add nodes")
        ray.get(ready)
        self._who = ray.get([actor.__ray_call__.remote(_whoami) for actor in self.actors])

    @property
    def n_workers(self) -> int:
        return len(self.actors)

    def map(self, method: str, args_per_worker: Sequence[tuple]) -> list:
        """Call ``method`` on every actor concurrently; results in worker order.

        A worker whose process dies (alone, or with its whole node) is restarted by Ray
        (``max_restarts``; on another node when its node is gone and another has room) and
        brought back to the state it had, then the failed call is retried. The restart log
        it replays is bounded: its loading, model start-up and scoring calls (the chunks it
        had scored come back from the chunk cache when the job keeps one), then the last
        snapshot of its shard state (:meth:`ShardState.snapshot`, taken after every
        ``snapshot_every`` state calls or ``snapshot_log_bytes`` of their arguments, kept in
        the object store by this driver), then at most ``snapshot_every`` state calls made
        since. Everything is deterministic, so the rebuilt state is bit-identical. After
        ``max_restarts`` deaths of one worker, or when no node has room to restart it within
        ``startup_timeout_s``, the job fails with :class:`WorkerLostError` (naming the lost node).
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
        if _mutates(method, calls):
            for i, args in enumerate(calls):
                self._record(i, method, args)
            if any(self._snapshots_ok[i] and (self._tail[i] >= self.snapshot_every
                                               or self._tail_bytes[i] >= self.snapshot_log_bytes)
                   for i in range(len(self.actors))):
                self._take_snapshots()
        return results

    def _record(self, i: int, method: str, args: tuple) -> None:
        """Append a completed call to worker ``i``'s restart log."""
        log = self._log[i]
        if method == "load":  # a new shard: only the model built for it still matters
            log[:] = [e for e in log if e[0] == "call" and e[1] == "prepare_model"][-1:]
            self._tail[i] = self._tail_bytes[i] = self._snapshot_bytes[i] = 0
        log.append(("call", method, args))
        if _state_call(method):
            self._tail[i] += 1
            self._tail_bytes[i] += _arg_bytes(args)
        else:  # a barrier: a snapshot only replaces the state calls after the last one
            self._tail[i] = self._tail_bytes[i] = 0

    def _take_snapshots(self) -> None:
        """Snapshot the shard state of every worker with state calls in its log (one fan-out),
        keep each snapshot in the object store (owned by this driver, on its node: it
        survives the loss of the worker's node) and cut the log to it."""
        ray = self._ray
        t0 = time.perf_counter()
        todo = [i for i in range(len(self.actors)) if self._snapshots_ok[i] and self._tail[i]]
        refs = {i: self.actors[i].snapshot.remote() for i in todo}
        for i in todo:
            try:
                snap = self._get_or_recover(i, refs[i], "snapshot", ())
            except WorkerLostError:
                raise
            except Exception as exc:  # noqa: BLE001 -- e.g. an unpicklable strategy state: keep the calls
                logger.warning("shard worker %d: no snapshot of its state (%s); a restart replays its calls", i,
                               str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self._snapshots_ok[i] = False
                continue
            ref = ray.put(snap)
            self._snapshot_bytes[i] = int(snap.nbytes)
            del snap
            log = self._log[i]
            cut = len(log)
            while cut > 0 and (log[cut - 1][0] == "snapshot" or _state_call(log[cut - 1][1])):
                cut -= 1
            log[cut:] = [("snapshot", ref)]
            self._tail[i] = self._tail_bytes[i] = 0
            self._stats["snapshots"] += 1
        self._stats["snapshot_seconds"] += time.perf_counter() - t0

    def replay_stats(self) -> dict[str, Any]:
        """The restart log now (``log_calls`` entries a restart would replay, ``log_bytes`` of their
        array arguments, ``snapshot_bytes`` held), and what restarts did so far (``restarts``,
        ``replayed_calls``, ``replayed_state_calls``: state calls replayed after the last
        snapshot, never more than ``snapshot_every`` per restart while snapshots work)."""
        out = dict(self._stats)
        out["recovery_seconds"] = list(self._stats["recovery_seconds"])
        out["lost_nodes"] = list(self._stats["lost_nodes"])
        out["log_calls"] = sum(len(log) for log in self._log)
        out["log_bytes"] = sum(_arg_bytes(e[2]) for log in self._log for e in log if e[0] == "call")
        out["snapshot_bytes"] = sum(self._snapshot_bytes)
        return out

    @property
    def _nodes(self) -> list[str | None]:
        """The node id of each worker's process."""
        return [None if w is None else w[0] for w in self._who]

    def _restarted(self, i: int) -> bool:
        """Whether worker ``i``'s process is not the one its state was built in (Ray restarted
        it between two calls, e.g. its node died while the coordinator was busy)."""
        try:
            return self._ray.get(self.actors[i].__ray_call__.remote(_whoami),
                                 timeout=self.startup_timeout_s) != self._who[i]
        except (self._ray.exceptions.RayActorError, self._ray.exceptions.GetTimeoutError):
            return True

    def _get_or_recover(self, i: int, ref: Any, method: str, args: tuple) -> Any:
        ray = self._ray
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if not self._restarted(i):
                    raise cause from None
                how, detail = "was restarted by Ray", ""  # a fresh process without the worker's state answered
            except ray.exceptions.RayActorError as exc:
                how, detail = "died", f" ({type(exc).__name__})"
            t0 = time.perf_counter()
            old_node = self._nodes[i]
            lost = self._lost_node(old_node)
            self._deaths[i] += 1
            where = f" with its node {lost}" if lost else ""
            if self._deaths[i] > self.max_restarts:
                raise WorkerLostError(
                    f"shard worker {i} {how}{where} during {method}{detail} {self._deaths[i]} time(s), more than "
                    f"runtime.max_restarts={self.max_restarts}; nothing was written") from None
            logger.warning("shard worker %d %s%s during %s; restarting it and replaying its %d logged entries "
                           "(%d state calls since its last snapshot)", i, how, where, method, len(self._log[i]),
                           self._tail[i])
            try:
                ref = self._replay(i, method, args, lost)
            except ray.exceptions.RayActorError:
                continue  # died again while being rebuilt: counted on the next pass
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise cause from None
            self._stats["restarts"] += 1
            self._stats["recovery_seconds"].append(round(time.perf_counter() - t0, 3))
            # The GCS may call a lost node dead only after the call failed: ask again now.
            lost = lost or self._lost_node(old_node)
            logger.warning("shard worker %d is back (node %s) after %.1f s%s", i, str(self._nodes[i])[:12],
                           self._stats["recovery_seconds"][-1], f"; its node {lost} was lost" if lost else "")

    def _lost_node(self, node: str | None) -> str | None:
        """``"<ip> (node <id>)"`` when ``node`` (a worker's node id) is dead: the whole node was lost."""
        if node is None:
            return None
        try:
            info = next((n for n in self._ray.nodes() if n.get("NodeID") == node), None)
        except Exception:  # noqa: BLE001 -- the GCS is unreachable: say nothing about the node
            return None
        if info is None or info.get("Alive", True):
            return None
        name = f"{info.get('NodeManagerAddress', '?')} (node {node[:12]})"
        if name not in self._stats["lost_nodes"]:
            self._stats["lost_nodes"].append(name)
        return name

    def _replay(self, i: int, method: str, args: tuple, lost: str | None = None) -> Any:
        """Rebuild worker ``i``'s state on its restarted process — its logged calls in order
        (chunks it had scored come back from the chunk cache), its last snapshot in place of
        the state calls before it — then resubmit the failed call."""
        actor = self.actors[i]
        ray = self._ray
        deadline = time.monotonic() + self.startup_timeout_s
        while True:  # the restarted process may take a while (a new node); calls before it is up fail
            try:
                ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.GetTimeoutError:
                raise WorkerLostError(self._no_room_message(i, lost)) from None
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise WorkerLostError(self._no_room_message(i, lost)) from None
                time.sleep(0.5)
        self._who[i] = ray.get(actor.__ray_call__.remote(_whoami))
        refs = []
        for entry in self._log[i]:
            if entry[0] == "snapshot":
                refs.append(actor.restore.remote(entry[1]))
                self._stats["snapshot_restores"] += 1
                continue
            _, past_method, past_args = entry
            if past_method == "use_cache":  # read back the chunks the dead process had scored
                past_args = (*past_args[:3], True)
            refs.append(getattr(actor, past_method).remote(*past_args))
            self._stats["replayed_calls"] += 1
            self._stats["replayed_state_calls"] += _state_call(past_method)
        ray.get(refs)
        return getattr(actor, method).remote(*args)

    def _no_room_message(self, i: int, lost: str | None) -> str:
        ray = self._ray
        try:
            free = ray.available_resources()
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        except Exception:  # noqa: BLE001
            free, alive = {}, 0
        # The GCS marks a lost node dead only after its heartbeats time out, which can be after
        # the call failed; by now (the restart timed out) it has, so ask again.
        lost = lost or self._lost_node(self._nodes[i])
        why = f"its node {lost} was lost" if lost else "its process died"
        return (f"shard worker {i} could not be restarted within {self.startup_timeout_s:.0f} s after {why}: no alive "
                f"node has room for it (it asks for {self.cpus_per_worker:g} CPU and {self.gpus_per_worker:g} GPU; "
                f"{alive} node(s) alive with {float(free.get('CPU', 0)):g} CPUs and {float(free.get('GPU', 0)):g} GPUs "
                "free); add a node (or let the autoscaler replace it), or lower runtime.shards / "
                "runtime.cpus_per_worker, and run again (--resume reuses the scored chunks)")

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()

    def describe(self) -> dict:
        """The manifest's ``runtime`` entry; ``recovery`` says what restarts this job survived
        (workers restarted, the nodes lost, seconds per recovery, calls replayed, snapshots
        restored), so that a submitted job's output records it."""
        st = self._stats
        return {
            "executor": self.name,
            "workers": self.n_workers,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            "ray_version": self._ray.__version__,
            "recovery": {"restarts": st["restarts"], "lost_nodes": list(st["lost_nodes"]),
                         "recovery_seconds": list(st["recovery_seconds"]), "replayed_calls": st["replayed_calls"],
                         "snapshot_restores": st["snapshot_restores"]},
        }
