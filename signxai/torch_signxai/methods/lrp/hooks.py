"""Zennit hooks that put iNNvestigate's relevance mappings in place of layers' own backward passes.

A conv, dense, BatchNorm or average-pooling layer's hook (:class:`RuleHook`) puts one small
autograd function in place of the layer's own backward: its backward maps the output relevance
to the input with the layer's rule, given the layer's input and (for the rules that divide by
it, :attr:`.rules.Rule.reuses_output`: Z, epsilon, std_x epsilon, SIGN) the layer's output from
the forward pass. Those rules thus cost one transpose (``W^T v``, the same kernel as the layer's
input gradient) and a few elementwise operations, as a plain gradient does; rules that modify
the weights (alpha-beta, gamma, W-square, flat, Z-box) compute their own forwards and transposes.
The layer's own backward never runs, and its input and output are released as soon as its
relevance has been computed. :class:`PassHook` passes relevance through an activation,
:class:`FusedPass` does so only where the Keras twin fuses it (Deep Taylor), :class:`SumHook`
applies the Z rule to a tensor sum.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from zennit.core import Hook, RemovableHandle, RemovableHandleList

from ..graph import kind_of_module
from .rules import Affine, Rule, safe_divide

__all__ = ["Trace", "Slot", "RuleHook", "PassHook", "FusedPass", "SumHook"]


@dataclass
class Trace:
    """What ran during the forward pass of one explanation."""

    #: conv/dense layers in the order they ran
    kernels: list = field(default_factory=list)
    #: every leaf module in the order it ran
    leaves: list = field(default_factory=list)
    #: (weak references to) the latest output of a rule layer and its :class:`Slot`, while that
    #: slot keeps the output: a ReLU that consumes this very tensor may stand in for it
    pending: tuple | None = None

    def clear(self) -> None:
        """Forget the previous forward pass."""
        self.kernels.clear()
        self.leaves.clear()
        self.pending = None


class Slot:
    """What one call of a layer leaves for its relevance step: its input ``x`` and (when a rule
    may reuse it) its output ``z``, with their in-place version counters at the end of the call.

    When a ReLU module consumes the output directly, the slot keeps the ReLU's output ``y``
    instead (``fused``): where ``y > 0`` it equals ``z``, and where ``y == 0`` the relevance that
    reaches ``z`` is zero whenever the layers above multiply relevance by their input (Z,
    epsilon, alpha-beta, ...), so the share ``r / stabilised(z)`` is zero there whatever ``z`` was,
    provided the rule's denominator at a zero output is not zero (a safe divide, or epsilon > 0).
    The relevance step checks the first premise, the rule the second (``cut=True``), and ``z``
    is recomputed when one fails. ``y`` is the
    next layer's input, which is kept anyway, so the layer's output need not be. (The shares at
    those positions may differ from the unfused ones in the sign of zero only.)
    """

    __slots__ = ("x", "z", "x_version", "z_version", "fused", "__weakref__")

    def __init__(self, x: torch.Tensor, z: torch.Tensor | None) -> None:
        self.x, self.z = x, z
        self.x_version = self.z_version = 0
        self.fused = False

    def seal(self) -> None:
        """Record the version counters of ``x`` and ``z`` at the end of the layer's call."""
        self.x_version = self.x._version
        if self.z is not None:
            self.z_version = self.z._version

    def fuse(self, y: torch.Tensor) -> None:
        """Keep the ReLU output ``y`` of the layer's output instead of the output itself."""
        self.z, self.fused, self.z_version = y, True, y._version

    def output(self, r: torch.Tensor) -> torch.Tensor | None:
        """The layer's output (or, when ``fused``, its ReLU) as a rule may use it against
        relevance ``r``, or None when it must be recomputed (not kept, modified in place since,
        or a ReLU output where ``r`` is not zero at its zeros)."""
        z = self.z
        if z is None or z._version != self.z_version:
            return None
        if self.fused:
            # r with its entries at y <= 0 zeroed (ReLU's own backward kernel) must equal r
            # (NaN never compares equal, so NaN relevance also recomputes)
            if not torch.equal(torch.ops.aten.threshold_backward(r, z, 0), r):
                return None
        return z


class _RelevanceStep(torch.autograd.Function):
    """Stands in for a layer's own backward: forward returns the layer's output unchanged (the
    very tensor, marked as modified so that it carries this function's gradient node), backward
    returns ``step(relevance at the output)`` as the relevance at the input."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, z: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        ctx.step = step
        ctx.mark_dirty(z)
        return z

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        step, ctx.step = ctx.step, None  # release the layer's tensors as soon as they are used
        return step(r), None, None


class _PassStep(torch.autograd.Function):
    """An activation under LRP: forward returns the activation's output ``y`` (computed without
    autograd), backward passes the relevance to the activation's input ``x`` unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(y)
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None]:
        return r, None


