"""Which local files a Ray worker needs to import a user's strategy.

A strategy named by import path (``strategy.name: mypkg.mymodule:MyStrategy``) or
registered in Python runs its shard ops inside the workers, which import the op's module
by name. A worker on another machine (or a local Ray worker, which only gets the driver's
working directory on its path) has no such module unless it is installed there; the Ray
executor ships what :func:`strategy_sources` returns through Ray's runtime environment
(``py_modules``), and ``alscale submit`` ships it with the job.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Any

__all__ = ["strategy_sources"]


def _installed_roots() -> list[Path]:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return [Path(r).resolve() for r in roots]


def strategy_sources(spec: Any) -> list[str]:
    """Local paths (a top-level package's directory, or a single ``.py`` module) of the
    modules that define ``spec``'s functions and options, for Ray's ``py_modules``.

    Empty for the built-in strategies and for modules installed in the interpreter's
    site-packages (those are expected on every worker, like alscale itself).
    """
    objs = (spec.select, spec.score, spec.keys, spec.quota_select, spec.options_type)
    modules = set()
    for obj in objs:
        if obj is None:
            continue
        name = obj.partition(":")[0] if isinstance(obj, str) else getattr(obj, "__module__", None)
        if name and name.split(".")[0] not in ("alscale", "builtins", "__main__"):
            modules.add(name.split(".")[0])
    installed = _installed_roots()
    out: list[str] = []
    for top in sorted(modules):
        mod = sys.modules.get(top)
        file = getattr(mod, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if path.name == "__init__.py":
            path = path.parent
        if any(root == path or root in path.parents for root in installed):
            continue
        out.append(str(path))
    return out
