"""User-style model factories for the import-path tests (``tests.scoring.factory_fixture:...``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Linear -> ReLU -> nn.Dropout -> Linear; returns (logits [B, C], embedding [B, hidden])."""

    def __init__(self, in_features: int, num_classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x_B_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding_B_H = self.drop(torch.relu(self.fc1(x_B_D)))
        return self.fc2(embedding_B_H), embedding_B_H


class LogitsOnly(nn.Module):
    """nn.Sequential-style model returning logits only."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, num_classes))

    def forward(self, x_B_D: torch.Tensor) -> torch.Tensor:
        return self.net(x_B_D)


def make(in_features: int = 6, num_classes: int = 3, hidden: int = 8, dropout: float = 0.25) -> nn.Module:
    torch.manual_seed(123)
    return TinyNet(in_features, num_classes, hidden, dropout)


def make_logits_only(in_features: int = 6, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(7)
    return LogitsOnly(in_features, num_classes)


def make_conv(in_features: int = 64) -> nn.Module:
    """A conv net with nn.Dropout2d (becomes channel-wise consistent dropout)."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.Dropout2d(0.5), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    )


def make_deterministic(in_features: int = 6) -> nn.Module:
    return nn.Linear(in_features, 3)


def make_alpha(in_features: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 8), nn.AlphaDropout(0.2), nn.Linear(8, 3))


def make_bad_output(in_features: int = 6) -> nn.Module:
    class ThreeOutputs(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return x, x, x

    return ThreeOutputs()


def make_one_logit(in_features: int = 6) -> nn.Module:
    return nn.Linear(in_features, 1)


def make_nan(in_features: int = 6) -> nn.Module:
    model = nn.Linear(in_features, 3)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    return model


def raises(**kwargs: object) -> nn.Module:
    raise RuntimeError("boom\nsecond line")


def returns_int() -> int:
    return 3


NOT_CALLABLE = 42


class BadPrefix(TinyNet):
    """Declares an mc_prefix that (wrongly) includes the dropout layer."""

    def mc_prefix(self, x_B_D: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.fc1(x_B_D)))

    def mc_suffix(self, h_B_H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc2(h_B_H), h_B_H


def make_bad_prefix(in_features: int = 6) -> nn.Module:
    return BadPrefix(in_features, 3, 8, 0.5)
