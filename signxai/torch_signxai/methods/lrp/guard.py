"""What LRP refuses, before and during the explained forward pass.

A model with a graph (:mod:`..graph`) is checked node by node before anything runs
(:func:`check_graph`). A model fx cannot trace runs as a chain in execution order: its leaf
modules are checked (:func:`check_supported`) and, during the forward pass, an
:class:`OperationGuard` rejects tensor operations outside any leaf module, which no rule would
see. Every refusal is one :class:`~..graph.UnsupportedLayerError` naming the layer or node and why.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..graph import MODULE_KINDS, UnsupportedLayerError, kind_of_module
from ..modular import Modular
from .plan import Plan

__all__ = ["UnsupportedLayerError", "check_supported", "check_graph", "OperationGuard", "SHAPE_FUNCTIONS"]

#: functions allowed in a chain's forward pass outside any module: they only reshape
SHAPE_FUNCTIONS = frozenset({
    torch.flatten, torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape, torch.reshape,
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.contiguous, torch.Tensor.squeeze,
    torch.Tensor.unsqueeze, torch.squeeze, torch.unsqueeze, torch.Tensor.__getitem__,
    torch.Tensor.shape.__get__, torch.Tensor.ndim.__get__, torch.Tensor.dtype.__get__,
    torch.Tensor.device.__get__, torch.Tensor.requires_grad.__get__, torch.Tensor.grad_fn.__get__,
    torch.Tensor.is_floating_point, torch.Tensor.numel,
})


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
                f"supported: {_supported_names()}")


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
                f"no mapping for a product of tensors (a gate); use another LRP method")


class OperationGuard(TorchFunctionMode):
    """During a forward pass, reject functions that ``rejects`` outside the modules that
    ``inside`` accepts (by default: outside any leaf module), naming the function and the module
    that ran last.

    Parameters
    ----------
    model : torch.nn.Module
    rejects : callable
        ``rejects(function) -> bool``.
    advice : str
        What the error says after naming the function.
    inside : callable, optional
        ``inside(module) -> bool``: modules whose own forward may call anything.
    method : str
        The method, for the error.
    """

    def __init__(self, model: nn.Module, rejects: Callable = lambda f: f not in SHAPE_FUNCTIONS,
                 advice: str = ("it runs outside any module, so no rule applies (wrap it in a module such as "
                                "nn.ReLU, or restructure the model as a chain of supported layers)"),
                 inside: Callable[[nn.Module], bool] = lambda m: next(m.children(), None) is None,
                 method: str = "LRP") -> None:
        super().__init__()
        self.rejects, self.advice, self.method = rejects, advice, method
        self.depth = 0
        self.current = ""
        self.handles = []
        for module in model.modules():
            if inside(module):
                self.handles.append(module.register_forward_pre_hook(self._enter, prepend=True))
                self.handles.append(module.register_forward_hook(self._exit, always_call=True))
        self.names = {module: name for name, module in model.named_modules()}

    def _enter(self, module, args):
        self.depth += 1

    def _exit(self, module, args, output):
        self.depth -= 1
        self.current = self.names.get(module, "")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and self.rejects(func):
            after = f" after '{self.current}'" if self.current else ""
            raise UnsupportedLayerError(
                f"{self.method} cannot explain the operation {getattr(func, '__qualname__', func)}{after} in the "
                f"model's forward: {self.advice}")
        return func(*args, **(kwargs or {}))

    def start(self, module, args) -> None:
        """Forward pre-hook of the model: start guarding."""
        self.__enter__()

    def stop(self, module, args, output) -> None:
        """Forward hook of the model: stop guarding."""
        self.__exit__(None, None, None)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
