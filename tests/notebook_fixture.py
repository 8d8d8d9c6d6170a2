"""Model factories for the notebook-API equivalence tests (``tests.notebook_fixture:...``)."""

from __future__ import annotations

import torch
from torch import nn


def plain(in_features: int, num_classes: int, hidden: int = 32, seed: int = 0) -> nn.Sequential:
    """A plain ``nn.Sequential`` with dropout, returning logits only (what a notebook user has)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.5),
                             nn.Linear(hidden, num_classes))


class SequentialWithEmbedding(nn.Sequential):
    """The same layers (same state_dict keys); returns (logits, input of the last layer)."""

    def forward(self, x_B_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in list(self)[:-1]:
            x_B_D = layer(x_B_D)
        return self[-1](x_B_D), x_B_D


def with_embedding(in_features: int, num_classes: int, hidden: int = 32) -> nn.Module:
    return SequentialWithEmbedding(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.5),
                                   nn.Linear(hidden, num_classes))
