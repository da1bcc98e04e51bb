"""A Zennit composite built from a method spec.

Each layer gets a Zennit hook; which rule a conv/dense layer uses is decided when relevance
reaches it, from the order in which layers actually ran (so "the input layer" is the first
conv/dense layer the input reaches, not the first one registered: METHODS.md trap 4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from zennit.core import Composite, Hook
from zennit.rules import Pass

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


def _kernel_view(module: nn.Module) -> Affine:
    if isinstance(module, nn.Linear):
        return Affine(module.weight, module.bias, torch.nn.functional.linear)
    return Affine(module.weight, module.bias, module._conv_forward)


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
    return Affine(scale.detach(), shift.detach(), apply)


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


class RuleHook(Hook):
    """A Zennit hook that maps a layer's output relevance to its input with a :class:`Rule`,
    choosing the rule at backward time (input / last / hidden layer, from the trace)."""

    def __init__(self, view: Callable[[nn.Module], Affine], choose: Callable[[nn.Module], Rule],
                 trace: Trace) -> None:
        super().__init__()
        self.view, self.choose, self.trace = view, choose, trace

    def copy(self) -> "RuleHook":
        return RuleHook(self.view, self.choose, self.trace)

    def forward(self, module, input, output):
        self.stored_tensors["input"] = input
        if isinstance(module, KERNEL_LAYERS):
            self.trace.kernels.append(module)

    def backward(self, module, grad_input, grad_output):
        x = self.stored_tensors["input"][0]
        return (self.choose(module).relevance(self.view(module), x, grad_output[0]),)


class TracedPass(Pass):
    """Zennit's pass-through rule (relevance crosses activations unchanged, as in iNNvestigate)."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def copy(self) -> "TracedPass":
        return TracedPass(self.trace)


class LRPComposite(Composite):
    """The Zennit composite of one LRP explanation.

    Parameters
    ----------
    plan : Plan
        The rules.
    batchnorm : str
        ``'exact'`` or ``'innvestigate'`` (see :func:`_batchnorm_view`).
    """

    def __init__(self, plan: Plan, batchnorm: str) -> None:
        self.plan, self.trace = plan, Trace()
        self.names: dict[nn.Module, str] = {}
        kernel_hook = RuleHook(_kernel_view, self._kernel_rule, self.trace)
        norm_hook = RuleHook(lambda m: _batchnorm_view(m, batchnorm), lambda m: plan.batchnorm, self.trace)
        pool_hook = RuleHook(_pool_view, lambda m: plan.average_pool, self.trace)
        pass_hook = TracedPass(self.trace)

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
        self.trace.kernels.clear()
        self.trace.leaves.clear()
        super().register(module)
        # every leaf records that it ran (hook-less ones too: max pooling, flatten, dropout)
        for leaf in module.modules():
            if next(leaf.children(), None) is None:
                self.handles.append(leaf.register_forward_hook(self._record))
        guard = OperationGuard(module)
        self.handles.append(guard)
        self.handles.append(module.register_forward_pre_hook(guard.start))
        self.handles.append(module.register_forward_hook(guard.stop, always_call=True))

    def _record(self, module: nn.Module, input, output) -> None:
        self.trace.leaves.append(module)

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
