"""LRP rules against an independent numpy reference written from iNNvestigate 2.1.2's formulas.

Every layer of the reference is an explicit matrix: a dense layer is ``z = W x + b``, a convolution
is its unfolded (im2col) matrix built here index by index, BatchNorm is a diagonal matrix, pooling a
fixed averaging or routing matrix. The rules are then the textbook matrix formulas (see
``METHODS.md`` and iNNvestigate's ``relevance_rule.py``), with iNNvestigate's safe divide (exact
zeros of the denominator become 1e-7, nothing else changes). No value here comes from the library.

This module tests the rule classes of :mod:`signxai.torch_signxai.methods.lrp.rules` on single
dense and conv layers (through :class:`Affine` views, with random relevance on every output unit),
and every rule end to end through the TF-compatible API on 1- and 2-layer models, where relevance
starts at the selected logit's value. ``tests/test_lrp.py`` reuses the reference for whole models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from signxai.torch_signxai.layers import (
    SAME_POOLS,
    AvgPool1dSame,
    AvgPool2dSame,
    Conv1dSame,
    Conv2dSame,
    MaxPool1dSame,
    MaxPool2dSame,
)
from signxai.torch_signxai.methods.lrp.rules import (
    Affine,
    AlphaBetaRule,
    AlphaBetaX2m100Rule,
    EpsilonRule,
    FlatRule,
    GammaRule,
    SignRule,
    StdxEpsilonRule,
    WSquareRule,
    ZBoxRule,
    ZRule,
)
from signxai.torch_signxai.methods.wrappers import calculate_relevancemap

RTOL = 1e-10
SAFE_EPSILON = 1e-7


def assert_close(actual, expected, rtol: float = RTOL, nan_where_expected: bool = False) -> None:
    """Relative agreement, the absolute floor scaled to the expected map's size (float64 rounding).

    Non-finite relevance fails, unless ``nan_where_expected``: then NaN is allowed where the
    reference has NaN too (0/0 in iNNvestigate's plain epsilon division, e.g. std_x of an all-zero
    layer input), and only there. The reference may have NaN in more places: its dense matrices
    multiply NaN by the zeros of unconnected entries, which a convolution or pooling never does."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if nan_where_expected:
        assert not np.any(np.isnan(actual) & ~np.isnan(expected)), "NaN where the reference is finite"
        keep = ~np.isnan(expected)
        actual, expected = actual[keep], expected[keep]
    assert np.all(np.isfinite(actual)), "non-finite relevance"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# =============================================================================================
# The numpy reference
# =============================================================================================


def safe(z: np.ndarray) -> np.ndarray:
    """iNNvestigate's safe divide denominator: only exact zeros are replaced (by 1e-7)."""
    return z + SAFE_EPSILON * (z == 0)


def sign(v: np.ndarray, mu: float = 0.0) -> np.ndarray:
    """s_mu(v) = +1 if v >= mu else -1 (so s(0) = +1)."""
    return np.where(v >= mu, 1.0, -1.0)


def pos(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a, 0.0)


def neg(a: np.ndarray) -> np.ndarray:
    return np.where(a < 0, a, 0.0)


@dataclass
class Linear:
    """A layer as ``z = M x + b`` on flat vectors; ``mask`` marks the connections that exist (the
    Flat rule's matrix). ``kind`` is 'dense', 'conv' or 'bn'."""

    M: np.ndarray
    b: np.ndarray
    mask: np.ndarray
    kind: str

    def modified(self, f: Callable[[np.ndarray], np.ndarray]) -> Linear:
        """The layer with ``f`` applied to every parameter (entries that are no connection stay 0)."""
        return Linear(np.where(self.mask, f(self.M), 0.0), f(self.b), self.mask, self.kind)


# --- rules: (layer, x, R) -> R_in, one sample, flat vectors ---------------------------------


def rule_z(bias: bool = True):
    def rule(L, x, R):
        z = L.M @ x + (L.b if bias else 0.0)
        return x * (L.M.T @ (R / safe(z)))

    return rule


def rule_epsilon(eps: float, bias: bool = True):
    def rule(L, x, R):
        z = L.M @ x + (L.b if bias else 0.0)
        return x * (L.M.T @ (R / (z + eps * sign(z))))

    return rule


def rule_std_x(factor: float, bias: bool = True):
    """Epsilon = factor * population std (ddof 0) of this layer's input, this sample."""

    def rule(L, x, R):
        return rule_epsilon(factor * float(np.sqrt(np.mean((x - x.mean()) ** 2))), bias)(L, x, R)

    return rule


def rule_z_plus_fast(L, x, R):
    """iNNvestigate's ZPlusFastRule: x * W+^T (R / W+ x), no bias, x as it is (negatives too)."""
    Mp = pos(L.M)
    return x * (Mp.T @ (R / safe(Mp @ x)))


def rule_alpha_beta(alpha: float, beta: float, bias: bool = True):
    """Activator: W+ x+ + W- x- (+ b); inhibitor: W- x+ + W+ x- (+ b); alpha * act - beta * inh."""

    def rule(L, x, R):
        xp, xn = pos(x), neg(x)
        Mp, Mn = pos(L.M), neg(L.M)
        b = L.b if bias else 0.0
        s = R / safe(Mp @ xp + Mn @ xn + b)
        activator = xp * (Mp.T @ s) + xn * (Mn.T @ s)
        if beta == 0:
            return activator
        s = R / safe(Mn @ xp + Mp @ xn + b)
        inhibitor = xp * (Mn.T @ s) + xn * (Mp.T @ s)
        return alpha * activator - beta * inhibitor

    return rule


