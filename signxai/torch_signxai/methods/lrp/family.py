"""The LRP family's entry point: the engine's ``(model, x, target, spec) -> relevance``.

On a private view of the model (:mod:`..private`, what the engine passes) the composite of a
method is registered once, when the view is first used for that method, and stays registered:
the engine leases views under :func:`view_key`, so a view only ever serves one LRP method.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

from ..gradient import attribute
from ..grammar import MethodSpec
from ..modular import of_model
from ..private import is_view, prepared
from .composite import LRPComposite
from .plan import plan_for

__all__ = ["lrp", "view_key"]


def view_key(spec: MethodSpec) -> Hashable:
    """What a view registered for ``spec`` is registered with: its plan and BatchNorm mode."""
    return plan_for(spec), spec.batchnorm


def _registered(model: nn.Module, spec: MethodSpec) -> tuple[nn.Module, LRPComposite]:
    """The module to run (the model's modular graph, or the model as a chain) and the composite
    of ``spec`` registered on it."""
    plan = plan_for(spec)
    modular = of_model(model)
    composite = LRPComposite(plan, spec.batchnorm, modular=modular)
    module = model if modular is None else modular.module
    composite.register(module)
    return module, composite


def lrp(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """LRP relevance of the selected logit, started from the logit's value (iNNvestigate's
    convention; Deep Taylor starts from ReLU of it)."""
    positive_only = plan_for(spec).deep_taylor
    if not is_view(model):  # a model of the caller's (scripted): registered for this call only
        module, composite = _registered(model, spec)
        try:
            return attribute(module, x, target, from_logit=True, positive_only=positive_only)
        finally:
            composite.remove()
    module, composite = prepared(model, view_key(spec), lambda: _registered(model, spec))
    composite.reset()
    try:
        return attribute(module, x, target, from_logit=True, positive_only=positive_only)
    finally:
        composite.reset()
