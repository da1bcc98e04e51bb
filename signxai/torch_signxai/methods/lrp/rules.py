"""LRP rules with iNNvestigate 2.1.2's numerics, as small data objects.

A rule maps the relevance ``r`` at a layer's output back to its input ``x``, given an
:class:`Affine` view of the layer (a conv, a dense layer, or BatchNorm's elementwise affine map).
Every rule writes the layer as ``z = W x + b`` and uses only two operations on it: the forward
``layer(x, weights=..., bias=...)`` with modified parameters and the transpose
``layer.transpose(v, weights=...)`` (``W'^T v``: the layer's own adjoint where the view has one,
e.g. the input gradient of a convolution, else by autograd). Rules whose denominator is the
layer's own output (:attr:`Rule.reuses_output`) accept it as ``z=`` instead of recomputing it
(the composite hands over the output of the forward pass). Where iNNvestigate divides, it
uses its safe divide, which only replaces exact zeros in the denominator (by 1e-7); Zennit's
``+-1e-6`` stabiliser is not used: visible where activations are small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

__all__ = [
    "Affine",
    "safe_divide",
    "ZRule",
    "EpsilonRule",
    "StdxEpsilonRule",
    "AlphaBetaRule",
    "AlphaBetaX2m100Rule",
    "GammaRule",
    "WSquareRule",
    "FlatRule",
    "ZBoxRule",
    "SignRule",
    "Rule",
]

#: iNNvestigate's safe-divide constant (Keras' epsilon)
SAFE_EPSILON = 1e-7

Modifier = Callable[[torch.Tensor], torch.Tensor]


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _positive(t: torch.Tensor) -> torch.Tensor:
    """``t * (t > 0)`` in one pass (equal up to the sign of zeros, which no rule can see: a zero
    in a sum or a product with a finite value gives the same value, and safe divides treat
    -0 and +0 alike)."""
    return t.clamp(min=0)


def _negative(t: torch.Tensor) -> torch.Tensor:
    """``t * (t < 0)`` in one pass (see :func:`_positive`)."""
    return t.clamp(max=0)


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` with exact zeros of ``b`` replaced by 1e-7 (iNNvestigate's ``safe_divide``,
    ``b + (b == 0) * 1e-7``: where ``b`` is zero that sum is 1e-7 itself, elsewhere ``b``)."""
    # the Python float takes b's dtype: in float32 it is 1e-7 rounded to float32
    # (1.0000000116860974e-07), in float64 the 1e-7 of a float64 model
    return _divide_into(a, torch.where(b == 0, SAFE_EPSILON, b))