def rule_x2m100(L, x, R):
    """iNNvestigate's AlphaBetaX2m100Rule: 2 x+ W+^T R/(W+ x+ + b+) - x+ W-^T R/(W- x+ + b-)."""
    xp = pos(x)
    Mp, Mn = pos(L.M), neg(L.M)
    act = xp * (Mp.T @ (R / safe(Mp @ xp + pos(L.b))))
    inh = xp * (Mn.T @ (R / safe(Mn @ xp + neg(L.b))))
    return 2 * act - inh


def rule_gamma(gamma: float):
    def rule(L, x, R):
        G = L.modified(lambda a: a + gamma * pos(a))
        return x * (G.M.T @ (R / safe(G.M @ x + G.b)))

    return rule


def _weights_only(matrix_of: Callable[[Linear], np.ndarray]):
    def rule(L, x, R):
        V = matrix_of(L)
        z = V @ np.ones_like(x)
        return V.T @ (R / safe(z))

    return rule


rule_w_square = _weights_only(lambda L: L.M**2)
rule_flat = _weights_only(lambda L: L.mask.astype(np.float64))


def rule_zbox(low: float, high: float):
    def rule(L, x, R):
        lo, hi = np.full_like(x, low), np.full_like(x, high)
        Mp, Mn = pos(L.M), neg(L.M)
        s = R / safe(L.M @ x - Mp @ lo - Mn @ hi)
        return x * (L.M.T @ s) - lo * (Mp.T @ s) - hi * (Mn.T @ s)

    return rule


def rule_sign(mu: float = 0.0):
    def rule(L, x, R):
        return sign(x, mu) * (L.M.T @ (R / safe(L.M @ x + L.b)))

    return rule


rule_z_plus = rule_alpha_beta(1.0, 0.0, bias=False)


# --- layers of a model as numpy objects ------------------------------------------------------


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


@cache
def conv_index(
    in_shape: tuple, kernel_shape: tuple, stride: tuple, padding: tuple, dilation: tuple
) -> tuple[np.ndarray, tuple]:
    """``idx[o, i]``: flat index into the kernel (C_out, C_in, *k) of the weight joining output o
    to input i, or -1 where they are not connected (zero padding is simply no connection)."""
    c_in, *size = in_shape
    c_out, c_in_k, *k = kernel_shape
    assert c_in == c_in_k
    nd = len(size)
    out = [(size[d] + 2 * padding[d] - dilation[d] * (k[d] - 1) - 1) // stride[d] + 1 for d in range(nd)]
    idx = -np.ones((c_out * math.prod(out), c_in * math.prod(size)), dtype=np.int64)
    for o in range(c_out):
        for where in itertools.product(*map(range, out)):
            row = np.ravel_multi_index((o, *where), (c_out, *out))
            for c in range(c_in):
                for off in itertools.product(*map(range, k)):
                    src = [where[d] * stride[d] - padding[d] + off[d] * dilation[d] for d in range(nd)]
                    if all(0 <= src[d] < size[d] for d in range(nd)):
                        col = np.ravel_multi_index((c, *src), (c_in, *size))
                        assert idx[row, col] < 0, "two kernel entries on one connection"
                        idx[row, col] = np.ravel_multi_index((o, c, *off), (c_out, c_in, *k))
    return idx, (c_out, *out)


def conv_linear(
    kernel: np.ndarray, bias: np.ndarray | None, in_shape, stride, padding, dilation
) -> tuple[Linear, tuple]:
    """A convolution (zero padding, groups 1) as its unfolded matrix."""
    nd = kernel.ndim - 2
    idx, out_shape = conv_index(
        tuple(in_shape), kernel.shape, _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd)
    )
    mask = idx >= 0
    M = np.where(mask, kernel.ravel()[np.where(mask, idx, 0)], 0.0)
    b = np.repeat(bias if bias is not None else np.zeros(kernel.shape[0]), math.prod(out_shape[1:]))
    return Linear(M, b, mask, "conv"), out_shape


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().double().numpy().copy()


