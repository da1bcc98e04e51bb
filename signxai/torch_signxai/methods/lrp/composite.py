"""The Zennit composite of one LRP explanation: each layer kind (from the kinds table of
:mod:`..graph`) gets its hook (:mod:`.hooks`) with the plan's rule (:mod:`.plan`).

On a model's graph (:mod:`..modular`) the positions are the graph's: the input layers are the
kernel layers iNNvestigate's ``is_input_layer`` finds, the last layers those with no kernel layer
downstream, and Deep Taylor passes relevance through the activations the Keras twin fuses. On a
chain (a model fx cannot trace) they come from the order in which layers actually ran: the
input layer is the first conv/dense layer run, the last the last one run, and an activation
fuses into the conv/dense layer that ran right before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from zennit.core import Composite, Hook

from ..graph import KERNEL_KINDS, Node, UnsupportedLayerError, activation_of_module, kind_of_module
from ..modular import Modular
from .guard import chain_guard, check_graph, check_supported
from .hooks import FusedPass, PassHook, RuleHook, SumHook, Trace
from .plan import Plan
from .rules import Affine, Rule
from .views import batchnorm_view, kernel_view, pool_view

__all__ = ["LRPComposite"]

T = TypeVar("T")


def _fixed_rule_hook(
    view: Callable[[nn.Module, torch.Tensor], Affine], rule: Rule | None, trace: Trace, native: bool
) -> RuleHook | None:
    """A hook applying ``rule`` to every layer it is placed on; None without a rule."""
    if rule is None:
        return None
    return RuleHook(view, lambda m: rule, trace, native=native)


def _single(found: set[T], nodes: tuple[Node, ...], what: str) -> T:
    """The one position in ``found`` of a module called at ``nodes``; raise if the calls differ."""
    if len(found) > 1:
        raise UnsupportedLayerError(
            f"LRP cannot explain {nodes[0].label}: the model calls this module {what}, where the "
            f"rules differ; give each call a module of its own"
        )
    return found.pop()


class LRPComposite(Composite):
    """The Zennit composite of one LRP explanation.

    Parameters
    ----------
    plan : Plan
        The rules.
    batchnorm : str
        ``'exact'`` or ``'innvestigate'`` (see :func:`.views.batchnorm_view`).
    reuse_outputs : bool
        Let rules that divide by a layer's output take it from the forward pass (the fast path,
        default); False makes every rule recompute it (the general path, for comparisons).
    modular : Modular, optional
        The model's graph as modules: register the composite on ``modular.module``. None: the
        model runs as a chain in execution order.
    """

    def __init__(self, plan: Plan, batchnorm: str, reuse_outputs: bool = True, modular: Modular | None = None) -> None:
        self.plan, self.trace, self.modular = plan, Trace(), modular
        #: graph mode: kernel module -> (is an input layer, gets the until rule, is a last layer);
        #: activation -> fused
        self.positions: dict[nn.Module, tuple[bool, bool, bool]] = {}
        self.fused: dict[nn.Module, bool] = {}
        kernel_hook = RuleHook(kernel_view, self._kernel_rule, self.trace, self._kernel_rules, native=reuse_outputs)
        norm_hook = _fixed_rule_hook(lambda m, x: batchnorm_view(m, batchnorm), plan.batchnorm, self.trace, False)
        pool_hook = _fixed_rule_hook(lambda m, x: pool_view(m), plan.average_pool, self.trace, reuse_outputs)
        pass_hook, fused_pass, sum_hook = PassHook(self.trace), FusedPass(self._is_fused), SumHook()

        def module_map(ctx: Any, name: str, module: nn.Module) -> Hook | None:
            kind = kind_of_module(module)
            if kind.lrp == "rule":
                return kernel_hook
            if kind.lrp == "batchnorm":
                return norm_hook
            if kind.name in ("avg_pool", "mean"):
                return pool_hook
            if kind.name == "add":
                return sum_hook if plan.add is not None else None
            if kind.name == "activation":
                activation = activation_of_module(module)
                if activation is not None and activation.lrp == "gradient":
                    return None
                return fused_pass if plan.deep_taylor else pass_hook
            return None

        super().__init__(module_map=module_map)

    def register(self, module: nn.Module) -> None:
        """Place the hooks on ``module`` (on the graph's modules, or on a chain with its guard)."""
        self.trace.clear()
        if self.modular is not None:
            check_graph(self.modular, self.plan)
            self._graph_positions(self.modular)
            super().register(module)
            return
        check_supported(module)
        super().register(module)
        # every leaf records that it ran (hook-less ones too: max pooling, flatten, dropout)
        for leaf in module.modules():
            if next(leaf.children(), None) is None:
                self.handles.append(leaf.register_forward_hook(self._record))
        guard = chain_guard(module)
        self.handles.append(guard)
        self.handles.append(module.register_forward_pre_hook(guard.start))
        self.handles.append(module.register_forward_hook(guard.stop, always_call=True))

    def remove(self) -> None:
        """Remove every hook and forget the pending output."""
        super().remove()
        self.trace.pending = None

    def reset(self) -> None:
        """Forget what one explanation left (the trace, tensors a hook kept, unmatched calls of a
        failed forward pass) while staying registered, for the next explanation."""
        self.trace.clear()
        for hook in list(self.hook_refs):
            hook.remove()  # a hook's own state only; its module handles stay in self.handles

    def _record(self, module: nn.Module, input: Any, output: Any) -> None:
        self.trace.leaves.append(module)

    def _graph_positions(self, modular: Modular) -> None:
        """Positions of the kernel modules and fusion of the activations, from the graph; a
        module run at nodes of different positions has no single rule."""
        graph = modular.graph
        plan = self.plan
        numbers = {n.name: k for k, n in enumerate(n for n in graph.nodes if n.kind.name in KERNEL_KINDS)}
        for module, nodes in modular.nodes.items():
            kind = kind_of_module(module)
            if kind.name in KERNEL_KINDS:
                positions = {
                    (
                        n.name in graph.input_layers and plan.input is not None,
                        self._until(numbers[n.name]),
                        n.name in graph.last_layers and plan.last is not None,
                    )
                    for n in nodes
                }
                self.positions[module] = _single(
                    positions, nodes, "as an input, until_layer_idx or last layer and elsewhere"
                )
            elif kind.name == "activation" and plan.deep_taylor:
                fused = {n.fused_into is not None for n in nodes}
                self.fused[module] = _single(fused, nodes, "fused into a conv/dense layer and elsewhere")

    def _is_fused(self, module: nn.Module) -> bool:
        """Whether the Keras twin fuses this activation into the conv/dense layer before it."""
        if self.modular is not None:
            return self.fused[module]
        leaves = self.trace.leaves
        position = leaves.index(module) - 1
        while position >= 0 and kind_of_module(leaves[position]).name == "identity":
            position -= 1
        return position >= 0 and kind_of_module(leaves[position]).name in KERNEL_KINDS

    def _until(self, number: int) -> bool:
        """Whether the conv/dense layer numbered ``number`` (execution order) gets the until rule."""
        index = self.plan.until_index
        return self.plan.until is not None and index is not None and number <= index

    def _kernel_rules(self, module: nn.Module) -> tuple:
        """Every rule :meth:`_kernel_rule` may choose for ``module``."""
        plan = self.plan
        return plan.input, plan.until, plan.last, plan.dense if isinstance(module, nn.Linear) else plan.conv

    def _kernel_rule(self, module: nn.Module) -> Rule:
        plan = self.plan
        if self.modular is not None:
            is_input, is_until, is_last = self.positions[module]
        else:
            kernels = self.trace.kernels
            is_input, is_last = module is kernels[0], module is kernels[-1]
            is_until = self._until(kernels.index(module))
        if plan.input is not None and is_input:
            return plan.input
        if plan.until is not None and is_until:
            return plan.until
        if plan.last is not None and is_last:
            return plan.last
        return plan.dense if isinstance(module, nn.Linear) else plan.conv