def _divide_into(a: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """``a / fresh``, written into ``fresh`` (a temporary of nobody else's) when it has the
    result's shape and dtype: one activation-sized buffer fewer at the peak of the backward
    pass, and no new allocation."""
    recording = torch.is_grad_enabled() and (a.requires_grad or fresh.requires_grad)
    if fresh.shape == a.shape and fresh.dtype == a.dtype and not recording:
        return torch.div(a, fresh, out=fresh)
    return a / fresh


def _times(a: torch.Tensor, layer: Affine, g: torch.Tensor) -> torch.Tensor:
    """``a * g`` for a transpose ``g`` of ``layer``: in place on ``g`` when the layer's adjoint
    made it (a fresh tensor of nobody else's; an autograd gradient may alias its seed)."""
    return g.mul_(a) if layer.adjoint is not None and g.shape == a.shape else a * g


def _signed_stabilise(z: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``z + epsilon * (+1 if z >= 0 else -1)`` (iNNvestigate's epsilon rule), as the signed
    epsilon plus ``z``, added in place into a fresh tensor: the same values (a product with +-1
    and a negation are exact, a sum does not depend on its order) in three passes over ``z``
    instead of four, and one allocation instead of three. ``epsilon`` takes ``z``'s dtype, as a
    Python number added to ``z`` does."""
    e = torch.as_tensor(epsilon, dtype=z.dtype, device=z.device)
    return torch.where(z >= 0, e, -e).add_(z)


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
    bias: torch.Tensor | None
    apply: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    #: ``adjoint(v, like, weight)``: ``weight^T v`` shaped like the input ``like``, without a
    #: forward pass (e.g. a convolution's input gradient); None: by autograd through ``apply``
    adjoint: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    #: axis of the output along which the bias runs (1 for conv/BatchNorm, -1 for dense), or
    #: None when unknown (see :meth:`offset`)
    channel_axis: int | None = None
    #: for a dense layer (``apply`` is ``linear``): :meth:`with_weights` modifies the weight in
    #: blocks of this many output rows as they are used, so that no modified copy of a large
    #: weight exists whole; None: modify the whole weight at once
    row_block: int | None = None
    #: zero padding (per spatial axis, both sides) that the layer's input gets in a layer of its
    #: own before this map (a convolution whose padding Keras spells as a ``ZeroPadding`` layer,
    #: see :mod:`.padding`): the rule runs on :meth:`pad` of the input, its result is
    #: :meth:`crop`-ped; None: the map takes the input as it is
    padding: tuple[int, ...] | None = None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with :attr:`padding` zeros on both sides of each spatial axis."""
        assert self.padding is not None
        widths = [p for pad in reversed(self.padding) for p in (pad, pad)]
        return torch.nn.functional.pad(x, widths)

    def crop(self, r: torch.Tensor) -> torch.Tensor:
        """Relevance at the padded input cut back to the input (the padding layer's gradient)."""
        assert self.padding is not None
        index = (slice(None), slice(None)) + tuple(slice(p, r.shape[2 + i] - p) for i, p in enumerate(self.padding))
        return r[index]

    def __call__(self, x: torch.Tensor, weights: Modifier = _keep, bias: bool = True) -> torch.Tensor:
        """The layer at ``x`` with ``weights`` applied to its weight and (if ``bias``) its bias."""
        b = weights(self.bias) if bias and self.bias is not None else None
        return self.apply(x, weights(self.weight), b)

    def offset(self, weights: Modifier, out: torch.Tensor) -> torch.Tensor | None:
        """``weights(b)`` shaped to broadcast against an output ``out``: the layer at an all-zero
        input (``layer(0, weights)``, exactly, since every product with a zero is zero); None
        without a bias or a known :attr:`channel_axis`."""
        if self.bias is None or self.channel_axis is None:
            return None
        shape = [1] * out.ndim
        shape[self.channel_axis] = -1
        return weights(self.bias).reshape(shape)

    def with_weights(self, weights: Modifier) -> Affine | _RowBlocks:
        """The layer with ``weights`` applied once to its weight and bias (for rules that use a
        modified layer more than once); block by block for a dense layer with :attr:`row_block`."""
        if self.row_block is not None and self.weight.shape[0] > self.row_block:
            return _RowBlocks(self, weights)
        bias = None if self.bias is None else weights(self.bias)
        return Affine(weights(self.weight), bias, self.apply, self.adjoint, self.channel_axis)

    def transpose(self, v: torch.Tensor, like: torch.Tensor, weights: Modifier = _keep) -> torch.Tensor:
        """``W'^T v`` for the modified weight ``W' = weights(W)``, shaped like the input ``like``."""
        if self.adjoint is not None:
            return self.adjoint(v, like, weights(self.weight))
        probe = torch.zeros_like(like).requires_grad_(True)
        with torch.enable_grad():
            out = self.apply(probe, weights(self.weight), None)
            (grad,) = torch.autograd.grad(out, probe, grad_outputs=v)
        return grad


class _RowBlocks:
    """A dense layer whose weight and bias are modified by ``weights`` (see
    :meth:`Affine.with_weights`), the weight one block of output rows at a time: the forward
    fills the output block by block, the transpose sums the blocks' ``W_block'^T v_block``
    (the same sum as one product, in another order)."""

    def __init__(self, layer: Affine, weights: Modifier) -> None:
        self.layer, self.weights = layer, weights
        self.bias = None if layer.bias is None else weights(layer.bias)

    def _blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        weight, step = self.layer.weight, self.layer.row_block
        assert step is not None  # only layers with a row block are split
        for start in range(0, weight.shape[0], step):
            yield start, min(start + step, weight.shape[0]), self.weights(weight[start : start + step])

    def __call__(self, x: torch.Tensor, weights: Modifier = _keep, bias: bool = True) -> torch.Tensor:
        """The modified layer at ``x`` (with its bias if ``bias``); ``weights`` must be left out."""
        if weights is not _keep:
            raise ValueError("a layer with modified weights takes no further modifier")
        out = x.new_empty(*x.shape[:-1], self.layer.weight.shape[0])
        for start, stop, block in self._blocks():
            b = self.bias[start:stop] if bias and self.bias is not None else None
            out[..., start:stop] = torch.nn.functional.linear(x, block, b)
        return out

    def transpose(self, v: torch.Tensor, like: torch.Tensor, weights: Modifier = _keep) -> torch.Tensor:
        """``W'^T v`` for the modified weight ``W'``; ``weights`` must be left out."""
        if weights is not _keep:
            raise ValueError("a layer with modified weights takes no further modifier")
        total: torch.Tensor | None = None
        for start, stop, block in self._blocks():
            part = torch.matmul(v[..., start:stop], block)
            total = part if total is None else total.add_(part)
        assert total is not None  # a weight has at least one row
        return total


class Rule:
    """Base of all rules: ``relevance(layer, x, r) -> relevance at x``.

    A rule whose :attr:`reuses_output` is true divides by the layer's own output ``layer(x)``
    (unmodified weights, bias kept) and takes it as ``relevance(layer, x, r, z=...)``; with
    ``z=None`` it computes it. Such a rule needs nothing but that output and the layer's
    transpose, which is what makes the composite's fast path possible.
    """

    @property
    def reuses_output(self) -> bool:
        """Whether :meth:`relevance` divides by ``layer(x)`` and accepts it as ``z``."""
        return False

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x``.

        ``z``: the layer's output ``layer(x)`` when known (for rules that :attr:`reuse
        <reuses_output>` it). ``cut``: ``z`` is the output's ReLU instead, standing in for it:
        equal where positive; where zero, ``r`` is zero, so any denominator that is not zero
        there gives the same (zero) share; a rule whose denominator could be zero there must
        compute the output itself."""
        raise NotImplementedError


@dataclass(frozen=True)
class ZRule(Rule):
    """LRP-0: ``R_i = x_i sum_j w_ij R_j / z_j`` with ``z = W x + b``; the bias is a constant
    input when ``bias``, else dropped (``z = W x``: iNNvestigate's ``bias=False``). With
    ``positive`` the weights (and bias) are their positive parts ``W+`` (``b+``); without the bias
    that is iNNvestigate's ``ZPlusFastRule``, ``R_i = x_i sum_j w+_ij R_j / sum_i' w+_i'j x_i'``
    on the inputs as they are, negative ones included."""

    bias: bool = True
    positive: bool = False

    @property
    def reuses_output(self) -> bool:
        """Whether :meth:`relevance` divides by ``layer(x)``: with the bias and all weights."""
        return self.bias and not self.positive

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""
        if self.positive:
            modified = layer.with_weights(_positive)
            return x * modified.transpose(safe_divide(r, modified(x, bias=self.bias)), x)
        if z is None or not self.bias:
            z = layer(x, bias=self.bias)
        return _times(x, layer, layer.transpose(safe_divide(r, z), x))


@dataclass(frozen=True)
class EpsilonRule(Rule):
    """LRP-epsilon: ``R_i = x_i sum_j w_ij R_j / (z_j + epsilon * sign(z_j))``, sign(0) = +1,
    ``z = W x + b`` (``z = W x`` without ``bias``: iNNvestigate's ``bias=False``)."""

    epsilon: float
    bias: bool = True

    @property
    def reuses_output(self) -> bool:
        """Whether :meth:`relevance` divides by ``layer(x)``: with the bias."""
        return self.bias

    def stabiliser(self, x: torch.Tensor) -> float | torch.Tensor:
        """The epsilon added to the denominator at input ``x``: a number, or one per sample."""
        return self.epsilon

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""
        epsilon = self.stabiliser(x)
        if not self.bias:
            z = _signed_stabilise(layer(x, bias=False), epsilon)
        elif cut and z is not None:
            positive = bool((epsilon > 0).all()) if isinstance(epsilon, torch.Tensor) else epsilon > 0
            # a ReLU output has no negative entries (a NaN stays NaN either way): z + epsilon,
            # which is not zero at its zeros if epsilon > 0; else the true output is needed
            z = z + epsilon if positive else _signed_stabilise(layer(x), epsilon)
        else:
            z = _signed_stabilise(layer(x) if z is None else z, epsilon)
        return _times(x, layer, layer.transpose(_divide_into(r, z), x))  # z is a fresh stabilised copy


@dataclass(frozen=True)
class StdxEpsilonRule(EpsilonRule):
    """LRP-epsilon whose epsilon is ``stdfactor`` times the population standard deviation of the
    layer's input, per sample."""

    epsilon: float = field(default=0.0, init=False)
    stdfactor: float = 0.25

    def stabiliser(self, x: torch.Tensor) -> torch.Tensor:
        """``stdfactor`` times each sample's input standard deviation, shaped to broadcast."""
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

    def _half(
        self,
        layer: Affine,
        x_pos: torch.Tensor,
        x_neg: torch.Tensor | None,
        r: torch.Tensor,
        first: Modifier,
        second: Modifier,
        modified: Callable[[Modifier], Affine | _RowBlocks],
    ) -> torch.Tensor:
        if x_neg is None:
            # no negative input (as after a ReLU): the second term is the layer at zero, which is
            # its bias term alone (exactly: every product with a zero is zero), and its relevance
            # is zero
            z = modified(first)(x_pos, bias=self.bias)
            offset = layer.offset(second, z) if self.bias else None  # known whenever x_neg is None
            if offset is not None:
                z = z + offset
            return x_pos * modified(first).transpose(safe_divide(r, z), x_pos)
        z = modified(first)(x_pos, bias=self.bias) + modified(second)(x_neg, bias=self.bias)
        share = safe_divide(r, z)
        return x_pos * modified(first).transpose(share, x_pos) + x_neg * modified(second).transpose(share, x_neg)

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""
        cache: dict[Modifier, Affine | _RowBlocks] = {}

        def modified(weights: Modifier) -> Affine | _RowBlocks:  # W+ and W- computed once per call
            if weights not in cache:
                cache[weights] = layer.with_weights(weights)
            return cache[weights]

        offset_known = not (self.bias and layer.bias is not None) or layer.channel_axis is not None
        if offset_known and not bool((x < 0).any()):
            x_pos, x_neg = x, None  # x * (x > 0) is x itself here
        else:
            x_pos, x_neg = _positive(x), _negative(x)
        activator = self._half(layer, x_pos, x_neg, r, _positive, _negative, modified)
        if not self.beta:
            return activator
        inhibitor = self._half(layer, x_pos, x_neg, r, _negative, _positive, modified)
        return self.alpha * activator - self.beta * inhibitor


@dataclass(frozen=True)
class AlphaBetaX2m100Rule(Rule):
    """iNNvestigate's ``AlphaBetaX2m100Rule`` (its BatchNorm rule in the sequential presets):
    ``2 * x+ W+^T(R / (W+ x+ + b+)) - x+ W-^T(R / (W- x+ + b-))``; inputs below zero get none."""

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""
        x_pos = _positive(x)
        pos, neg = layer.with_weights(_positive), layer.with_weights(_negative)
        act = x_pos * pos.transpose(safe_divide(r, pos(x_pos)), x)
        inh = x_pos * neg.transpose(safe_divide(r, neg(x_pos)), x)
        return 2 * act - inh


@dataclass(frozen=True)
class GammaRule(Rule):
    """LRP-gamma: the Z rule on ``W + gamma * W+`` (bias ``b + gamma * b+``)."""

    gamma: float = 0.5

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""

        def weights(t: torch.Tensor) -> torch.Tensor:
            return t + self.gamma * _positive(t)

        modified = layer.with_weights(weights)
        return x * modified.transpose(safe_divide(r, modified(x)), x)


@dataclass(frozen=True)
class WSquareRule(Rule):
    """W-square (Deep Taylor): ``R_i = sum_j w_ij^2 R_j / sum_i' w_i'j^2``; the bias is dropped."""

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """The modified weights: ``t**2``."""
        return t**2

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""
        modified = layer.with_weights(self.weights)
        z = modified(torch.ones_like(x), bias=False)
        return modified.transpose(safe_divide(r, z), x)


@dataclass(frozen=True)
class FlatRule(WSquareRule):
    """Flat: W-square with every weight set to one."""

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """The modified weights: all ones."""
        return torch.ones_like(t)


@dataclass(frozen=True)
class ZBoxRule(Rule):
    """Z-box (bounded) rule for inputs in ``[low, high]``; the bias is dropped."""

    low: float
    high: float

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""
        low, high = torch.full_like(x, self.low), torch.full_like(x, self.high)
        pos, neg = layer.with_weights(_positive), layer.with_weights(_negative)
        z = layer(x, bias=False) - pos(low, bias=False) - neg(high, bias=False)
        share = safe_divide(r, z)
        return x * layer.transpose(share, x) - low * pos.transpose(share, x) - high * neg.transpose(share, x)


@dataclass(frozen=True)
class SignRule(Rule):
    """SIGN input rule: ``R_i = s_mu(x_i) sum_j w_ij R_j / z_j``, z with the bias, no epsilon,
    ``s_mu(v) = +1 if v >= mu else -1``."""

    mu: float = 0.0

    @property
    def reuses_output(self) -> bool:
        """Always: the denominator is the layer's output."""
        return True

    def relevance(
        self, layer: Affine, x: torch.Tensor, r: torch.Tensor, z: torch.Tensor | None = None, cut: bool = False
    ) -> torch.Tensor:
        """Relevance at ``x`` (see :meth:`Rule.relevance`)."""
        sign = torch.where(x >= self.mu, 1.0, -1.0).to(x.dtype)
        return _times(sign, layer, layer.transpose(safe_divide(r, layer(x) if z is None else z), x))
