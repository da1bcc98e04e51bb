"""A Zennit composite built from a method spec.

Each layer gets a Zennit hook; which rule a conv/dense layer uses is decided when relevance
reaches it, from the order in which layers actually ran (so "the input layer" is the first
conv/dense layer the input reaches, not the first one registered: METHODS.md trap 4).

A conv, dense, BatchNorm or average-pooling layer's hook (:class:`RuleHook`) puts one small
autograd function in place of the layer's own backward: its backward maps the output relevance
to the input with the layer's rule, given the layer's input and (for the rules that divide by
it, :attr:`.rules.Rule.reuses_output`: Z, epsilon, std_x epsilon, SIGN) the layer's output from
the forward pass. Those rules thus cost one transpose (``W^T v``, the same kernel as the layer's
input gradient) and a few elementwise operations, as a plain gradient does; rules that modify
the weights (alpha-beta, gamma, W-square, flat, Z-box) compute their own forwards and transposes.
The layer's own backward never runs, and its input and output are released as soon as its
relevance has been computed.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from zennit.core import Composite, Hook, RemovableHandle, RemovableHandleList

from ..grammar import MethodSpec, parse
from .rules import (Affine, AlphaBetaRule, AlphaBetaX2m100Rule, EpsilonRule, FlatRule, GammaRule,
                    Rule, SignRule, StdxEpsilonRule, WSquareRule, ZBoxRule, ZRule)

__all__ = ["Plan", "plan_for", "LRPComposite", "UnsupportedLayerError"]

KERNEL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU,
               nn.ReLU6)
#: leaves whose plain gradient is their relevance rule (routing or reshaping only)
PASS_THROUGH = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d,
                nn.Dropout2d, nn.Identity, nn.Softmax, nn.LogSoftmax)


def _keras_activation_layer(module: nn.Module) -> bool:
    """Whether the Keras twin has this activation as a layer of its own that is no ``Activation``
    layer (LeakyReLU, ELU with alpha != 1): iNNvestigate's LRP maps those by their gradient, and
    only ``Activation`` layers (or activations fused into a conv/dense layer) pass relevance."""
    return isinstance(module, nn.LeakyReLU) or (isinstance(module, nn.ELU) and module.alpha != 1.0)


#: leaves the Keras twin drops (identities in eval mode): an activation after them still fuses
_NO_KERAS_LAYER = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
#: functions allowed in a forward pass outside any module: they only reshape
_SHAPE_FUNCTIONS = {
    torch.flatten, torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape, torch.reshape,
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.contiguous, torch.Tensor.squeeze,
    torch.Tensor.unsqueeze, torch.squeeze, torch.unsqueeze, torch.Tensor.__getitem__,
    torch.Tensor.shape.__get__, torch.Tensor.ndim.__get__, torch.Tensor.dtype.__get__,
    torch.Tensor.device.__get__, torch.Tensor.requires_grad.__get__, torch.Tensor.grad_fn.__get__,
    torch.Tensor.is_floating_point, torch.Tensor.numel,
}


class UnsupportedLayerError(NotImplementedError):
    """A layer or operation the LRP engine has no rule for (named with its path in the model)."""


@dataclass(frozen=True)
class Plan:
    """Which rule each kind of layer gets, for one method.

    Attributes
    ----------
    dense, conv : Rule
        Rules of hidden dense and conv layers.
    batchnorm : Rule or None
        Rule applied to BatchNorm's affine map (iNNvestigate's BN rule of the analyzer), or None
        for its plain gradient.
    input : Rule or None
        Rule of the input layer (the first conv/dense layer executed), or None for the hidden rule.
    last : Rule or None
        Rule of the last conv/dense layer executed, or None for the hidden rule.
    average_pool : Rule or None
        Rule of average pooling, or None for its plain gradient.
    deep_taylor : bool
        iNNvestigate's Deep Taylor: relevance starts at ReLU(logit); a ReLU fused into the
        conv/dense layer it directly follows (as in the Keras twin) passes relevance, any other
        ReLU takes its gradient. (Its kernel rule is Z+ on every conv/dense layer: ``dense``/``conv``.)
    """

    dense: Rule
    conv: Rule
    batchnorm: Optional[Rule]
    input: Optional[Rule] = None
    last: Optional[Rule] = None
    average_pool: Optional[Rule] = field(default_factory=ZRule)
    deep_taylor: bool = False


def _hidden_rule(spec: MethodSpec) -> Rule:
    p = spec.params
    return {
        "z": lambda: ZRule(),
        "epsilon": lambda: EpsilonRule(p["epsilon"]),
        "epsilon_std_x": lambda: StdxEpsilonRule(stdfactor=p["stdfactor"]),
        "alpha_beta": lambda: AlphaBetaRule(p["alpha"], p["beta"]),
        "z_plus": lambda: AlphaBetaRule(1.0, 0.0, bias=False),
        "gamma": lambda: GammaRule(p["gamma"]),
        "flat": lambda: FlatRule(),
        "w_square": lambda: WSquareRule(),
    }[spec.rule]()


def _input_rule(spec: MethodSpec) -> Optional[Rule]:
    p = spec.params
    return {
        None: lambda: None,
        "z": lambda: ZRule(),
        "sign": lambda: SignRule(p["mu"]),
        "w_square": lambda: WSquareRule(),
        "flat": lambda: FlatRule(),
        "zbox": lambda: ZBoxRule(p["low"], p["high"]),
    }[spec.input_rule]()


def plan_for(spec: MethodSpec) -> Plan:
    """The layer rules of an LRP method spec, following the iNNvestigate analyzer it names."""
    last = spec.params.get("last_rule")
    common = {"input": _input_rule(spec), "last": _hidden_rule(parse(f"lrp_{last}")) if last else None}
    if spec.rule in ("sequential_composite_a", "sequential_composite_b"):
        conv = AlphaBetaRule(1.0, 0.0) if spec.rule.endswith("a") else AlphaBetaRule(2.0, 1.0)
        return Plan(dense=EpsilonRule(0.1), conv=conv, batchnorm=AlphaBetaX2m100Rule(), **common)
    if spec.rule == "deep_taylor":
        # iNNvestigate 2.1.2 chooses Z+ for a kernel layer that "contains an activation" and
        # W-square otherwise, but its test is hasattr(layer, "activation"), true for every Keras
        # Dense/Conv (linear ones too): so every conv/dense layer gets Z+ (bias ignored)
        # Its BatchNorm mapping (W-square on the fused layer) is never reached either: the ReLU
        # condition before it, "no kernel and only ReLU activations", holds for a BatchNormalization
        # layer (it has no activation at all), so BN gets its plain gradient (its true scale)
        z_plus = AlphaBetaRule(1.0, 0.0, bias=False)
        return Plan(dense=z_plus, conv=z_plus, batchnorm=None,
                    average_pool=None, deep_taylor=True, **common)
    hidden = _hidden_rule(spec)
    return Plan(dense=hidden, conv=hidden, batchnorm=hidden, **common)


def _linear_adjoint(v: torch.Tensor, like: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight^T v`` of a dense layer: what autograd computes as ``linear``'s input gradient."""
    return torch.matmul(v, weight)