def _windows(in_shape, kernel, stride, same: bool = False) -> tuple[list[np.ndarray], tuple]:
    """Input flat indices of each pooling window (row-major inside the window): no padding, or
    TF's 'same' windows (``ceil(n / s)`` of them, starting ``before`` entries early), which hold
    their real entries only."""
    c, *size = in_shape
    nd = len(size)
    kernel, stride = _tuple(kernel, nd), _tuple(stride if stride is not None else kernel, nd)
    if same:
        out = [-(-size[d] // stride[d]) for d in range(nd)]
        before = [tf_same_pads(size[d], kernel[d], stride[d])[0] for d in range(nd)]
    else:
        out, before = [(size[d] - kernel[d]) // stride[d] + 1 for d in range(nd)], [0] * nd
    windows = []
    for ch in range(c):
        for where in itertools.product(*map(range, out)):
            cells = []
            for off in itertools.product(*map(range, kernel)):
                at = [where[d] * stride[d] - before[d] + off[d] for d in range(nd)]
                if all(0 <= at[d] < size[d] for d in range(nd)):
                    cells.append(np.ravel_multi_index((ch, *at), (c, *size)))
            windows.append(np.array(cells))
    return windows, (c, *out)


def keras_pads_explicitly(size, kernel, stride, padding, dilation) -> bool:
    """Whether a Keras model spells this convolution's symmetric zero padding as a ZeroPadding
    layer in front of a 'valid' convolution: where TF's 'same' (total padding
    ``max((ceil(n / s) - 1) * s + k - n, 0)``, the smaller half in front) does not give PyTorch's
    windows on some axis."""
    nd = len(size)
    for n, k, s, p, d in zip(
        size, _tuple(kernel, nd), _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd), strict=True
    ):
        if p and ((n + 2 * p - d * (k - 1) - 1) // s + 1 != -(-n // s) or tf_same_pads(n, k, s, d)[0] != p):
            return True
    return False


def tf_same_pads(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF's 'same' zeros (before, after) on an axis of ``n``: ``max((ceil(n / s) - 1) * s + k - n, 0)``
    in total for the dilated kernel ``k``, the smaller half in front."""
    k = d * (k - 1) + 1
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def zero_pad_matrix(shape: tuple, padding: tuple, after: tuple | None = None) -> tuple[np.ndarray, tuple]:
    """``P`` with ``P @ a`` the flat ``a`` of ``shape`` zero-padded by ``padding`` before each
    spatial axis and ``after`` (default: ``padding``) after it, and the padded shape."""
    c, *size = shape
    after = padding if after is None else after
    padded = (c, *[n + p + q for n, p, q in zip(size, padding, after, strict=True)])
    P = np.zeros((math.prod(padded), math.prod(shape)))
    for where in itertools.product(*map(range, shape)):
        inside = (where[0], *[w + p for w, p in zip(where[1:], padding, strict=True)])
        P[np.ravel_multi_index(inside, padded), np.ravel_multi_index(where, shape)] = 1.0
    return P, padded


@dataclass
class Layer:
    """One step of a numpy model: 'linear' (dense/conv), 'bn', 'relu', 'leaky', 'maxpool',
    'avgpool', 'pad' (a zero padding layer: ``P @ a``, its gradient crops), 'identity'."""

    op: str
    linear: Linear | None = None
    windows: list | None = None
    P: np.ndarray | None = None
    slope: float = 0.0
    bn: dict | None = None
    name: str = ""


def numpy_layers(modules: list[tuple[str, nn.Module]], in_shape: tuple) -> list[Layer]:
    """The numpy counterparts of a chain of leaf modules, in execution order."""
    shape = tuple(in_shape)
    layers = []
    for name, m in modules:
        if isinstance(m, nn.Linear):
            W, b = _numpy(m.weight), _numpy(m.bias)
            assert math.prod(shape) == W.shape[1]
            layers.append(
                Layer(
                    "linear",
                    Linear(W, b if b is not None else np.zeros(W.shape[0]), np.ones_like(W, dtype=bool), "dense"),
                    name=name,
                )
            )
            shape = (W.shape[0],)
        elif isinstance(m, (Conv1dSame, Conv2dSame)):
            # TF's 'same' conv as a matrix of its real input: the padded zeros are no inputs
            pads = [tf_same_pads(*axis) for axis in zip(shape[1:], m.kernel_size, m.stride, m.dilation, strict=True)]
            P, padded = zero_pad_matrix(shape, *zip(*pads, strict=True))
            L, shape = conv_linear(_numpy(m.weight), _numpy(m.bias), padded, m.stride, 0, m.dilation)
            layers.append(Layer("linear", Linear(L.M @ P, L.b, (L.mask @ P) > 0, "conv"), name=name))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            assert m.groups == 1 and m.padding_mode == "zeros"
            padding = m.padding
            if keras_pads_explicitly(shape[1:], m.kernel_size, m.stride, m.padding, m.dilation):
                P, shape = zero_pad_matrix(shape, _tuple(m.padding, len(shape) - 1))
                layers.append(Layer("pad", P=P, name=name + "_pad"))
                padding = 0
            L, shape = conv_linear(_numpy(m.weight), _numpy(m.bias), shape, m.stride, padding, m.dilation)
            layers.append(Layer("linear", L, name=name))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            per = math.prod(shape[1:]) if len(shape) > 1 else 1
            params = {
                k: np.repeat(v, per)
                for k, v in dict(
                    gamma=_numpy(m.weight), beta=_numpy(m.bias), mean=_numpy(m.running_mean), var=_numpy(m.running_var)
                ).items()
            }
            params["eps"] = m.eps
            layers.append(Layer("bn", bn=params, name=name))
        elif isinstance(m, nn.ReLU):
            layers.append(Layer("relu", name=name))
        elif isinstance(m, nn.LeakyReLU):
            layers.append(Layer("leaky", slope=m.negative_slope, name=name))
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            assert m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1))
            windows, shape = _windows(shape, m.kernel_size, m.stride, same=isinstance(m, SAME_POOLS))
            layers.append(Layer("maxpool", windows=windows, name=name))
        elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
            assert m.padding in (0, (0, 0), (0,))
            windows, out = _windows(shape, m.kernel_size, m.stride, same=isinstance(m, SAME_POOLS))
            P = np.zeros((len(windows), math.prod(shape)))
            for row, cells in enumerate(windows):
                P[row, cells] = 1.0 / len(cells)
            layers.append(Layer("avgpool", P=P, name=name))
            shape = out
        elif isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            assert all(s == 1 for s in _tuple(m.output_size, len(shape) - 1))
            c, per = shape[0], math.prod(shape[1:])
            P = np.zeros((c, c * per))
            for ch in range(c):
                P[ch, ch * per : (ch + 1) * per] = 1.0 / per
            layers.append(Layer("avgpool", P=P, name=name))
            shape = (c,) + (1,) * (len(shape) - 1)
        elif isinstance(m, (nn.Flatten, nn.Dropout)):
            layers.append(Layer("identity", name=name))
            if isinstance(m, nn.Flatten):
                shape = (math.prod(shape),)
        else:
            raise TypeError(f"no numpy counterpart for {type(m).__name__}")
    return layers


def bn_linear(layer: Layer, mode: str) -> Linear:
    """BatchNorm as a diagonal layer: its true map (``exact``) or iNNvestigate 2.1.2's
    linearisation (``innvestigate``: kernel gamma/sqrt(var**2 + eps), bias beta - mean/sqrt(var**2 + eps))."""
    p = layer.bn
    if mode == "innvestigate":
        root = np.sqrt(p["var"] ** 2 + p["eps"])
        scale, shift = p["gamma"] / root, p["beta"] - p["mean"] / root
    else:
        root = np.sqrt(p["var"] + p["eps"])
        scale, shift = p["gamma"] / root, p["beta"] - p["gamma"] * p["mean"] / root
    n = scale.size
    return Linear(np.diag(scale), shift, np.eye(n, dtype=bool), "bn")


def forward(layers: list[Layer], x: np.ndarray) -> list[np.ndarray]:
    """Inputs of every layer and (last) the output, for one flat sample."""
    acts = [x]
    for layer in layers:
        a = acts[-1]
        if layer.op == "linear":
            out = layer.linear.M @ a + layer.linear.b
        elif layer.op == "bn":
            p = layer.bn
            out = p["gamma"] * (a - p["mean"]) / np.sqrt(p["var"] + p["eps"]) + p["beta"]
        elif layer.op == "relu":
            out = np.maximum(a, 0.0)
        elif layer.op == "leaky":
            out = np.where(a > 0, a, layer.slope * a)
        elif layer.op == "maxpool":
            out = np.array([a[w].max() for w in layer.windows])
        elif layer.op in ("avgpool", "pad"):
            out = layer.P @ a
        else:
            out = a
        acts.append(out)
    return acts


@dataclass(frozen=True)
class Method:
    """What an analyzer does, written out for the reference (independent of the library's parser).

    hidden: rule of hidden conv/dense layers (and BN, unless ``preset``/``deep_taylor``);
    input: rule of the first conv/dense layer executed (None: the hidden rule);
    preset: 'a' or 'b' (iNNvestigate's sequential presets); deep_taylor: iNNvestigate's DeepTaylor;
    until: (k, rule): the rule of the conv/dense layers 0..k in execution order (after the input rule).
    """

    hidden: Callable | None = None
    input: Callable | None = None
    preset: str | None = None
    deep_taylor: bool = False
    post: tuple = field(default=())
    until: tuple[int, Callable] | None = None


def reference(
    layers: list[Layer],
    x: np.ndarray,
    target: int,
    method: Method,
    bn: str = "innvestigate",
    input_layer: int | None = None,
) -> np.ndarray:
    """The relevance map of one sample (flat) for ``method``.

    Relevance starts at the selected logit's value (Deep Taylor: at max(logit, 0)). Activations pass
    relevance unchanged (Deep Taylor: only a ReLU fused into the conv/dense layer it directly
    follows; any other ReLU takes the gradient), LeakyReLU (a layer of its own in Keras) takes the
    gradient, max pooling routes to the first maximum of the window, average pooling gets the Z
    rule (Deep Taylor: its gradient). BatchNorm gets the analyzer's rule on ``bn``'s linear map
    (Deep Taylor: the gradient of the true map, in either mode: iNNvestigate's DeepTaylor checks
    "no kernel and only ReLU activations" before its BN mapping, and a BN layer passes that test).
    ``input_layer`` overrides which layer index gets the input rule.
    """
    acts = forward(layers, x)
    kernels = [i for i, layer in enumerate(layers) if layer.op == "linear"]
    first = kernels[0] if input_layer is None else input_layer
    logits = acts[-1]
    R = np.zeros_like(logits)
    R[target] = max(logits[target], 0.0) if method.deep_taylor else logits[target]
    for i in reversed(range(len(layers))):
        layer, a = layers[i], acts[i]
        if layer.op == "linear":
            L = layer.linear
            if i == first and method.input is not None:
                rule = method.input
            elif method.until is not None and kernels.index(i) <= method.until[0]:
                rule = method.until[1]
            elif method.preset is not None:
                rule = (
                    rule_epsilon(0.1)
                    if L.kind == "dense"
                    else (rule_alpha_beta(1, 0) if method.preset == "a" else rule_alpha_beta(2, 1))
                )
            elif method.deep_taylor:
                rule = rule_z_plus
            else:
                rule = method.hidden
            R = rule(L, a, R)
        elif layer.op == "bn":
            if method.deep_taylor:  # DeepTaylor's ReLU condition catches BN first: its gradient
                R = bn_linear(layer, "exact").M.T @ R
            else:
                rule = rule_x2m100 if method.preset else method.hidden
                R = rule(bn_linear(layer, bn), a, R)
        elif layer.op == "relu":
            if method.deep_taylor:
                j = i - 1
                while j >= 0 and layers[j].op == "identity":
                    j -= 1
                fused = j >= 0 and layers[j].op == "linear"
                if not fused:
                    R = R * (a > 0)
        elif layer.op == "leaky":
            if method.deep_taylor:
                raise ValueError("no Deep Taylor reference for LeakyReLU")
            R = R * np.where(a > 0, 1.0, layer.slope)
        elif layer.op == "maxpool":
            out = np.zeros_like(a)
            for o, w in enumerate(layer.windows):
                out[w[int(np.argmax(a[w]))]] += R[o]
            R = out
        elif layer.op == "avgpool":
            P = layer.P
            R = P.T @ R if method.deep_taylor else a * (P.T @ (R / safe(P @ a)))
        elif layer.op == "pad":  # its gradient: the padded entries' relevance is cropped away
            R = layer.P.T @ R
    for step in method.post:
        R = R * (x if step == "x_input" else sign(x))
    return R


def reference_batch(layers, X: np.ndarray, targets, method: Method, **kwargs) -> np.ndarray:
    """:func:`reference` for each sample of a batch (inputs of any shape), reshaped like X."""
    X = np.asarray(X, dtype=np.float64)
    out = [reference(layers, X[n].ravel(), int(targets[n]), method, **kwargs) for n in range(len(X))]
    return np.stack(out).reshape(X.shape)


def leaf_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules of a plain chain (Sequential, or a module whose children run in
    registration order), with their paths."""
    return [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None and m is not model]


def np_logits(layers, X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return np.stack([forward(layers, X[n].ravel())[-1] for n in range(len(X))])


# =============================================================================================
# The reference checks itself: the unfolded conv matrix is the convolution
# =============================================================================================


@pytest.mark.parametrize(
    "dim,stride,padding,dilation", [(1, 1, 2, 1), (1, 2, 1, 2), (2, 1, 1, 1), (2, (2, 1), (0, 1), (1, 2))]
)
def test_unfolded_conv_matrix_is_the_convolution(dim, stride, padding, dilation):
    torch.manual_seed(0)
    conv = (nn.Conv1d if dim == 1 else nn.Conv2d)(2, 3, 3, stride=stride, padding=padding, dilation=dilation).double()
    shape = (2, 9) if dim == 1 else (2, 7, 6)
    x = torch.randn(4, *shape, dtype=torch.float64)
    L, out_shape = conv_linear(_numpy(conv.weight), _numpy(conv.bias), shape, conv.stride, conv.padding, conv.dilation)
    expected = conv(x).detach().numpy()
    assert expected.shape[1:] == out_shape
    mine = (x.numpy().reshape(4, -1) @ L.M.T + L.b).reshape(expected.shape)
    np.testing.assert_allclose(mine, expected, rtol=1e-12, atol=1e-12)
    # every kernel entry appears, and the mask is exactly the structural connectivity
    assert L.mask.sum() == np.count_nonzero(
        conv_index(shape, tuple(conv.weight.shape), _tuple(stride, dim), _tuple(padding, dim), _tuple(dilation, dim))[0]
        >= 0
    )


# =============================================================================================
# Rule classes on single layers (Affine views), random relevance on every output unit
# =============================================================================================


def _dense_case(seed: int, bias: bool = True):
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(4, 6)), rng.normal(size=4) if bias else None
    X = rng.normal(size=(3, 6))
    X[0, 1] = 0.0  # an exact zero input (SIGN: s(0) = +1)
    X[1, 2] = 0.3  # exactly at a SIGN threshold used below
    R = rng.normal(size=(3, 4))
    layer = Affine(torch.from_numpy(W), None if b is None else torch.from_numpy(b), torch.nn.functional.linear)
    ref = Linear(W, b if b is not None else np.zeros(4), np.ones_like(W, dtype=bool), "dense")
    return layer, ref, X, R


def _conv_case(seed: int, dim: int, bias: bool = True):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    conv = (nn.Conv1d if dim == 1 else nn.Conv2d)(2, 3, 3, stride=(2 if dim == 1 else 1), padding=1, bias=bias).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.normal(size=tuple(conv.weight.shape))))
        if bias:
            conv.bias.copy_(torch.from_numpy(rng.normal(size=3)))
    shape = (2, 8) if dim == 1 else (2, 5, 4)
    X = rng.normal(size=(3, *shape))
    X.reshape(3, -1)[0, 3] = 0.0
    X.reshape(3, -1)[1, 5] = 0.3
    ref, out_shape = conv_linear(
        _numpy(conv.weight), _numpy(conv.bias), shape, conv.stride, conv.padding, conv.dilation
    )
    R = rng.normal(size=(3, *out_shape))
    layer = Affine(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), conv._conv_forward)
    return layer, ref, X, R


RULE_CASES = {
    "z": (ZRule(), rule_z()),
    "z_nobias": (ZRule(bias=False), rule_z(bias=False)),
    "epsilon_0_1": (EpsilonRule(0.1), rule_epsilon(0.1)),
    "epsilon_3": (EpsilonRule(3.0), rule_epsilon(3.0)),
    "std_x_0_5": (StdxEpsilonRule(stdfactor=0.5), rule_std_x(0.5)),
    "alpha1beta0": (AlphaBetaRule(1.0, 0.0), rule_alpha_beta(1, 0)),
    "alpha2beta1": (AlphaBetaRule(2.0, 1.0), rule_alpha_beta(2, 1)),
    "alpha3beta2_nobias": (AlphaBetaRule(3.0, 2.0, bias=False), rule_alpha_beta(3, 2, bias=False)),
    "z_plus": (AlphaBetaRule(1.0, 0.0, bias=False), rule_z_plus),
    "x2m100": (AlphaBetaX2m100Rule(), rule_x2m100),
    "gamma_0_5": (GammaRule(0.5), rule_gamma(0.5)),
    "gamma_2": (GammaRule(2.0), rule_gamma(2.0)),
    "w_square": (WSquareRule(), rule_w_square),
    "flat": (FlatRule(), rule_flat),
    "zbox": (ZBoxRule(-1.5, 2.0), rule_zbox(-1.5, 2.0)),
    "sign": (SignRule(0.0), rule_sign(0.0)),
    "sign_mu_0_3": (SignRule(0.3), rule_sign(0.3)),
    "sign_mu_neg_0_5": (SignRule(-0.5), rule_sign(-0.5)),
}


def _rule_on_case(rule, ref_rule, case):
    layer, ref, X, R = case
    got = rule.relevance(layer, torch.from_numpy(X), torch.from_numpy(R)).numpy()
    expected = np.stack([ref_rule(ref, X[n].ravel(), R[n].ravel()) for n in range(len(X))]).reshape(X.shape)
    assert_close(got, expected)
    return got


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_rule_on_a_dense_layer(name, bias):
    rule, ref_rule = RULE_CASES[name]
    _rule_on_case(rule, ref_rule, _dense_case(1, bias))


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_rule_on_a_conv_layer(name, dim):
    rule, ref_rule = RULE_CASES[name]
    _rule_on_case(rule, ref_rule, _conv_case(2 + dim, dim))


def test_rules_differ_where_their_formulas_differ():
    """The rule cases are not vacuous: on one dense layer every pair of distinct formulas gives
    different maps (so each comparison above can fail)."""
    case = _dense_case(7)
    maps = {name: _rule_on_case(rule, ref, case) for name, (rule, ref) in RULE_CASES.items()}
    names = sorted(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(maps[a], maps[b], rtol=1e-6, atol=1e-9), (a, b)


def _two_input_layer(w, b=0.0):
    W = torch.tensor([w], dtype=torch.float64)
    return Affine(W, torch.tensor([b], dtype=torch.float64), torch.nn.functional.linear)


def test_safe_divide_replaces_only_exact_zeros_by_1e_7():
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[1.0]], dtype=torch.float64)
    # z = 0.5 - 0.5 = 0 exactly: R / 1e-7
    got = ZRule().relevance(_two_input_layer([0.5, -0.5]), x, r).numpy()
    np.testing.assert_allclose(got, [[0.5e7, -0.5e7]], rtol=1e-12)
    # z = 2**-30 exactly (tiny, not zero): divided as it is, no stabiliser (Zennit would add 1e-6)
    tiny = 2.0**-30
    got = ZRule().relevance(_two_input_layer([0.5, -0.5 + tiny]), x, r).numpy()
    np.testing.assert_allclose(got, [[0.5 / tiny, (-0.5 + tiny) / tiny]], rtol=1e-12)
    # the same for the alpha-beta halves: z+ = 0 (no positive part at all) -> 1e-7
    got = AlphaBetaRule(1.0, 0.0).relevance(_two_input_layer([-0.5, -0.25]), -x, r).numpy()
    np.testing.assert_allclose(got, [[0.5 / 0.75, 0.25 / 0.75]], rtol=1e-12)  # W- x- = 0.75
    got = AlphaBetaRule(2.0, 1.0).relevance(_two_input_layer([-0.5, -0.25]), x, r).numpy()
    # activator: W+ x+ + W- x- = 0 -> share 1e7 times zero contributions; inhibitor: W- x+ = -0.75
    np.testing.assert_allclose(got, [[-1.0 * (-0.5 / -0.75), -1.0 * (-0.25 / -0.75)]], rtol=1e-12)


def test_epsilon_sign_of_zero_is_plus_one():
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[2.0]], dtype=torch.float64)
    got = EpsilonRule(0.1).relevance(_two_input_layer([0.5, -0.5]), x, r).numpy()  # z = 0 -> z + 0.1
    np.testing.assert_allclose(got, [[0.5 * 2 / 0.1, -0.5 * 2 / 0.1]], rtol=1e-12)
    got = EpsilonRule(0.1).relevance(_two_input_layer([0.5, -0.75]), x, r).numpy()  # z = -0.25 -> -0.35
    np.testing.assert_allclose(got, [[0.5 * 2 / -0.35, -0.75 * 2 / -0.35]], rtol=1e-12)


