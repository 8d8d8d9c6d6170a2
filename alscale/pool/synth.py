"""Synthetic pools with planted structure (for tests, benchmarks and demos).

Model: ``classes * clusters_per_class`` Gaussian blobs with unit isotropic noise in D
dimensions; the blob centres lie on a random ``r``-dimensional subspace (``r = min(D,
max(2, min(blobs, 16)))``) and are spread so that two random centres are about
``_CENTRE_DISTANCE`` noise-SDs apart (some pairs overlap: ambiguous regions to find).
Blob ``b`` belongs to class ``b // clusters_per_class``; a fraction ``label_noise`` of the
labels is then flipped to a uniformly chosen *other* class.

The optional ``embedding`` column (``embedding_dim = E > 0``) is a fixed random linear map
of the features, ``features @ W / sqrt(D)`` with ``W ~ N(0, 1)^{D×E}`` drawn from its own
stream (a stand-in for a penultimate layer; the other columns do not depend on it).

The optional metadata columns (``metadata=True``, drawn from their own stream) stand in for
what real pools carry beside the data: ``source`` (string: ``camera_a`` 55%, ``camera_b``
30%, ``dashcam`` 13%, ``drone`` 2%, a rare domain) and ``quality`` (float64 in [0, 1), three
decimals, so values tie), independent of everything else.

The optional ``log_probs`` column comes from a noisy teacher: the exact class posterior of
the blob model (``logsumexp`` over the class's blobs of ``-|x - c_b|^2 / 2``) plus
independent N(0, ``_TEACHER_NOISE``^2) logit noise per sample, then ``log_softmax``.

Determinism: all randomness is drawn per block of ``_BLOCK_ROWS`` rows from a generator
seeded by ``(seed, block index)``, so the pool depends only on the arguments, never on
``chunk_rows`` (which only sets how many rows are generated before being streamed to the
writer, i.e. peak memory and the file's batch / row-group boundaries). Draws inside a
block happen in a fixed order, so e.g. the features do not depend on ``label_noise`` or
on ``log_probs_samples``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from alscale.errors import PoolError
from alscale.pool.arrays import pool_table
from alscale.pool.info import PoolInfo, open_pool
from alscale.pool.location import choose_format
from alscale.pool.write import PoolWriter

log = logging.getLogger(__name__)

_BLOCK_ROWS = 131072  # = the default rows_per_batch: a block is one IPC batch
_CENTRE_DISTANCE = 4.5
_TEACHER_NOISE = 1.0
_PARAMS_STREAM = 0
_BLOCK_STREAM = 1
_EMBED_STREAM = 2
_TEST_STREAM = 3  # the rows of split="test": same planted model, other draws
_META_STREAM = 4
#: The ``source`` values of ``metadata=True`` and their shares.
SOURCES = (("camera_a", 0.55), ("camera_b", 0.30), ("dashcam", 0.13), ("drone", 0.02))
#: ``split`` values: the pool's rows, or a held-out set drawn from the same planted model.
SPLITS = ("pool", "test")


@dataclass(frozen=True)
class _Model:
    """The planted structure shared by every block."""

    centres_B_D: np.ndarray  # float32 blob centres
    half_sq_norms_B: np.ndarray  # float32 |c_b|^2 / 2
    classes: int
    clusters_per_class: int


@dataclass
class _Block:
    """One generated block of rows (all arrays have the block's row count first)."""

    features_N_D: np.ndarray
    labels_N: np.ndarray
    log_probs_N_K_C: np.ndarray | None
    embeddings_N_E: np.ndarray | None = None
    meta: dict[str, np.ndarray] | None = None  # metadata columns (metadata=True)


def _metadata(seed: int, stream: int, index: int, n: int) -> dict[str, np.ndarray]:
    """The block's ``source`` and ``quality`` (module doc), from their own generator."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _META_STREAM, stream, index]))
    names = np.array([s for s, _ in SOURCES], dtype=object)
    source = names[rng.choice(len(SOURCES), n, p=[p for _, p in SOURCES])]
    return {"source": source, "quality": np.floor(rng.random(n) * 1000) / 1000}


def _model(seed: int, dim: int, classes: int, clusters_per_class: int,
           separation: float = _CENTRE_DISTANCE) -> _Model:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PARAMS_STREAM]))
    n_blobs = classes * clusters_per_class
    rank = min(dim, max(2, min(n_blobs, 16)))
    basis_D_R, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    scale = separation / np.sqrt(2.0 * rank)
    centres_B_D = (scale * rng.standard_normal((n_blobs, rank)) @ basis_D_R.T).astype(np.float32)
    half_sq = 0.5 * np.einsum("bd,bd->b", centres_B_D, centres_B_D)
    return _Model(centres_B_D, half_sq.astype(np.float32), classes, clusters_per_class)


def _logsumexp_last(x_N_C_J: np.ndarray) -> np.ndarray:
    """``logsumexp`` over the (short) last axis, looping over it (numpy reduces a short
    trailing axis slowly)."""
    top_N_C = x_N_C_J[..., 0].copy()
    for j in range(1, x_N_C_J.shape[-1]):
        np.maximum(top_N_C, x_N_C_J[..., j], out=top_N_C)
    total_N_C = np.zeros_like(top_N_C)
    for j in range(x_N_C_J.shape[-1]):
        total_N_C += np.exp(x_N_C_J[..., j] - top_N_C)
    return top_N_C + np.log(total_N_C)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _embedding_map(seed: int, dim: int, embedding_dim: int) -> np.ndarray | None:
    """``W / sqrt(D)`` of the embedding column (float32 ``[D, E]``), or None for E = 0."""
    if embedding_dim <= 0:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, _EMBED_STREAM]))
    return (rng.standard_normal((dim, embedding_dim)) / np.sqrt(dim)).astype(np.float32)


def _block(model: _Model, seed: int, index: int, n: int, label_noise: float,
           samples: int, embed_D_E: np.ndarray | None = None, stream: int = _BLOCK_STREAM) -> _Block:
    """Rows ``[index * _BLOCK_ROWS, index * _BLOCK_ROWS + n)`` of the pool (``stream``:
    ``_BLOCK_STREAM`` for the pool's rows, ``_TEST_STREAM`` for the held-out split's)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, index]))
    n_blobs, dim = model.centres_B_D.shape
    blob_N = rng.integers(0, n_blobs, n)
    features_N_D = rng.standard_normal((n, dim), dtype=np.float32)
    features_N_D += model.centres_B_D[blob_N]
    flip_u_N = rng.random(n)
    shift_N = rng.integers(1, model.classes, n)
    clean_N = blob_N // model.clusters_per_class
    labels_N = np.where(flip_u_N < label_noise, (clean_N + shift_N) % model.classes, clean_N)
    log_probs = None
    if samples > 0:
        score_N_B = features_N_D @ model.centres_B_D.T - model.half_sq_norms_B
        class_N_C = _logsumexp_last(
            score_N_B.reshape(n, model.classes, model.clusters_per_class))
        noise_N_K_C = rng.standard_normal((n, samples, model.classes), dtype=np.float32)
        logits_N_K_C = class_N_C[:, None, :] + _TEACHER_NOISE * noise_N_K_C
        log_probs = _log_softmax(logits_N_K_C).astype(np.float32, copy=False)
    embeddings = None if embed_D_E is None else features_N_D @ embed_D_E
    return _Block(features_N_D, labels_N.astype(np.int64), log_probs, embeddings)


