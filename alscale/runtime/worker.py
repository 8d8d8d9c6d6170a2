"""``ShardWorker``: owns one shard — loads it, scores it, and answers the ``Shards`` calls.

A plain class (DESIGN §5): the local executor holds a list of them; the Ray executor runs
the same class as actors. It needs nothing from the driver but its :class:`ShardSpec`, so
it can (re)load its shard from storage by itself. The model and its device are created
lazily inside the process that owns the worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alscale.pool import read_shard
from alscale.pool.read import read_media
from alscale.pool.schema import MEDIA_COLUMNS
from alscale.strategies.shards import ShardState
from alscale.types import ShardData, ShardSpec

logger = logging.getLogger(__name__)


def _pool_dir(pool: str) -> str:
    """The directory ``path`` values are relative to: the pool's directory (or the pool itself)."""
    import pyarrow.fs as pafs

    from alscale.pool.location import is_uri, resolve

    loc = resolve(pool)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory:
        return loc.canonical
    return loc.canonical.rsplit("/", 1)[0] if is_uri(loc.canonical) else os.path.dirname(loc.canonical)


def media_decoder(spec: ShardSpec, column: str, model_spec: Any, row_ids_N: np.ndarray | None = None) -> Any:
    """A :class:`alscale.scoring.images.BatchDecoder` over the shard's ``image`` / ``path`` column
    (``row_ids_N``: the shard's row ids when already read; they name rows in errors)."""
    from alscale.scoring.images import BatchDecoder, resolve_transform

    ids = read_shard(spec, []).row_ids_N if row_ids_N is None else row_ids_N
    return BatchDecoder(read_media(spec, column), ids, resolve_transform(model_spec.transform), column=column,
                        base=_pool_dir(spec.pool) if column == "path" else "", threads=model_spec.decode_threads)


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

    def ready(self) -> bool:
        """A no-op call: returns once the worker (its process and imports) is up."""
        return True

    # -- loading and scoring -------------------------------------------------------------
    def load(
        self, spec: ShardSpec, columns: Sequence[str], will_score: bool = False, check_finite: bool = True
    ) -> dict[str, float]:
        """Read the shard's rows (zero-copy where the format allows).

        Unless ``will_score`` (a model will produce the log-probs), the shard is ready for
        selection right after loading.
        """
        t0 = time.perf_counter()
        self.spec = spec
        media = [c for c in columns if c in MEDIA_COLUMNS]
        self._media = media[0] if media else None
        self._decoder = None
        self.data = read_shard(spec, [c for c in columns if c not in MEDIA_COLUMNS], check_finite=check_finite,
                               check_normalised=check_finite)
        self.state = None
        self._log_probs = self._embeddings = None
        if not will_score:
            self.state = ShardState(self.data.row_ids_N, self.data.log_probs_N_K_C, self.data.embeddings_N_D)
        return {"rows": float(self.data.n_rows), "seconds": time.perf_counter() - t0}

    def score_chunk(self, chunk: int, chunk_rows: int) -> int:
        """Score rows ``[chunk*chunk_rows, (chunk+1)*chunk_rows)`` of this shard with the model
        built by :meth:`prepare_model`.

        Chunks beyond the shard's end are no-ops, so the coordinator can drive all
        shards through the same chunk indices (and a progress bar) in lockstep.
        Returns the number of rows scored.
        """
        assert self.data is not None
        if self._scorer is None:
            raise RuntimeError("prepare_model must run before score_chunk")
        n = self.data.n_rows
        start, stop = chunk * chunk_rows, min((chunk + 1) * chunk_rows, n)
        if start >= stop:
            return 0
        if self._media is None:
            assert self.data.features_N_D is not None
            log_probs_B_K_C, emb_B_E = self._scorer.score(self.data.features_N_D[start:stop])
        else:
            log_probs_B_K_C, emb_B_E = self._score_media(start, stop)
        if self._log_probs is None:
            self._log_probs = np.empty((n, *log_probs_B_K_C.shape[1:]), dtype=np.float32)
            if emb_B_E is not None:
                self._embeddings = np.empty((n, emb_B_E.shape[1]), dtype=np.float32)
        self._log_probs[start:stop] = log_probs_B_K_C
        if emb_B_E is not None and self._embeddings is not None:
            self._embeddings[start:stop] = emb_B_E
        if stop == n:
            self.state = ShardState(self.data.row_ids_N, self._log_probs, self._embeddings)
        return stop - start

    def _score_media(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode rows ``[start, stop)`` batch by batch (the next batch decodes on other threads
        while the model runs on this one) and score them."""
        assert self.spec is not None and self._media is not None
        if self._decoder is None:
            assert self.data is not None
            self._decoder = media_decoder(self.spec, self._media, self._scorer.spec, self.data.row_ids_N)
        lps, embs = [], []
        for _, x_B_D in self._decoder.batches(start, stop, self._scorer.spec.batch_size):
            lp, emb = self._scorer.score(x_B_D)
            lps.append(lp)
            embs.append(emb)
        emb_all = None if embs[0] is None else np.concatenate(embs)
        return np.concatenate(lps), emb_all

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

    def n_rows(self) -> int:
        return self._st().n_rows()

    def n_candidates(self) -> int:
        return self._st().n_candidates()

    def exclude(self, row_ids: np.ndarray) -> int:
        return self._st().exclude(row_ids)

    def compute_scores(self, strategy: str, options: Mapping[str, Any], seed: int, round: int) -> None:
        self._st().compute_scores(strategy, options, seed, round)

    def topk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._st().topk(k)

    def count_ahead(self, base_scores_Q: np.ndarray, row_ids_Q: np.ndarray) -> np.ndarray:
        return self._st().count_ahead(base_scores_Q, row_ids_Q)

    def softrank_candidates(self, m: int, beta: float, seed: int, round: int) -> tuple:
        return self._st().softrank_candidates(m, beta, seed, round)

    def call(self, op: str, *args: Any) -> Any:
        """A selection loop's shard op (see ``alscale.strategies.shards.shard_op``)."""
        return self._st().call(op, *args)