def test_std_x_uses_the_population_std_of_each_sample():
    W = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)
    layer = Affine(W, None, torch.nn.functional.linear)
    x = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    r = torch.ones(2, 1, dtype=torch.float64)
    got = StdxEpsilonRule(stdfactor=2.0).relevance(layer, x, r).numpy()
    for n, row in enumerate(x.numpy()):
        eps = 2.0 * np.sqrt(((row - row.mean()) ** 2).mean())  # ddof 0, this sample only
        z = row @ W.numpy()[0]
        np.testing.assert_allclose(got[n], row * W.numpy()[0] / (z + eps * (1 if z >= 0 else -1)), rtol=1e-12)


def test_w_square_drops_the_bias_and_gamma_modifies_it():
    W = np.array([[1.0, -2.0]])
    layer = Affine(torch.from_numpy(W), torch.tensor([5.0], dtype=torch.float64), torch.nn.functional.linear)
    x = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[10.0]], dtype=torch.float64)
    np.testing.assert_allclose(WSquareRule().relevance(layer, x, r).numpy(), [[10 * 1 / 5, 10 * 4 / 5]], rtol=1e-12)
    np.testing.assert_allclose(FlatRule().relevance(layer, x, r).numpy(), [[5.0, 5.0]], rtol=1e-12)
    # gamma 1: W' = [2, -2], b' = 5 + 5 = 10, z' = 6 - 2 + 10 = 14
    np.testing.assert_allclose(
        GammaRule(1.0).relevance(layer, x, r).numpy(), [[3 * 2 * 10 / 14, -2 * 10 / 14]], rtol=1e-12
    )