def _conv_adjoint(module: nn.Module) -> Optional[Callable]:
    """``weight^T v`` of a convolution by its input-gradient kernel (``convolution_backward``,
    what autograd runs for the layer's own backward, without a forward pass); None for padding
    that is not a plain zero padding of fixed size (autograd handles those)."""
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    stride, padding, dilation, groups = module.stride, module.padding, module.dilation, module.groups
    output_padding = (0,) * len(stride)

    def adjoint(v: torch.Tensor, like: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution_backward(
            v, like, weight, None, stride, padding, dilation, False, output_padding, groups,
            (True, False, False))[0]
    return adjoint


#: dense weights of at least this many entries are modified block by block (Affine.row_block),
#: blocks of about this many entries (VGG16's first dense weight, 102.8M entries, would
#: otherwise take a 392 MiB copy per modifier)
_BLOCK_ENTRIES = 1 << 20


def _kernel_view(module: nn.Module) -> Affine:
    if isinstance(module, nn.Linear):
        rows = max(1, _BLOCK_ENTRIES // module.in_features) if module.weight.numel() > 4 * _BLOCK_ENTRIES else None
        return Affine(module.weight, module.bias, torch.nn.functional.linear, _linear_adjoint, -1, rows)
    return Affine(module.weight, module.bias, module._conv_forward, _conv_adjoint(module), 1)


def _batchnorm_view(module: nn.Module, mode: str) -> Affine:
    """BatchNorm (eval) as ``scale * x + shift``: its true affine map (``mode='exact'``), or
    iNNvestigate 2.1.2's linearisation (``mode='innvestigate'``, METHODS.md trap 11), whose
    scale is ``gamma / sqrt(var**2 + eps)`` and shift ``beta - mean / sqrt(var**2 + eps)``."""
    mean, var = module.running_mean, module.running_var
    if mean is None or var is None:
        raise UnsupportedLayerError(f"{type(module).__name__} without running statistics "
                                    f"(track_running_stats=False) has no fixed affine map")
    gamma = module.weight if module.weight is not None else torch.ones_like(mean)
    beta = module.bias if module.bias is not None else torch.zeros_like(mean)
    if mode == "innvestigate":
        root = torch.sqrt(var ** 2 + module.eps)
        scale, shift = gamma / root, beta - mean / root
    else:
        root = torch.sqrt(var + module.eps)
        scale, shift = gamma / root, beta - gamma * mean / root

    def apply(x, weight, bias):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = x * weight.view(shape)
        return out if bias is None else out + bias.view(shape)

    def adjoint(v, like, weight):  # the input gradient of ``x * weight``
        return v * weight.view((1, -1) + (1,) * (v.ndim - 2))
    return Affine(scale.detach(), shift.detach(), apply, adjoint, 1)


def _pool_view(module: nn.Module) -> Affine:
    """A parameter-free linear layer as an Affine with a unit scalar weight."""
    unit = torch.ones((), dtype=torch.float64)
    return Affine(unit, None, lambda x, weight, bias: module.forward(x) * weight.to(x.dtype))


@dataclass
class Trace:
    """What ran during the forward pass of one explanation."""

    #: conv/dense layers in the order they ran
    kernels: list = field(default_factory=list)
    #: every leaf module in the order it ran
    leaves: list = field(default_factory=list)
    #: (weak references to) the latest output of a rule layer and its :class:`_Slot`, while that
    #: slot keeps the output: a ReLU that consumes this very tensor may stand in for it
    pending: Optional[tuple] = None

    def clear(self) -> None:
        self.kernels.clear()
        self.leaves.clear()
        self.pending = None


class _Slot:
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

    def __init__(self, x: torch.Tensor, z: Optional[torch.Tensor]) -> None:
        self.x, self.z = x, z
        self.x_version = self.z_version = 0
        self.fused = False

    def seal(self) -> None:
        self.x_version = self.x._version
        if self.z is not None:
            self.z_version = self.z._version

    def fuse(self, y: torch.Tensor) -> None:
        """Keep the ReLU output ``y`` of the layer's output instead of the output itself."""
        self.z, self.fused, self.z_version = y, True, y._version

    def output(self, r: torch.Tensor) -> Optional[torch.Tensor]:
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
    def forward(ctx, x, z, step):
        ctx.step = step
        ctx.mark_dirty(z)
        return z

    @staticmethod
    def backward(ctx, r):
        step, ctx.step = ctx.step, None  # release the layer's tensors as soon as they are used
        return step(r), None, None


class _PassStep(torch.autograd.Function):
    """An activation under LRP: forward returns the activation's output ``y`` (computed without
    autograd), backward passes the relevance to the activation's input ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.mark_dirty(y)
        return y

    @staticmethod
    def backward(ctx, r):
        return r, None


class RuleHook(Hook):
    """A Zennit hook that maps a layer's output relevance to its input with a :class:`Rule`,
    choosing the rule at backward time (input / last / hidden layer, from the trace).

    Parameters
    ----------
    view : callable
        The layer as an :class:`Affine` map.
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

    def __init__(self, view: Callable[[nn.Module], Affine], choose: Callable[[nn.Module], Rule],
                 trace: Trace, candidates: Optional[Callable[[nn.Module], Iterable[Rule]]] = None,
                 native: bool = False) -> None:
        super().__init__()
        self.view, self.choose, self.trace = view, choose, trace
        self.candidates, self.native = candidates, native

    def copy(self) -> "RuleHook":
        return RuleHook(self.view, self.choose, self.trace, self.candidates, self.native)

    def register(self, module: nn.Module) -> RemovableHandleList:
        """One forward hook; no input copy (these layers never modify their input)."""
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self.post_forward)])

    def _keeps_output(self, module: nn.Module) -> bool:
        if not self.native:
            return False
        rules = self.candidates(module) if self.candidates is not None else (self.choose(module),)
        return any(rule is not None and rule.reuses_output for rule in rules)

    def post_forward(self, module, input, output):
        if isinstance(module, KERNEL_LAYERS):
            self.trace.kernels.append(module)
        x = input[0] if isinstance(input, tuple) else input
        if not (self.active and torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                and isinstance(x, torch.Tensor) and x.requires_grad):
            return None
        slot = _Slot(x.detach(), output.detach() if self._keeps_output(module) else None)
        result = _RelevanceStep.apply(x, output.detach(), partial(self._relevance, module, slot))
        slot.seal()
        if slot.z is not None:
            self.trace.pending = (weakref.ref(result), weakref.ref(slot))
        return result

    def _relevance(self, module: nn.Module, slot: _Slot, r: torch.Tensor) -> torch.Tensor:
        x = slot.x
        if x._version != slot.x_version:
            raise RuntimeError(f"the input of layer '{type(module).__name__}' was modified in place "
                               f"after the layer ran; LRP needs it unchanged")
        rule = self.choose(module)
        z = slot.output(r) if rule.reuses_output else None
        fused = slot.fused
        slot.x = slot.z = None
        # z None: the rule computes the layer's output itself (a rule that modifies the weights,
        # or an output modified in place later / a failed ReLU premise)
        return rule.relevance(self.view(module), x, r, z=z, cut=z is not None and fused)


