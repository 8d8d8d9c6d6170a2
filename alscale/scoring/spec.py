"""``ModelSpec``: which model scores the pool, with which weights, how many MC samples, where.

A ``ModelSpec`` is plain, immutable configuration. It is validated when it is made (so a
job file fails before any compute) and it pickles, so the coordinator can ship it to every
shard worker, which then builds the model itself (see :class:`alscale.scoring.Scorer`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from alscale.errors import AlscaleError

#: Accepted ``device`` strings: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _empty_kwargs() -> Mapping[str, Any]:
    return MappingProxyType({})


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AlscaleError(f"ModelSpec.{name} must be an int >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """How to build and run the scoring model.

    Attributes:
        factory: a builtin name (see :func:`alscale.scoring.builtin_models`) or an import
            path ``"package.module:callable"`` whose call ``callable(**kwargs)`` returns a
            ``torch.nn.Module`` (the model protocol is in :mod:`alscale.scoring`).
        kwargs: keyword arguments for the factory (stored read-only).
        checkpoint: path of a ``state_dict`` file (``torch.save(model.state_dict(), path)``),
            loaded with ``torch.load(..., weights_only=True, map_location="cpu")``; ``None``
            keeps the factory's (seeded, for builtins) initial weights.
        mc_samples: K. ``1`` runs the model deterministically (dropout off); ``K > 1`` draws
            K consistent MC-dropout samples (Kirsch et al. 2019): the same K masks for
            every pool row of one acquisition.
        batch_size: rows per forward pass.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``.

    The spec is immutable and picklable but not hashable (``kwargs`` is a mapping).
    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=_empty_kwargs)
    checkpoint: str | None = None
    mc_samples: int = 1
    batch_size: int = 4096
    device: str = "auto"
    transform: str | None = None  # raw-image pools: builtin name or "package.module:callable"
    decode_threads: int = 2  # raw-image pools: decoding threads per worker

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise AlscaleError(
                f"ModelSpec.factory must be a builtin model name or 'package.module:callable',"
                f" got {self.factory!r}"
            )
        if not isinstance(self.kwargs, Mapping):
            raise AlscaleError(
                f"ModelSpec.kwargs must be a mapping of keyword arguments, got {type(self.kwargs).__name__}"
            )
        bad_keys = [key for key in self.kwargs if not isinstance(key, str)]
        if bad_keys:
            raise AlscaleError(f"ModelSpec.kwargs keys must be strings, got {bad_keys[0]!r}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, os.PathLike)):
                raise AlscaleError(
                    f"ModelSpec.checkpoint must be a file path or None, got {type(self.checkpoint).__name__}"
                )
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        _check_positive_int("mc_samples", self.mc_samples)
        _check_positive_int("batch_size", self.batch_size)
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise AlscaleError(
                f"ModelSpec.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        if self.transform is not None and (not isinstance(self.transform, str) or not self.transform):
            raise AlscaleError(f"ModelSpec.transform must be a transform name or 'package.module:callable',"
                               f" got {self.transform!r}")
        _check_positive_int("decode_threads", self.decode_threads)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # MappingProxyType does not pickle; rebuild from a plain dict.
        return (
            type(self),
            (self.factory, dict(self.kwargs), self.checkpoint, self.mc_samples, self.batch_size, self.device,
             self.transform, self.decode_threads),
        )