def test_alpha_beta_puts_the_full_bias_in_both_halves():
    W = np.array([[2.0, -1.0]])
    layer = Affine(torch.from_numpy(W), torch.tensor([-0.5], dtype=torch.float64), torch.nn.functional.linear)
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[1.0]], dtype=torch.float64)
    # activator z = 2 - 0.5 = 1.5 (Zennit: 2 + b+ = 2); inhibitor z = -1 - 0.5 = -1.5 (Zennit: -1.5 too)
    expected = 2 * np.array([2 / 1.5, 0.0]) - 1 * np.array([0.0, -1 / -1.5])
    np.testing.assert_allclose(AlphaBetaRule(2.0, 1.0).relevance(layer, x, r).numpy(), [expected], rtol=1e-12)


# =============================================================================================
# End to end on 1- and 2-layer models (TF-compatible API): relevance starts at the logit's value
# =============================================================================================

#: name -> what iNNvestigate does (the reference)
API_METHODS = {
    "lrp_z": Method(rule_z()),
    "lrp_epsilon_0_1": Method(rule_epsilon(0.1)),
    "lrp_epsilon_2_5": Method(rule_epsilon(2.5)),
    "lrp_epsilon_0_5_std_x": Method(rule_std_x(0.5)),
    "lrp_alpha_1_beta_0": Method(rule_alpha_beta(1, 0)),
    "lrp_alpha_2_beta_1": Method(rule_alpha_beta(2, 1)),
    "lrp_z_plus": Method(rule_z_plus),
    "lrp_gamma": Method(rule_gamma(0.5)),
    "lrp_gamma_0_25": Method(rule_gamma(0.25)),
    "lrp_w_square": Method(rule_w_square),
    "lrp_flat": Method(rule_flat),
    "lrpz_epsilon_0_1": Method(rule_epsilon(0.1), rule_z()),
    "lrpsign_z": Method(rule_z(), rule_sign(0.0)),
    "lrpsign_epsilon_0_1_mu_0_3": Method(rule_epsilon(0.1), rule_sign(0.3)),
    "lrpsign_alpha_2_beta_1_mu_neg_0_5": Method(rule_alpha_beta(2, 1), rule_sign(-0.5)),
    "w2lrp_epsilon_0_1": Method(rule_epsilon(0.1), rule_w_square),
    "flatlrp_alpha_1_beta_0": Method(rule_alpha_beta(1, 0), rule_flat),
    "zblrp_epsilon_0_1_VGG16ILSVRC": Method(rule_epsilon(0.1), rule_zbox(-123.68, 151.061)),
    "lrp_sequential_composite_a": Method(preset="a"),
    "lrp_sequential_composite_b": Method(preset="b"),
    "lrp_deep_taylor": Method(deep_taylor=True),
    # bias-free variants (iNNvestigate's IgnoreBias analyzers, bias=False), Z+ fast, Deep Taylor
    # with an input rule (BoundedDeepTaylor: the Z-box rule)
    "lrp_z_ib": Method(rule_z(bias=False)),
    "lrp_epsilon_0_1_ib": Method(rule_epsilon(0.1, bias=False)),
    "lrp_epsilon_0_5_std_x_ib": Method(rule_std_x(0.5, bias=False)),
    "lrp_alpha_1_beta_0_ib": Method(rule_alpha_beta(1, 0, bias=False)),
    "lrp_alpha_2_beta_1_ib": Method(rule_alpha_beta(2, 1, bias=False)),
    "lrpsign_epsilon_0_1_ib_mu_0_3": Method(rule_epsilon(0.1, bias=False), rule_sign(0.3)),
    "lrp_z_plus_fast": Method(rule_z_plus_fast),
    "zblrp_deep_taylor_VGG16ILSVRC": Method(input=rule_zbox(-123.68, 151.061), deep_taylor=True),
    "w2lrp_deep_taylor": Method(input=rule_w_square, deep_taylor=True),
    "lrp_epsilon_0_1_x_input_x_sign": Method(rule_epsilon(0.1), post=("x_input", "x_sign")),
}


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model.eval()


