"""Learning Loss (Yoo & Kweon, "Learning Loss for Active Learning", CVPR 2019) as a model hook.

The user's model carries a loss-prediction module and returns it as a third output of
``forward``: ``(logits [N, C], embedding [N, E], predicted_loss [N])`` (from the
deterministic pass when K > 1). The workers keep each row's predicted loss, and the
strategy picks the rows of largest predicted loss through the exact sharded top-k (ties to
the lower ``row_id``). Training the loss module (the paper's ranking loss) is the model
owner's part; alscale only reads its output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies import spec as _spec
from alscale.strategies.shards import Shards, ShardState, shard_op
from alscale.types import Selection

_OP = "alscale.strategies.learning_loss."


@shard_op
def ll_prepare(state: ShardState) -> None:
    """Rank this shard's rows by their predicted loss."""
    loss = state.model_outputs.get("loss")
    if loss is None:
        raise AlscaleError("strategy learning_loss needs the model's predicted loss: return (logits, embedding, "
                         "predicted_loss [N]) from forward (a Learning Loss module)")
    state.use_scores(loss)


def select_learning_loss(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                         round: int = 0) -> Selection:
    """Registry entry ``learning_loss``: the ``budget`` unlabelled rows of largest predicted loss."""
    shards.call(_OP + "ll_prepare")
    scores, ids = shards.topk(budget)
    return Selection(np.asarray(ids, np.int64), np.asarray(scores, np.float64), "learning_loss")


# -- registry spec -----------------------------------------------------------------------
SPEC = _spec.StrategySpec(
    "learning_loss", "loop",
    "largest loss predicted by the model's loss-prediction module (Yoo & Kweon, CVPR 2019)",
    needs=_spec.Needs(log_probs=True, model_output="loss"), supports=_spec.Supports(keeps=("log_probs",)),
    select=select_learning_loss)

