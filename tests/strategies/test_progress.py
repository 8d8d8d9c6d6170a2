"""Progress reporting (progress.py): the selection loops report every pick."""

from __future__ import annotations

from alscale.strategies import run_strategy
from tests.strategies.pools import make_shards


def test_selection_loops_report_their_progress(data):
    from alscale.strategies.progress import reporting

    ids, emb, lp = data
    for name in ("kcenter", "badge", "typiclust", "probcover"):
        shards, _ = make_shards(ids, emb, lp, n_shards=2)
        seen: list[int] = []
        with reporting(seen.append):
            sel = run_strategy(shards, name, 15, options={"delta": 0.3} if name == "probcover" else None)
        assert sum(seen) == len(sel) == 15, name
