"""LRP family on Zennit: iNNvestigate's rules (:mod:`.rules`) on layer views (:mod:`.views`),
chosen per layer kind by a plan (:mod:`.plan`) and attached by hooks (:mod:`.hooks`) in one
composite (:mod:`.composite`), after the model was checked (:mod:`.guard`).

A model fx can trace runs as its graph with every functional operation a module of its own
(:mod:`..modular`); any other model runs as a chain in execution order."""
from __future__ import annotations

import torch

from ..gradient import attribute
from ..grammar import MethodSpec
from ..graph import UnsupportedLayerError
from ..modular import of_model
from .composite import LRPComposite
from .plan import plan_for

__all__ = ["lrp", "UnsupportedLayerError"]


def lrp(model, x, target, spec: MethodSpec) -> torch.Tensor:
    """LRP relevance of the selected logit, started from the logit's value (iNNvestigate's
    convention; Deep Taylor starts from ReLU of it)."""
    plan = plan_for(spec)
    modular = of_model(model)
    composite = LRPComposite(plan, spec.batchnorm, modular=modular)
    return attribute(model if modular is None else modular.module, x, target, from_logit=True,
                     positive_only=plan.deep_taylor, composite=composite)