class PassHook(Hook):
    """Relevance passes an activation unchanged (iNNvestigate's LRP, Zennit's ``Pass``), with no
    backward of the activation's own: the activation runs on a detached input (a copy when it
    works in place, so that tensors kept for other layers stay intact) and a :class:`_PassStep`
    links its output to its input.

    A ``nn.ReLU`` that directly consumes a rule layer's output (see :class:`_Slot`) lets that
    layer keep the ReLU's output instead of its own, and may then work in place on it.
    """

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace
        self.calls: list = []

    def copy(self) -> "PassHook":
        return PassHook(self.trace)

    def register(self, module: nn.Module) -> RemovableHandleList:
        return RemovableHandleList([RemovableHandle(self), module.register_forward_pre_hook(self.pre_forward),
                                    module.register_forward_hook(self.post_forward)])

    def _producer(self, module: nn.Module, x: torch.Tensor) -> Optional[_Slot]:
        """The slot whose layer output ``x`` is, when ``module`` is a ReLU that may stand in."""
        pending, self.trace.pending = self.trace.pending, None
        if type(module) is not nn.ReLU or pending is None or pending[0]() is not x:
            return None
        slot = pending[1]()
        return slot if slot is not None and slot.z is not None and not slot.fused else None

    def pre_forward(self, module, args):
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

    def post_forward(self, module, args, output):
        call = self.calls.pop() if self.calls else None
        if call is None or not isinstance(output, torch.Tensor):
            return None
        x, slot = call
        result = _PassStep.apply(x, output)
        if slot is not None:
            slot.fuse(result.detach())
        return result

    def remove(self) -> None:
        self.calls.clear()
        super().remove()


