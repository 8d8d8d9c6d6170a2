"""``build_model``: ModelSpec -> ``torch.nn.Module`` (builtin or import-path factory + checkpoint)."""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from alscale.errors import AlscaleError, short_repr
from alscale.scoring.builtins import BUILTINS, builtin_models
from alscale.scoring.checkpoint import load_checkpoint, one_line
from alscale.scoring.spec import ModelSpec

log = logging.getLogger(__name__)

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FORM = "expected 'package.module:callable'"


def resolve_factory(factory: str, *, kind: str = "model factory") -> Callable[..., Any]:
    """The callable named by ``factory``: a builtin name or ``"package.module:callable"``.

    ``callable`` may be a dotted attribute path (``"pkg.mod:Class.create"``). Raises
    :class:`AlscaleError` for an unknown builtin (listing the builtins), a malformed path,
    a module that does not import, a missing attribute, a non-callable object, or a target
    :func:`check_import_target` refuses (checked before anything calls it).
    """
    if ":" not in factory:
        if factory in BUILTINS:
            return BUILTINS[factory]
        raise AlscaleError(
            f"unknown builtin model {factory!r}; builtins are {', '.join(builtin_models())}"
            f" (or give an import path 'package.module:callable')"
        )
    module_name, _, attr_path = factory.partition(":")
    if not _DOTTED.match(module_name) or not _DOTTED.match(attr_path):
        raise AlscaleError(f"bad model factory import path {factory!r}: {_FORM}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AlscaleError(
            f"cannot import module {module_name!r} of model factory {factory!r} ({one_line(exc, 120)});"
            f" {_FORM}, importable on every worker (installed or on PYTHONPATH)"
        ) from exc
    except Exception as exc:
        raise AlscaleError(
            f"importing module {module_name!r} of model factory {factory!r} raised"
            f" {type(exc).__name__}: {one_line(exc, 160)}"
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise AlscaleError(
                f"module {module_name!r} has no attribute {attr_path!r} (model factory {factory!r}); {_FORM}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise AlscaleError(f"{kind} {factory!r} is not callable (it is of type {type(obj).__name__})")
    check_import_target(obj, factory, kind=kind)
    return obj


def check_import_target(obj: Any, path: str, *, kind: str = "model factory") -> None:
    """The trust rule for the import paths of a job file, checked *before* calling them.

    A job file is code, like a Python script: importing its module runs that module. What
    this rule stops is a job that *calls* something never meant as a factory with
    arguments of its choosing (``os:system`` with ``kwargs: {command: ...}``):

    - a class must subclass ``torch.nn.Module`` (a model factory; an image transform may be
      any class), or
    - a plain Python function (or a method of a class), and
    - in neither case defined in the standard library or ``builtins`` (``os:system``,
      ``subprocess:run``, ``builtins:exec``, ``functools:partial`` are refused), and not a
      builtin function or another callable object.

    A model factory's result must then be an ``nn.Module`` (:func:`build_model`).
    """
    fn = obj.__func__ if inspect.ismethod(obj) else obj
    if inspect.isclass(fn):
        if kind == "model factory" and not issubclass(fn, nn.Module):
            raise AlscaleError(f"{kind} {short_repr(path)} is the class {fn.__qualname__}, which is not a "
                               "torch.nn.Module; name an nn.Module class or a function that returns one")
    elif not inspect.isfunction(fn):
        raise AlscaleError(f"{kind} {short_repr(path)} is a {type(obj).__name__}, not a Python function or class; "
                           "name a function or class of your own code or a model library (a job file may only "
                           "call those)")
    module = getattr(fn, "__module__", None) or ""
    top = module.partition(".")[0]
    if top in _STDLIB and top != "__main__":
        raise AlscaleError(f"{kind} {short_repr(path)} is defined in the Python standard library ({module}); "
                           "name a function or class of your own code or a model library (a job file may only "
                           "call those)")


#: Top-level modules of the standard library (and builtins), whose callables a job may not name.
_STDLIB = frozenset(sys.stdlib_module_names) | {"builtins"}


def _builtin_kwargs(name: str, fn: Callable[..., Any], kwargs: dict[str, Any], in_features: int) -> dict[str, Any]:
    """Fill ``in_features`` from the pool and check the kwargs against the builtin's signature."""
    given = kwargs.get("in_features", in_features)
    if given != in_features:
        raise AlscaleError(
            f"model {name!r} kwargs give in_features={given!r} but the pool has {in_features} features"
        )
    merged = {**kwargs, "in_features": in_features}
    signature = inspect.signature(fn)
    unknown = [key for key in merged if key not in signature.parameters]
    if unknown:
        valid = ", ".join(signature.parameters)
        raise AlscaleError(f"builtin model {name!r} got unknown kwarg {unknown[0]!r}; valid kwargs: {valid}")
    missing = [
        key
        for key, param in signature.parameters.items()
        if param.default is inspect.Parameter.empty and key not in merged
    ]
    if missing:
        raise AlscaleError(f"builtin model {name!r} needs kwarg {missing[0]!r} (e.g. kwargs: {{{missing[0]}: 10}})")
    return merged


def build_model(spec: ModelSpec, *, in_features: int) -> nn.Module:
    """Build the model of ``spec`` on the CPU, load its checkpoint, and return it in eval mode.

    Builtins get ``in_features`` from the pool unless ``spec.kwargs`` give it (they must
    agree); import-path factories are called as ``fn(**spec.kwargs)`` and must return an
    ``nn.Module``. Every user-caused failure is an :class:`AlscaleError` naming the culprit.
    Dropout layers are left as built; :class:`alscale.scoring.Scorer` makes them consistent.
    """
    if not isinstance(spec, ModelSpec):
        raise AlscaleError(f"build_model needs a ModelSpec, got {type(spec).__name__}")
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise AlscaleError(f"in_features must be an int >= 1, got {in_features!r}")
    fn = resolve_factory(spec.factory)
    kwargs = dict(spec.kwargs)
    if spec.factory in BUILTINS:
        kwargs = _builtin_kwargs(spec.factory, fn, kwargs, in_features)
        model = fn(**kwargs)
    else:
        try:
            model = fn(**kwargs)
        except AlscaleError:
            raise
        except Exception as exc:
            raise AlscaleError(
                f"model factory {spec.factory!r} raised {type(exc).__name__}: {one_line(exc, 200)}"
            ) from exc
    if not isinstance(model, nn.Module):
        raise AlscaleError(
            f"model factory {spec.factory!r} returned an object of type {type(model).__name__},"
            " expected a torch.nn.Module"
        )
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.checkpoint, factory=spec.factory)
        log.info("loaded checkpoint %s into model %s", spec.checkpoint, spec.factory)
    return model.eval()
