"""LRP family on Zennit: iNNvestigate's rules (:mod:`.rules`) in a Zennit composite built from
the method spec (:mod:`.composite`)."""
from __future__ import annotations

import torch

from ..gradient import attribute
from ..grammar import MethodSpec
from .composite import LRPComposite, UnsupportedLayerError, plan_for

__all__ = ["lrp", "UnsupportedLayerError"]


def lrp(model, x, target, spec: MethodSpec) -> torch.Tensor:
    """LRP relevance of the selected logit, started from the logit's value (iNNvestigate's
    convention; Deep Taylor starts from ReLU of it)."""
    plan = plan_for(spec)
    composite = LRPComposite(plan, spec.batchnorm)
    return attribute(model, x, target, from_logit=True, positive_only=plan.deep_taylor,
                     composite=composite)
