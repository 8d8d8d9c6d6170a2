"""Loading a ``state_dict`` checkpoint safely (``weights_only=True``) with one-line errors."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping

import torch
from torch import nn

from alscale.errors import AlscaleError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FIX = "save it with torch.save(model.state_dict(), path)"


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as a single line of at most ``limit`` characters (for error messages)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _refusal_reason(exc: BaseException) -> str:
    """The informative sentence of torch's long weights_only refusal message."""
    text = _ANSI.sub("", str(exc))
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n|$)", text)
    return one_line(match.group(1) if match else text, 160)


def _more(items: list[str]) -> str:
    return f" (+{len(items) - 1} more)" if len(items) > 1 else ""


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a plain ``state_dict`` (parameter name -> tensor) from ``path`` onto the CPU.

    Uses ``torch.load(path, weights_only=True, map_location="cpu")``: no arbitrary code
    runs. Raises :class:`AlscaleError` for a missing file, an unreadable file, a pickle that
    ``weights_only`` refuses, or an object that is not a mapping of names to tensors.
    """
    expanded = os.path.expanduser(path)
    if "://" in path and not os.path.exists(expanded):
        raise AlscaleError(f"checkpoint {path!r} is a URI; copy it to a local file (or shared mount) first")
    if not os.path.exists(expanded):
        raise AlscaleError(f"checkpoint file not found: {path!r}")
    if not os.path.isfile(expanded):
        raise AlscaleError(f"checkpoint {path!r} is not a file")
    try:
        obj = torch.load(expanded, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        refused = "Weights only load failed" in str(exc)
        if not refused or ("Unsupported global" not in str(exc) and not zipfile.is_zipfile(expanded)):
            reason = _refusal_reason(exc) if refused else one_line(exc, 160)
            raise AlscaleError(f"cannot read checkpoint {path!r} (not a torch.save file?): {reason}") from exc
        raise AlscaleError(
            f"checkpoint {path!r} is not a plain state_dict: torch.load(weights_only=True) refused it"
            f" ({_refusal_reason(exc)}); {_FIX}"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError ... for corrupt files
        raise AlscaleError(
            f"cannot read checkpoint {path!r} (not a torch.save file?): {type(exc).__name__}: {one_line(exc, 160)}"
        ) from exc
    if not isinstance(obj, Mapping):
        raise AlscaleError(
            f"checkpoint {path!r} holds an object of type {type(obj).__name__}, not a state_dict"
            f" (parameter name -> tensor); {_FIX}"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise AlscaleError(
                f"checkpoint {path!r} is not a plain state_dict: entry {key!r} is of type {type(value).__name__},"
                f" not a tensor (a training checkpoint?); {_FIX}"
            )
    return dict(obj)


def load_checkpoint(model: nn.Module, path: str, *, factory: str) -> None:
    """Load the state_dict at ``path`` into ``model`` (strict), naming the first bad key on mismatch."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}{_more(missing)}")
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]!r}{_more(unexpected)}")
    if mismatched:
        key = mismatched[0]
        problems.append(
            f"shape mismatch at {key!r}: checkpoint {list(state[key].shape)} vs model {list(expected[key].shape)}"
            f"{_more(mismatched)}"
        )
    if problems:
        hint = ""
        if unexpected and all(key.startswith("module.") for key in state):
            hint = "; strip the 'module.' prefix (saved from DataParallel)"
        raise AlscaleError(
            f"checkpoint {path!r} does not fit model {factory!r}: {'; '.join(problems)}{hint}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise AlscaleError(f"checkpoint {path!r} does not fit model {factory!r}: {one_line(exc, 200)}") from exc
