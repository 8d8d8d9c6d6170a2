"""alscale.pool imports only pyarrow, numpy, the standard library and alscale.types/errors (and
alscale.fsio, the atomic-write helper, which itself imports only those)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import alscale.pool

ALLOWED = {"numpy", "pyarrow"} | set(sys.stdlib_module_names)
ALLOWED_ALSCALE = ("alscale.types", "alscale.errors", "alscale.pool", "alscale.fsio")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_pool_modules_import_only_pyarrow_numpy_stdlib():
    folder = Path(alscale.pool.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert len(modules) > 5
    for module in modules:
        for name in _imports(module):
            top = name.split(".")[0]
            ok = top in ALLOWED or name.startswith(ALLOWED_ALSCALE)
            assert ok, f"{module.name} imports {name}"


def test_the_write_helper_keeps_the_pool_rule():
    """alscale.fsio is shared by every writer; the pool may use it because it needs nothing more."""
    import alscale.fsio

    for name in _imports(Path(alscale.fsio.__file__)):
        top = name.split(".")[0]
        assert top in ALLOWED or name.startswith(("alscale.types", "alscale.errors")), f"fsio.py imports {name}"

