"""Consistent MC dropout: the same K dropout masks for every pool row of one acquisition.

Kirsch, van Amersfoort & Gal, "BatchBALD: Efficient and Diverse Batch Acquisition for Deep
Bayesian Active Learning", NeurIPS 2019, §4 / appendix: BatchBALD's joint entropies need the
K MC-dropout samples to be K draws of the *same* K models ω_1..ω_K for every pool point, so
each dropout layer fixes K masks for the whole acquisition instead of drawing a fresh mask
per row and per forward pass (Gal & Ghahramani 2016 MC dropout, made consistent).

Here the masks are a pure function of ``(seed, layer index, K, per-row activation shape)``:

* each layer draws its K masks from its own CPU ``torch.Generator`` seeded by
  :func:`derive_seed` ``(seed, layer_index)`` (the index counts the consistent dropout layers
  in ``model.modules()`` order), then moves them to the activation's device. Drawing on the
  CPU makes the masks identical on every device and in every process, and independent of
  batch size, batch order, N, and of which shard scores which rows;
* masks are drawn once, at the layer's first sampled forward pass, and kept until
  :func:`configure_mc_dropout` is called again (one Scorer = one acquisition).

``ConsistentMCDropout`` masks elements (any input ``[N, *F]``, usually ``[N, F]``).
``ConsistentMCDropout2d`` masks whole channels of ``[N, C, *spatial]`` feature maps (one
Bernoulli per channel, shared over all positions), like ``nn.Dropout2d`` and like
batchbald_redux's ``ConsistentMCDropout2d`` used for the paper's MNIST CNN.

Modes of a layer:

* ``training`` (``model.train()``): ordinary dropout with fresh masks, so builtin models can
  be trained as usual;
* eval with no sample selected (``mc_sample is None``): identity, i.e. the deterministic
  (expected-activation) network;
* eval with ``mc_sample = k``: multiply by mask ``k`` (scaled by ``1 / (1 - p)``).

The Scorer loops over k (one pass per sample over the same batch) rather than expanding
the batch to ``[B·K, ...]``: it works for any architecture (branches, residuals), keeps
memory at one batch, and measured as fast on CPU for the builtin MLP and CNN. Models that
define ``mc_prefix`` / ``mc_suffix`` (the builtins do) have the layers before the first
dropout run once per batch instead of K times.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alscale.errors import AlscaleError

#: Separates the dropout-mask stream from other uses of the same root seed.
_DROPOUT_STREAM = 0x4D43_4450  # "MCDP"


def derive_seed(seed: int, layer_index: int) -> int:
    """A 63-bit generator seed for dropout layer ``layer_index`` under root ``seed`` (both >= 0)."""
    state = np.random.SeedSequence([int(seed), _DROPOUT_STREAM, int(layer_index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _check_p(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise AlscaleError(f"dropout probability must be a number in [0, 1], got {p!r}")
    return float(p)


class _ConsistentMCDropoutBase(nn.Module):
    """Shared logic; subclasses choose the mask shape per row (elements or channels)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _check_p(p)
        self.mc_samples = 0
        self.mc_seed: int | None = None
        self.mc_sample: int | None = None
        self.mc_forbidden = False  # set while the Scorer runs a model's mc_prefix
        self._masks: torch.Tensor | None = None  # [K, *mask_shape]; not part of state_dict
        self._sample_shape: tuple[int, ...] | None = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def configure(self, mc_samples: int, seed: int) -> None:
        """Use ``mc_samples`` masks drawn from generator seed ``seed``; forget old masks."""
        self.mc_samples = int(mc_samples)
        self.mc_seed = int(seed)
        self.mc_sample = None
        self._masks = None
        self._sample_shape = None

    def _mask_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _masks_for(self, x: torch.Tensor) -> torch.Tensor:
        sample_shape = tuple(x.shape[1:])
        if self._masks is None:
            if self.mc_seed is None or self.mc_samples < 1:
                raise RuntimeError("ConsistentMCDropout: mc_sample set before configure()")
            generator = torch.Generator(device="cpu").manual_seed(self.mc_seed)
            uniform = torch.rand((self.mc_samples, *self._mask_shape(sample_shape)), generator=generator)
            keep = (uniform >= self.p).to(torch.float32)
            scale = 0.0 if self.p >= 1.0 else 1.0 / (1.0 - self.p)
            self._masks = (keep * scale).to(device=x.device, dtype=x.dtype)
            self._sample_shape = sample_shape
        elif sample_shape != self._sample_shape:
            raise AlscaleError(
                f"consistent MC dropout: the per-row activation shape changed from {list(self._sample_shape or ())}"
                f" to {list(sample_shape)}; the model must see fixed-size rows"
            )
        elif self._masks.device != x.device or self._masks.dtype != x.dtype:
            self._masks = self._masks.to(device=x.device, dtype=x.dtype)
        return self._masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mc_forbidden:
            raise AlscaleError(
                "a dropout layer ran inside the model's mc_prefix; mc_prefix must stop before the first dropout"
            )
        if self.training:
            return self._train_forward(x)
        if self.mc_sample is None or self.p == 0.0:
            return x
        return x * self._masks_for(x)[self.mc_sample]