class RuleHook(Hook):
    """A Zennit hook that maps a layer's output relevance to its input with a :class:`Rule`,
    choosing the rule at backward time (input / last / hidden layer, from the trace).

    Parameters
    ----------
    view : callable
        ``view(module, x)``: the layer as an :class:`Affine` map, given its input ``x``.
    choose : callable
        ``choose(module) -> Rule`` at backward time.
    trace : Trace
        The composite's record of the forward pass.
    candidates : callable, optional
        ``candidates(module) -> rules`` that ``choose`` may return for the module; the layer's
        output is kept for the backward pass only if one of them reuses it.
    native : bool
        Whether the module's own output is exactly ``view(module)(x)`` (conv, dense, pooling;
        not BatchNorm, whose view is iNNvestigate's linearisation or an algebraically equal map),
        so that a rule may take it instead of recomputing it.
    """

    def __init__(
        self,
        view: Callable[[nn.Module, torch.Tensor], Affine],
        choose: Callable[[nn.Module], Rule],
        trace: Trace,
        candidates: Callable[[nn.Module], Iterable[Rule]] | None = None,
        native: bool = False,
    ) -> None:
        super().__init__()
        self.view, self.choose, self.trace = view, choose, trace
        self.candidates, self.native = candidates, native

    def copy(self) -> RuleHook:
        """A hook like this one, for another module."""
        return RuleHook(self.view, self.choose, self.trace, self.candidates, self.native)

    def register(self, module: nn.Module) -> RemovableHandleList:
        """One forward hook; no input copy (these layers never modify their input)."""
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self.post_forward)])

    def _keeps_output(self, module: nn.Module) -> bool:
        if not self.native:
            return False
        rules = self.candidates(module) if self.candidates is not None else (self.choose(module),)
        return any(rule is not None and rule.reuses_output for rule in rules)

    def post_forward(self, module: nn.Module, input: Any, output: Any) -> torch.Tensor | None:
        """Link the layer's output to its input by the relevance step (while the hook is active)."""
        if kind_of_module(module).lrp == "rule":
            self.trace.kernels.append(module)
        x = input[0] if isinstance(input, tuple) else input
        if not (
            self.active
            and torch.is_grad_enabled()
            and isinstance(output, torch.Tensor)
            and isinstance(x, torch.Tensor)
            and x.requires_grad
        ):
            return None
        slot = Slot(x.detach(), output.detach() if self._keeps_output(module) else None)
        result = _RelevanceStep.apply(x, output.detach(), partial(self._relevance, module, slot))
        slot.seal()
        if slot.z is not None:
            self.trace.pending = (weakref.ref(result), weakref.ref(slot))
        return result

    def _relevance(self, module: nn.Module, slot: Slot, r: torch.Tensor) -> torch.Tensor:
        x = slot.x
        if x._version != slot.x_version:
            raise RuntimeError(
                f"the input of layer '{type(module).__name__}' was modified in place "
                f"after the layer ran; LRP needs it unchanged"
            )
        rule = self.choose(module)
        z = slot.output(r) if rule.reuses_output else None
        fused = slot.fused
        slot.x = slot.z = None  # type: ignore[assignment]  # the slot is spent: release its tensors
        # z None: the rule computes the layer's output itself (a rule that modifies the weights,
        # or an output modified in place later / a failed ReLU premise)
        layer, cut = self.view(module, x), z is not None and fused
        if layer.padding is None:
            return rule.relevance(layer, x, r, z=z, cut=cut)
        return layer.crop(rule.relevance(layer, layer.pad(x), r, z=z, cut=cut))