def small_models() -> dict[str, tuple[nn.Module, tuple]]:
    """1- and 2-layer models (float64, random weights) and their input shapes."""
    return {
        "dense1": (_seeded(nn.Sequential(nn.Linear(6, 4)).double(), 1), (6,)),
        "dense2": (_seeded(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double(), 2), (6,)),
        "conv1": (_seeded(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Flatten()).double(), 3), (2, 4, 3)),
        "conv2": (
            _seeded(
                nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 3, 4)).double(),
                4,
            ),
            (2, 4, 3),
        ),
        "conv1d2": (
            _seeded(
                nn.Sequential(
                    nn.Conv1d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5, 3)
                ).double(),
                5,
            ),
            (1, 9),
        ),
        # TF's 'same' inside the layer: (0, 1) zeros on the even axis at stride 2, (1, 2) for k = 4
        "conv_same2": (
            _seeded(
                nn.Sequential(Conv2dSame(2, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 4)).double(),
                6,
            ),
            (2, 4, 3),
        ),
        # TF's 'same' pooling: max 3/2 on 6x5 pads (0, 1) and (1, 1), average 2/2 on 3x3 (0, 1)
        "pool_same2": (
            _seeded(
                nn.Sequential(
                    nn.Conv2d(2, 3, 3, padding=1),
                    nn.ReLU(),
                    MaxPool2dSame(3, 2),
                    AvgPool2dSame(2, 2),
                    nn.Flatten(),
                    nn.Linear(3 * 2 * 2, 4),
                ).double(),
                8,
            ),
            (2, 6, 5),
        ),
        "pool1d_same2": (
            _seeded(
                nn.Sequential(
                    nn.Conv1d(1, 2, 3, padding=1),
                    nn.ReLU(),
                    AvgPool1dSame(3, 2),
                    MaxPool1dSame(3, 2),
                    nn.Flatten(),
                    nn.Linear(2 * 2, 3),
                ).double(),
                9,
            ),
            (1, 8),
        ),
        "conv1d_same2": (
            _seeded(nn.Sequential(Conv1dSame(1, 2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8, 3)).double(), 7),
            (1, 8),
        ),
    }


