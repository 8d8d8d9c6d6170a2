"""A compact, exact snapshot of a :class:`~alscale.strategies.shards.ShardState`'s mutable state.

A restarted shard worker rebuilds its loaded arrays (row ids, log-probs, embeddings, base
scores) by loading its shard again (model outputs from the chunk cache), then takes
everything else back from a snapshot instead of replaying every selection call it had
completed (issue 15.4). The snapshot is generic over the state's attributes: whatever a
selection loop keeps on the state (masks, min-distances, per-strategy state objects) is
captured, bit for bit, with no per-strategy code:

- every numpy array and CPU torch tensor reachable from the mutable attributes is stored by
  its *memory*: arrays that overlap in memory (views of one buffer, a tensor made with
  ``torch.from_numpy``) form one group, copied once, and are rebuilt as views of one new
  buffer with the same offsets, strides, alignment (mod 64) and writeable flags, so writes
  through one are seen through the others exactly as before;
- arrays that lie in a loaded array (a view of the embeddings, say) are not copied: they
  are rebuilt as views of the restored state's loaded array;
- process-local resources are re-created instead of copied: a distance backend (the
  process-wide one :func:`alscale.index.get_backend` returned), a thread pool (same size
  and name), a module;
- CUDA tensors are copied to the host and back to their device (no sharing between them is
  kept: no loop shares memory between two CUDA tensors).

Identity within the state is kept (two attributes holding the same object hold the same
restored object). An object that cannot be pickled makes :func:`capture` raise
:class:`SnapshotError`; the caller then keeps replaying calls instead (correct, unbounded).
"""

from __future__ import annotations

import io
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

#: ShardState attributes that :meth:`ShardState.__init__` takes (the loaded arrays): rebuilt
#: by loading, never snapshotted.
LOADED = ("row_ids_N", "log_probs_N_K_C", "embeddings_N_D", "base_scores", "model_outputs")

_ALIGN = 64


class SnapshotError(RuntimeError):
    """The state holds something a snapshot cannot capture."""


@dataclass
class StateSnapshot:
    """``meta``: the pickled attributes (arrays replaced by references); ``buffers``: one
    uint8 array per memory group; ``group_lo``: each group's address mod 64 (alignment)."""

    meta: bytes
    buffers: list[np.ndarray]
    align: list[int] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return len(self.meta) + sum(int(b.nbytes) for b in self.buffers)


class _Discard(io.RawIOBase):
    def write(self, b: Any) -> int:  # type: ignore[override]
        return len(b)


def _torch() -> Any:
    return sys.modules.get("torch")


def _is_tensor(obj: Any) -> bool:
    t = _torch()
    return t is not None and isinstance(obj, t.Tensor)


def _np_bounds(a: np.ndarray) -> tuple[int, int]:
    if a.size == 0:
        p = a.__array_interface__["data"][0]
        return p, p
    lo, hi = np.lib.array_utils.byte_bounds(a)
    return int(lo), int(hi)


def _tensor_bounds(t: Any) -> tuple[int, int]:
    st = t.untyped_storage()
    return int(st.data_ptr()), int(st.data_ptr()) + int(st.nbytes())


def _backend_key(obj: Any) -> tuple | None:
    mod = sys.modules.get("alscale.index")
    if mod is None:
        return None
    for key, value in getattr(mod, "_CACHE", {}).items():
        if value is obj:
            return key
    return None


def _loaded_arrays(state: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in LOADED:
        value = getattr(state, name, None)
        if isinstance(value, np.ndarray):
            out[name] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, np.ndarray):
                    out[f"{name}[{k}]"] = v
    return out


class _Collector(pickle.Pickler):
    """Pass 1: find every array and tensor (their content is not serialised)."""

    def __init__(self) -> None:
        super().__init__(_Discard(), protocol=5)
        self.arrays: dict[int, Any] = {}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.dtype != object:
            self.arrays[id(obj)] = obj
            return 0
        if _is_tensor(obj):
            if obj.device.type == "cpu":
                self.arrays[id(obj)] = obj
            return 0
        if isinstance(obj, (ThreadPoolExecutor, ModuleType)) or _backend_key(obj) is not None:
            return 0
        return None


