"""``objective``: one selection composed of filters, weighted scores, hard group constraints
and diversity (the job's ``selection:`` section, :mod:`alscale.selection.config`).

The stages, each exact over the whole pool and the same for any sharding:

1. **scores** — every component's raw value on the shards: a per-row score strategy
   (``entropy``, ``bald``, ``power`` ..., or a user's, by import path) or a numeric pool column;
2. **filters** — the rules' predicates on scores and pool columns (equality, membership,
   ranges); a row stays a candidate when some rule admits it (the first one is recorded);
3. **normalise and combine** — ``combined = sum weight * normalise(raw)``, with ``rank``
   (mid-rank among the unlabelled rows, in [0, 1]) or ``minmax`` computed from the statistics of
   the whole pool (every shard's sorted values merged, or the global min and max), or ``raw``;
4. **shortlist** (optional) — only the M best rows by the combined score stay candidates;
5. **select** — with ``diversity.kind``:

   - ``none``: the top ``budget`` rows by the combined score;
   - ``kcenter``: the greedy that picks the largest ``combined + weight * d / scale``, d the
     distance to the nearest labelled row or earlier pick (``scale: auto``, the largest such
     distance when the greedy starts, puts d on [0, 1]); with ``scores: []`` it is exact
     k-center (Core-Set);
   - ``threshold``: the greedy over the combined score that skips every row within ``radius``
     of an earlier pick (and of a labelled row, unless ``against: picks``);
   - ``badge`` / ``kmeanspp``: exact k-means++ D² sampling (BADGE's gradient embeddings, or the
     embeddings), over the shortlist when there are scores;

   under ``constraints`` (min / max picks per predicted class or pool-column value, hard):
   the constrained greedy of :mod:`alscale.strategies.quotas` — at each step the best row of a
   group that may still take one — run in phases within which the allowed groups cannot
   change (the greedy of :mod:`alscale.strategies.objective_greedy` for the first three,
   BADGE's own constrained sampler for ``badge``);
6. **provenance** — per pick: the filter rule that admitted it, every component's raw value,
   the combined score, its group, and the distance to the nearest earlier pick or labelled row
   at pick time (BADGE / k-means++: the square root of its D² weight).

The selection's ``score`` is the key the pick won with (the combined score; plus the
distance term for ``kcenter``; the D² weight for ``badge`` / ``kmeanspp``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies import spec as _spec
from alscale.strategies.objective_ops import (
    OP_COMBINED,
    OP_FILTERS,
    OP_KEEP,
    OP_RANK,
    OP_SCORES,
    Admitted,
    MinMax,
    NormParams,
    ScoreStats,
)
from alscale.strategies.shards import Shards
from alscale.types import Selection


class _Stages:
    """Wall seconds per stage (the manifest's ``selection.seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _norm_params(scores: list[dict[str, Any]], parts: list[ScoreStats]) -> list[NormParams]:
    """Per component its :class:`NormParams`, the pool-wide statistic merged from the shards' stats."""
    params = []
    for i, comp in enumerate(scores):
        stats = [p.stats_P[i] for p in parts]
        how = comp["normalize"]
        if how == "rank":
            stat = np.sort(np.concatenate(stats)) if stats else np.empty(0)
        elif how == "minmax":
            got = [s for s in stats if s is not None]
            stat = MinMax(min(s.lo for s in got), max(s.hi for s in got)) if got else MinMax(0.0, 0.0)
        else:
            stat = None
        params.append(NormParams(comp["label"], comp["weight"], how, stat))
    return params


def _prepare(shards: Shards, opts: Mapping[str, Any], seed: int, round: int, st: _Stages) -> dict[str, Any]:
    """Stages 1-4 on the shards; returns what the manifest records of them."""
    with st("scores"):
        parts: list[ScoreStats] = shards.call(OP_SCORES, opts["scores"], int(seed), int(round))
    before = sum(p.candidates for p in parts)
    with st("filters"):
        fil: list[Admitted] = shards.call(OP_FILTERS, opts["filters"], int(seed), int(round))
    admitted = np.sum([f.admitted_R for f in fil], axis=0).tolist() if opts["filters"] else []
    with st("normalize"):
        shards.call(OP_COMBINED, _norm_params(opts["scores"], parts))
    after = sum(f.candidates for f in fil)
    info: dict[str, Any] = {"candidates": {"before_filters": int(before), "after_filters": int(after)},
                            "filters": [{"name": r["name"], "admitted": int(n)}
                                        for r, n in zip(opts["filters"], admitted)]}
    m = opts["diversity"]["shortlist"]
    if m is not None:
        with st("shortlist"):
            shards.call(OP_RANK)
            best = shards.topk(int(m))
            info["candidates"]["after_shortlist"] = int(sum(shards.call(OP_KEEP, best.row_ids_K)))
    return info


def _engine(shards: Shards, div: Mapping[str, Any], with_scores: bool) -> Any:
    """The certified greedy for ``none`` / ``kcenter`` / ``threshold``, its centers being the
    labelled rows (k-center; threshold unless ``against: picks``)."""
    from alscale.strategies.objective_greedy import DistanceGreedy

    kind = div["kind"]
    scale = None if div["scale"] == "auto" else float(div["scale"])
    key = {"none": ("none",), "kcenter": ("kcenter", div["weight"] / (scale or 1.0), with_scores),
           "threshold": ("threshold", float(div["radius"]) ** 2 if div["radius"] else 0.0)}[kind]
    centers = None
    if kind == "kcenter" or (kind == "threshold" and div["against"] == "picks_and_labeled"):
        rows = shards.take(None, ("embeddings",), "labeled")
        ids = np.concatenate([r.row_ids_R for r in rows])
        emb = np.concatenate([r.embeddings_R_D for r in rows])
        centers = emb[np.argsort(ids, kind="stable")]
    return DistanceGreedy(shards, key, centers, div["backend"], scale=scale)


@dataclass
class _Picks:
    """The selected rows in pick order, each with its key and squared distance."""

    ids: list[int]
    keys: list[float]
    d2: list[float]
    quota: Any = None  # alscale.strategies.quotas.QuotaResult, with constraints

    @classmethod
    def of(cls, picks: list[Any], quota: Any = None) -> _Picks:
        """From the greedy's :class:`~alscale.strategies.objective_greedy.Pick` s."""
        return cls([p.row_id for p in picks], [p.key for p in picks], [p.sq_dist for p in picks], quota)


def _constrained(shards: Shards, budget: int, opts: Mapping[str, Any], seed: int, round: int, run: Any) -> Any:
    """:func:`alscale.strategies.quotas.select_with_quotas` under the objective's constraints:
    with ``run`` (the certified greedy) in phases, or BADGE's own constrained sampler
    (``run`` None); errors name ``selection.constraints``."""
    from alscale.strategies import quotas

    loop = None if run is None else functools.partial(_phased, run)
    try:
        return quotas.select_with_quotas(shards, SPEC if run is not None else "badge", budget, opts["constraints"],
                                         options=dict(opts) if run is not None else {}, seed=seed, round=round,
                                         loop=loop)
    except AlscaleError as exc:
        raise AlscaleError(str(exc).replace("strategy.quotas", "selection.constraints")
                           .replace("strategy.budget", "selection.budget")) from None


def _select(shards: Shards, budget: int, opts: Mapping[str, Any], seed: int, round: int, st: _Stages
            ) -> tuple[_Picks, dict[str, Any]]:
    """Stage 5: the picks, and what the manifest records of the diversity."""
    div = opts["diversity"]
    kind = div["kind"]
    if kind in ("badge", "kmeanspp"):
        from alscale.strategies.select import run_strategy

        with st("diversity"):
            if opts["constraints"]:
                qr = _constrained(shards, budget, opts, seed, round, None)
                sel = qr.selection
            else:
                sel, qr = run_strategy(shards, kind, budget, seed=seed, round=round), None
        d2 = [float(x) for x in sel.scores_B]
        return _Picks(sel.indices_B.tolist(), d2, d2, qr), {"kind": kind}
    engine = _engine(shards, div, bool(opts["scores"]))
    t0 = time.perf_counter()
    if opts["constraints"]:
        qr = _constrained(shards, budget, opts, seed, round, engine)
        picks = _Picks.of(engine.last_picks, qr)
        st.seconds["constraints"] = time.perf_counter() - t0 - engine.seconds
    else:
        picks = _Picks.of(engine.run(budget))
    st.seconds["diversity"] = st.seconds.get("diversity", 0.0) + engine.seconds
    s = engine.stats
    info = {"kind": kind, "rounds": s.rounds, "offered": s.offered, "picks_per_round": s.picks_per_round}
    if kind == "kcenter":
        info.update(weight=div["weight"], scale=engine.scale, scale_from=div["scale"])
    if kind == "threshold":
        info.update(radius=div["radius"], against=div["against"])
    return picks, info


def _phased(engine: Any, shards: Shards, budget: int, lo: np.ndarray, hi: np.ndarray, *,
            options: Mapping[str, Any], seed: int = 0, round: int = 0, avail: np.ndarray | None = None
            ) -> tuple[Selection, np.ndarray]:
    """The constrained greedy over the objective's key, in phases within which the allowed
    groups cannot change (as k-center's quota loop); the picks of each phase are ``engine``'s
    certified greedy over the rows of the allowed groups."""
    from alscale.strategies import quotas

    counts = np.zeros(lo.shape[0], dtype=np.int64)
    picks: list[Any] = []  # objective_greedy.Pick
    while len(picks) < budget:
        allowed, length = _phase(counts, lo, hi, budget - len(picks))
        if length == 0 or quotas.restrict_classes(shards, ~allowed) == 0:
            break
        got = engine.run(length)
        if not got:
            break
        cls = quotas.classes_of(shards, np.array([g.row_id for g in got], np.int64))
        for g in got:
            counts[cls[g.row_id]] += 1
        picks += got
    engine.last_picks = picks
    return Selection(np.asarray([p.row_id for p in picks], np.int64), np.asarray([p.key for p in picks], np.float64),
                     "objective"), counts


def _phase(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, slots: int) -> tuple[np.ndarray, int]:
    """The groups the next picks may have, and how many picks keep that set unchanged: until a
    group reaches its maximum, or (while every slot left is owed to minimums) a minimum is
    met, or the free slots run out."""
    from alscale.strategies.quotas import allowed_classes

    allowed = allowed_classes(counts, lo, hi, slots)
    if not allowed.any():
        return allowed, 0
    need = np.maximum(lo - counts, 0)
    owed = int(need.sum())
    room = int((hi[allowed] - counts[allowed]).min())
    length = min(room, int(need[allowed].min()) if slots <= owed else slots - owed)
    return allowed, max(1, min(length, slots))


def _provenance(shards: Shards, picks: _Picks, opts: Mapping[str, Any], kind: str) -> dict[str, np.ndarray]:
    """The per-pick columns of ``selection.parquet`` (module docstring, stage 6)."""
    from alscale.strategies.objective_ops import OP_PROVENANCE, Provenance

    ids = np.asarray(picks.ids, np.int64)
    labels = [s["label"] for s in opts["scores"]]
    parts: list[Provenance] = shards.call(OP_PROVENANCE, ids, labels)
    got_ids = np.concatenate([p.row_ids_Q for p in parts])
    order = np.argsort(got_ids, kind="stable")
    at = order[np.searchsorted(got_ids[order], ids)] if ids.size else np.empty(0, np.int64)
    rule = np.concatenate([p.rules_Q for p in parts])[at]
    raw = np.concatenate([p.raw_Q_P for p in parts])[at] if ids.size else np.empty((0, len(labels)))
    out: dict[str, np.ndarray] = {}
    names = [r["name"] for r in opts["filters"]]
    out["filter"] = np.array([names[r] if r >= 0 else None for r in rule.tolist()], dtype=object)
    for j, label in enumerate(labels):
        out[f"score_{label}"] = raw[:, j].astype(np.float64)
    out["combined"] = np.concatenate([p.combined_Q for p in parts])[at].astype(np.float64)
    out["group"] = _groups_of(shards, ids, picks.quota)
    d = np.sqrt(np.asarray(picks.d2, np.float64)) if kind != "none" else np.full(ids.size, np.nan)
    out["distance"] = d
    return out


def _groups_of(shards: Shards, ids: np.ndarray, qr: Any) -> np.ndarray:
    """Each pick's group (a pool column's value, or the predicted class) as text; None without constraints."""
    if qr is None:
        return np.full(ids.size, None, dtype=object)
    from alscale.strategies.quotas import classes_of

    cls = classes_of(shards, ids)
    values = qr.groups
    return np.array([str(values[cls[r]] if values is not None else cls[r]) for r in ids.tolist()], dtype=object)


def select_objective(shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
                     ) -> Selection:
    """Registry entry ``objective``: the stages of the module docstring. ``options`` are the
    canonical options (:func:`alscale.selection.config.check_objective_options`)."""
    st = _Stages()
    info = _prepare(shards, options, seed, round, st)
    picks, div_info = _select(shards, budget, options, seed, round, st)
    with st("provenance"):
        cols = _provenance(shards, picks, options, options["diversity"]["kind"])
    info["diversity"] = div_info
    info["scores"] = [{k: s[k] for k in ("label", "name", "column", "weight", "normalize")} for s in options["scores"]]
    if picks.quota is not None:
        qr = picks.quota
        info["constraints"] = {**options["constraints"], "picks_per_group": _per_group(qr),
                               "unmet": {str(k): v for k, v in qr.unmet.items()}}
    info["n_selected"] = len(picks.ids)
    info["seconds"] = {k: round_(v) for k, v in st.seconds.items()}
    return Selection(np.asarray(picks.ids, np.int64), np.asarray(picks.keys, np.float64), "objective",
                     provenance=cols, info=info)


def round_(x: float) -> float:
    return float(f"{x:.6g}")


def _per_group(qr: Any) -> dict[str, int]:
    values = qr.groups if qr.groups is not None else list(range(len(qr.counts)))
    return {str(v): int(n) for v, n in zip(values, qr.counts)}


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectiveOptions(_spec.StrategyOptions):
    """The composed objective (README "Selection as one objective"); checked as a whole by
    :func:`alscale.selection.config.check_objective_options`. With no options: the top-k by
    the rank-normalised entropy (the same picks as ``entropy``)."""

    filters: tuple = ()
    scores: tuple = ({"name": "entropy"},)
    normalize: str = "rank"
    constraints: Any = None
    diversity: Any = None

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        from alscale.selection.config import check_objective_options

        return check_objective_options(options)


def needs(options: Mapping[str, Any]) -> _spec.Needs:
    """What an objective with these (canonical) options needs (``StrategySpec.needs_for``)."""
    from alscale.selection.config import needs_of

    return _spec.Needs(**needs_of(options))


SPEC = _spec.StrategySpec(
    "objective", "loop",
    "filters, weighted scores, hard group quotas and diversity composed into one exact greedy (the selection: section)",
    options_type=ObjectiveOptions, needs=_spec.Needs(log_probs=True), needs_for=needs,
    pool_check="alscale.selection.checks:pool_problems",
    supports=_spec.Supports(streaming=False), select=select_objective)
