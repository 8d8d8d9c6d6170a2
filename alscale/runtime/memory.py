"""Streaming a shard through a worker memory budget (``runtime.memory_budget``).

Without a budget a worker reads its whole shard (zero-copy for IPC pools) and keeps the
model outputs of every row. With one, it keeps only what the selection needs and reads the
rest chunk by chunk from storage:

- ``row_id`` and the labelled mask, always (9 bytes/row plus the selection's per-row
  arrays, counted as :data:`ROW_BYTES`);
- what the strategy's spec says it keeps (``StrategySpec.supports.keeps``): for a per-row
  score and its stochastic variants the one base score per row, computed chunk by chunk
  from the model's (or the pool's) log-probs, which are then dropped; for a selection loop
  the embeddings and/or the log-probs it reads after scoring.

Each chunk's inputs (features / log-probs / embedding columns, and the model outputs)
are read, used and freed; the chunk size is the job's ``chunk_rows`` capped so that one
chunk fits in what the resident state leaves of the budget. A Parquet chunk decodes whole
row groups, so the largest row group must fit too. When the resident state itself does not
fit, the job stops before any worker starts, with the numbers and the fix (more shards).

The estimate counts array bytes, not the interpreter, torch or Ray themselves (a few
hundred MB per process), and not the model's activations (bounded by ``batch_size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alscale.errors import AlscaleError
from alscale.units import human, parse_bytes

__all__ = ["PARQUET_DECODE_FACTOR", "ROW_BYTES", "StreamPlan", "human", "parse_bytes", "plan_stream"]

#: Per-row bytes of the selection's own arrays (ids, mask, score, key, sort buffers).
ROW_BYTES = 64
#: Peak bytes of decoding one Parquet row group, per byte of its values.
PARQUET_DECODE_FACTOR = 4

@dataclass(frozen=True)
class StreamPlan:
    """What a streaming worker reads per chunk and what it keeps (sent to every worker).

    ``columns``: pool columns read per chunk (``features`` / ``image`` / ``path`` for a
    model, else ``log_probs`` / ``embedding``). ``base_score``: the score strategy whose
    per-row score is kept instead of the log-probs (None: keep none). ``chunk_rows``: rows
    per chunk.
    """

    columns: tuple[str, ...]
    base_score: str | None
    keep_log_probs: bool
    keep_embeddings: bool
    chunk_rows: int
    resident_bytes_per_row: int
    chunk_bytes_per_row: int
    base_score_fn: Any = None  # the base score's function (a user strategy's, unknown to workers by name)


def plan_stream(*, budget: int, shard_rows: Sequence[int], columns: Sequence[str], strategy: str,
                extra_embeddings: bool = False, extra_log_probs: bool = False,
                options: dict[str, Any], input_bytes_per_row: int, n_samples: int, n_classes: int | None,
                embedding_dim: int | None, job_chunk_rows: int, largest_piece: tuple[str, int] | None,
                pool: str) -> StreamPlan:
    """Choose what a worker keeps and the chunk size under ``budget`` bytes per worker.

    ``input_bytes_per_row``: bytes of the columns read per row; ``largest_piece``: the
    largest Parquet row group as (file, bytes), None for IPC pools (zero-copy reads).
    Raises AlscaleError naming the shard, the sizes and the fix when it cannot fit.
    """
    from alscale.strategies.registry import get_strategy, score_strategy

    info = get_strategy(strategy)
    keeps = info.supports.keeps  # the per-row state its spec says it keeps
    if not info.supports.streaming:
        raise AlscaleError(f"strategy {info.name} does not run under runtime.memory_budget; set "
                           "runtime.memory_budget: null")
    base = None
    if "base_score" in keeps:
        scorer = score_strategy(info, options)
        base = None if scorer is None else scorer.name  # random keeps its keyed noise only
    keep_lp = "log_probs" in keeps or extra_log_probs  # e.g. class quotas (predicted class)
    keep_emb = "embeddings" in keeps or extra_embeddings  # e.g. the SEALS candidate filter
    lp_bytes = 4 * n_samples * (n_classes or 0)
    emb_bytes = 4 * (embedding_dim or 0)
    resident_per_row = ROW_BYTES + (lp_bytes if keep_lp else 0) + (emb_bytes if keep_emb else 0)
    # One chunk: the columns as read (Arrow) and as numpy, the outputs, the score kernels'
    # float64 temporaries (two of [K, C] per row), the reduced score.
    chunk_per_row = 2 * input_bytes_per_row + lp_bytes + emb_bytes + 4 * lp_bytes + 16
    rows = max(shard_rows) if shard_rows else 0
    resident = rows * resident_per_row
    what = ", ".join(w for w, on in (("log-probs", keep_lp), ("embeddings", keep_emb)) if on) or "one score"
    if resident >= budget:
        need = math.ceil(sum(shard_rows) * resident_per_row / (budget * 0.8))
        raise AlscaleError(
            f"runtime.memory_budget {human(budget)} per worker cannot hold what strategy {info.name} keeps for a "
            f"shard of {rows:,} rows of pool {pool} ({what}: {human(resident)}); use runtime.shards >= {need} "
            "(more workers), or a larger runtime.memory_budget")
    left = budget - resident
    piece = 0
    if largest_piece is not None:
        # Decoding a Parquet row group of nested lists peaks at ~3.5x its value bytes
        # (levels, pre-buffered pages; measured with pyarrow 26), and a chunk may overlap two.
        piece = int(PARQUET_DECODE_FACTOR * 2 * largest_piece[1])
        if piece >= left:
            raise AlscaleError(
                f"pool file {largest_piece[0]} has row groups of {human(largest_piece[1])} (~{human(piece)} to decode "
                f"two of them), more than the "
                f"{human(left)} runtime.memory_budget leaves for reading once strategy {info.name}'s state "
                f"({human(resident)}) is kept; rewrite the pool with smaller row groups "
                "(alscale.pool.write_table rows_per_batch) or raise runtime.memory_budget")
    chunk = max(1, min(job_chunk_rows, (left - piece) // max(chunk_per_row, 1)))
    return StreamPlan(tuple(columns), base, keep_lp, keep_emb, int(chunk), int(resident_per_row),
                      int(chunk_per_row), None if base is None else scorer.score)
