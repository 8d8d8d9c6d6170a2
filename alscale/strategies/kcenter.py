"""k-center greedy (Core-Set): exact over the whole pool, sharded, with certified batches.

The textbook greedy (Gonzalez, TCS 1985; the Core-Set acquisition of Sener & Savarese,
ICLR 2018): the min-distance of every row to the *centers* starts from the labelled rows
(with none, the first pick is the row nearest to the pool's mean embedding); then
repeatedly the row farthest from all centers is picked and becomes a center. Ties go to the
lower ``row_id``; each pick's score is its distance (Euclidean, not squared) at pick time
(``inf`` for a first pick made from the mean).

**Exactness.** Picks are decided with the canonical float64 distance of
:mod:`alscale.index.exact` (a function of the two vectors only), never with a fast
backend's value: the selection is the same for every backend, shard count, executor and
machine, bit for bit. Fast backends (:mod:`alscale.index`) do the bulk work on the shards;
their values are used as bounds, ``|approx − exact| <= eps`` (a rigorous float32 error
bound).

**Sharded loop (DESIGN §3).** Each shard keeps ``mind`` (approximate squared min-distance
of each row to the centers it has been compared with). One round trip per *round*: the
coordinator sends the centers picked since the last round, and every shard answers with
its top-``m`` rows by ``mind`` (with their embeddings) and a bound ``u`` on every row it
did not send. The coordinator then picks greedily among the offered rows, keeping their
exact min-distances up to date against its own new centers. Because min-distances only
shrink, no unsent row can exceed its shard's ``u``; a pick whose exact value is strictly
larger than every shard's ``u`` is therefore the global greedy pick (certified). When the
best remaining offered row cannot be certified, the round ends. ``m`` adapts per shard to
the number of picks a round certified (about 5 rounds per 1,000 picks).

**Lazy updates on the shards.** A stale ``mind`` is still an upper bound, so a shard
compares rows with new centers only as far as its offer needs: in decreasing order of
``mind``, block of centers by block, dropping a row as soon as its value falls below the
``(m+1)``-th largest up-to-date value. Rows far inside the covered region are never
touched again. At N = 1M, B = 1,000 this computes ~5e6 row-center distances instead of the
1e9 of an eager update (every row against every center), with the same picks.

**Gather mode.** When all embeddings fit ``gather_bytes`` and the coordinator has a GPU,
the rows are gathered once and the same loop runs on one device in-process; the result is
identical by construction.

**Approximate mode** (``kcenter_approx``, Malkomes et al., NeurIPS 2015): greedy with the
full budget on every shard independently (one round trip), then greedy on the union of
the shards' picks; a constant-factor approximation of the k-center objective whose
coverage radius ``benchmarks/selection.py`` reports against the exact one.

Modules: this one holds the entry points, options, class quotas and the specs;
:mod:`~alscale.strategies.kcenter_shard` the shard state and ops;
:mod:`~alscale.strategies.kcenter_loop` the coordinator's certified loop;
:mod:`~alscale.strategies.kcenter_approx` the approximate mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.index import BACKENDS
from alscale.strategies import spec as _spec
from alscale.strategies.kcenter_approx import kcenter_approx
from alscale.strategies.kcenter_loop import MAX_OFFER, KCenterResult, KCenterStats, greedy
from alscale.strategies.kcenter_shard import OP, Gathered, ShardSizes
from alscale.strategies.shards import FanoutShards, InProcessFanout, Shards, ShardState
from alscale.types import Selection

logger = logging.getLogger(__name__)

__all__ = ["KCenterResult", "KCenterStats", "check_options", "kcenter_approx", "kcenter_greedy", "select_kcenter",
           "select_kcenter_approx", "select_with_quotas"]

MODES = ("auto", "sharded", "gather")


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Range checks for ``kcenter`` / ``kcenter_approx`` options (registry ``check_fn``)."""
    out = dict(options)
    backend = out.get("backend", "auto")
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise AlscaleError(f"option backend must be one of {', '.join(BACKENDS)}; got {short_repr(backend)}")
    out["backend"] = backend.lower()
    if "mode" in out:
        mode = out["mode"]
        if not isinstance(mode, str) or mode.lower() not in MODES:
            raise AlscaleError(f"option mode must be one of {', '.join(MODES)}; got {short_repr(mode)}")
        out["mode"] = mode.lower()
    if "gather_bytes" in out:
        gb = out["gather_bytes"]
        if isinstance(gb, bool) or not isinstance(gb, (int, np.integer)) or gb < 0:
            raise AlscaleError(f"option gather_bytes must be a non-negative integer (bytes); got {short_repr(gb)}")
        out["gather_bytes"] = int(gb)
    if "offer_rows" in out and out["offer_rows"] is not None:
        m = out["offer_rows"]
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= MAX_OFFER:
            raise AlscaleError(
                f"option offer_rows must be null (adaptive) or an integer in [1, {MAX_OFFER}]; got {short_repr(m)}"
            )
        out["offer_rows"] = int(m)
    return out