_SMALL = small_models()


def _api_input(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=shape)
    flat = x.reshape(-1)
    flat[0], flat[1] = 0.0, 0.3  # an exact zero (s(0) = +1) and a value on the mu = 0.3 threshold
    return x


def _targets(model, x):
    logits = model(torch.from_numpy(x)[None]).detach().numpy()[0]
    return [int(np.argmax(logits)), int(np.argmin(logits))]  # one positive-, one negative-logit target


@pytest.mark.parametrize("model_name", sorted(_SMALL))
@pytest.mark.parametrize("name", sorted(API_METHODS))
def test_rule_end_to_end_on_small_models(name, model_name):
    model, shape = _SMALL[model_name]
    x = _api_input(shape, len(model_name))
    layers = numpy_layers(leaf_chain(model), shape)
    for target in _targets(model, x):
        got = calculate_relevancemap(name, x, model, neuron_selection=target)
        expected = reference(layers, x.ravel(), target, API_METHODS[name]).reshape(shape)
        assert_close(got, expected)


def test_relevance_starts_at_the_logit_value_not_at_one():
    model, shape = _SMALL["dense1"]
    x = _api_input(shape, 0)
    logits = model(torch.from_numpy(x)[None]).detach().numpy()[0]
    for target in range(4):
        got = calculate_relevancemap("lrp_epsilon_0_1", x, model, neuron_selection=target)
        W, b = _numpy(model[0].weight), _numpy(model[0].bias)
        z = logits[target]
        np.testing.assert_allclose(z, W[target] @ x + b[target], rtol=1e-12)
        expected = x * W[target] * z / (z + 0.1 * (1 if z >= 0 else -1))
        assert_close(got, expected)
        assert np.sign(got.sum()) == np.sign(W[target] @ x)  # z * z/(z+-eps) keeps the sign of W x


