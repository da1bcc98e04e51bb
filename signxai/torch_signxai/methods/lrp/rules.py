"""LRP rules with iNNvestigate 2.1.2's numerics, as small data objects.

A rule maps the relevance ``r`` at a layer's output back to its input ``x``, given an
:class:`Affine` view of the layer (a conv, a dense layer, or BatchNorm's elementwise affine map).
Every rule writes the layer as ``z = W x + b`` and uses only two operations on it: the forward
``layer(x, weights=..., bias=...)`` with modified parameters and the transpose
``layer.transpose(v, weights=...)`` (``W'^T v``, by autograd). Where iNNvestigate divides, it
uses its safe divide, which only replaces exact zeros in the denominator (by 1e-7); Zennit's
``+-1e-6`` stabiliser is not used (METHODS.md traps 3, 5, 7).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

__all__ = ["Affine", "safe_divide", "ZRule", "EpsilonRule", "StdxEpsilonRule", "AlphaBetaRule",
           "AlphaBetaX2m100Rule", "GammaRule", "WSquareRule", "FlatRule", "ZBoxRule", "SignRule",
           "BatchNormReverseRule", "Rule"]

#: iNNvestigate's safe-divide constant (Keras' epsilon)
SAFE_EPSILON = 1e-7

Modifier = Callable[[torch.Tensor], torch.Tensor]


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _positive(t: torch.Tensor) -> torch.Tensor:
    return t * (t > 0)


def _negative(t: torch.Tensor) -> torch.Tensor:
    return t * (t < 0)


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` with exact zeros of ``b`` replaced by 1e-7 (iNNvestigate's ``safe_divide``)."""
    # the mask in b's dtype first: a Python float times a bool tensor is float32, and 1e-7 rounded
    # to float32 is 1.0000000116860974e-07, not the 1e-7 of a float64 model
    return a / (b + (b == 0).to(b.dtype) * SAFE_EPSILON)


def _signed_stabilise(z: torch.Tensor, epsilon) -> torch.Tensor:
    """``z + epsilon * (+1 if z >= 0 else -1)`` (iNNvestigate's epsilon rule)."""
    return z + torch.where(z >= 0, 1.0, -1.0).to(z.dtype) * epsilon


@dataclass(frozen=True)
class Affine:
    """A layer seen as the affine map ``z = W x + b``.

    Attributes
    ----------
    weight : torch.Tensor
        The layer's weight (for BatchNorm: the per-channel scale).
    bias : torch.Tensor or None
        The layer's bias (for BatchNorm: the per-channel shift).
    apply : callable
        ``apply(x, weight, bias)``: the layer's linear map with the given parameters.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    apply: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

    def __call__(self, x: torch.Tensor, weights: Modifier = _keep, bias: bool = True) -> torch.Tensor:
        """The layer at ``x`` with ``weights`` applied to its weight and (if ``bias``) its bias."""
        b = weights(self.bias) if bias and self.bias is not None else None
        return self.apply(x, weights(self.weight), b)

    def transpose(self, v: torch.Tensor, like: torch.Tensor, weights: Modifier = _keep) -> torch.Tensor:
        """``W'^T v`` for the modified weight ``W' = weights(W)``, shaped like the input ``like``."""
        probe = torch.zeros_like(like).requires_grad_(True)
        with torch.enable_grad():
            out = self.apply(probe, weights(self.weight), None)
            (grad,) = torch.autograd.grad(out, probe, grad_outputs=v)
        return grad


class Rule:
    """Base of all rules: ``relevance(layer, x, r) -> relevance at x``."""

    def relevance(self, layer: Affine, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ZRule(Rule):
    """LRP-0 with the bias as a constant input: ``R_i = x_i sum_j w_ij R_j / z_j``."""

    bias: bool = True

    def relevance(self, layer, x, r):
        return x * layer.transpose(safe_divide(r, layer(x, bias=self.bias)), x)


@dataclass(frozen=True)
class EpsilonRule(Rule):
    """LRP-epsilon: ``R_i = x_i sum_j w_ij R_j / (z_j + epsilon * sign(z_j))``, sign(0) = +1."""

    epsilon: float

    def stabiliser(self, x: torch.Tensor):
        return self.epsilon

    def relevance(self, layer, x, r):
        z = _signed_stabilise(layer(x), self.stabiliser(x))
        return x * layer.transpose(r / z, x)


@dataclass(frozen=True)
class StdxEpsilonRule(EpsilonRule):
    """LRP-epsilon whose epsilon is ``stdfactor`` times the population standard deviation of the
    layer's input, per sample."""

    epsilon: float = field(default=0.0, init=False)
    stdfactor: float = 0.25

    def stabiliser(self, x):
        std = x.flatten(1).std(dim=1, unbiased=False) * self.stdfactor
        return std.view(-1, *[1] * (x.ndim - 1))