def _coordinator_has_gpu() -> bool:
    from alscale.index import cuda_device

    return cuda_device() is not None


def _gathered(shards: Shards) -> Shards:
    """Every shard's rows in one in-process shard (the gather mode)."""
    parts: list[Gathered] = shards.call(OP + "gather")
    state = ShardState(np.concatenate([p.row_ids_N for p in parts]), None,
                       np.concatenate([p.embeddings_N_D for p in parts]))
    state.labeled_N = np.concatenate([p.labeled_N for p in parts])
    state.eligible_N = np.concatenate([p.eligible_N for p in parts])
    return FanoutShards(InProcessFanout([state]))


def _use_gather(shards: Shards, mode: str, gather_bytes: int) -> bool:
    """``gather``; or ``auto`` with a GPU here and every embedding within ``gather_bytes``."""
    if mode != "auto" or not _coordinator_has_gpu():
        return mode == "gather"
    sizes: list[ShardSizes] = shards.call(OP + "sizes")
    return len(sizes) > 1 and sum(s.nbytes for s in sizes) <= gather_bytes


def kcenter_greedy(
    shards: Shards,
    budget: int,
    *,
    backend: str = "auto",
    mode: str = "auto",
    gather_bytes: int = 2 << 30,
    offer_rows: int | None = None,
) -> KCenterResult:
    """Exact k-center greedy over ``shards`` (labelled rows already excluded); see the module doc.

    Args:
        shards: the pool; labelled rows are marked (``shards.exclude``) and are the initial
            centers.
        budget: picks wanted; ``min(budget, unlabelled rows)`` are made.
        backend: distance backend of the shards (``auto``, ``numpy``, ``torch``, ``faiss``);
            it changes speed, never the selection.
        mode: ``sharded``; ``gather`` (all embeddings to this process, one device); ``auto``
            gathers when the embeddings fit ``gather_bytes`` and this process has a GPU.
        gather_bytes: the coordinator memory budget for ``gather``.
        offer_rows: rows each shard offers per round; None adapts it.

    Returns:
        A :class:`KCenterResult`: picks in order, their distance at pick time, stats.
    """
    t0 = time.perf_counter()
    rt0 = shards.round_trips
    stats = KCenterStats(mode="sharded", backend=backend)
    work = shards
    if _use_gather(shards, mode, gather_bytes):
        stats.mode = "gather"
        tg = time.perf_counter()
        work = _gathered(shards)
        stats.seconds["gather"] = time.perf_counter() - tg
    ids, scores = greedy(work, int(budget), backend=backend, centers0=None, take_labeled=True,
                         offer_rows=offer_rows, stats=stats)
    stats.round_trips = shards.round_trips - rt0
    stats.seconds["total"] = time.perf_counter() - t0
    logger.info(
        "kcenter (%s, %s): %d picks, %d rounds, %d round trips, %.2f s",
        stats.mode, stats.backend, len(ids), stats.rounds, stats.round_trips, stats.seconds["total"],
    )
    return KCenterResult(ids, scores, stats)


