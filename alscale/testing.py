"""Conformance checks for strategies — yours or the built-ins (cf. scikit-learn's ``check_estimator``).

:func:`check_strategy` runs a strategy on a small synthetic pool and asserts the guarantees
every alscale strategy gives:

- no labelled row and no row twice in a selection;
- ``len(selection) == min(budget, unlabelled rows)``;
- the same selection (row ids and scores) with 1, 2 and 7 shards, and, with ``ray=True``,
  through ``alscale run`` on the local and the Ray executor with 1 and 3 shards;
- the same seed gives the same batch.

A violation raises :class:`StrategyCheckError` with one line naming the check, the
strategy, and the first difference.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from alscale.strategies import FanoutShards, InProcessFanout, ShardState, registry, run_strategy
from alscale.strategies.spec import StrategySpec
from alscale.types import Selection

__all__ = ["StrategyCheckError", "check_strategy", "synthetic_pool"]


class StrategyCheckError(AssertionError):
    """A strategy broke one of alscale's guarantees."""


def synthetic_pool(spec: StrategySpec, n_rows: int = 240, seed: int = 0) -> dict[str, Any]:
    """Arrays a strategy can run on: ``row_ids_N`` (shuffled, non-contiguous), ``log_probs_N_K_C``
    (K = the spec's least, at least 2), ``embeddings_N_D`` (clustered), ``labeled`` row ids,
    and what the spec needs besides (``head``, ``labels``, model output ``loss``)."""
    rng = np.random.default_rng(seed)
    k, c, d = max(2, spec.needs.min_samples), 4, 8
    centers = rng.normal(size=(6, d)) * 3
    emb = (centers[rng.integers(0, 6, n_rows)] + rng.normal(size=(n_rows, d))).astype(np.float32)
    logits = rng.normal(size=(n_rows, k, c)) * 2
    logits[n_rows // 2:n_rows // 2 + 8] = logits[:8]  # a few exact ties stress the tie rule
    lp = (logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))).astype(np.float32)
    row_ids = rng.permutation(10 * n_rows)[:n_rows].astype(np.int64)
    labeled = np.sort(row_ids[rng.choice(n_rows, n_rows // 8, replace=False)])
    out: dict[str, Any] = {"row_ids_N": row_ids, "log_probs_N_K_C": lp, "embeddings_N_D": emb, "labeled": labeled,
                           "options": {}, "model_outputs": {}}
    if spec.needs.head:
        out["options"]["head"] = (rng.normal(size=(c, d)), rng.normal(size=c))
    if spec.needs.labels:
        out["options"]["labels"] = (labeled, rng.integers(0, c, labeled.size))
    if spec.needs.model_output:
        out["model_outputs"][spec.needs.model_output] = rng.random(n_rows)
    return out


def _run_in_memory(spec: StrategySpec, pool: Mapping[str, Any], n_shards: int, budget: int, options: Mapping,
                   seed: int) -> Selection:
    n = pool["row_ids_N"].shape[0]
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    states = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        outputs = {k: v[a:b] for k, v in pool["model_outputs"].items()}
        states.append(ShardState(pool["row_ids_N"][a:b], pool["log_probs_N_K_C"][a:b],
                                 pool["embeddings_N_D"][a:b], model_outputs=outputs))
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(pool["labeled"])
    return run_strategy(shards, spec, budget, options={**pool["options"], **options}, seed=seed, round=1)


def _fail(spec: StrategySpec, check: str, detail: str) -> None:
    raise StrategyCheckError(f"strategy {spec.name}: {check}: {detail}")


def _first_difference(a: Selection, b: Selection) -> str:
    ia, ib = np.asarray(a.indices_B), np.asarray(b.indices_B)
    if ia.shape != ib.shape:
        return f"{ia.size} rows vs {ib.size} rows"
    diff = np.flatnonzero((ia != ib) | ~np.isclose(a.scores_B, b.scores_B, rtol=0, atol=0, equal_nan=True))
    j = int(diff[0])
    return (f"first difference at pick {j}: row {int(ia[j])} (score {float(a.scores_B[j]):.6g}) vs row "
            f"{int(ib[j])} (score {float(b.scores_B[j]):.6g})")


def _same(a: Selection, b: Selection) -> bool:
    return bool(np.array_equal(a.indices_B, b.indices_B) and np.array_equal(
        np.asarray(a.scores_B), np.asarray(b.scores_B), equal_nan=True))


def _check_basic(spec: StrategySpec, sel: Selection, pool: Mapping[str, Any], budget: int) -> None:
    picked = np.asarray(sel.indices_B)
    n_unlabelled = pool["row_ids_N"].size - pool["labeled"].size
    if picked.size != min(budget, n_unlabelled):
        _fail(spec, "size", f"budget {budget} with {n_unlabelled} unlabelled rows gave {picked.size} rows; a "
                            f"selection has min(budget, unlabelled) = {min(budget, n_unlabelled)} rows")
    if np.unique(picked).size != picked.size:
        vals, counts = np.unique(picked, return_counts=True)
        _fail(spec, "no repeats", f"row {int(vals[counts > 1][0])} is picked {int(counts.max())} times")
    hit = np.isin(picked, pool["labeled"])
    if hit.any():
        _fail(spec, "no labelled rows", f"row {int(picked[hit][0])} is labelled but was picked")
    if not np.isin(picked, pool["row_ids_N"]).all():
        _fail(spec, "row ids", f"row {int(picked[~np.isin(picked, pool['row_ids_N'])][0])} is not a pool row_id")
    if np.asarray(sel.scores_B).shape != picked.shape:
        _fail(spec, "scores", f"{np.asarray(sel.scores_B).shape[0]} scores for {picked.size} rows")


def _check_importable(spec: StrategySpec) -> None:
    for what in ("select", "score", "keys", "quota_select"):
        fn = getattr(spec, what)
        if fn is not None and not isinstance(fn, str) and getattr(fn, "__module__", None) == "__main__":
            _fail(spec, "importable", f"its {what} function is defined in __main__; workers import a strategy by "
                                      "its module, so define it in a module (a .py file) and import it from there")


def check_strategy(strategy: Any, *, options: Mapping[str, Any] | None = None, budgets: tuple[int, ...] = (25,),
                   seeds: tuple[int, ...] = (0, 7), n_rows: int = 240, ray: bool = False) -> None:
    """Assert alscale's guarantees for ``strategy`` (a spec, an object with ``.spec``, a
    registered name or an import path ``"pkg.mod:Attr"``); see the module docstring.

    ``budgets``: batch sizes tried (a budget above the unlabelled rows is always added);
    ``ray``: also run it as a job on the local and the Ray executor (slower: starts Ray).
    Raises :class:`StrategyCheckError` on the first violation.
    """
    spec = registry.get_strategy(strategy)
    _check_importable(spec)
    opts = registry.check_options(spec, options or {})
    pool = synthetic_pool(spec, n_rows)
    user = {k: v for k, v in opts.items() if k not in pool["options"] or v is not None}
    n_unlabelled = pool["row_ids_N"].size - pool["labeled"].size
    for seed in seeds:
        for budget in (*budgets, n_unlabelled + 5):
            ref = _run_in_memory(spec, pool, 1, budget, user, seed)
            _check_basic(spec, ref, pool, budget)
            again = _run_in_memory(spec, pool, 1, budget, user, seed)
            if not _same(ref, again):
                _fail(spec, "same seed, same batch", f"seed {seed}, budget {budget}: two runs differ, "
                      f"{_first_difference(ref, again)}; draw randomness only from keyed noise "
                      "(alscale.strategies.noise) of (seed, round, row_id)")
            for n_shards in (2, 7):
                got = _run_in_memory(spec, pool, n_shards, budget, user, seed)
                if not _same(ref, got):
                    _fail(spec, "shard invariance", f"seed {seed}, budget {budget}: {n_shards} shards pick "
                          f"differently from 1 shard, {_first_difference(ref, got)}; a selection must not depend "
                          "on how the pool is split (merge per-shard results exactly, ties to the lower row_id)")
    if ray:
        _check_jobs(spec, pool, user, budgets[0], seeds[0])


def _check_jobs(spec: StrategySpec, pool: Mapping[str, Any], options: Mapping[str, Any], budget: int,
                seed: int) -> None:
    """``alscale run`` on the local and the Ray executor, 1 and 3 shards, against the in-memory run."""
    if spec.needs.head or spec.needs.model_output:
        _fail(spec, "ray", "check_strategy(ray=True) runs pool-column jobs without a model, but this strategy "
                           "needs the model's head or a further model output; test it as a job with your model")
    from alscale.jobspec import validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    ref = _run_in_memory(spec, pool, 1, budget, options, seed)
    with tempfile.TemporaryDirectory(prefix="alscale-check-") as tmp:
        root = Path(tmp)
        write_table(pool_table(pool["row_ids_N"], log_probs_N_K_C=pool["log_probs_N_K_C"],
                               embeddings_N_D=pool["embeddings_N_D"]), str(root / "pool.arrow"))
        (root / "labeled.csv").write_text("row_id\n" + "\n".join(str(int(r)) for r in pool["labeled"]) + "\n")
        job_options = {k: v for k, v in options.items() if k not in ("labels",)}
        for executor in ("local", "ray"):
            for n_shards in (1, 3):
                job = validate_job({
                    "pool": {"path": str(root / "pool.arrow")}, "labeled": {"path": str(root / "labeled.csv")},
                    "model": None, "seed": seed,
                    "strategy": {"name": registry.strategy_ref(spec), "budget": budget, "options": job_options,
                                 "round": 1},
                    "runtime": {"executor": executor, "shards": n_shards, "cache": False},
                }, source=f"check_strategy({spec.name})")
                got = run_job(job, out_dir=root / f"out-{executor}-{n_shards}", progress=False).selection
                if not _same(ref, got):
                    _fail(spec, "local vs ray", f"the {executor} executor with {n_shards} shards picks differently "
                          f"from the in-memory run, {_first_difference(ref, got)}")


def main(argv: list[str] | None = None) -> int:
    """``python -m alscale.testing pkg.mod:MyStrategy [--ray]``: 0 when every check passes, 1 with
    the failed check's one line, 2 when the strategy cannot be loaded."""
    import argparse

    from alscale.errors import AlscaleError

    ap = argparse.ArgumentParser(prog="python -m alscale.testing", description="Run check_strategy on a strategy.")
    ap.add_argument("strategy", help="a registered name or an import path, package.module:Name")
    ap.add_argument("--ray", action="store_true", help="also alscale run on a local Ray with 1 and 3 shards")
    args = ap.parse_args(argv)
    try:
        check_strategy(args.strategy, ray=args.ray)
    except StrategyCheckError as exc:
        print(f"alscale.testing: {exc}", file=sys.stderr)
        return 1
    except AlscaleError as exc:
        print(f"alscale.testing: {exc}", file=sys.stderr)
        return 2
    print(f"{args.strategy}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
