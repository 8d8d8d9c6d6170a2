"""Score an in-memory dataset with a torch model, the way the shard workers do.

:func:`alscale.select` with ``model=`` and ``data=`` calls :func:`model_outputs`, which
turns the data (a numpy array, a torch tensor, a ``DataLoader`` in a fixed order, or an
Arrow table with a ``features`` column) into rows ``[N, D]`` and scores them with the
workers' :class:`alscale.scoring.Scorer`: the same consistent MC-dropout masks (Kirsch et
al. 2019) keyed by ``seed``, the same batching and padding (bit-identical log-probs for
any batch split), the same device choice. The selection then runs the same loops over one
in-process shard, so ``alscale.select("bald", budget=10, model=m, data=X, mc_samples=20)``
equals ``alscale run`` of the job with a pool of ``X``, ``m``'s factory and its weights
(``tests/test_notebook.py``).

Rows of any shape ``[N, *S]`` (e.g. images ``[N, 1, 28, 28]``) are flattened for the Scorer
and given back to the model in their shape. Embeddings for the diversity strategies:
``"penultimate"`` takes the model's second output when it returns ``(logits, embedding)``,
else the input of its last ``nn.Linear`` (a forward hook); a callable maps a batch of rows
(in their shape) to ``[B, E]``; an array ``[N, E]`` is used as given.

:class:`ActiveLearner` is the train → select → label loop of a notebook around it.

Imports torch (and pyarrow only for Arrow inputs); :mod:`alscale.api` imports this module
only when a model is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from alscale.errors import AlscaleError

log = logging.getLogger(__name__)

EMBEDDING_SOURCES = ("penultimate",)


@dataclass(frozen=True)
class ModelOutputs:
    """What the model gave for the N rows: ``log_probs_N_K_C`` (float32), ``embeddings_N_E``
    (float32 or None) and ``loss_N`` (a Learning Loss module's predicted loss, or None)."""

    log_probs_N_K_C: np.ndarray
    embeddings_N_E: np.ndarray | None
    loss_N: np.ndarray | None


def as_rows(data: Any) -> np.ndarray:
    """``data`` as a float array ``[N, *S]`` (not copied when it already is one).

    Accepts a numpy array, a torch tensor, a ``torch.utils.data.DataLoader`` (its batches, or
    the first element of each ``(x, y, ...)`` batch, in order; a shuffling loader is refused,
    since positions must name rows), or a ``pyarrow.Table`` / ``RecordBatch`` with a
    ``features`` column (fixed-size or variable lists of one length).
    """
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, torch.utils.data.DataLoader):
        if isinstance(data.sampler, torch.utils.data.RandomSampler):
            raise AlscaleError("data is a DataLoader with shuffle=True; selections name rows by position, so give a "
                               "loader in a fixed order (shuffle=False) or the tensor itself")
        parts = []
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if isinstance(x, dict):
                raise AlscaleError("data is a DataLoader of dicts; give a loader of tensors or (x, y) tuples, or the "
                                   "rows as a tensor")
            parts.append(as_rows(x))
        if not parts:
            raise AlscaleError("data is an empty DataLoader")
        return np.concatenate(parts)
    module = type(data).__module__
    if module.startswith("pyarrow"):
        import pyarrow as pa

        from alscale.pool.arrays import flat_values

        if isinstance(data, (pa.Table, pa.RecordBatch)):
            if "features" not in data.column_names:
                raise AlscaleError(f"data is an Arrow table without a 'features' column (it has "
                                   f"{', '.join(data.column_names)}); "
                                   "put each row's inputs in a list column 'features'")
            col = data.column("features")
            arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            if not pa.types.is_list(arr.type) and not pa.types.is_fixed_size_list(arr.type) \
                    and not pa.types.is_large_list(arr.type):
                raise AlscaleError(f"data column 'features' has type {arr.type}; give a list<float32> column")
            if arr.null_count:
                raise AlscaleError("data column 'features' has null rows; every row needs its inputs")
            values = flat_values(arr).to_numpy(zero_copy_only=False)
            n = len(arr)
            if n == 0 or values.size % n:
                raise AlscaleError(f"data column 'features' has {values.size} values over {n} rows; every row "
                                   "must have the same length")
            return values.reshape(n, values.size // n)
    raise AlscaleError(f"data must be a numpy array, a torch tensor, a DataLoader or an Arrow table; got "
                       f"{type(data).__name__}")


class _Shaped(nn.Module):
    """Gives flattened rows ``[B, prod(S)]`` back to ``model`` as ``[B, *S]``; optionally
    returns ``(logits, input of the last nn.Linear)`` for a logits-only model."""

    def __init__(self, model: nn.Module, row_shape: tuple[int, ...], tap: bool) -> None:
        super().__init__()
        self.model = model
        self.row_shape = row_shape
        self._tapped: torch.Tensor | None = None
        self._tap_layer: list[nn.Linear] = []  # a list: not a registered submodule
        if tap:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise AlscaleError(f"embeddings='penultimate': model {type(model).__name__} returns logits only and "
                                   "has no nn.Linear layer; return (logits, embedding) from forward or pass "
                                   "embeddings=callable")
            self._tap_layer = [linears[-1]]

    def _keep_input(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self._tapped = inputs[0]

    def forward(self, x_B_F: torch.Tensor) -> Any:
        x = x_B_F.reshape(x_B_F.shape[0], *self.row_shape)
        if not self._tap_layer:
            return self.model(x)
        handle = self._tap_layer[0].register_forward_hook(self._keep_input)  # removed at once: the model is left as is
        try:
            out = self.model(x)
        finally:
            handle.remove()
        if isinstance(out, (tuple, list)):
            return out
        tapped, self._tapped = self._tapped, None
        if tapped is None:
            raise AlscaleError("embeddings='penultimate': the model's last nn.Linear did not run in forward; pass "
                               "embeddings=callable")
        return out, tapped.reshape(tapped.shape[0], -1)


def _returns_tuple(model: nn.Module, x_1: torch.Tensor) -> bool:
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return isinstance(model(x_1), (tuple, list))
    finally:
        model.train(was)


def model_outputs(model: nn.Module, data: Any, *, mc_samples: int = 1, seed: int = 0,
                  embeddings: str | Callable[[torch.Tensor], Any] | np.ndarray | None = None,
                  need_embeddings: bool = False, batch_size: int = 4096, device: str = "auto") -> ModelOutputs:
    """Score ``data`` with ``model`` through the workers' Scorer (see the module doc).

    Args:
        model: any ``nn.Module`` whose forward takes a batch of rows and returns logits
            ``[B, C]``, ``(logits, embedding)`` or ``(logits, embedding, predicted loss)``.
            Not modified (the Scorer runs a copy, in eval mode).
        data: the N rows (:func:`as_rows`).
        mc_samples: K; K > 1 samples the model's dropout layers with consistent masks.
        seed: the masks' root seed (a job's ``seed``).
        embeddings: ``"penultimate"`` (default when ``need_embeddings``), a callable
            ``rows [B, *S] -> [B, E]``, or an array ``[N, E]``.
        need_embeddings: whether the strategy needs embeddings.
        batch_size, device: as a job's ``model.batch_size`` / ``model.device``.
    """
    from alscale.scoring import ModelSpec, Scorer

    if not isinstance(model, nn.Module):
        raise AlscaleError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rows = as_rows(data)
    if rows.ndim < 2 or rows.shape[0] == 0:
        raise AlscaleError(f"data must hold rows [N, ...] with N >= 1; got shape {list(rows.shape)}")
    if not np.issubdtype(rows.dtype, np.floating):
        raise AlscaleError(f"data must be floating point (float32); got dtype {rows.dtype}")
    n, row_shape = rows.shape[0], tuple(int(d) for d in rows.shape[1:])
    flat_N_F = rows.reshape(n, -1)
    if embeddings is None:
        embeddings = "penultimate"
    if isinstance(embeddings, str) and embeddings not in EMBEDDING_SOURCES:
        raise AlscaleError(f"embeddings must be 'penultimate', a callable or an array [N, E]; got {embeddings!r}")
    tap = need_embeddings and embeddings == "penultimate"
    if tap:
        probe = torch.as_tensor(np.array(flat_N_F[:1], np.float32)).reshape(1, *row_shape)
        probe = probe.to(next(iter(model.parameters()), torch.empty(0)).device)
        tap = not _returns_tuple(model, probe)
    name = f"<{type(model).__name__} module>"
    spec = ModelSpec(factory=name, mc_samples=mc_samples, batch_size=batch_size, device=device)
    scorer = Scorer(spec, in_features=flat_N_F.shape[1], seed=seed, module=_Shaped(model, row_shape, tap))
    log_probs_N_K_C, emb_N_E = scorer.score(flat_N_F)
    loss_N = scorer.last_loss_N
    if not need_embeddings:
        emb_N_E = None
    elif callable(embeddings):
        emb_N_E = _call_embeddings(embeddings, rows, batch_size)
    elif isinstance(embeddings, (np.ndarray, torch.Tensor)):
        emb_N_E = as_rows(embeddings)
    elif emb_N_E is None:
        raise AlscaleError(f"the strategy needs embeddings but model {type(model).__name__} gave none; return "
                           "(logits, embedding) from forward or pass embeddings=callable or an array [N, E]")
    return ModelOutputs(log_probs_N_K_C, emb_N_E, loss_N)


def _call_embeddings(fn: Callable[[torch.Tensor], Any], rows: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` over the rows in batches (inference mode, CPU tensors), as float32 ``[N, E]``."""
    parts = []
    with torch.inference_mode():
        for lo in range(0, rows.shape[0], batch_size):
            out = fn(torch.as_tensor(np.array(rows[lo:lo + batch_size], np.float32)))
            out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)
            if out.ndim != 2 or out.shape[0] != min(batch_size, rows.shape[0] - lo):
                raise AlscaleError(f"embeddings callable returned shape {list(out.shape)} for a batch of "
                                   f"{min(batch_size, rows.shape[0] - lo)} rows; expected [B, E]")
            parts.append(out)
    return np.concatenate(parts)


class ActiveLearner:
    """The notebook loop: ``fit`` on the labelled rows, ``query`` a batch, ``teach`` its labels.

    Example::

        learner = ActiveLearner(model, X, strategy="bald", mc_samples=20)
        learner.teach(initial_ids, y[initial_ids])
        learner.fit()                       # train_classifier on the labelled rows
        batch = learner.query(10)           # positions into X, via alscale.select
        learner.teach(batch, y[batch])      # the oracle's answers

    ``model`` takes rows ``[B, D]`` (or the shape of ``X``'s rows) and returns logits (or
    ``(logits, embedding)``); ``fit`` trains it in place with
    :func:`alscale.scoring.train.train_classifier` (Adam, cross-entropy; keyword arguments
    passed through). Everything is keyed by ``seed``; ``round`` advances with each query.
    """

    def __init__(self, model: nn.Module, data: Any, *, strategy: str = "bald", mc_samples: int = 20,
                 seed: int = 0, **select_options: Any) -> None:
        self.model = model
        self.rows = as_rows(data)
        self.strategy = strategy
        self.mc_samples = mc_samples
        self.seed = seed
        self.options = select_options
        self.labeled_ids = np.empty(0, np.int64)
        self.labels = np.empty(0, np.int64)
        self.round = 0

    def teach(self, positions: Any, labels: Any) -> None:
        """Add labels for rows (positions into the data); a row labelled twice is refused."""
        pos = np.asarray(positions, np.int64).reshape(-1)
        lab = np.asarray(labels, np.int64).reshape(-1)
        if pos.shape != lab.shape:
            raise AlscaleError(f"teach: {pos.size} positions but {lab.size} labels")
        if pos.size and (pos.min() < 0 or pos.max() >= self.rows.shape[0]):
            raise AlscaleError(f"teach: positions must be in [0, {self.rows.shape[0]}); got {pos.min()}..{pos.max()}")
        again = np.intersect1d(pos, self.labeled_ids)
        if again.size or np.unique(pos).size != pos.size:
            raise AlscaleError(f"teach: row {int(again[0]) if again.size else int(pos[0])} is labelled twice")
        self.labeled_ids = np.concatenate([self.labeled_ids, pos])
        self.labels = np.concatenate([self.labels, lab])

    def fit(self, **train_options: Any) -> Any:
        """Train the model on the labelled rows; returns the :class:`TrainResult`."""
        from alscale.scoring.train import train_classifier

        if self.labeled_ids.size == 0:
            raise AlscaleError("fit: no labelled rows yet; teach some first")
        opts = {"epochs": 10, "draws_per_epoch": 2048, "patience": None, **train_options}
        x = self.rows[self.labeled_ids].reshape(self.labeled_ids.size, -1)
        shaped = _Shaped(self.model, tuple(self.rows.shape[1:]), tap=False)
        return train_classifier(shaped, x, self.labels, seed=self.seed * 1000 + self.round, **opts)

    def query(self, budget: int) -> np.ndarray:
        """The next batch: positions into the data, in pick order (never a labelled row)."""
        import alscale

        sel = alscale.select(self.strategy, budget=budget, model=self.model, data=self.rows,
                             mc_samples=self.mc_samples, labeled=self.labeled_ids, seed=self.seed, round=self.round,
                             **self.options)
        self.round += 1
        return np.asarray(sel.indices)
