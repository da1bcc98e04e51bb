"""The LRP family's entry point: the engine's ``(model, x, target, spec) -> relevance``."""
from __future__ import annotations

import torch

from ..gradient import attribute
from ..grammar import MethodSpec
from ..modular import of_model
from .composite import LRPComposite
from .plan import plan_for

__all__ = ["lrp"]


def lrp(model, x, target, spec: MethodSpec) -> torch.Tensor:
    """LRP relevance of the selected logit, started from the logit's value (iNNvestigate's
    convention; Deep Taylor starts from ReLU of it)."""
    plan = plan_for(spec)
    modular = of_model(model)
    composite = LRPComposite(plan, spec.batchnorm, modular=modular)
    return attribute(model if modular is None else modular.module, x, target, from_logit=True,
                     positive_only=plan.deep_taylor, composite=composite)
