"""``ShardWorker``: owns one shard — loads it, scores it, and answers the ``Shards`` calls.

A plain class (DESIGN §5): the local executor holds a list of them; the Ray executor runs
the same class as actors. It needs nothing from the driver but its :class:`ShardSpec`, so
it can (re)load its shard from storage by itself. The model and its device are created
lazily inside the process that owns the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alscale.pool import read_shard
from alscale.pool.location import media_base
from alscale.pool.read import read_media
from alscale.pool.schema import MEDIA_COLUMNS
from alscale.strategies.shards import ShardState, TopK
from alscale.types import ShardData, ShardSpec

logger = logging.getLogger(__name__)

#: What a call does to its worker, declared on each method with :func:`declares` and read by an
#: executor that rebuilds a lost worker (:meth:`ShardWorker.effect_of`): ``READS`` changes
#: nothing (never replayed); ``SHARD_STATE`` changes only the shard's selection state (a
#: snapshot of :class:`ShardState` replaces it; ``call`` refines this per shard op with
#: ``op_mutates``); ``WORKER`` (the default) changes what the worker loaded, its model or its
#: scores (replayed as it was).
READS, SHARD_STATE, WORKER = "reads", "shard_state", "worker"


def declares(effect: str) -> Any:
    """Declare a worker method's :data:`READS` / :data:`SHARD_STATE` / :data:`WORKER` effect."""

    def mark(fn: Any) -> Any:
        fn.effect = effect
        return fn

    return mark


def media_decoder(spec: ShardSpec, column: str, model_spec: Any, row_ids_N: np.ndarray | None = None) -> Any:
    """A :class:`alscale.scoring.images.BatchDecoder` over the shard's ``image`` / ``path`` column
    (``row_ids_N``: the shard's row ids when already read; they name rows in errors)."""
    from alscale.scoring.images import BatchDecoder, resolve_transform

    ids = read_shard(spec, []).row_ids_N if row_ids_N is None else row_ids_N
    return BatchDecoder(read_media(spec, column), ids, resolve_transform(model_spec.transform), column=column,
                        base=media_base(spec.pool) if column == "path" else "", threads=model_spec.decode_threads)


