"""Brute-force reference of the composed selection (strategy ``objective``): the objective as
the README defines it, computed step by step on one in-memory pool, with no shards, no
offers and no phases. The sharded implementation must make the same picks."""

from __future__ import annotations

import math
import operator

import numpy as np

from alscale.index.exact import sq_dist_to_point
from alscale.strategies import noise, registry

_CMP = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge}


def _score(name, options, lp, ids, seed, round):
    spec = registry.get_strategy(name)
    opts = registry.check_options(spec, options)
    if spec.kind == "random":
        return noise.keyed_uniform(seed, round, ids)
    if spec.kind == "score":
        return np.asarray(spec.score_fn(lp), np.float64)
    base = registry.get_strategy(opts["base"]).score_fn(lp)
    return np.asarray(spec.keys(base, noise.keyed_gumbel(seed, round, ids), opts["beta"]), np.float64)


def _holds(x, op, value):
    if op == "in":
        return x in value
    if op == "not in":
        return x not in value
    if op == "between":
        return value[0] <= x <= value[1]
    return bool(_CMP[op](x, value))


def _normalise(v, domain, how):
    if how == "raw":
        return v
    if how == "minmax":
        lo, hi = domain.min(), domain.max()
        return np.zeros_like(v) if not hi > lo else (v - lo) / (hi - lo)
    n = domain.size
    if n <= 1:
        return np.full(v.size, 0.5)
    below = np.array([(domain < x).sum() for x in v], np.float64)
    equal = np.array([(domain == x).sum() for x in v], np.float64)
    return (below + (equal - 1) * 0.5) / (n - 1)


def _groups(cons, lp, columns):
    if cons["by"] == "predicted_class":
        cls = np.exp(lp.astype(np.float64)).mean(axis=1).argmax(axis=1)
        return cls, list(range(lp.shape[2]))
    values = sorted(set(columns[cons["by"]].tolist()))
    return np.array([values.index(x) for x in columns[cons["by"]].tolist()]), values


def _bounds(spec, values, default):
    out = np.full(len(values), default, dtype=np.int64)
    if spec is None:
        return out
    if not isinstance(spec, dict):
        return np.full(len(values), spec, dtype=np.int64)
    for k, c in spec.items():
        key = k if k in values else int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k
        out[values.index(key)] = c
    return out


def _allowed(counts, lo, hi, slots):
    need = np.maximum(lo - counts, 0)
    if slots <= need.sum():
        return (counts < hi) & (need > 0)
    return counts < hi


def reference(ids, lp, emb, columns, labeled, opts, budget, seed=0, round=0):
    """Picks (row ids in order) and their keys for canonical objective ``opts``."""
    n = ids.size
    unl = ~np.isin(ids, labeled)
    raw = {s["label"]: (_score(s["name"], s["options"], lp, ids, seed, round) if s["column"] is None
                        else np.asarray(columns[s["column"]], np.float64)) for s in opts["scores"]}
    admitted = np.ones(n, bool)
    if opts["filters"]:
        admitted = np.zeros(n, bool)
        for rule in opts["filters"]:
            ok = np.ones(n, bool)
            for p in rule["where"]:
                vals = (_score(p["field"], {}, lp, ids, seed, round) if p["source"] == "score"
                        else columns[p["field"]])
                ok &= np.array([_holds(x, p["op"], p["value"]) for x in vals.tolist()])
            admitted |= ok
    s = np.zeros(n)
    for comp in opts["scores"]:
        s = s + comp["weight"] * _normalise(raw[comp["label"]], raw[comp["label"]][unl], comp["normalize"])
    cand = unl & admitted
    div = opts["diversity"]
    if div["shortlist"] is not None:
        order = [i for i in np.lexsort((ids, -s)) if cand[i]][:div["shortlist"]]
        cand = np.isin(np.arange(n), order)
    cons = opts["constraints"]
    if cons is not None:
        group, values = _groups(cons, lp, columns)
        avail = np.bincount(group[cand], minlength=len(values))
        lo = np.minimum(_bounds(cons.get("min"), values, 0), avail)
        hi = _bounds(cons.get("max"), values, np.iinfo(np.int64).max)
    else:
        group, lo, hi = np.zeros(n, np.int64), np.zeros(1, np.int64), np.full(1, np.iinfo(np.int64).max)
    return _greedy(ids, emb, labeled, s, cand, group, lo, hi, div, bool(opts["scores"]), min(budget, cand.sum()))


def _greedy(ids, emb, labeled, s, cand, group, lo, hi, div, with_scores, budget):
    kind = div["kind"]
    centers = []
    if kind == "kcenter" or (kind == "threshold" and div["against"] == "picks_and_labeled"):
        centers = [emb[i] for i in np.flatnonzero(np.isin(ids, labeled))]
    counts = np.zeros(lo.size, np.int64)
    picked = np.zeros(ids.size, bool)
    picks, keys = [], []

    def d2_all():
        d2 = np.full(ids.size, np.inf)
        for c in centers:
            d2 = np.minimum(d2, sq_dist_to_point(emb, c))
        return d2

    def pick(i, key):
        picked[i] = True
        counts[group[i]] += 1
        picks.append(int(ids[i]))
        keys.append(float(key))
        centers.append(emb[i])

    allowed0 = _allowed(counts, lo, hi, budget)
    start = cand & allowed0[group]
    if kind == "kcenter" and not centers and budget > 0:
        free = np.flatnonzero(start)
        if with_scores:
            i = min(free, key=lambda j: (-s[j], ids[j]))
        else:
            mean = np.array([math.fsum(col) for col in emb[free].astype(np.float64).T]) / free.size
            d = sq_dist_to_point(emb[free], mean)
            i = min(free, key=lambda j: (d[list(free).index(j)], ids[j]))
        pick(i, math.inf)
    w = 0.0
    if kind == "kcenter":
        scale = div["scale"]
        if scale == "auto":
            rest = start & ~picked
            far = float(np.sqrt(d2_all()[rest].max())) if rest.any() else -math.inf
            scale = far if math.isfinite(far) and far > 0 else 1.0
        w = div["weight"] / scale
    while len(picks) < budget:
        ok = cand & ~picked & _allowed(counts, lo, hi, budget - len(picks))[group]
        d2 = d2_all()
        if kind == "none":
            key = s.copy()
        elif kind == "kcenter":
            key = (s if with_scores else 0.0) + w * np.sqrt(d2)
        else:
            key = np.where(d2 >= div["radius"] ** 2, s, -np.inf)
        live = np.flatnonzero(ok & (key > -np.inf))
        if live.size == 0:
            break
        i = min(live, key=lambda j: (-key[j], ids[j]))
        pick(i, key[i])
    return np.asarray(picks, np.int64), np.asarray(keys)
