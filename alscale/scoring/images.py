"""Raw-image pools: decode ``image`` bytes / ``path`` files into model inputs, inside the workers.

A *transform* turns one decoded :class:`PIL.Image.Image` into a float32 array (any shape;
it is flattened to the model's ``[D]`` input row). The builtin ``pixels`` keeps the image's
own mode and size: values / 255, channels first (``[C, H, W]`` flattened; grayscale gives
``H * W``), so an MNIST PNG pool gives exactly the features of ``alscale pool mnist``. A
user transform is ``"package.module:callable"`` (e.g. torchvision's resize / crop /
normalise, returning a tensor or array), imported only from the path the job names.

:class:`BatchDecoder` decodes batches on a thread pool (PIL releases the GIL while it
decodes) one batch ahead of the caller, so decoding the next batch overlaps the model's
forward pass on the current one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from alscale.errors import AlscaleError

Transform = Callable[[Any], Any]


def pixels(image: Any) -> np.ndarray:
    """The builtin transform: ``[C, H, W]`` (or ``[H, W]``) float32 in [0, 1]."""
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return np.moveaxis(x, -1, 0) if x.ndim == 3 else x


BUILTIN_TRANSFORMS: dict[str, Transform] = {"pixels": pixels}


def resolve_transform(name: str | None) -> Transform:
    """A builtin transform name (``pixels``, the default) or ``"package.module:callable"``."""
    if name is None or name in BUILTIN_TRANSFORMS:
        return BUILTIN_TRANSFORMS[name or "pixels"]
    from alscale.scoring.factory import resolve_factory

    if ":" not in name:
        raise AlscaleError(f"unknown image transform {name!r}; builtins are {', '.join(BUILTIN_TRANSFORMS)} "
                           "(or give an import path 'package.module:callable')")
    return resolve_factory(name, kind="image transform")


def _open(data: bytes, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AlscaleError(f"{where}: cannot decode the image ({' '.join(str(exc).split())[:120]}); "
                           "store PNG/JPEG/... bytes in 'image', or readable files in 'path'") from None


def _read_path(path: str, base: str) -> bytes:
    from alscale.pool.location import is_uri, resolve

    if not is_uri(path) and not os.path.isabs(path):
        path = base.rstrip("/") + "/" + path if is_uri(base) else os.path.join(base, path)
    loc = resolve(path)
    with loc.fs.open_input_file(loc.path) as fh:
        return fh.read()


def decode_rows(values: Sequence[Any], row_ids: np.ndarray, transform: Transform, *, column: str,
                base: str = "") -> np.ndarray:
    """Decode and transform rows into ``[n, D]`` float32 (every row must give the same D)."""
    out: np.ndarray | None = None
    for i, value in enumerate(values):
        where = f"row_id {int(row_ids[i])} column '{column}'"
        if value is None:
            raise AlscaleError(f"{where} is null; every row needs an image")
        try:
            data = value if column == "image" else _read_path(value, base)
        except AlscaleError:
            raise
        except Exception as exc:
            raise AlscaleError(f"{where}: cannot read {value!r} ({' '.join(str(exc).split())[:120]})") from None
        try:
            x = transform(_open(data, where))
        except AlscaleError:
            raise
        except Exception as exc:
            raise AlscaleError(f"{where}: the image transform raised {type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:160]}") from None
        row = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32).reshape(-1)
        if out is None:
            out = np.empty((len(values), row.size), np.float32)
        elif row.size != out.shape[1]:
            raise AlscaleError(f"{where}: the transform gave {row.size} values, earlier rows {out.shape[1]}; "
                               "resize every image to one size in the transform")
        out[i] = row
    return out if out is not None else np.empty((0, 0), np.float32)


class BatchDecoder:
    """Decode ``[lo, hi)`` slices of a media column on ``threads`` threads, one batch ahead."""

    def __init__(self, values: Any, row_ids: np.ndarray, transform: Transform, *, column: str, base: str = "",
                 threads: int = 2) -> None:
        self.values, self.row_ids, self.transform = values, row_ids, transform
        self.column, self.base, self.threads = column, base, max(1, int(threads))

    def _decode(self, lo: int, hi: int) -> np.ndarray:
        values = self.values.slice(lo, hi - lo).to_pylist() if hasattr(self.values, "slice") else self.values[lo:hi]
        ids = self.row_ids[lo:hi]
        if self.threads == 1 or hi - lo < 2 * self.threads:
            return decode_rows(values, ids, self.transform, column=self.column, base=self.base)
        step = -(-(hi - lo) // self.threads)
        with ThreadPoolExecutor(self.threads) as pool:
            parts = list(pool.map(lambda a: decode_rows(values[a:a + step], ids[a:a + step], self.transform,
                                                        column=self.column, base=self.base),
                                  range(0, hi - lo, step)))
        return np.concatenate(parts)

    def decode_all(self) -> np.ndarray:
        return self._decode(0, len(self.row_ids))

    def batches(self, lo: int, hi: int, batch: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, features [b, D])`` for consecutive batches of ``[lo, hi)``; batch i+1 decodes
        while the caller works on batch i."""
        starts = list(range(lo, hi, batch))
        if not starts:
            return
        with ThreadPoolExecutor(1) as ahead:
            future = ahead.submit(self._decode, starts[0], min(starts[0] + batch, hi))
            for i, start in enumerate(starts):
                x = future.result()
                if i + 1 < len(starts):
                    nxt = starts[i + 1]
                    future = ahead.submit(self._decode, nxt, min(nxt + batch, hi))
                yield start, x
