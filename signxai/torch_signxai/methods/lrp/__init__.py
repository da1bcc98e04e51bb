"""LRP family on Zennit: rules, composites built from a spec, input-layer discovery."""
from __future__ import annotations

import torch

from ..grammar import MethodSpec

__all__ = ["lrp"]


def lrp(model, x, target, spec: MethodSpec) -> torch.Tensor:
    """LRP relevance of the selected logit, started from the logit's value."""
    raise NotImplementedError(f"method {spec.name!r}: LRP is not implemented yet")
