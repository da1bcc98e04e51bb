"""Model factories standing in for a user's own module, for ``signxai-parity --model user_models:...``.

Every model takes inputs of shape (1, 8, 8) and is built from a fixed seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (1, 8, 8)


def small_cnn() -> nn.Sequential:
    """A conv / max-pool / dense chain that the Keras twin and LRP both support."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def hardswish_mlp() -> nn.Sequential:
    """A dense model with a Hardswish, which the Keras twin cannot reproduce (keras.applications
    builds it from layers iNNvestigate rejects)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Hardswish(), nn.Linear(8, 3))


class FunctionalReLU(nn.Module):
    """A dense model whose ReLU is ``F.relu`` in ``forward``: a node of the model graph that LRP,
    the gradient family and the Keras twin all read."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x.flatten(1))))


def functional_relu() -> FunctionalReLU:
    """A :class:`FunctionalReLU` from a fixed seed."""
    torch.manual_seed(0)
    return FunctionalReLU()


def not_a_model() -> str:
    """A factory that returns something other than a torch.nn.Module."""
    return "small_cnn"
