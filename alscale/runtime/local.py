"""The local executor: shard workers as plain objects in this process (the reference)."""

from __future__ import annotations

from alscale.runtime.worker import ShardWorker
from alscale.strategies.shards import InProcessFanout


class LocalExecutor(InProcessFanout):
    """``n_workers`` in-process :class:`ShardWorker` objects, called one after another."""

    name = "local"

    def __init__(self, n_workers: int) -> None:
        super().__init__([ShardWorker() for _ in range(n_workers)])

    def close(self) -> None:
        self.workers = []

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.n_workers}
