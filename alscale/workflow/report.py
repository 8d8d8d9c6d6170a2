"""``alscale report OUT_DIR``: one self-contained HTML page about a job (or a simulation).

For a job's output directory: what was picked and why —

- uncertainty of the pool against the selection (predictive entropy of the mean
  probability, histograms; from the pool's ``log_probs`` column or the job's model-output
  cache) and the distribution of the strategy's own scores over the selection;
- a 2-D PCA projection of a sample of the pool with the selection on top (from the pool's
  ``embedding`` column or the cache);
- the predicted-class balance of the selection against the pool's;
- for a composed selection (``selection:``, strategy ``objective``), the mix: picks per group
  and per filter rule, the distribution of each score component and of the combined score over
  the picks, the distance to the nearest earlier pick at pick time, and the seconds of each
  stage (from the provenance columns of ``selection.parquet`` and the manifest's ``selection``);
- per-phase seconds and throughput from the manifest;

and for a simulation directory (``alscale simulate``), its learning curves. Plots are PNGs
(matplotlib) embedded as ``data:`` URIs, so the page is one file: ``OUT_DIR/report.html``.
Pools are read in chunks; the pool sample for the projection and the histograms is at most
``sample`` rows (keyed by row, the same every time).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from alscale.errors import AlscaleError

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
_CHUNK = 65536


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _outputs(out_dir: Path, manifest: dict[str, Any], sample: int
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """(row_ids, log_probs, embeddings, is_sample) of the pool rows the report looks at: a keyed
    sample of the pool plus every selected row."""
    import pyarrow.parquet as pq

    from alscale.pool import open_pool, read_shard
    from alscale.strategies.noise import keyed_uniform
    from alscale.types import ShardSpec

    info = open_pool(manifest["pool"]["path"])
    ids = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), []).row_ids_N
    sel = pq.read_table(out_dir / "selection.parquet", columns=["row_id"])["row_id"].to_numpy()
    key = keyed_uniform(0, 0, ids)
    in_sample = key <= np.sort(key)[min(sample, ids.size) - 1] if ids.size else np.zeros(0, bool)
    pos = np.flatnonzero(in_sample | np.isin(ids, sel))
    lp, emb = _pool_outputs(info, pos)
    cache = out_dir / "cache"
    if (lp is None or emb is None) and cache.is_dir():  # the job's model outputs
        cached_lp, cached_emb = _cached_outputs(cache, ids[pos])
        lp = cached_lp if lp is None else lp
        emb = cached_emb if emb is None else emb
    return ids[pos], lp, emb, in_sample[pos]


def _pool_outputs(info: Any, pos: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The pool's ``log_probs`` and ``embedding`` columns at positions ``pos`` (None: no such column)."""
    from alscale.pool import read_shard
    from alscale.types import ShardSpec

    cols = [c for c, ok in (("log_probs", info.n_classes is not None), ("embedding", info.embedding_dim is not None))
            if ok]
    if not cols:
        return None, None
    parts_lp, parts_emb = [], []
    for lo in range(0, info.n_rows, _CHUNK):
        p = pos[(pos >= lo) & (pos < lo + _CHUNK)]
        if p.size == 0:
            continue
        d = read_shard(ShardSpec(info.path, 0, lo, min(info.n_rows, lo + _CHUNK)), cols, check_finite=False)
        if d.log_probs_N_K_C is not None:
            parts_lp.append(d.log_probs_N_K_C[p - lo])
        if d.embeddings_N_D is not None:
            parts_emb.append(d.embeddings_N_D[p - lo])
    return (np.concatenate(parts_lp) if parts_lp else None), (np.concatenate(parts_emb) if parts_emb else None)