class ConsistentMCDropout(_ConsistentMCDropoutBase):
    """Element-wise consistent MC dropout for activations ``[N, *F]`` (usually ``[N, F]``).

    Sample k multiplies every row by the same mask ``[*F]`` (Kirsch et al. 2019).
    """

    def _mask_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        return sample_shape

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, training=True)


class ConsistentMCDropout2d(_ConsistentMCDropoutBase):
    """Channel-wise consistent MC dropout for feature maps ``[N, C, *spatial]``.

    Sample k zeroes the same whole channels for every row (mask ``[C, 1, ..., 1]``), as
    ``nn.Dropout2d`` (Tompson et al. 2015) and batchbald_redux's ``ConsistentMCDropout2d``
    used for the BatchBALD MNIST CNN. Works for any rank >= 2 (also replaces Dropout1d/3d).
    """

    def _mask_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (sample_shape[0],) + (1,) * (len(sample_shape) - 1)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if self.p >= 1.0:
            return torch.zeros_like(x)
        keep = torch.empty(x.shape[:2] + (1,) * (x.dim() - 2), device=x.device, dtype=x.dtype)
        keep.bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise AlscaleError(f"ConsistentMCDropout2d needs input [N, C, ...], got shape {list(x.shape)}")
        return super().forward(x)


_UNSUPPORTED = (nn.AlphaDropout, nn.FeatureAlphaDropout)
_CHANNEL_DROPOUTS = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def convert_dropout(model: nn.Module) -> nn.Module:
    """Replace ``nn.Dropout`` by :class:`ConsistentMCDropout` and ``nn.Dropout1d/2d/3d`` by
    :class:`ConsistentMCDropout2d` (same ``p``), in place; returns ``model``.

    Shared module instances stay shared. Alpha dropout has no consistent version: raises
    :class:`AlscaleError` naming the layer. Dropout applied functionally in ``forward``
    (``F.dropout``) cannot be seen here and is off in eval mode.
    """
    replacements: dict[int, nn.Module] = {}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, _UNSUPPORTED):
                raise AlscaleError(
                    f"model layer {qualified!r} is {type(child).__name__}, which has no consistent MC"
                    " version; use nn.Dropout/nn.Dropout2d or set mc_samples to 1"
                )
            if isinstance(child, _ConsistentMCDropoutBase):
                continue
            if type(child) is nn.Dropout or isinstance(child, _CHANNEL_DROPOUTS):
                new = replacements.get(id(child))
                if new is None:
                    cls = ConsistentMCDropout if type(child) is nn.Dropout else ConsistentMCDropout2d
                    new = cls(child.p)
                    new.train(child.training)
                    replacements[id(child)] = new
                setattr(parent, child_name, new)
    return model


def mc_dropout_layers(model: nn.Module) -> list[_ConsistentMCDropoutBase]:
    """The consistent dropout layers of ``model`` in ``model.modules()`` order (deduplicated)."""
    return [module for module in model.modules() if isinstance(module, _ConsistentMCDropoutBase)]


def configure_mc_dropout(model: nn.Module, mc_samples: int, seed: int) -> list[_ConsistentMCDropoutBase]:
    """Give every consistent dropout layer of ``model`` K = ``mc_samples`` fresh masks.

    Layer i (in ``model.modules()`` order) draws from generator seed ``derive_seed(seed, i)``.
    Returns the layers (empty if the model has none).
    """
    layers = mc_dropout_layers(model)
    for index, layer in enumerate(layers):
        layer.configure(mc_samples, derive_seed(seed, index))
    return layers


def set_mc_sample(layers: list[_ConsistentMCDropoutBase], sample: int | None) -> None:
    """Select MC sample ``sample`` (0..K-1) in every layer, or ``None`` for the deterministic pass."""
    for layer in layers:
        layer.mc_sample = sample


def forbid_mc_dropout(layers: list[_ConsistentMCDropoutBase], forbidden: bool) -> None:
    """Make every layer raise if called (guards a model's ``mc_prefix``), or lift that guard."""
    for layer in layers:
        layer.mc_forbidden = forbidden
