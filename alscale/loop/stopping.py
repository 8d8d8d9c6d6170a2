"""Stopping criteria of the active-learning loop (combinable; the first that fires is recorded).

Checked after each round's evaluation (:func:`stop_after_eval`) — label budget, target
accuracy, plateau, round limit, exhausted pool — and after each acquisition's scoring
(:func:`stop_after_scoring`) — the maximum pool uncertainty. Pure functions of the history.
"""

from __future__ import annotations

from collections.abc import Sequence

from alscale.loop.spec import StopConfig


def stop_after_eval(
    stop: StopConfig,
    accuracies: Sequence[float],
    n_labels: int,
    n_unlabeled: int,
    n_acquisitions: int,
) -> str | None:
    """The reason to stop now, or None.

    Args:
        accuracies: the watched accuracy (``stop.metric``) of every round so far, this one last.
        n_labels: labelled rows now (initial set included).
        n_unlabeled: rows still available for acquisition.
        n_acquisitions: acquisitions made so far.
    """
    if stop.target_accuracy is not None and accuracies and accuracies[-1] >= stop.target_accuracy:
        return f"target_accuracy: {stop.metric} accuracy {accuracies[-1]:.4f} >= {stop.target_accuracy}"
    if stop.budget is not None and n_labels >= stop.budget:
        return f"budget: {n_labels} labels >= {stop.budget}"
    if stop.plateau is not None and plateaued(accuracies, stop.plateau.epsilon, stop.plateau.rounds):
        return (f"plateau: {stop.metric} accuracy improved by <= {stop.plateau.epsilon} over the last "
                f"{stop.plateau.rounds} rounds")
    if stop.max_rounds is not None and n_acquisitions >= stop.max_rounds:
        return f"max_rounds: {n_acquisitions} acquisitions"
    if n_unlabeled == 0:
        return "pool exhausted: no unlabelled rows left"
    return None


def plateaued(accuracies: Sequence[float], epsilon: float, rounds: int) -> bool:
    """True when the best of the last ``rounds`` accuracies beats the best before them by at
    most ``epsilon`` (needs ``rounds + 1`` values)."""
    if len(accuracies) <= rounds:
        return False
    before = max(accuracies[:-rounds])
    recent = max(accuracies[-rounds:])
    return recent - before <= epsilon


def stop_after_scoring(stop: StopConfig, top_score: float | None) -> str | None:
    """Stop before labelling when the round's highest acquisition score is below the threshold."""
    if stop.max_uncertainty is not None and top_score is not None and top_score < stop.max_uncertainty:
        return f"max_uncertainty: top acquisition score {top_score:.6g} < {stop.max_uncertainty}"
    return None