def _cached_outputs(cache: Path, want: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Log-probs and embeddings of rows ``want`` from the job's chunk cache (None unless it has
    every row; embeddings only when the model gave some)."""
    import pyarrow.ipc as ipc

    got_lp: dict[int, np.ndarray] = {}
    got_emb: dict[int, np.ndarray] = {}
    for f in sorted(cache.glob("rows-*.arrow")):
        meta = json.loads(f.with_suffix(".json").read_text()) if f.with_suffix(".json").exists() else None
        if meta is None:
            continue
        t = ipc.open_file(str(f)).read_all()
        rid = t["row_id"].to_numpy()
        hit = np.flatnonzero(np.isin(rid, want))
        if hit.size == 0:
            continue
        k, c = meta["n_samples"], meta["n_classes"]
        lps = t["log_probs"].combine_chunks().flatten().to_numpy().reshape(len(rid), k, c)
        for h in hit:
            got_lp[int(rid[h])] = lps[h]
        if meta.get("embedding_dim"):
            es = t["embedding"].combine_chunks().flatten().to_numpy().reshape(len(rid), meta["embedding_dim"])
            for h in hit:
                got_emb[int(rid[h])] = es[h]
    lp = np.stack([got_lp[int(r)] for r in want]) if len(got_lp) == want.size else None
    emb = np.stack([got_emb[int(r)] for r in want]) if got_emb and len(got_emb) == want.size else None
    return lp, emb


def _entropy(lp: np.ndarray) -> np.ndarray:
    p = np.exp(lp.astype(np.float64)).mean(axis=1)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)


def _pca2(x: np.ndarray) -> np.ndarray:
    xc = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:2].T


def build_report(out_dir: str | Path, *, sample: int = 20_000) -> Path:
    """Write ``out_dir/report.html``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    from alscale.fsio import atomic_write

    out = Path(out_dir)
    figures: list[tuple[str, str, str]] = []  # (title, caption, data uri)
    facts: list[tuple[str, str]] = []
    manifest_path = out / "manifest.json"
    is_simulation = (out / "rounds.csv").exists()
    if not manifest_path.exists() and not is_simulation:
        raise AlscaleError(f"{out} holds neither a job's selection (manifest.json) nor a simulation (rounds.csv); "
                           "give an output directory of alscale run or alscale simulate")
    if manifest_path.exists():
        _job_section(out, json.loads(manifest_path.read_text()), sample, facts, figures)
    if is_simulation:
        _simulation_section(out, facts, figures)
    path = out / REPORT_FILE
    atomic_write(path, _html(out, facts, figures))
    return path


def _job_section(out: Path, m: dict[str, Any], sample: int, facts: list, figures: list) -> None:
    """A job's facts (from its manifest) and figures: scores, projection, class balance, timings."""
    import pyarrow.parquet as pq

    sel = pq.read_table(out / "selection.parquet").to_pydict()
    facts += [("strategy", f"{m['strategy']} (budget {m['budget']:,}, seed {m['seed']}, round {m['round']})"),
              ("pool", f"{m['pool']['path']} — {m['pool']['n_rows']:,} rows, {m['pool']['n_labeled']:,} labelled"),
              ("selected", f"{m['n_selected']:,} rows"),
              ("runtime", f"{m['runtime'].get('executor', '?')} executor, {len(m['shard_plan'])} shards, "
                          f"{m['round_trips']} round trips"),
              ("throughput", f"{m['rows_per_s']:,.0f} rows/s (all phases but start-up)" if m.get("rows_per_s")
               else "–"),
              ("alscale", f"{m['versions'].get('alscale')} (git {m.get('git_revision')})")]
    ids, lp, emb, in_sample = _outputs(out, m, sample)
    is_sel = np.isin(ids, np.asarray(sel["row_id"], np.int64))
    figures.append(_scores_figure(m["strategy"], lp, np.asarray(sel["score"], np.float64), in_sample, is_sel))
    if emb is not None and emb.shape[0] >= 3:
        figures.append(_projection_figure(emb, in_sample, is_sel))
    if lp is not None:
        figures.append(_balance_figure(lp, in_sample, is_sel))
    if "combined" in sel:  # a composed selection's provenance: the mix
        mix_facts, mix_figures = _mix(sel, m.get("selection") or {})
        facts += mix_facts
        figures += mix_figures
    ph = dict(m.get("phase_seconds", {}))
    if ph:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        ax.barh(list(ph), list(ph.values()), color="tab:blue")
        ax.set(xlabel="seconds", title="Phases")
        figures.append(("Timings", "Seconds per phase of the job (from manifest.json).", _png(fig)))


