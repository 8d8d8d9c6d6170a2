"""DESIGN §2 dependency rule: heavy optional parts stay confined to their packages."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = {
    # module to import: modules that must be importable-blocked (None in sys.modules)
    "alscale.strategies": ("ray", "faiss", "pyarrow", "torch"),
    "alscale.api": ("ray", "faiss", "pyarrow", "torch"),
    "alscale.pool": ("ray", "faiss", "torch"),
    "alscale.scoring": ("ray", "faiss", "pyarrow"),
    "alscale.jobspec": ("ray", "faiss", "torch", "pyarrow"),
    "alscale.runtime.coordinator": ("ray", "faiss"),
    "alscale.loop": ("ray", "faiss", "torch"),
    "alscale.notebook": ("ray", "faiss", "pyarrow"),
}


@pytest.mark.parametrize("module", sorted(CASES))
def test_module_imports_with_heavy_parts_blocked(module):
    blocked = CASES[module]
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)
        + f"import {module}\n"
        + "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