def select_kcenter(
    shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry of ``kcenter`` (deterministic: ``seed`` and ``round`` are unused)."""
    r = kcenter_greedy(
        shards,
        budget,
        backend=options.get("backend", "auto"),
        mode=options.get("mode", "auto"),
        gather_bytes=options.get("gather_bytes", 2 << 30),
        offer_rows=options.get("offer_rows"),
    )
    return Selection(indices_B=r.row_ids_B, scores_B=r.scores_B, strategy="kcenter")


def select_kcenter_approx(
    shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry of ``kcenter_approx``."""
    r = kcenter_approx(shards, budget, backend=options.get("backend", "auto"))
    return Selection(indices_B=r.row_ids_B, scores_B=r.scores_B, strategy="kcenter_approx")


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class KCenterOptions(_spec.StrategyOptions):
    """Options of ``kcenter`` (checked by :func:`check_options`)."""

    backend: str = "auto"
    mode: str = "auto"
    gather_bytes: int = 2 << 30
    offer_rows: int | None = None

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


@dataclass(frozen=True)
class KCenterApproxOptions(_spec.StrategyOptions):
    """Options of ``kcenter_approx``: the nearest-center backend."""

    backend: str = "auto"

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


def select_with_quotas(shards: Shards, budget: int, lo: np.ndarray, hi: np.ndarray, *, options: Mapping[str, Any],
                       seed: int = 0, round: int = 0, avail: np.ndarray | None = None
                       ) -> tuple[Selection, np.ndarray]:
    """k-center under class quotas (:mod:`alscale.strategies.quotas`), in phases: within one
    the allowed classes cannot change, so the sharded greedy over the allowed rows, with the
    labelled rows and all earlier picks as centers, makes the constrained greedy's picks."""
    from alscale.strategies import quotas

    c = lo.shape[0]
    counts = np.zeros(c, dtype=np.int64)
    ids_B: list[int] = []
    scores_B: list[float] = []
    while len(ids_B) < budget:
        slots = budget - len(ids_B)
        need = np.maximum(lo - counts, 0)
        owed = int(need.sum())
        allowed = quotas.allowed_classes(counts, lo, hi, slots)
        if not allowed.any():
            break
        room = hi[allowed] - counts[allowed]
        length = int(min(room.min(), need[allowed].min() if slots <= owed else slots - owed))
        length = max(1, min(length, slots))
        if quotas.restrict_classes(shards, ~allowed) == 0:
            break  # no candidate row of an allowed class is left
        sel = select_kcenter(shards, length, options=options)
        if len(sel) == 0:
            break
        cls = quotas.classes_of(shards, sel.indices_B)
        for r, s in zip(sel.indices_B.tolist(), sel.scores_B.tolist()):
            ids_B.append(r)
            scores_B.append(s)
            counts[cls[r]] += 1
        shards.exclude(sel.indices_B)  # earlier picks are centers of the next phase
    return Selection(np.asarray(ids_B, np.int64), np.asarray(scores_B, np.float64), "kcenter"), counts


_NEEDS = _spec.Needs(log_probs=False, embeddings=True)
SPECS = (
    _spec.StrategySpec(
        "kcenter", "loop", "exact k-center greedy / Core-Set (Sener & Savarese, ICLR 2018; Gonzalez 1985)",
        options_type=KCenterOptions, needs=_NEEDS, aliases=("coreset", "core_set", "k_center", "k_center_greedy"),
        supports=_spec.Supports(quotas=True, keeps=("embeddings",)), select=select_kcenter,
        quota_select=select_with_quotas),
    _spec.StrategySpec(
        "kcenter_approx", "loop",
        "k-center greedy per shard, then on the union (approximate; Malkomes et al., NeurIPS 2015)",
        options_type=KCenterApproxOptions, needs=_NEEDS, supports=_spec.Supports(keeps=("embeddings",)),
        select=select_kcenter_approx),
)