def _scores_figure(strategy: str, lp: np.ndarray | None, scores: np.ndarray, in_sample: np.ndarray,
                   is_sel: np.ndarray) -> tuple[str, str, str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    if lp is not None:
        h = _entropy(lp)
        bins = np.linspace(0, max(float(h.max()), 1e-6), 40)
        axes[0].hist(h[in_sample], bins=bins, density=True, alpha=0.6, label=f"pool sample ({in_sample.sum():,})")
        axes[0].hist(h[is_sel], bins=bins, density=True, alpha=0.6, label=f"selection ({is_sel.sum():,})")
        axes[0].set(xlabel="predictive entropy (nats)", ylabel="density", title="Uncertainty: pool vs selection")
        axes[0].legend()
    else:
        axes[0].text(0.5, 0.5, "no log-probs in the pool or cache", ha="center", va="center")
        axes[0].set_axis_off()
    axes[1].hist(scores[np.isfinite(scores)], bins=40, color="tab:red", alpha=0.7)
    axes[1].set(xlabel=f"{strategy} score at pick time", ylabel="rows", title="Scores of the selection")
    return ("Scores", "Predictive entropy of a pool sample and of the selection; the strategy's own "
            "scores of the picks.", _png(fig))


def _projection_figure(emb: np.ndarray, in_sample: np.ndarray, is_sel: np.ndarray) -> tuple[str, str, str]:
    import matplotlib.pyplot as plt

    z = _pca2(emb)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.scatter(z[in_sample & ~is_sel, 0], z[in_sample & ~is_sel, 1], s=3, c="0.7", label="pool sample")
    ax.scatter(z[is_sel, 0], z[is_sel, 1], s=14, c="tab:red", label="selection")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="Embeddings, 2-D PCA")
    ax.legend()
    return ("Projection", "The first two principal components of the embeddings of a pool sample "
            "(grey) and of the selection (red).", _png(fig))


def _balance_figure(lp: np.ndarray, in_sample: np.ndarray, is_sel: np.ndarray) -> tuple[str, str, str]:
    import matplotlib.pyplot as plt

    c = lp.shape[2]
    pred = np.exp(lp.astype(np.float64)).mean(axis=1).argmax(axis=1)
    pool_share = np.bincount(pred[in_sample], minlength=c) / max(in_sample.sum(), 1)
    sel_share = np.bincount(pred[is_sel], minlength=c) / max(is_sel.sum(), 1)
    fig, ax = plt.subplots(figsize=(max(6, c * 0.5), 3.6))
    xs = np.arange(c)
    ax.bar(xs - 0.2, pool_share, 0.4, label="pool sample")
    ax.bar(xs + 0.2, sel_share, 0.4, label="selection")
    ax.set(xlabel="predicted class", ylabel="share", title="Predicted-class balance")
    ax.set_xticks(xs)
    ax.legend()
    return ("Class balance", "Share of each predicted class (argmax of the mean probability).", _png(fig))


def _simulation_section(out: Path, facts: list, figures: list) -> None:
    """A simulation's learning curves (from ``rounds.csv``)."""
    import csv

    from alscale.loop.curves import plot_curves

    with open(out / "rounds.csv") as fh:
        records = [{**r, "test_accuracy": float(r["test_accuracy"]), "n_labels": int(r["n_labels"]),
                    "trial": int(r["trial"]), "round": int(r["round"]), "batch_size": int(r["batch_size"])}
                   for r in csv.DictReader(fh)]
    tmp = out / ".report-curves.png"
    plot_curves(records, tmp, title="Learning curves")
    uri = "data:image/png;base64," + base64.b64encode(tmp.read_bytes()).decode()
    tmp.unlink()
    figures.append(("Learning curves", "Median test accuracy against labelled-set size (band: 25-75%).", uri))
    facts.append(("simulation", f"{len({r['strategy'] for r in records})} strategies, "
                                f"{len({r['trial'] for r in records})} trials, {len(records)} rounds"))

def _counts(values: list[Any]) -> list[tuple[str, int]]:
    """(value, picks) pairs, most picks first (ties by value)."""
    from collections import Counter

    return sorted(Counter(str(v) for v in values).items(), key=lambda kv: (-kv[1], kv[0]))