class LRPComposite(Composite):
    """The Zennit composite of one LRP explanation.

    Parameters
    ----------
    plan : Plan
        The rules.
    batchnorm : str
        ``'exact'`` or ``'innvestigate'`` (see :func:`_batchnorm_view`).
    reuse_outputs : bool
        Let rules that divide by a layer's output take it from the forward pass (the fast path,
        default); False makes every rule recompute it (the general path, for comparisons).
    """

    def __init__(self, plan: Plan, batchnorm: str, reuse_outputs: bool = True) -> None:
        self.plan, self.trace = plan, Trace()
        self.names: dict[nn.Module, str] = {}
        kernel_hook = RuleHook(_kernel_view, self._kernel_rule, self.trace, self._kernel_rules,
                               native=reuse_outputs)
        norm_hook = RuleHook(lambda m: _batchnorm_view(m, batchnorm), lambda m: plan.batchnorm, self.trace)
        pool_hook = RuleHook(_pool_view, lambda m: plan.average_pool, self.trace, native=reuse_outputs)
        pass_hook = PassHook(self.trace)

        def module_map(ctx, name, module):
            self.names[module] = name
            if isinstance(module, KERNEL_LAYERS):
                return kernel_hook
            if isinstance(module, NORM_LAYERS):
                return norm_hook if plan.batchnorm is not None else None
            if isinstance(module, AVERAGE_POOLS) and plan.average_pool is not None:
                return pool_hook
            if isinstance(module, ACTIVATIONS) and not plan.deep_taylor:
                return None if _keras_activation_layer(module) else pass_hook
            if isinstance(module, ACTIVATIONS):
                return _TracedGradient(self.trace)
            return None
        super().__init__(module_map=module_map)

    def register(self, module: nn.Module) -> None:
        check_supported(module)
        self.trace.clear()
        super().register(module)
        # every leaf records that it ran (hook-less ones too: max pooling, flatten, dropout)
        for leaf in module.modules():
            if next(leaf.children(), None) is None:
                self.handles.append(leaf.register_forward_hook(self._record))
        guard = OperationGuard(module)
        self.handles.append(guard)
        self.handles.append(module.register_forward_pre_hook(guard.start))
        self.handles.append(module.register_forward_hook(guard.stop, always_call=True))

    def remove(self) -> None:
        super().remove()
        self.trace.pending = None

    def _record(self, module: nn.Module, input, output) -> None:
        self.trace.leaves.append(module)

    def _kernel_rules(self, module: nn.Module) -> tuple:
        """Every rule :meth:`_kernel_rule` may choose for ``module``."""
        plan = self.plan
        return plan.input, plan.last, plan.dense if isinstance(module, nn.Linear) else plan.conv

    def _kernel_rule(self, module: nn.Module) -> Rule:
        plan, kernels = self.plan, self.trace.kernels
        if plan.input is not None and module is kernels[0]:
            return plan.input
        if plan.last is not None and module is kernels[-1]:
            return plan.last
        return plan.dense if isinstance(module, nn.Linear) else plan.conv


