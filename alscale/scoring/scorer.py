"""``Scorer``: features ``[N, D]`` -> ``log_probs [N, K, C]`` and ``embeddings [N, E]``.

One Scorer serves one acquisition in one process (a shard worker / Ray actor). It builds
the model lazily on its first call, on the device that process sees, and draws the K
consistent MC-dropout masks once (Kirsch et al. 2019), so the K samples are the same K
models ω_1..ω_K for every row, whichever process or shard scores the row.

Row-wise reproducibility. A row's outputs do not depend on the other rows of its batch,
on the batch size, or on the slice it arrives in, bit for bit, given the same spec, seed
and device type. This needs one precaution on the CPU: MKL's sgemm takes a different code
path (different summation order, ~1e-7 relative differences) for batches with very few
rows (measured with torch 2.13 / MKL 2024.2 on AVX2: M in {1, 2, 3} with 1 thread and
M in {1, 2, 3, 5, 6, 7, 9, 10, 11} with 2 threads differ from M >= 12), so every forward
pass gets at least ``MIN_FORWARD_ROWS`` rows (zero rows are appended and dropped). On CUDA
every forward pass is padded to exactly ``batch_size`` rows, so the kernels cuBLAS/cuDNN
pick by shape are the same for every batch and every shard (not verified on a GPU here).

With K > 1 the Scorer loops over the K samples on the same batch (the masks of sample k
are selected in every dropout layer); for models with ``mc_prefix`` / ``mc_suffix`` the
layers before the first dropout run once per batch, not K times.

Embeddings come from the deterministic pass (dropout off), i.e. the expected activation
of the penultimate layer, also when K > 1; that pass is skipped for models that return
logits only.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from alscale.errors import AlscaleError
from alscale.scoring.device import resolve_device
from alscale.scoring.dropout import configure_mc_dropout, convert_dropout, forbid_mc_dropout, set_mc_sample
from alscale.scoring.factory import build_model
from alscale.scoring.spec import ModelSpec

log = logging.getLogger(__name__)

#: Smallest row count of a CPU forward pass (see the module docstring).
MIN_FORWARD_ROWS = 16


class Scorer:
    """Lazily builds the model inside the process that calls it (a Ray actor), then scores arrays.

    Args:
        spec: the model to run.
        in_features: D, the pool's feature width.
        seed: root seed (>= 0) of the acquisition's MC-dropout masks; the same spec and seed
            give the same masks in every process.
        module: an already built ``nn.Module`` to score with instead of building
            ``spec.factory`` (the in-memory API, :func:`alscale.select` with ``model=``);
            ``spec.checkpoint`` is then ignored. The Scorer runs a deep copy, so the
            caller's module is never converted, moved or put in eval mode.

    A Scorer pickles without its built model (it is rebuilt in the receiving process; a
    given ``module`` travels with it).
    """

    def __init__(self, spec: ModelSpec, *, in_features: int, seed: int, module: nn.Module | None = None) -> None:
        if module is not None and not isinstance(module, nn.Module):
            raise AlscaleError(f"Scorer module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        if not isinstance(spec, ModelSpec):
            raise AlscaleError(f"Scorer needs a ModelSpec, got {type(spec).__name__}")
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) or in_features < 1:
            raise AlscaleError(f"in_features must be an int >= 1, got {in_features!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise AlscaleError(f"seed must be an int >= 0, got {seed!r}")
        self.spec = spec
        self.in_features = int(in_features)
        self.seed = int(seed)
        self._reset()

    def _reset(self) -> None:
        self._model: nn.Module | None = None
        self._device: torch.device | None = None
        self._layers: list[Any] = []
        self._has_prefix = False
        self._n_classes: int | None = None
        self._embedding_dim: int | None = None
        self._returns_embedding: bool | None = None
        self._batch_loss: torch.Tensor | None = None  # predicted loss of the last checked batch
        #: Per-row predicted loss of the last :meth:`score` call (float32 ``[N]``), when the model
        #: returns one as a third output (a Learning Loss module, Yoo & Kweon, CVPR 2019).
        self.last_loss_N: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "in_features": self.in_features, "seed": self.seed, "module": self.module}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.module = state.get("module")
        self.spec = state["spec"]
        self.in_features = state["in_features"]
        self.seed = state["seed"]
        self._reset()

    @property
    def n_classes(self) -> int | None:
        """C, known after the first call to :meth:`score`."""
        return self._n_classes

    @property
    def embedding_dim(self) -> int | None:
        """E, known after the first call (``None`` also for models that return logits only)."""
        return self._embedding_dim

    @property
    def device(self) -> torch.device | None:
        """The device the model runs on, known once it is built."""
        return self._device

    @property
    def model(self) -> nn.Module:
        """The built model (builds it on first access)."""
        return self._ensure_model()

    def _ensure_model(self) -> nn.Module:
        if self._model is not None:
            return self._model
        device = resolve_device(self.spec.device)
        if self.module is not None:
            model = copy.deepcopy(self.module).eval()
        else:
            model = build_model(self.spec, in_features=self.in_features)
        layers: list[Any] = []
        if self.spec.mc_samples > 1:
            convert_dropout(model)
            layers = configure_mc_dropout(model, self.spec.mc_samples, self.seed)
            if not layers:
                raise AlscaleError(
                    f"mc_samples={self.spec.mc_samples} but model {self.spec.factory!r} has no dropout layers"
                    " (nn.Dropout, nn.Dropout2d or alscale ConsistentMCDropout); set mc_samples to 1 or add dropout"
                )
        model.to(device).eval()
        self._model, self._device, self._layers = model, device, layers
        self._has_prefix = callable(getattr(model, "mc_prefix", None)) and callable(getattr(model, "mc_suffix", None))
        log.info(
            "scoring model %r on %s: K=%d, %d consistent dropout layer(s), seed %d, batch %d",
            self.spec.factory, device, self.spec.mc_samples, len(layers), self.seed, self.spec.batch_size,
        )
        return model

    def _check_features(self, features_N_D: object) -> np.ndarray:
        if not isinstance(features_N_D, np.ndarray):
            raise AlscaleError(f"features must be a numpy array [N, D], got {type(features_N_D).__name__}")
        if features_N_D.ndim != 2 or features_N_D.shape[1] != self.in_features:
            raise AlscaleError(
                f"features must have shape [N, {self.in_features}], got {list(features_N_D.shape)}"
            )
        if not np.issubdtype(features_N_D.dtype, np.floating):
            raise AlscaleError(f"features must be floating point (float32), got dtype {features_N_D.dtype}")
        return features_N_D

    def score(self, features_N_D: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Score ``features_N_D`` (any float dtype, may be a read-only view; never written).

        Returns:
            ``log_probs_N_K_C`` float32 natural-log probabilities (K = ``spec.mc_samples``;
            sample k uses the same dropout masks for every row), and ``embeddings_N_E``
            float32 from the deterministic pass, or ``None`` if the model returns logits only.
        """
        features_N_D = self._check_features(features_N_D)
        self._ensure_model()
        n_rows = features_N_D.shape[0]
        if n_rows == 0:
            return self._empty_outputs()
        batch = self.spec.batch_size
        log_probs_N_K_C: np.ndarray | None = None
        embeddings_N_E: np.ndarray | None = None
        start = time.perf_counter()
        loss_N: np.ndarray | None = None
        with torch.inference_mode():
            for lo in range(0, n_rows, batch):
                hi = min(lo + batch, n_rows)
                self._batch_loss = None
                log_probs_B_K_C, embeddings_B_E = self._score_batch(features_N_D[lo:hi], lo)
                if self._batch_loss is not None:
                    if loss_N is None:
                        loss_N = np.empty(n_rows, dtype=np.float32)
                    loss_N[lo:hi] = self._batch_loss.float().cpu().numpy()
                if log_probs_N_K_C is None:
                    log_probs_N_K_C = np.empty((n_rows, *log_probs_B_K_C.shape[1:]), dtype=np.float32)
                    if embeddings_B_E is not None:
                        embeddings_N_E = np.empty((n_rows, embeddings_B_E.shape[1]), dtype=np.float32)
                log_probs_N_K_C[lo:hi] = log_probs_B_K_C.cpu().numpy()
                if embeddings_N_E is not None and embeddings_B_E is not None:
                    embeddings_N_E[lo:hi] = embeddings_B_E.cpu().numpy()
        self.last_loss_N = loss_N
        seconds = time.perf_counter() - start
        log.debug("scored %d rows in %.3f s (%.0f rows/s)", n_rows, seconds, n_rows / max(seconds, 1e-9))
        assert log_probs_N_K_C is not None
        return log_probs_N_K_C, embeddings_N_E

    def _empty_outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._n_classes is None:  # learn C and E from one zero row
            with torch.inference_mode():
                self._score_batch(np.zeros((1, self.in_features), dtype=np.float32), 0)
        assert self._n_classes is not None
        log_probs = np.empty((0, self.spec.mc_samples, self._n_classes), dtype=np.float32)
        embeddings = None if self._embedding_dim is None else np.empty((0, self._embedding_dim), dtype=np.float32)
        return log_probs, embeddings

    def _score_batch(self, batch_B_D: np.ndarray, offset: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score one batch; ``offset`` is its first row's index (for error messages)."""
        assert self._model is not None and self._device is not None
        x_B_D = torch.from_numpy(np.array(batch_B_D, dtype=np.float32, copy=True))
        finite_B_D = torch.isfinite(x_B_D)
        if not bool(finite_B_D.all()):
            row, col = (int(i) for i in torch.nonzero(~finite_B_D)[0])
            raise AlscaleError(
                f"features row {offset + row} column {col} is {float(x_B_D[row, col])}; features must be finite"
            )
        rows = x_B_D.shape[0]
        pad_to = self.spec.batch_size if self._device.type == "cuda" else MIN_FORWARD_ROWS
        if rows < pad_to:
            x_B_D = torch.cat([x_B_D, x_B_D.new_zeros((pad_to - rows, x_B_D.shape[1]))])
        x_B_D = x_B_D.to(self._device, non_blocking=True)
        padded = x_B_D.shape[0]
        model = self._model
        mc_samples = self.spec.mc_samples
        if mc_samples == 1:
            logits_B_C, embeddings_B_E = self._check_output(model(x_B_D), padded, rows)
            return self._log_softmax(logits_B_C, offset).unsqueeze(1), embeddings_B_E
        embeddings_B_E = None
        try:
            if self._has_prefix:  # layers before the first dropout: once, not K times
                forbid_mc_dropout(self._layers, True)
                hidden = model.mc_prefix(x_B_D)
                forbid_mc_dropout(self._layers, False)
                run = functools.partial(model.mc_suffix, hidden)
            else:
                run = functools.partial(model, x_B_D)
            if self._returns_embedding is not False:
                set_mc_sample(self._layers, None)
                _, embeddings_B_E = self._check_output(run(), padded, rows)
            deterministic_loss = self._batch_loss  # a predicted loss comes from the deterministic pass
            samples = []
            for k in range(mc_samples):
                set_mc_sample(self._layers, k)
                logits_B_C, _ = self._check_output(run(), padded, rows)
                samples.append(self._log_softmax(logits_B_C, offset))
            self._batch_loss = deterministic_loss
        finally:
            forbid_mc_dropout(self._layers, False)
            set_mc_sample(self._layers, None)
        return torch.stack(samples, dim=1), embeddings_B_E

    def _check_output(self, output: object, padded: int, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check a forward output of ``padded`` rows against the protocol; keep the first ``rows``."""
        name = self.spec.factory
        loss = None
        if isinstance(output, torch.Tensor):
            logits, embedding = output, None
        elif isinstance(output, (tuple, list)) and len(output) in (2, 3) and all(
            isinstance(part, torch.Tensor) for part in output
        ):
            logits, embedding = output[0], output[1]
            loss = output[2] if len(output) == 3 else None
        else:
            raise AlscaleError(
                f"model {name!r} must return logits [N, C], a tuple (logits [N, C], embedding [N, E]) or"
                f" (logits, embedding, predicted loss [N]), got {type(output).__name__}"
            )
        if loss is not None:
            if loss.dim() == 2 and loss.shape[1] == 1:
                loss = loss[:, 0]
            if loss.dim() != 1 or loss.shape[0] != padded:
                raise AlscaleError(f"model {name!r} returned a third output of shape {list(loss.shape)} for "
                                   f"{padded} rows; a model must return logits [N, C], (logits, embedding) or "
                                   f"(logits, embedding, predicted loss [{padded}])")
            self._batch_loss = loss[:rows]
        if logits.dim() != 2 or logits.shape[0] != padded:
            raise AlscaleError(
                f"model {name!r} returned logits of shape {list(logits.shape)} for {padded} rows;"
                f" expected [{padded}, C]"
            )
        if logits.shape[1] < 2:
            raise AlscaleError(
                f"model {name!r} returned {logits.shape[1]} logit(s) per row; one logit per class is needed"
                " (C >= 2; for a sigmoid model return [0, z])"
            )
        if self._n_classes is not None and logits.shape[1] != self._n_classes:
            raise AlscaleError(f"model {name!r} returned {logits.shape[1]} classes after {self._n_classes}")
        self._n_classes = int(logits.shape[1])
        if embedding is not None:
            if embedding.dim() != 2 or embedding.shape[0] != padded:
                raise AlscaleError(
                    f"model {name!r} returned an embedding of shape {list(embedding.shape)} for {padded} rows;"
                    f" expected [{padded}, E]"
                )
            self._embedding_dim = int(embedding.shape[1])
            embedding = embedding[:rows].float()
        self._returns_embedding = embedding is not None
        return logits[:rows], embedding

    def _log_softmax(self, logits_B_C: torch.Tensor, offset: int) -> torch.Tensor:
        """float32 log-softmax; raises naming the first row whose log-probs are not finite."""
        log_probs_B_C = torch.log_softmax(logits_B_C.float(), dim=-1)
        finite_B = torch.isfinite(log_probs_B_C).all(dim=-1)
        if not bool(finite_B.all()):
            row = int(torch.nonzero(~finite_B)[0, 0])
            raise AlscaleError(
                f"model {self.spec.factory!r} produced non-finite logits for row {offset + row};"
                " check the checkpoint (NaN/inf weights) and the features"
            )
        return log_probs_B_C