def _check_args(rows: int, dim: int, classes: int, clusters_per_class: int,
                label_noise: float, samples: int, chunk_rows: int, embedding_dim: int = 0,
                separation: float = _CENTRE_DISTANCE, split: str = "pool") -> None:
    checks = [
        (rows >= 1, f"rows must be >= 1, got {rows}"),
        (dim >= 1, f"dim must be >= 1, got {dim}"),
        (classes >= 2, f"classes must be >= 2, got {classes}"),
        (clusters_per_class >= 1, f"clusters_per_class must be >= 1, got {clusters_per_class}"),
        (0.0 <= label_noise <= 1.0, f"label_noise must be in [0, 1], got {label_noise}"),
        (samples >= 0, f"log_probs_samples must be >= 0, got {samples}"),
        (chunk_rows >= 1, f"chunk_rows must be >= 1, got {chunk_rows}"),
        (embedding_dim >= 0, f"embedding_dim must be >= 0, got {embedding_dim}"),
        (bool(np.isfinite(separation)) and separation > 0, f"separation must be > 0, got {separation}"),
        (split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got {split!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise PoolError(f"synth_pool: {message}")


def synth_pool(out: str, *, rows: int, dim: int, classes: int, seed: int = 0,
               format: str | None = None, log_probs_samples: int = 0,
               clusters_per_class: int = 2, label_noise: float = 0.05,
               chunk_rows: int = 262144, embedding_dim: int = 0,
               separation: float = _CENTRE_DISTANCE, split: str = "pool", metadata: bool = False) -> PoolInfo:
    """Write a synthetic pool to ``out`` and return its :class:`PoolInfo`.

    Columns: ``row_id`` = 0..rows-1, ``features`` [dim] float32, ``label`` (noisy) int64,
    and with ``log_probs_samples = K > 0`` a teacher's ``log_probs``: list<float32>[C] for
    K = 1, [K][C] for K > 1; with ``embedding_dim = E > 0`` an ``embedding`` [E] float32
    column (see the module doc); with ``metadata`` the ``source`` and ``quality`` columns.
    ``separation`` is the typical distance between two blob
    centres in noise SDs (default 4.5: overlapping blobs; ~12: nearly separable classes).
    ``split="test"`` draws a held-out set from the same planted model (same centres, other
    rows; its ``row_id`` also starts at 0), e.g. the test set of a simulated loop. ``format``
    defaults to the suffix of ``out`` (.arrow -> IPC, .parquet -> Parquet). Peak memory is
    about ``chunk_rows`` rows plus two blocks; the content does not depend on ``chunk_rows``.
    Blocks are generated on two threads (numpy's generators release the GIL), which cannot
    change the result.
    """
    _check_args(rows, dim, classes, clusters_per_class, label_noise, log_probs_samples,
                chunk_rows, embedding_dim, separation, split)
    fmt = choose_format(out, format)
    started = time.perf_counter()
    model = _model(seed, dim, classes, clusters_per_class, separation)
    stream = _TEST_STREAM if split == "test" else _BLOCK_STREAM
    embed_D_E = _embedding_map(seed, dim, embedding_dim)
    cache: dict[int, _Block] = {}

    def make(index: int) -> _Block:
        n = min(_BLOCK_ROWS, rows - index * _BLOCK_ROWS)
        blk = _block(model, seed, index, n, label_noise, log_probs_samples, embed_D_E, stream)
        if metadata:
            blk.meta = _metadata(seed, stream, index, n)
        return blk

    with PoolWriter(out, format=fmt) as writer, ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, rows, chunk_rows):
            stop = min(rows, start + chunk_rows)
            indices = list(range(start // _BLOCK_ROWS, (stop - 1) // _BLOCK_ROWS + 1))
            fresh = [i for i in indices if i not in cache]
            blocks = {**{i: cache[i] for i in indices if i in cache},
                      **dict(zip(fresh, pool.map(make, fresh)))}
            pieces = []
            for index in indices:
                b0 = index * _BLOCK_ROWS
                lo, hi = max(start, b0) - b0, min(stop, b0 + _BLOCK_ROWS) - b0
                pieces.append(_block_table(blocks[index], b0, lo, hi, log_probs_samples))
            writer.write(pa.concat_tables(pieces))  # zero-copy: one chunk per block piece
            last = indices[-1]
            cache = {last: blocks[last]} if stop < (last + 1) * _BLOCK_ROWS else {}
    log.info("synth pool %s: %d rows x %d dims, %d classes, K=%d in %.2f s", out, rows, dim,
             classes, log_probs_samples, time.perf_counter() - started)
    return open_pool(out)


def _block_table(blk: _Block, first_row: int, lo: int, hi: int, samples: int) -> pa.Table:
    """Rows ``[lo, hi)`` of a block (whose first pool row is ``first_row``) as a pool table."""
    log_probs = blk.log_probs_N_K_C[lo:hi] if samples else None
    table = pool_table(
        np.arange(first_row + lo, first_row + hi, dtype=np.int64),
        features_N_D=blk.features_N_D[lo:hi],
        log_probs_N_C=log_probs[:, 0, :] if samples == 1 else None,
        log_probs_N_K_C=log_probs if samples > 1 else None,
        embeddings_N_D=None if blk.embeddings_N_E is None else blk.embeddings_N_E[lo:hi],
        labels_N=blk.labels_N[lo:hi],
    )
    for name, values in (blk.meta or {}).items():
        v = values[lo:hi]
        table = table.append_column(name, pa.array(v.tolist() if v.dtype == object else v))
    return table