class ShardWorker:
    """Holds one shard's rows, model outputs and selection state."""

    def __init__(self, torch_threads: int | None = None) -> None:
        self.torch_threads = torch_threads
        self.spec: ShardSpec | None = None
        self.data: ShardData | None = None
        self.state: ShardState | None = None
        self._scorer: Any = None
        self._log_probs: np.ndarray | None = None
        self._embeddings: np.ndarray | None = None
        self._media: str | None = None  # "image" / "path": decode rows before scoring
        self._decoder: Any = None
        self._cache: Any = None  # alscale.runtime.cache.ChunkCache, set by use_cache
        self._stream: Any = None  # alscale.runtime.memory.StreamPlan, set by load
        self._check_finite = True
        self._base: np.ndarray | None = None  # the stream plan's base score per row
        self._loss: np.ndarray | None = None  # predicted loss per row (Learning Loss models)
        self._meta: dict[str, np.ndarray] = {}  # pool metadata columns (e.g. a quota group column)
        self._recovering = False  # a restarted process: cache hits are this run's own chunks
        # Import every built-in strategy module now, while the worker starts (~50 ms, in parallel
        # with the other workers and the driver), rather than in the first selection call.
        from alscale.strategies import registry

        registry.strategy_names()

    @classmethod
    def effect_of(cls, method: str) -> str:
        """The declared effect of calling ``method`` (see :data:`READS`)."""
        return getattr(getattr(cls, method), "effect", WORKER)

    @declares(READS)
    def ready(self) -> bool:
        """A no-op call: returns once the worker (its process and imports) is up."""
        return True

    # -- loading and scoring -------------------------------------------------------------
    def load(
        self, spec: ShardSpec, columns: Sequence[str], will_score: bool = False, check_finite: bool = True,
        stream: Any = None, group_columns: Sequence[str] = (),
    ) -> dict[str, float]:
        """Read the shard's rows (zero-copy where the format allows).

        Unless ``will_score`` (a model will produce the log-probs) or ``stream``, the shard
        is ready for selection right after loading. With a
        :class:`alscale.runtime.memory.StreamPlan` only the row ids are read now; the
        columns are read chunk by chunk by :meth:`score_chunk`, which keeps what the plan says.
        ``group_columns`` (pool metadata columns: a quota's ``by``, the columns a composed
        selection filters on or scores by) are read whole (one value per row) and reach the
        shard state as ``ShardState.columns``.
        """
        t0 = time.perf_counter()
        self.spec = spec
        self._stream = stream
        self._check_finite = check_finite
        media = [c for c in columns if c in MEDIA_COLUMNS]
        self._media = media[0] if media else None
        self._decoder = None
        read_now = [] if stream is not None else [c for c in columns if c not in MEDIA_COLUMNS]
        self.data = read_shard(spec, read_now, check_finite=check_finite, check_normalised=check_finite)
        self.state = None
        self._log_probs = self._embeddings = None
        self._base: np.ndarray | None = None
        self._loss = None
        from alscale.pool.columns import read_column_values

        self._meta = {c: read_column_values(spec, c) for c in group_columns}
        if not will_score and stream is None:
            self.state = ShardState(self.data.row_ids_N, self.data.log_probs_N_K_C, self.data.embeddings_N_D)
            self.state.columns.update(self._meta)
        return {"rows": float(self.data.n_rows), "seconds": time.perf_counter() - t0}

    def score_chunk(self, chunk: int, chunk_rows: int) -> int:
        """Score rows ``[chunk*chunk_rows, (chunk+1)*chunk_rows)`` of this shard with the model
        built by :meth:`prepare_model` (a streaming worker without a model reads the chunk's
        log-probs / embeddings from the pool instead), and keep what the selection needs.

        Chunks beyond the shard's end are no-ops, so the coordinator can drive all
        shards through the same chunk indices (and a progress bar) in lockstep.
        Returns the number of rows scored.
        """
        assert self.data is not None
        if self._scorer is None and self._stream is None:
            raise RuntimeError("prepare_model must run before score_chunk")
        n = self.data.n_rows
        start, stop = chunk * chunk_rows, min((chunk + 1) * chunk_rows, n)
        if start >= stop:
            return 0
        log_probs_B_K_C, emb_B_E, loss_B = self._chunk_outputs(start, stop)
        self._keep(start, stop, log_probs_B_K_C, emb_B_E)
        if loss_B is not None:  # a third model output (a Learning Loss module's predicted loss)
            if self._loss is None:
                self._loss = np.empty(n, dtype=np.float64)
            self._loss[start:stop] = loss_B
        if stop == n:
            base = {} if self._base is None else {self._stream.base_score: self._base}
            outputs = {} if self._loss is None else {"loss": self._loss}
            self.state = ShardState(self.data.row_ids_N, self._log_probs, self._embeddings, base, outputs)
            self.state.columns.update(self._meta)
        return stop - start

    def _chunk_spec(self, start: int, stop: int) -> ShardSpec:
        assert self.spec is not None
        return ShardSpec(self.spec.pool, self.spec.index, self.spec.start + start, self.spec.start + stop)

    def _chunk_outputs(self, start: int, stop: int
                       ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The model outputs of rows ``[start, stop)`` (from the cache when it holds them),
        or, streaming without a model, the pool's log-probs / embeddings of those rows."""
        assert self.data is not None
        if self._scorer is None:  # streaming a pool that holds the model outputs
            cols = [c for c in self._stream.columns if c not in MEDIA_COLUMNS]
            part = read_shard(self._chunk_spec(start, stop), cols, check_finite=self._check_finite,
                              check_normalised=self._check_finite)
            return part.log_probs_N_K_C, part.embeddings_N_D, None
        if self._cache is None:
            return self._score_rows(start, stop)
        assert self.spec is not None
        self._scorer.model  # noqa: B018 -- builds the model, so its device is known
        device_type = self._scorer.device.type
        s0 = self.spec.start
        parts = []
        for a, b, got in self._cache.load_parts(s0 + start, s0 + stop, self.data.row_ids_N[start:stop], device_type):
            if got is None:  # rows no valid cache holds: score them, and keep them
                got = self._score_rows(a - s0, b - s0)
                self._cache.store(a, b, self.data.row_ids_N[a - s0:b - s0], got[0], got[1], device_type, got[2])
            parts.append(got)
        if len(parts) == 1:
            return parts[0]
        lp = np.concatenate([p[0] for p in parts])
        emb = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        loss = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
        return lp, emb, loss

    def _score_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The model's outputs for rows ``[start, stop)`` of this shard (decoded first for image pools)."""
        assert self.data is not None
        if self._media is not None:
            return self._score_media(start, stop)
        if self._stream is not None:
            part = read_shard(self._chunk_spec(start, stop), ["features"], check_finite=False)
            lp, emb = self._scorer.score(part.features_N_D)
        else:
            assert self.data.features_N_D is not None
            lp, emb = self._scorer.score(self.data.features_N_D[start:stop])
        return lp, emb, self._scorer.last_loss_N

    def _keep(self, start: int, stop: int, log_probs_B_K_C: np.ndarray | None, emb_B_E: np.ndarray | None) -> None:
        """Store what the selection needs of rows ``[start, stop)``: everything, or (streaming)
        the plan's base score, log-probs and/or embeddings."""
        assert self.data is not None
        n = self.data.n_rows
        plan = self._stream
        if plan is not None and plan.base_score is not None:
            from alscale.strategies.registry import get_strategy, resolve

            if self._base is None:
                self._base = np.empty(n, dtype=np.float64)
            fn = resolve(plan.base_score_fn) if plan.base_score_fn is not None else \
                get_strategy(plan.base_score).score_fn
            self._base[start:stop] = fn(log_probs_B_K_C)
        keep_lp = plan is None or plan.keep_log_probs
        keep_emb = plan is None or plan.keep_embeddings
        if keep_lp and log_probs_B_K_C is not None:
            if self._log_probs is None:
                self._log_probs = np.empty((n, *log_probs_B_K_C.shape[1:]), dtype=np.float32)
            self._log_probs[start:stop] = log_probs_B_K_C
        if keep_emb and emb_B_E is not None:
            if self._embeddings is None:
                self._embeddings = np.empty((n, emb_B_E.shape[1]), dtype=np.float32)
            self._embeddings[start:stop] = emb_B_E

    def _score_media(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Decode rows ``[start, stop)`` batch by batch (the next batch decodes on other threads
        while the model runs on this one) and score them."""
        assert self.spec is not None and self._media is not None and self.data is not None
        if self._stream is not None:  # a decoder over this chunk's rows only
            decoder = media_decoder(self._chunk_spec(start, stop), self._media, self._scorer.spec,
                                    self.data.row_ids_N[start:stop])
            start, stop = 0, stop - start
        else:
            if self._decoder is None:
                self._decoder = media_decoder(self.spec, self._media, self._scorer.spec, self.data.row_ids_N)
            decoder = self._decoder
        lps, embs, losses = [], [], []
        for _, x_B_D in decoder.batches(start, stop, self._scorer.spec.batch_size):
            lp, emb = self._scorer.score(x_B_D)
            lps.append(lp)
            embs.append(emb)
            losses.append(self._scorer.last_loss_N)
        emb_all = None if embs[0] is None else np.concatenate(embs)
        loss_all = None if losses[0] is None else np.concatenate(losses)
        return np.concatenate(lps), emb_all, loss_all

    def use_cache(self, out_dir: str, record: dict[str, Any], reuse: bool, recovering: bool = False) -> None:
        """Keep each scored chunk in ``out_dir``'s cache (and, with ``reuse``, read valid caches
        instead of scoring); see :mod:`alscale.runtime.cache`. ``recovering``: this process
        replaces one that died; the chunks it had finished are read back (``reuse``) and
        reported as ``recovered``, not as reused from an earlier run."""
        from alscale.runtime.cache import ChunkCache
        from alscale.runtime.output import output_location

        self._recovering = bool(recovering)
        self._cache = ChunkCache(output_location(out_dir), record, reuse=reuse or self._recovering)

    @declares(READS)
    def cache_stats(self) -> dict[str, Any]:
        """Chunks reused, computed and rejected by this worker's cache ({} without one); after a
        restart, ``recovered``: chunks the dead process had scored, read back from the cache."""
        if self._cache is None:
            return {}
        st = self._cache.stats
        if self._recovering:
            return {"reused": [], "recovered": st.reused, "computed": st.computed, "rejected": st.rejected}
        return {"reused": st.reused, "computed": st.computed, "rejected": st.rejected}

    def prepare_model(self, model_spec: Any, seed: int, in_features: int) -> None:
        """Import torch and build the model now (start-up), not inside the first scoring call."""
        import torch

        from alscale.scoring import Scorer

        if self.torch_threads:
            torch.set_num_threads(int(self.torch_threads))
        self._scorer = Scorer(model_spec, in_features=int(in_features), seed=seed)

    # -- the Shards calls, delegated to the shard's state ------------------------------
    def _st(self) -> ShardState:
        if self.state is None:
            raise RuntimeError("shard not loaded and scored yet")
        return self.state

    @declares(READS)
    def n_rows(self) -> int:
        return self._st().n_rows()

    @declares(READS)
    def n_candidates(self) -> int:
        return self._st().n_candidates()

    @declares(SHARD_STATE)
    def exclude(self, row_ids: np.ndarray) -> int:
        return self._st().exclude(row_ids)

    @declares(SHARD_STATE)
    def restrict(self, row_ids: np.ndarray) -> int:
        return self._st().restrict(row_ids)

    @declares(SHARD_STATE)
    def compute_scores(self, strategy: str, options: Mapping[str, Any], seed: int, round: int) -> None:
        self._st().compute_scores(strategy, options, seed, round)

    @declares(READS)
    def topk(self, k: int) -> TopK:
        return self._st().topk(k)

    @declares(READS)
    def snapshot(self) -> Any:
        """The shard state's mutable part (:meth:`ShardState.snapshot`), for a restart."""
        return self._st().snapshot()

    def restore(self, snap: Any) -> None:
        """Take back a :meth:`snapshot` (after this worker's shard was loaded and scored again)."""
        self._st().restore(snap)

    @declares(SHARD_STATE)
    def call(self, op: str, *args: Any) -> Any:
        """A selection loop's shard op (see ``alscale.strategies.shards.shard_op``)."""
        return self._st().call(op, *args)
