"""Learning curves: per-round records -> "labels needed to reach X%" tables and a PNG plot.

The table follows the BatchBALD authors' convention (REFERENCES §2): for each trial, the
labelled-set size at the first round whose test accuracy reaches the target, minus the
batch size b, then the 25th / 50th / 75th percentiles over trials (linear interpolation;
a trial that never reaches the target counts as ∞).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alscale.fsio import atomic_write

_NEVER = 1e12  # stands for ∞ inside the percentile computation


def labels_to_reach(records: Sequence[Mapping[str, Any]], target: float, metric: str = "test_accuracy"
                    ) -> dict[str, list[float]]:
    """Per strategy, one value per trial: set size − b at the first round with ``metric >= target``
    (``inf`` when never reached). Trials are in increasing trial order."""
    out: dict[str, dict[int, float]] = {}
    for rec in sorted(records, key=lambda r: (r["strategy"], r["trial"], r["round"])):
        trials = out.setdefault(rec["strategy"], {})
        trials.setdefault(rec["trial"], float("inf"))
        if np.isinf(trials[rec["trial"]]) and rec[metric] is not None and rec[metric] >= target:
            trials[rec["trial"]] = float(rec["n_labels"] - rec["batch_size"])
    return {s: [v for _, v in sorted(t.items())] for s, t in out.items()}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """25/50/75th percentiles, ∞-aware (∞ results where interpolation reaches a never-reached trial)."""
    x = np.asarray([min(v, _NEVER) for v in values], dtype=np.float64)
    q = np.percentile(x, [25, 50, 75])
    return tuple(float("inf") if v >= _NEVER / 10 else float(v) for v in q)  # type: ignore[return-value]


def summary_table(records: Sequence[Mapping[str, Any]], targets: Sequence[float]) -> list[dict[str, Any]]:
    """Rows ``{strategy, trials, target, reached, q25, q50, q75}`` for every strategy and target."""
    rows = []
    for target in targets:
        for strategy, values in sorted(labels_to_reach(records, target).items()):
            q25, q50, q75 = quartiles(values)
            rows.append({"strategy": strategy, "trials": len(values), "target": target,
                         "reached": int(sum(np.isfinite(values))), "q25": q25, "q50": q50, "q75": q75})
    return rows


def _fmt(v: float) -> str:
    return "∞" if np.isinf(v) else f"{v:g}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table, one line per strategy, one column per target."""
    targets = sorted({r["target"] for r in rows})
    strategies = sorted({r["strategy"] for r in rows})
    by = {(r["strategy"], r["target"]): r for r in rows}
    head = "| strategy | trials | " + " | ".join(f"{t:.0%} (q25 / median / q75)" for t in targets) + " |"
    lines = [head, "|---|---|" + "---|" * len(targets)]
    for s in strategies:
        cells = []
        for t in targets:
            r = by[(s, t)]
            cells.append(f"{_fmt(r['q25'])} / {_fmt(r['q50'])} / {_fmt(r['q75'])}")
        lines.append(f"| {s} | {by[(s, targets[0])]['trials']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_bands(records: Sequence[Mapping[str, Any]], metric: str = "test_accuracy"
                ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per strategy: ``(n_labels_R, q25_R, median_R, q75_R)`` over the trials that reached each size."""
    out = {}
    for strategy in sorted({r["strategy"] for r in records}):
        by_size: dict[int, list[float]] = {}
        for r in records:
            if r["strategy"] == strategy and r[metric] is not None:
                by_size.setdefault(int(r["n_labels"]), []).append(float(r[metric]))
        sizes = np.array(sorted(by_size))
        q = np.array([np.percentile(by_size[s], [25, 50, 75]) for s in sizes]).reshape(-1, 3)
        out[strategy] = (sizes, q[:, 0], q[:, 1], q[:, 2])
    return out


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | Path, *, title: str,
                targets: Sequence[float] = ()) -> Path:
    """Median test accuracy against labelled-set size, with the interquartile band, per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for strategy, (sizes, q25, q50, q75) in curve_bands(records).items():
        n_trials = len({r["trial"] for r in records if r["strategy"] == strategy})
        (line,) = ax.plot(sizes, q50, label=f"{strategy} ({n_trials} trial{'s' if n_trials > 1 else ''})")
        ax.fill_between(sizes, q25, q75, color=line.get_color(), alpha=0.2, linewidth=0)
    for t in targets:
        ax.axhline(t, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("test accuracy (median, 25–75% band)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path