def _groups(arrays: list[Any], loaded: dict[str, np.ndarray]) -> tuple[list[tuple[int, int]], dict[int, tuple]]:
    """Union overlapping memory ranges; returns the copied groups' ranges and, per array id,
    ``("group", g, lo)`` or ``("loaded", name, lo)`` (the range the array's offsets count from)."""
    spans = []
    for a in arrays:
        lo, hi = _tensor_bounds(a) if _is_tensor(a) else _np_bounds(a)
        spans.append((lo, hi, id(a)))
    loaded_spans = [(*_np_bounds(v), name) for name, v in loaded.items()]
    where: dict[int, tuple] = {}
    rest = []
    for lo, hi, key in spans:
        home = next((name for llo, lhi, name in loaded_spans if llo <= lo and hi <= lhi and lhi > llo), None)
        if home is not None:
            where[key] = ("loaded", home, _np_bounds(loaded[home])[0])
        else:
            rest.append((lo, hi, key))
    rest.sort()
    ranges: list[tuple[int, int]] = []
    members: list[list[int]] = []
    for lo, hi, key in rest:
        if ranges and lo < ranges[-1][1] and hi > lo:  # overlaps the current group
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], hi))
            members[-1].append(key)
        else:
            ranges.append((lo, hi))
            members.append([key])
    for g, keys in enumerate(members):
        for key in keys:
            where[key] = ("group", g, ranges[g][0])
    return ranges, where


class _Memory:
    """``n`` bytes at address ``lo`` inside ``owner``'s memory, as an array interface that keeps
    ``owner`` alive."""

    def __init__(self, owner: Any, lo: int, n: int, readonly: bool) -> None:
        self.owner = owner
        self.__array_interface__ = {"data": (lo, readonly), "shape": (n,), "typestr": "|u1", "version": 3}


def _raw_bytes(lo: int, n: int, owner: Any, readonly: bool = True) -> np.ndarray:
    """A uint8 view of ``n`` bytes at address ``lo`` (inside ``owner``'s memory)."""
    return np.asarray(_Memory(owner, lo, n, readonly))


class _Writer(pickle.Pickler):
    def __init__(self, fh: Any, where: dict[int, tuple]) -> None:
        super().__init__(fh, protocol=5)
        self.where = where
        self.ids: dict[int, int] = {}
        self.keep: list[Any] = []  # objects whose id() names them in ``ids``

    def _index(self, obj: Any) -> int:
        if id(obj) not in self.ids:
            self.ids[id(obj)] = len(self.ids)
            self.keep.append(obj)
        return self.ids[id(obj)]

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.dtype != object:
            kind, home, base = self.where[id(obj)]
            off = obj.__array_interface__["data"][0] - base
            return ("np", self._index(obj), kind, home, off, obj.shape, obj.strides, obj.dtype.str,
                    bool(obj.flags.writeable))
        if _is_tensor(obj):
            if obj.device.type != "cpu":
                return ("cuda", self._index(obj), obj.detach().cpu().numpy(), str(obj.device), obj.requires_grad)
            kind, home, base = self.where[id(obj)]
            st = obj.untyped_storage()
            return ("torch", self._index(obj), kind, home, int(st.data_ptr()) - base, int(st.nbytes()),
                    str(obj.dtype).removeprefix("torch."), tuple(obj.shape), tuple(obj.stride()),
                    int(obj.storage_offset()), obj.requires_grad)
        if isinstance(obj, ThreadPoolExecutor):
            return ("pool", self._index(obj), obj._max_workers, obj._thread_name_prefix)
        if isinstance(obj, ModuleType):
            return ("module", self._index(obj), obj.__name__)
        key = _backend_key(obj)
        if key is not None:
            return ("backend", self._index(obj), key)
        return None


