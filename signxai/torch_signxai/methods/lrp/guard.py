"""What LRP refuses, before and during the explained forward pass.

A model with a graph (:mod:`..graph`) is checked node by node before anything runs
(:func:`check_graph`). A model fx cannot trace runs as a chain in execution order: its leaf
modules are checked (:func:`check_supported`) and, during the forward pass, an
:class:`OperationGuard` rejects tensor operations outside any leaf module, which no rule would
see. Every refusal is one :class:`~..graph.UnsupportedLayerError` naming the layer or node and why.
"""

from __future__ import annotations

import torch
from torch import nn

from ..graph import MODULE_KINDS, UnsupportedLayerError, kind_of_module
from ..guard import OperationGuard
from ..modular import Modular
from .plan import Plan

__all__ = ["UnsupportedLayerError", "check_supported", "check_graph", "chain_guard", "SHAPE_FUNCTIONS"]

#: functions allowed in a chain's forward pass outside any module: they only reshape
SHAPE_FUNCTIONS = frozenset(
    {
        torch.flatten,
        torch.Tensor.flatten,
        torch.Tensor.view,
        torch.Tensor.reshape,
        torch.reshape,
        torch.Tensor.size,
        torch.Tensor.dim,
        torch.Tensor.contiguous,
        torch.Tensor.squeeze,
        torch.Tensor.unsqueeze,
        torch.squeeze,
        torch.unsqueeze,
        torch.Tensor.__getitem__,
        # reading these attributes: torch's function modes see their getters
        *(
            getattr(torch.Tensor, name).__get__
            for name in ("shape", "ndim", "dtype", "device", "requires_grad", "grad_fn")
        ),
        torch.Tensor.is_floating_point,
        torch.Tensor.numel,
    }
)


def _supported_names() -> str:
    return ", ".join(sorted({cls.__name__ for cls, kind in MODULE_KINDS.items() if kind.lrp != "unsupported"}))


def check_supported(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` naming the first leaf module LRP has no rule for."""
    for name, module in model.named_modules():
        if next(module.children(), None) is None and kind_of_module(module).lrp == "unsupported":
            if name == "" and not list(module.parameters(recurse=False)):
                continue
            raise UnsupportedLayerError(
                f"LRP has no rule for layer {type(module).__name__} at '{name or '<model>'}'; "
                f"supported: {_supported_names()}"
            )


def check_graph(modular: Modular, plan: Plan) -> None:
    """Raise :class:`UnsupportedLayerError` naming the first node of the graph that ``plan`` has
    no mapping for."""
    for node, reason in modular.unsupported:
        layers = f"; supported layers: {_supported_names()}" if node.op == "call_module" else ""
        raise UnsupportedLayerError(f"LRP cannot explain {node.label} in the model's graph: it {reason}{layers}")
    if not plan.gate:
        gates = [node for node in modular.graph.nodes if node.kind.name == "gate"]
        if gates:
            raise UnsupportedLayerError(
                f"LRP cannot explain {gates[0].label} in the model's graph: iNNvestigate's Deep Taylor has "
                f"no mapping for a product of tensors (a gate); use another LRP method"
            )


def chain_guard(model: nn.Module) -> OperationGuard:
    """The guard of a chain's forward pass: only reshaping functions may run outside leaf modules."""
    return OperationGuard(
        model,
        rejects=lambda f: f not in SHAPE_FUNCTIONS,
        method="LRP",
        advice="it runs outside any module, so no rule applies (wrap it in a module such "
        "as nn.ReLU, or restructure the model as a chain of supported layers)",
    )