class _TracedGradient(Hook):
    """Deep Taylor's activation mapping: an activation fused into the conv/dense layer it directly
    follows (Dropout/Identity in between are no layers in the Keras twin) has no mapping of its
    own, so relevance passes; any other one (e.g. a ReLU after BatchNorm or pooling, a Keras
    ``Activation`` layer) takes its gradient."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def copy(self) -> "_TracedGradient":
        return _TracedGradient(self.trace)

    def backward(self, module, grad_input, grad_output):
        if _keras_activation_layer(module):
            return None
        leaves = self.trace.leaves
        position = leaves.index(module) - 1
        while position >= 0 and isinstance(leaves[position], _NO_KERAS_LAYER):
            position -= 1
        if position >= 0 and isinstance(leaves[position], KERNEL_LAYERS):
            return grad_output
        return None


SUPPORTED_LEAVES = KERNEL_LAYERS + NORM_LAYERS + AVERAGE_POOLS + ACTIVATIONS + PASS_THROUGH


def check_supported(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` naming the first leaf module LRP has no rule for."""
    for name, module in model.named_modules():
        if next(module.children(), None) is None and not isinstance(module, SUPPORTED_LEAVES):
            if name == "" and not list(module.parameters(recurse=False)):
                continue
            raise UnsupportedLayerError(
                f"LRP has no rule for layer {type(module).__name__} at '{name or '<model>'}'; "
                f"supported: {', '.join(sorted({t.__name__ for t in SUPPORTED_LEAVES}))}")
        if isinstance(module, KERNEL_LAYERS[1:]) and module.groups != 1:
            raise UnsupportedLayerError(f"LRP supports convolutions with groups=1 only; "
                                        f"{type(module).__name__} at '{name}' has groups={module.groups}")


class OperationGuard(TorchFunctionMode):
    """During the explained forward pass, reject tensor operations done outside any leaf module
    (residual sums, concatenations, functional activations): LRP would pass them silently.

    Only reshaping functions (flatten, view, reshape, ...) are allowed between modules.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.depth = 0
        self.current = ""
        self.handles = []
        for name, module in model.named_modules():
            # a model that is itself a leaf (a bare nn.Linear) runs its own operation inside itself
            if next(module.children(), None) is None:
                self.handles.append(module.register_forward_pre_hook(self._enter, prepend=True))
                self.handles.append(module.register_forward_hook(self._exit, always_call=True))
        self.names = {module: name for name, module in model.named_modules()}

    def _enter(self, module, args):
        self.depth += 1

    def _exit(self, module, args, output):
        self.depth -= 1
        self.current = self.names.get(module, "")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and func not in _SHAPE_FUNCTIONS:
            after = f" after '{self.current}'" if self.current else ""
            raise UnsupportedLayerError(
                f"LRP cannot explain the operation {getattr(func, '__qualname__', func)}{after} in the "
                f"model's forward: it runs outside any module, so no rule applies (wrap it in a module "
                f"such as nn.ReLU, or restructure the model as a chain of supported layers)")
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