def _bars(ax: Any, pairs: list[tuple[str, int]], title: str, xlabel: str) -> None:
    ax.barh([k for k, _ in pairs][::-1], [v for _, v in pairs][::-1], color="tab:purple")
    ax.set(xlabel="picks", ylabel=xlabel, title=title)


def _mix(sel: dict[str, list[Any]], info: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Facts and figures of a composed selection's mix (its provenance columns)."""
    import matplotlib.pyplot as plt

    facts: list[tuple[str, str]] = []
    figures: list[tuple[str, str, str]] = []
    groups = [g for g in sel.get("group", []) if g is not None]
    filters = [f for f in sel.get("filter", []) if f is not None]
    if groups:
        facts.append(("picks per group", ", ".join(f"{k}: {v}" for k, v in _counts(groups))))
    if filters:
        facts.append(("picks per filter", ", ".join(f"{k}: {v}" for k, v in _counts(filters))))
    cand = info.get("candidates")
    if cand:
        facts.append(("candidates", ", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in cand.items())))
    if groups or filters:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        for ax, values, title, label in ((axes[0], groups, "Picks per group", "group"),
                                         (axes[1], filters, "Picks per filter rule", "filter")):
            if values:
                _bars(ax, _counts(values)[:30], title, label)
            else:
                ax.text(0.5, 0.5, f"no {label}s (no {'constraints' if label == 'group' else 'filters'})",
                        ha="center", va="center")
                ax.set_axis_off()
        figures.append(("Mix", "Picks per group of the constraints and per filter rule that admitted them "
                        "(selection.parquet's group and filter columns).", _png(fig)))
    comps = [c for c in sel if c.startswith("score_")] + ["combined"]
    fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps), 3.2), squeeze=False)
    for ax, c in zip(axes[0], comps):
        v = np.asarray([x for x in sel[c] if x is not None], np.float64)
        ax.hist(v[np.isfinite(v)], bins=30, color="tab:green" if c != "combined" else "tab:red", alpha=0.8)
        ax.set(title=c.removeprefix("score_"), xlabel="value", ylabel="picks")
    figures.append(("Score components", "Each score component's raw value over the picks, and the combined score "
                    "(the weighted sum of the normalised components).", _png(fig)))
    figures += _mix_diversity(sel, info)
    return facts, figures


def _mix_diversity(sel: dict[str, list[Any]], info: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Distance at pick time against the pick's rank, and the seconds of each stage."""
    import matplotlib.pyplot as plt

    out = []
    d = np.asarray([np.nan if x is None else x for x in sel.get("distance", [])], np.float64)
    if d.size and np.isfinite(d).any():
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        ax.plot(np.arange(1, d.size + 1)[np.isfinite(d)], d[np.isfinite(d)], ".", ms=3)
        ax.set(xlabel="rank", ylabel="distance", title="Distance to the nearest earlier pick or labelled row")
        out.append(("Diversity", f"Distance of each pick at pick time ({info.get('diversity', {}).get('kind', '?')}).",
                    _png(fig)))
    secs = info.get("seconds") or {}
    if secs:
        fig, ax = plt.subplots(figsize=(6.5, 3.0))
        ax.barh(list(secs)[::-1], list(secs.values())[::-1], color="tab:orange")
        ax.set(xlabel="seconds", title="Selection stages")
        out.append(("Selection stages", "Seconds of each stage of the composed selection (manifest selection.seconds).",
                    _png(fig)))
    return out


def _html(out: Path, facts: list[tuple[str, str]], figures: list[tuple[str, str, str]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    figs = "".join(f'<section><h2>{html.escape(t)}</h2><p>{html.escape(c)}</p>'
                   f'<img alt="{html.escape(t)}" src="{u}"></section>' for t, c, u in figures)
    # The inline script records how many images the browser decoded (checked by the tests).
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alscale report — {html.escape(str(out))}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
th{{text-align:left;padding-right:1em;vertical-align:top}}img{{max-width:100%}}section{{margin:2em 0}}</style>
</head><body>
<h1>alscale report</h1><p>{html.escape(str(out))}</p>
<table>{rows}</table>
{figs}
<script>
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("img"), ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-images-loaded", ok);
}});
</script>
</body></html>
"""