@dataclass(frozen=True)
class AlphaBetaRule(Rule):
    """iNNvestigate's alpha-beta rule. The positive half ``W+ x+ + W- x-`` and the negative half
    ``W- x+ + W+ x-`` each get the full bias (``b+ + b-``) in their denominator when ``bias``;
    relevance is ``alpha * R_act - beta * R_inh``."""

    alpha: float = 1.0
    beta: float = 0.0
    bias: bool = True

    def _half(self, layer, x_pos, x_neg, r, first: Modifier, second: Modifier) -> torch.Tensor:
        z = layer(x_pos, first, self.bias) + layer(x_neg, second, self.bias)
        share = safe_divide(r, z)
        return x_pos * layer.transpose(share, x_pos, first) + x_neg * layer.transpose(share, x_neg, second)

    def relevance(self, layer, x, r):
        x_pos, x_neg = _positive(x), _negative(x)
        activator = self._half(layer, x_pos, x_neg, r, _positive, _negative)
        if not self.beta:
            return activator
        inhibitor = self._half(layer, x_pos, x_neg, r, _negative, _positive)
        return self.alpha * activator - self.beta * inhibitor


@dataclass(frozen=True)
class AlphaBetaX2m100Rule(Rule):
    """iNNvestigate's ``AlphaBetaX2m100Rule`` (its BatchNorm rule in the sequential presets):
    ``2 * x+ W+^T(R / (W+ x+ + b+)) - x+ W-^T(R / (W- x+ + b-))``; inputs below zero get none."""

    def relevance(self, layer, x, r):
        x_pos = _positive(x)
        act = x_pos * layer.transpose(safe_divide(r, layer(x_pos, _positive)), x, _positive)
        inh = x_pos * layer.transpose(safe_divide(r, layer(x_pos, _negative)), x, _negative)
        return 2 * act - inh


@dataclass(frozen=True)
class GammaRule(Rule):
    """LRP-gamma: the Z rule on ``W + gamma * W+`` (bias ``b + gamma * b+``)."""

    gamma: float = 0.5

    def relevance(self, layer, x, r):
        def weights(t):
            return t + self.gamma * _positive(t)
        return x * layer.transpose(safe_divide(r, layer(x, weights)), x, weights)


@dataclass(frozen=True)
class WSquareRule(Rule):
    """W-square (Deep Taylor): ``R_i = sum_j w_ij^2 R_j / sum_i' w_i'j^2``; the bias is dropped."""

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        return t ** 2

    def relevance(self, layer, x, r):
        z = layer(torch.ones_like(x), self.weights, bias=False)
        return layer.transpose(safe_divide(r, z), x, self.weights)


@dataclass(frozen=True)
class FlatRule(WSquareRule):
    """Flat: W-square with every weight set to one."""

    def weights(self, t):
        return torch.ones_like(t)


@dataclass(frozen=True)
class ZBoxRule(Rule):
    """Z-box (bounded) rule for inputs in ``[low, high]``; the bias is dropped."""

    low: float
    high: float

    def relevance(self, layer, x, r):
        low, high = torch.full_like(x, self.low), torch.full_like(x, self.high)
        z = layer(x, bias=False) - layer(low, _positive, False) - layer(high, _negative, False)
        share = safe_divide(r, z)
        return (x * layer.transpose(share, x) - low * layer.transpose(share, x, _positive)
                - high * layer.transpose(share, x, _negative))


@dataclass(frozen=True)
class SignRule(Rule):
    """SIGN input rule: ``R_i = s_mu(x_i) sum_j w_ij R_j / z_j``, z with the bias, no epsilon,
    ``s_mu(v) = +1 if v >= mu else -1``."""

    mu: float = 0.0

    def relevance(self, layer, x, r):
        sign = torch.where(x >= self.mu, 1.0, -1.0).to(x.dtype)
        return sign * layer.transpose(safe_divide(r, layer(x)), x)


@dataclass(frozen=True)
class BatchNormReverseRule:
    """iNNvestigate's ``BatchNormalizationReverseLayer`` (its BN handling for analyzers without a
    BN rule): ``R_in = x (y - beta) R / ((x - mean) y)``, the denominator epsilon-signed by 1e-7
    and then safe-divided."""

    def relevance_bn(self, x, y, r, mean, beta) -> torch.Tensor:
        denominator = _signed_stabilise((x - mean) * y, SAFE_EPSILON)
        return safe_divide(x * (y - beta) * r, denominator)