def test_deep_taylor_of_a_negative_logit_is_all_zero():
    model, shape = _SMALL["dense2"]
    x = _api_input(shape, 2)
    logits = model(torch.from_numpy(x)[None]).detach().numpy()[0]
    negative = int(np.argmin(logits))
    assert logits[negative] < 0
    got = calculate_relevancemap("lrp_deep_taylor", x, model, neuron_selection=negative)
    assert got.shape == shape and np.all(got == 0)
    positive = int(np.argmax(logits))
    assert np.any(calculate_relevancemap("lrp_deep_taylor", x, model, neuron_selection=positive) != 0)


def test_alpha_one_beta_zero_is_the_activator_alone():
    """alpha=1, beta=0: x+ W+^T R / (W+ x+ + b), nothing subtracted (here for x > 0)."""
    model, shape = _SMALL["dense1"]
    x = np.abs(_api_input(shape, 1)) + 0.1  # x >= 0: the inhibitor would be W- x+
    got = calculate_relevancemap("lrp_alpha_1_beta_0", x, model, neuron_selection=0)
    W, b = _numpy(model[0].weight)[0], _numpy(model[0].bias)[0]
    z = W @ x + b
    expected = x * pos(W) * z / safe(pos(W) @ x + b)
    assert_close(got, expected)