class PassHook(Hook):
    """Relevance passes an activation unchanged (iNNvestigate's LRP, Zennit's ``Pass``), with no
    backward of the activation's own: the activation runs on a detached input (a copy when it
    works in place, so that tensors kept for other layers stay intact) and a :class:`_PassStep`
    links its output to its input.

    A ``nn.ReLU`` that directly consumes a rule layer's output (see :class:`Slot`) lets that
    layer keep the ReLU's output instead of its own, and may then work in place on it.
    """

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace
        self.calls: list[tuple[torch.Tensor, Slot | None] | None] = []

    def copy(self) -> PassHook:
        """A hook like this one, for another module."""
        return PassHook(self.trace)

    def register(self, module: nn.Module) -> RemovableHandleList:
        """A forward pre-hook (detach the input) and a forward hook (link the output)."""
        return RemovableHandleList(
            [
                RemovableHandle(self),
                module.register_forward_pre_hook(self.pre_forward),
                module.register_forward_hook(self.post_forward),
            ]
        )

    def _producer(self, module: nn.Module, x: torch.Tensor) -> Slot | None:
        """The slot whose layer output ``x`` is, when ``module`` is a ReLU that may stand in."""
        pending, self.trace.pending = self.trace.pending, None
        if type(module) is not nn.ReLU or pending is None or pending[0]() is not x:
            return None
        slot = pending[1]()
        return slot if slot is not None and slot.z is not None and not slot.fused else None

    def pre_forward(self, module: nn.Module, args: tuple) -> tuple | None:
        """Run the activation on a detached input (a copy if it works in place on a kept tensor)."""
        x = args[0] if args else None
        if not (self.active and torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
            self.calls.append(None)
            return None
        slot = self._producer(module, x)
        detached = x.detach()
        if slot is None and getattr(module, "inplace", False):
            detached = detached.clone()
        self.calls.append((x, slot))
        return (detached, *args[1:])

    def post_forward(self, module: nn.Module, args: tuple, output: Any) -> torch.Tensor | None:
        """Link the activation's output to its input, passing relevance unchanged."""
        call = self.calls.pop() if self.calls else None
        if call is None or not isinstance(output, torch.Tensor):
            return None
        x, slot = call
        result = _PassStep.apply(x, output)
        if slot is not None:
            slot.fuse(result.detach())
        return result

    def remove(self) -> None:
        """Remove the hook and forget pending calls."""
        self.calls.clear()
        super().remove()


class FusedPass(Hook):
    """Deep Taylor's activation mapping: relevance passes an activation the Keras twin fuses into
    the conv/dense layer before it (that layer then "contains" it) and takes the gradient of any
    other one (e.g. a ReLU after BatchNorm, pooling or a sum).

    Parameters
    ----------
    fused : callable
        ``fused(module) -> bool`` at backward time.
    """

    def __init__(self, fused: Callable[[nn.Module], bool]) -> None:
        super().__init__()
        self.fused = fused

    def copy(self) -> FusedPass:
        """A hook like this one, for another module."""
        return FusedPass(self.fused)

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        """Pass relevance (the output's gradient) unchanged where ``fused``; else keep the gradient."""
        return grad_output if self.fused(module) else None


class _SumStep(torch.autograd.Function):
    """Stands in for a sum's backward: forward returns the sum ``z`` (marked as modified, as in
    :class:`_RelevanceStep`), backward returns ``step(relevance at z)``, one relevance per term."""

    @staticmethod
    def forward(
        ctx: Any, step: Callable[[torch.Tensor], list[torch.Tensor]], z: torch.Tensor, *terms: torch.Tensor
    ) -> torch.Tensor:
        ctx.step = step
        ctx.mark_dirty(z)
        return z

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        step, ctx.step = ctx.step, None
        return (None, None, *step(r))


class SumHook(Hook):
    """The Z rule of a tensor sum ``z = sum_k x_k`` (iNNvestigate's ``AddReverseLayer``, applied
    whatever the analyzer): ``R_k = x_k * R / z`` with the zero-only safe divide, summed back
    over broadcast axes. ``z`` is the sum of the forward pass, recomputed if it was modified in
    place since (an in-place ReLU after the sum)."""

    def copy(self) -> SumHook:
        """A new hook, for another module."""
        return SumHook()

    def register(self, module: nn.Module) -> RemovableHandleList:
        """One forward hook."""
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self.post_forward)])

    def post_forward(self, module: nn.Module, inputs: tuple, output: Any) -> torch.Tensor | None:
        """Link the sum to its terms by the Z rule (while the hook is active)."""
        if not (
            self.active
            and torch.is_grad_enabled()
            and isinstance(output, torch.Tensor)
            and any(t.requires_grad for t in inputs)
        ):
            return None
        terms = [t.detach() for t in inputs]
        z = output.detach()
        versions = [t._version for t in terms], z._version

        def step(r: torch.Tensor) -> list[torch.Tensor]:
            if [t._version for t in terms] != versions[0]:
                raise RuntimeError(
                    "an input of a tensor sum was modified in place after the sum ran; LRP needs it unchanged"
                )
            total = z if z._version == versions[1] else module(*terms)
            share = safe_divide(r, total)
            return [(t * share).sum_to_size(t.shape) for t in terms]

        return _SumStep.apply(step, z, *inputs)
