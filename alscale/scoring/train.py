"""Train and evaluate a classifier on labelled rows (the active-learning loop's retraining).

Arrays in, model out; torch only. The recipe is the BatchBALD paper's (Kirsch et al. 2019,
appendix; REFERENCES §2): Adam, mini-batches of 64, an "epoch" of a fixed number of draws
(5,056) so that tiny labelled sets still get enough gradient steps, early stopping on
validation accuracy with patience 3, at most 30 epochs, and the best-validation weights
kept. With ``draws_per_epoch=None`` an epoch is one pass over the labelled rows and without
a validation set every epoch runs (Gal et al. 2017's fixed-epoch Keras recipe).

Everything random — initial weights, the draw order, training-mode dropout — comes from
``seed``, under a forked RNG, so the same call gives the same model (on the same device).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alscale.errors import AlscaleError
from alscale.scoring.builtins import BUILTINS
from alscale.scoring.factory import build_model
from alscale.scoring.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    epochs: int  # epochs run
    best_epoch: int  # the epoch whose weights were kept (1-based)
    val_accuracy: float | None  # of the kept weights
    train_loss: float  # mean loss of the last epoch
    seconds: float


def fresh_model(spec: ModelSpec, in_features: int, init_seed: int) -> nn.Module:
    """A newly initialised model (``spec.checkpoint`` ignored), weights drawn from ``init_seed``.

    Builtins get ``init_seed`` as their kwarg; import-path factories are called under
    ``torch.manual_seed(init_seed)`` in a forked RNG.
    """
    kwargs = dict(spec.kwargs)
    if spec.factory in BUILTINS:
        kwargs["init_seed"] = int(init_seed)
    fresh = dataclasses.replace(spec, kwargs=kwargs, checkpoint=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        return build_model(fresh, in_features=in_features)


def _logits(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def epoch_indices(n: int, draws: int | None, generator: torch.Generator) -> torch.Tensor:
    """Row indices of one epoch: a permutation of ``n`` rows, or ``draws`` rows that cycle
    through a random permutation so each row is drawn ``draws / n`` times, ±1 (as
    batchbald_redux's RandomFixedLengthSampler)."""
    if draws is None or draws <= n:
        return torch.randperm(n, generator=generator)[: draws or n]
    return torch.randperm(draws, generator=generator) % n


def train_classifier(
    model: nn.Module,
    x_N_D: np.ndarray,
    y_N: np.ndarray,
    *,
    seed: int,
    x_val_V_D: np.ndarray | None = None,
    y_val_V: np.ndarray | None = None,
    epochs: int = 30,
    draws_per_epoch: int | None = 5056,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int | None = 3,
    eval_batch_size: int = 2048,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Fit ``model`` (in place) to ``x_N_D -> y_N`` with cross-entropy and Adam.

    Returns after ``epochs`` epochs, or earlier when validation accuracy has not improved
    for ``patience`` epochs; the model then holds the best-validation weights (ties: the
    earlier epoch). The model is left in eval mode on ``device``.
    """
    if x_N_D.ndim != 2 or y_N.shape != (x_N_D.shape[0],) or x_N_D.shape[0] == 0:
        raise AlscaleError(f"train_classifier needs x [N, D] and y [N] with N >= 1; got {x_N_D.shape}, {y_N.shape}")
    has_val = x_val_V_D is not None and y_val_V is not None and len(y_val_V) > 0
    if patience is not None and not has_val:
        raise AlscaleError("early stopping (patience) needs a validation set; pass x_val/y_val or patience=None")
    device = torch.device(device)
    start = time.perf_counter()
    x = torch.as_tensor(np.array(x_N_D, dtype=np.float32), device=device)
    y = torch.as_tensor(np.asarray(y_N, dtype=np.int64), device=device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(int(seed))
    best_acc, best_epoch, best_state = -1.0, 0, None
    since_best = 0
    epoch = 0
    loss_sum = 0.0
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(int(seed))
        for epoch in range(1, epochs + 1):
            model.train()
            order = epoch_indices(x.shape[0], draws_per_epoch, generator).to(device)
            loss_sum, batches = 0.0, 0
            for lo in range(0, order.numel(), batch_size):
                idx = order[lo:lo + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(_logits(model(x[idx])), y[idx])
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach())
                batches += 1
            loss_sum /= max(batches, 1)
            if not has_val:
                continue
            acc, _ = evaluate(model, x_val_V_D, y_val_V, batch_size=eval_batch_size, device=device)
            if acc > best_acc:
                best_acc, best_epoch, since_best = acc, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if patience is not None and since_best >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    model.eval()
    seconds = time.perf_counter() - start
    log.debug("trained on %d rows: %d epochs (best %d), val acc %s, %.2f s", x.shape[0], epoch, best_epoch,
              None if not has_val else f"{best_acc:.4f}", seconds)
    return TrainResult(epochs=epoch, best_epoch=best_epoch, val_accuracy=best_acc if has_val else None,
                       train_loss=loss_sum, seconds=seconds)


def evaluate(
    model: nn.Module, x_N_D: np.ndarray, y_N: np.ndarray, *, batch_size: int = 2048,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Accuracy and mean negative log-likelihood (nats) of the deterministic model (dropout off)."""
    device = torch.device(device)
    model.eval()
    correct, nll = 0, 0.0
    y_all = np.array(y_N, dtype=np.int64)
    with torch.inference_mode():
        for lo in range(0, x_N_D.shape[0], batch_size):
            xb = torch.as_tensor(np.array(x_N_D[lo:lo + batch_size], dtype=np.float32), device=device)
            yb = torch.as_tensor(y_all[lo:lo + batch_size], device=device)
            logits = _logits(model(xb)).float()
            nll += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    n = max(x_N_D.shape[0], 1)
    return correct / n, nll / n
