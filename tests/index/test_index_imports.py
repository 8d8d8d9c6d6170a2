"""DESIGN §1.7: only alscale/index/faiss_*.py imports faiss; alscale.index needs numpy alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = {
    "faiss blocked": (
        ("faiss",),
        "import alscale.index, alscale.strategies, alscale.strategies.kcenter\n"
        "from alscale.index import get_backend\n"
        "from alscale.errors import AlscaleError\n"
        "assert get_backend('auto').name in ('torch', 'numpy')\n"
        "try:\n    get_backend('faiss')\nexcept AlscaleError as e:\n    assert 'needs faiss' in str(e)\n"
        "else:\n    raise SystemExit('faiss backend built without faiss')\n",
    ),
    "torch and faiss blocked": (
        ("torch", "faiss", "ray"),
        "import alscale.index, alscale.strategies.kcenter\n"
        "from alscale.index import get_backend\n"
        "assert get_backend('auto').name == 'numpy'\n",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_index_and_strategies_import_without_optional_parts(case):
    blocked, body = CASES[case]
    code = "import sys\n" + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked) + body + "print('ok')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_only_faiss_modules_import_faiss():
    from pathlib import Path

    import alscale

    root = Path(alscale.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if ("import faiss" in p.read_text() or "from faiss" in p.read_text())
        and not (p.parent.name == "index" and p.name.startswith("faiss_"))
    ]
    assert offenders == []
