"""The active-learning loop: train -> acquire -> label -> repeat, with a simulated oracle.

``alscale simulate JOB`` (:func:`simulate`) runs a job's ``loop`` protocol (see
:mod:`alscale.loop.spec`) for several strategies and trials through the same coordinator
and executors as ``alscale run``, and writes per-round tables, learning curves and the
papers' "labels needed to reach X% accuracy" table. Imports no Ray and no faiss; torch
is imported when a simulation trains its model.
"""

from __future__ import annotations

from alscale.loop.ledger import Ledger
from alscale.loop.oracle import Oracle, SimulatedOracle
from alscale.loop.simulate import SimulationResult, simulate
from alscale.loop.spec import LoopSpec, StopConfig, TrainConfig, parse_loop

__all__ = [
    "Ledger",
    "LoopSpec",
    "Oracle",
    "SimulatedOracle",
    "SimulationResult",
    "StopConfig",
    "TrainConfig",
    "parse_loop",
    "simulate",
]