def capture(state: Any) -> StateSnapshot:
    """The snapshot of every attribute of ``state`` except :data:`LOADED`."""
    mutable = {k: v for k, v in vars(state).items() if k not in LOADED}
    loaded = _loaded_arrays(state)
    try:
        collector = _Collector()
        collector.dump(mutable)
        ranges, where = _groups(list(collector.arrays.values()), loaded)
        fh = io.BytesIO()
        _Writer(fh, where).dump(mutable)
    except (pickle.PicklingError, TypeError, AttributeError, KeyError) as exc:
        raise SnapshotError(f"cannot snapshot the shard state: {type(exc).__name__}: {exc}") from None
    owner = list(collector.arrays.values())
    buffers = [_raw_bytes(lo, hi - lo, owner).copy() for lo, hi in ranges]
    return StateSnapshot(fh.getvalue(), buffers, [lo % _ALIGN for lo, _ in ranges])


def _aligned_copy(buf: np.ndarray, mod: int) -> np.ndarray:
    raw = np.empty(buf.nbytes + 2 * _ALIGN, dtype=np.uint8)
    shift = (mod - raw.__array_interface__["data"][0]) % _ALIGN
    out = raw[shift : shift + buf.nbytes]
    out[...] = buf
    return out


class _Reader(pickle.Unpickler):
    def __init__(self, fh: Any, groups: list[np.ndarray], loaded: dict[str, np.ndarray]) -> None:
        super().__init__(fh)
        self.memory: dict[tuple[str, Any], np.ndarray] = {("group", g): buf for g, buf in enumerate(groups)}
        for name, a in loaded.items():
            lo, hi = _np_bounds(a)
            self.memory["loaded", name] = _raw_bytes(lo, hi - lo, a, readonly=not a.flags.writeable)
        self.made: dict[int, Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        kind, index = pid[0], pid[1]
        if index in self.made:
            return self.made[index]
        if kind == "np":
            _, _, mkind, home, off, shape, strides, dtype, writeable = pid
            obj: Any = np.ndarray(shape, np.dtype(dtype), buffer=self.memory[mkind, home], offset=off,
                                  strides=strides)
            if not writeable and obj.flags.writeable:
                obj.flags.writeable = False
        elif kind == "torch":
            import warnings

            import torch

            _, _, mkind, home, off, nbytes, dtype, shape, stride, storage_offset, grad = pid
            with warnings.catch_warnings():  # a tensor over a read-only loaded array, as before
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.from_numpy(self.memory[mkind, home][off : off + nbytes])
            obj = torch.as_strided(flat.view(getattr(torch, dtype)), shape, stride, storage_offset)
            obj.requires_grad_(grad)
        elif kind == "cuda":
            import torch

            _, _, host, device, grad = pid
            obj = torch.from_numpy(np.array(host)).to(device).requires_grad_(grad)
        elif kind == "pool":
            obj = ThreadPoolExecutor(pid[2], thread_name_prefix=pid[3])
        elif kind == "module":
            import importlib

            obj = importlib.import_module(pid[2])
        elif kind == "backend":
            from alscale.index import get_backend

            obj = get_backend(*pid[2])
        else:
            raise SnapshotError(f"unknown snapshot reference {kind!r}")
        self.made[index] = obj
        return obj


def restore(state: Any, snap: StateSnapshot) -> None:
    """Set ``state``'s mutable attributes from ``snap``; ``state`` holds the same loaded arrays
    (bit for bit) as the state ``snap`` was captured from."""
    groups = [_aligned_copy(np.asarray(b), mod) for b, mod in zip(snap.buffers, snap.align or [0] * len(snap.buffers))]
    mutable = _Reader(io.BytesIO(snap.meta), groups, _loaded_arrays(state)).load()
    for name in [k for k in vars(state) if k not in LOADED]:
        delattr(state, name)
    for name, value in mutable.items():
        setattr(state, name, value)
