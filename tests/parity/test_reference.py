"""parity.reference against independent numpy computations of the METHODS.md formulas.

Every layer of the small test networks is written here as an explicit matrix (a convolution is
its unfolded (n_in, n_out) matrix, BatchNorm iNNvestigate's diagonal stand-in), and every rule's
backward pass is written out in that matrix form. The Keras models are built from the same
parameters; ``parity.reference`` runs iNNvestigate (or its own TF code) on them.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from parity.reference import (
    ReferenceUnavailable,
    bilinear_resize_matrix,
    check_identities,
    reference_map,
)
from signxai.torch_signxai.methods.grammar import parse

pytestmark = pytest.mark.tf

SAFE_EPS = 1e-7  # iNNvestigate's safe_divide: exact zeros in the denominator become 1e-7
TOL = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture(params=["float32", "float64"])
def floatx(request):
    """Build the test's Keras models in float32 or float64, on a fresh graph."""
    keras.backend.clear_session()
    old = keras.backend.floatx()
    keras.backend.set_floatx(request.param)
    yield request.param
    keras.backend.set_floatx(old)
    keras.backend.clear_session()


@pytest.fixture
def float64_session():
    """Build the test's Keras models in float64, on a fresh graph."""
    keras.backend.clear_session()
    old = keras.backend.floatx()
    keras.backend.set_floatx("float64")
    yield "float64"
    keras.backend.set_floatx(old)
    keras.backend.clear_session()


def assert_close(actual, expected, floatx, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), what
    scale = np.max(np.abs(expected))
    assert scale > 0, f"{what}: degenerate expected map"
    gap = np.max(np.abs(actual - expected))
    worst = np.unravel_index(np.argmax(np.abs(actual - expected)), actual.shape)
    assert gap <= TOL[floatx] * scale, (
        f"{what}: max |diff| {gap:.3e} = {gap / scale:.3e} of max |expected| {scale:.3e}; "
        f"worst at {worst}: got {actual[worst]!r}, expected {expected[worst]!r}"
    )


def safe(z):
    return z + SAFE_EPS * (z == 0)


def sign_mu(v, mu):
    return np.where(v >= mu, 1.0, -1.0)


# ---------------------------------------------------------------------------------------------
# Layers as explicit matrices (numpy, float64) and their Keras twins
# ---------------------------------------------------------------------------------------------


def identity(w):
    return w


class Kernel:
    """Dense or convolution (stride 1), with an optional fused ReLU."""

    def __init__(self, kernel, bias, act=None, padding="valid"):
        self.kernel, self.bias, self.act, self.padding = kernel, bias, act, padding

    def setup(self, in_shape):
        self.in_shape = in_shape
        if self.kernel.ndim == 2:
            self.kind = "dense"
            self.out_shape = (self.kernel.shape[1],)
        else:
            self.kind = "conv2d" if self.kernel.ndim == 4 else "conv1d"
            k = self.kernel if self.kernel.ndim == 4 else self.kernel[:, None]
            h, w = in_shape[0], (in_shape[1] if self.kind == "conv2d" else 1)
            ho, wo = (h, w) if self.padding == "same" else (h - k.shape[0] + 1, w - k.shape[1] + 1)
            self.out_shape = (ho, wo, k.shape[3]) if self.kind == "conv2d" else (ho, k.shape[3])
        return self.out_shape

    def matrix(self, f=identity):
        """The (n_in, n_out) matrix of the layer with kernel f(kernel)."""
        kernel = f(self.kernel)
        if self.kind == "dense":
            return kernel
        k = kernel if kernel.ndim == 4 else kernel[:, None]
        kh, kw, cin, cout = k.shape
        h = self.in_shape[0]
        w = self.in_shape[1] if self.kind == "conv2d" else 1
        pt, pl = ((kh - 1) // 2, (kw - 1) // 2) if self.padding == "same" else (0, 0)
        ho, wo = (self.out_shape[0], self.out_shape[1] if self.kind == "conv2d" else 1)
        m = np.zeros((h, w, cin, ho, wo, cout))
        for oh in range(ho):
            for ow in range(wo):
                for i in range(kh):
                    for j in range(kw):
                        ih, iw = oh + i - pt, ow + j - pl
                        if 0 <= ih < h and 0 <= iw < w:
                            m[ih, iw, :, oh, ow, :] += k[i, j]
        return m.reshape(h * w * cin, ho * wo * cout)

    def bias_vector(self, f=identity):
        b = f(self.bias)
        return np.tile(b, int(np.prod(self.out_shape)) // b.shape[0])

    def forward(self, x):
        z = x.reshape(len(x), -1) @ self.matrix() + self.bias_vector()
        z = z.reshape((len(x),) + self.out_shape)
        return z, (np.maximum(z, 0) if self.act == "relu" else z)

    def keras(self, name):
        act = self.act
        if self.kind == "dense":
            return keras.layers.Dense(self.kernel.shape[1], activation=act, name=name)
        if self.kind == "conv2d":
            return keras.layers.Conv2D(
                self.kernel.shape[3], self.kernel.shape[:2], padding=self.padding, activation=act, name=name
            )
        return keras.layers.Conv1D(
            self.kernel.shape[2], self.kernel.shape[0], padding=self.padding, activation=act, name=name
        )

    def weights(self):
        return [self.kernel, self.bias]


class BatchNorm:
    """Inference BatchNorm; for LRP iNNvestigate 2.1.2's scale layer (variance squared, trap 11)."""

    def __init__(self, gamma, beta, mean, var, eps=1e-3):
        self.gamma, self.beta, self.mean, self.var, self.eps = gamma, beta, mean, var, eps
        self.act = None
        denom = np.sqrt(var**2 + eps)
        self.kernel = gamma / denom  # what iNNvestigate puts in the BN's place
        self.bias = beta - mean / denom

    def setup(self, in_shape):
        self.in_shape = self.out_shape = in_shape
        return in_shape

    def matrix(self, f=identity):
        return np.diag(np.tile(f(self.kernel), int(np.prod(self.in_shape)) // len(self.kernel)))

    def bias_vector(self, f=identity):
        return np.tile(f(self.bias), int(np.prod(self.in_shape)) // len(self.bias))

    def true_scale(self):
        return self.gamma / np.sqrt(self.var + self.eps)

    def forward(self, x):
        y = (x - self.mean) * self.true_scale() + self.beta
        return y, y

    def keras(self, name):
        return keras.layers.BatchNormalization(epsilon=self.eps, fused=False, name=name)

    def weights(self):
        return [self.gamma, self.beta, self.mean, self.var]


class Relu:
    def setup(self, in_shape):
        self.out_shape = in_shape
        return in_shape

    def forward(self, x):
        return x, np.maximum(x, 0)

    def keras(self, name):
        return keras.layers.Activation("relu", name=name)

    def weights(self):
        return []


class Flatten(Relu):
    def setup(self, in_shape):
        self.out_shape = (int(np.prod(in_shape)),)
        return self.out_shape

    def forward(self, x):
        y = x.reshape(len(x), -1)
        return y, y

    def keras(self, name):
        return keras.layers.Flatten(name=name)


class MaxPool(Relu):
    """Max pooling with pool = stride = p; TF routes the gradient to the first maximum."""

    def __init__(self, p):
        self.p = p

    def setup(self, in_shape):
        self.in_shape = in_shape
        self.out_shape = (in_shape[0] // self.p,) + (
            (in_shape[1] // self.p, in_shape[2]) if len(in_shape) == 3 else (in_shape[1],)
        )
        return self.out_shape

    def _windows(self, x):
        p, n = self.p, len(x)
        if len(self.in_shape) == 2:
            x = x[:, :, None, :]
            pw = 1
        else:
            pw = p
        h, w, c = x.shape[1:]
        win = x.reshape(n, h // p, p, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4)
        return win.reshape(n, h // p, w // pw, c, p * pw), (n, h, w, c, pw)

    def forward(self, x):
        win, _ = self._windows(x)
        y = win.max(-1).reshape((len(x),) + self.out_shape)
        return y, y

    def backward(self, x, g):
        """Route g to the first maximum of each window (scan order: rows, then columns)."""
        p = self.p
        win, (n, h, w, c, pw) = self._windows(x)
        first = np.argmax(win, axis=-1)
        onehot = np.eye(p * pw)[first]  # (n, h/p, w/pw, c, p*pw)
        routed = onehot * g.reshape(n, h // p, w // pw, c, 1)
        routed = routed.reshape(n, h // p, w // pw, c, p, pw).transpose(0, 1, 4, 2, 5, 3)
        return routed.reshape((n,) + self.in_shape)

    def keras(self, name):
        if len(self.in_shape) == 2:
            return keras.layers.MaxPooling1D(self.p, name=name)
        return keras.layers.MaxPooling2D(self.p, name=name)


class AvgPool(Relu):
    """Average pooling (pool = stride = p), or global average pooling (p=None), as a matrix."""

    def __init__(self, p=None):
        self.p = p
        self.act = None

    def setup(self, in_shape):
        self.in_shape = in_shape
        c = in_shape[-1]
        spatial = in_shape[:-1]
        cells = list(np.ndindex(*spatial))
        if self.p is None:
            out_spatial = ()
            groups = {(): cells}
        else:
            out_spatial = tuple(s // self.p for s in spatial)
            groups = {}
            for cell in cells:
                groups.setdefault(tuple(i // self.p for i in cell), []).append(cell)
        self.out_shape = out_spatial + (c,)
        out_cells = list(np.ndindex(*out_spatial)) if out_spatial else [()]
        m = np.zeros(spatial + (c,) + tuple(out_spatial) + (c,))
        for oc in out_cells:
            for cell in groups[oc]:
                for ch in range(c):
                    m[cell + (ch,) + oc + (ch,)] = 1.0 / len(groups[oc])
        self._m = m.reshape(int(np.prod(in_shape)), int(np.prod(self.out_shape)))
        return self.out_shape

    def matrix(self, f=identity):
        return self._m

    def forward(self, x):
        y = (x.reshape(len(x), -1) @ self._m).reshape((len(x),) + self.out_shape)
        return y, y

    def keras(self, name):
        rank = len(self.in_shape) - 1
        if self.p is None:
            return [keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D][rank - 1](name=name)
        return [keras.layers.AveragePooling1D, keras.layers.AveragePooling2D][rank - 1](self.p, name=name)


class Net:
    """A chain of the layers above; channels-last shapes without the batch axis."""

    def __init__(self, input_shape, layers, dtype="float64"):
        self.input_shape = input_shape
        self.layers = layers
        cast = lambda a: np.asarray(a, dtype=dtype).astype(np.float64)  # noqa: E731
        for layer in layers:  # the numpy side uses the parameters Keras will hold
            if isinstance(layer, Kernel):
                layer.kernel, layer.bias = cast(layer.kernel), cast(layer.bias)
            if isinstance(layer, BatchNorm):
                layer.__init__(cast(layer.gamma), cast(layer.beta), cast(layer.mean), cast(layer.var), layer.eps)
        shape = input_shape
        for layer in layers:
            shape = layer.setup(shape)

    def factory(self):
        def build():
            inp = keras.Input(self.input_shape)
            h = inp
            weights = []
            for i, layer in enumerate(self.layers):
                k = layer.keras(f"layer{i}_{type(layer).__name__.lower()}")
                h = k(h, training=False) if isinstance(layer, BatchNorm) else k(h)
                weights += layer.weights()
            model = keras.Model(inp, h)
            model.set_weights(weights)
            return model

        return build

    def forward(self, x):
        """Per layer (input, pre-activation, output), and the logits."""
        trace = []
        for layer in self.layers:
            z, y = layer.forward(x)
            trace.append((x, z, y))
            x = y
        return trace, x


def onehot(logits, targets, value=True):
    r = np.zeros_like(logits)
    idx = np.arange(len(targets))
    r[idx, targets] = logits[idx, targets] if value else 1.0
    return r


# ---------------------------------------------------------------------------------------------
# Rules in matrix form
# ---------------------------------------------------------------------------------------------


def pos(w):
    return w * (w > 0)


def neg(w):
    return w * (w < 0)


def rule_z(layer, x, r, f=identity, bias=True):
    z = x @ layer.matrix(f) + (layer.bias_vector(f) if bias else 0)
    return x * ((r / safe(z)) @ layer.matrix(f).T)


def rule_epsilon(layer, x, r, eps, bias=True):
    z = x @ layer.matrix() + (layer.bias_vector() if bias else 0)
    eps = np.asarray(eps).reshape(-1, 1) if np.ndim(eps) else eps
    return x * ((r / (z + np.where(z >= 0, 1.0, -1.0) * eps)) @ layer.matrix().T)


def rule_alpha_beta(layer, x, r, alpha, beta, bias=True):
    xp, xn = pos(x), neg(x)
    mp, mn = layer.matrix(pos), layer.matrix(neg)
    bp, bn = (layer.bias_vector(pos), layer.bias_vector(neg)) if bias else (0, 0)

    def half(m1, b1, m2, b2):
        z = (xp @ m1 + b1) + (xn @ m2 + b2)
        s = r / safe(z)
        return xp * (s @ m1.T) + xn * (s @ m2.T)

    act = half(mp, bp, mn, bn)
    if beta == 0:
        return act
    return alpha * act - beta * half(mn, bn, mp, bp)


def rule_alpha_beta_x2m100(layer, x, r):
    """iNNvestigate's AlphaBetaX2m100Rule: 2 * (x+ through w+) - (x+ through w-), each half
    with its own denominator including b+ / b-; negative inputs get nothing."""
    xp = pos(x)

    def part(f):
        z = xp @ layer.matrix(f) + layer.bias_vector(f)
        return xp * ((r / safe(z)) @ layer.matrix(f).T)

    return 2 * part(pos) - part(neg)


def rule_gamma(layer, x, r, gamma):
    return rule_z(layer, x, r, f=lambda w: w + gamma * np.maximum(w, 0))


def rule_unweighted(layer, x, r, f):
    """Flat / W-square: relevance spread by f(w) / sum_i f(w_ij), no bias, not times x."""
    m = layer.matrix(f)
    z = np.ones_like(x) @ m
    return (r / safe(z)) @ m.T


def rule_sign(layer, x, r, mu):
    z = x @ layer.matrix() + layer.bias_vector()
    return sign_mu(x, mu) * ((r / safe(z)) @ layer.matrix().T)


def rule_zbox(layer, x, r, low, high):
    m, mp, mn = layer.matrix(), layer.matrix(pos), layer.matrix(neg)
    lo, hi = np.full_like(x, low), np.full_like(x, high)
    z = x @ m - (lo @ mp + hi @ mn)
    s = r / safe(z)
    return x * (s @ m.T) - (lo * (s @ mp.T) + hi * (s @ mn.T))


def hidden_rule(name, **p):
    """Backward of one kernel/BN layer for an LRP rule name, in matrix form."""
    table = {
        "z": lambda L, x, r: rule_z(L, x, r, bias=p.get("bias", True)),
        "epsilon": lambda L, x, r: rule_epsilon(L, x, r, p.get("epsilon"), p.get("bias", True)),
        "std_x": lambda L, x, r: rule_epsilon(L, x, r, p.get("stdfactor", 0) * x.std(axis=1), p.get("bias", True)),
        "alpha_beta": lambda L, x, r: rule_alpha_beta(L, x, r, p.get("alpha"), p.get("beta"), p.get("bias", True)),
        "z_plus": lambda L, x, r: rule_alpha_beta(L, x, r, 1, 0, bias=False),
        "z_plus_fast": lambda L, x, r: rule_z(L, x, r, f=pos, bias=False),
        "gamma": lambda L, x, r: rule_gamma(L, x, r, p.get("gamma")),
        "flat": lambda L, x, r: rule_unweighted(L, x, r, np.ones_like),
        "w_square": lambda L, x, r: rule_unweighted(L, x, r, np.square),
        "sign": lambda L, x, r: rule_sign(L, x, r, p.get("mu")),
        "zbox": lambda L, x, r: rule_zbox(L, x, r, p.get("low"), p.get("high")),
        "x2m100": lambda L, x, r: rule_alpha_beta_x2m100(L, x, r),
    }
    return table[name]


def lrp_numpy(net, x, targets, rule_of):
    """LRP from the selected logit's value; ``rule_of(index, layer)`` gives each layer's rule.

    Activations pass relevance through (fused ones and Activation layers alike), max pooling
    routes it like the gradient, average pooling uses the Z rule, Flatten reshapes.
    """
    trace, logits = net.forward(x)
    r = onehot(logits, targets)
    for i in reversed(range(len(net.layers))):
        layer, (xin, _, _) = net.layers[i], trace[i]
        n = len(xin)
        if isinstance(layer, (Kernel, BatchNorm)):
            r = rule_of(i, layer)(layer, xin.reshape(n, -1), r.reshape(n, -1))
        elif isinstance(layer, AvgPool):
            r = rule_z(layer, xin.reshape(n, -1), r.reshape(n, -1), bias=False)
        elif isinstance(layer, MaxPool):
            r = layer.backward(xin, r.reshape((n,) + layer.out_shape))
        r = r.reshape(xin.shape)
    return r


def backward_numpy(net, x, targets, mode, reference=None):
    """gradient / guided_backprop / deconvnet / deeplift backward in matrix form."""
    trace, logits = net.forward(x)
    if mode == "deeplift":
        ref_trace, _ = net.forward(reference)
    g = onehot(logits, targets, value=(mode in ("guided_backprop", "deconvnet")))
    for i in reversed(range(len(net.layers))):
        layer, (xin, z, _) = net.layers[i], trace[i]
        n = len(xin)
        has_relu = isinstance(layer, Relu) and not isinstance(layer, (Flatten, MaxPool, AvgPool))
        has_relu = has_relu or getattr(layer, "act", None) == "relu"
        if has_relu:
            if mode == "gradient":
                g = g * (z > 0)
            elif mode == "guided_backprop":
                g = np.maximum(g, 0) * (z > 0)
            elif mode == "deconvnet":
                g = np.maximum(g, 0)
            elif mode == "deeplift":
                zr = ref_trace[i][1]
                dz = z - zr
                ratio = (np.maximum(z, 0) - np.maximum(zr, 0)) / np.where(dz == 0, 1, dz)
                g = g * np.where(dz == 0, (z > 0).astype(float), ratio)
        if isinstance(layer, Kernel) or isinstance(layer, AvgPool):
            g = (g.reshape(n, -1) @ layer.matrix().T).reshape(xin.shape)
        elif isinstance(layer, BatchNorm):
            g = g * layer.true_scale()
        elif isinstance(layer, MaxPool):
            g = layer.backward(xin, g)
        else:
            g = g.reshape(xin.shape)
    return g


# ---------------------------------------------------------------------------------------------
# Test networks and inputs
# ---------------------------------------------------------------------------------------------


def mlp(dtype, seed=0):
    rng = np.random.default_rng(seed)
    layers = [
        Flatten(),
        Kernel(rng.normal(size=(12, 7)) * 0.5, rng.normal(size=7) * 0.3, "relu"),
        Kernel(rng.normal(size=(7, 6)) * 0.5, rng.normal(size=6) * 0.3, "relu"),
        Kernel(rng.normal(size=(6, 4)) * 0.5, rng.normal(size=4) * 0.3),
    ]
    return Net((4, 3, 1), layers, dtype)


def mlp_input(n=4, seed=1, mu=0.5):
    """Channels-first inputs (N, 1, 4, 3) with exact zeros and exact mu values."""
    x = np.random.default_rng(seed).normal(size=(n, 1, 4, 3))
    x[:, 0, 0, 0] = 0.0
    x[:, 0, 1, 1] = mu
    return x


def convnet(dtype, seed=2):
    """Conv(relu, same) -> MaxPool -> Conv -> BN -> ReLU -> AvgPool -> Flatten -> Dense(relu)
    -> Dense, on 6x6x2 inputs."""
    rng = np.random.default_rng(seed)
    layers = [
        Kernel(rng.normal(size=(3, 3, 2, 4)) * 0.4, rng.normal(size=4) * 0.2, "relu", "same"),
        MaxPool(2),
        Kernel(rng.normal(size=(2, 2, 4, 5)) * 0.4, rng.normal(size=5) * 0.2, None, "same"),
        BatchNorm(
            rng.uniform(0.5, 1.5, 5), rng.normal(size=5) * 0.2, rng.normal(size=5) * 0.2, rng.uniform(0.5, 1.5, 5)
        ),
        Relu(),
        AvgPool(3),
        Flatten(),
        Kernel(rng.normal(size=(5, 6)) * 0.5, rng.normal(size=6) * 0.2, "relu"),
        Kernel(rng.normal(size=(6, 3)) * 0.5, rng.normal(size=3) * 0.2),
    ]
    return Net((6, 6, 2), layers, dtype)


def conv_input(n=3, seed=7):
    x = np.random.default_rng(seed).normal(size=(n, 2, 6, 6))
    x[:, 0, 0, 0] = 0.0
    return x


def to_cl(x):
    return np.moveaxis(x, 1, -1)


def to_cf(x):
    return np.moveaxis(x, -1, 1)


def cast(x, floatx):
    return np.asarray(x, dtype=floatx)


TARGETS_MLP = np.array([0, 3, 1, 2])
TARGETS_CONV = np.array([2, 0, 1])


# ---------------------------------------------------------------------------------------------
# LRP
# ---------------------------------------------------------------------------------------------

HIDDEN_RULES = {
    "lrp_z": ("z", {}),
    "lrp_epsilon_0_1": ("epsilon", {"epsilon": 0.1}),
    "lrp_epsilon_0_001": ("epsilon", {"epsilon": 0.001}),
    "lrp_epsilon_0_5_std_x": ("std_x", {"stdfactor": 0.5}),
    "lrp_alpha_1_beta_0": ("alpha_beta", {"alpha": 1, "beta": 0}),
    "lrp_alpha_2_beta_1": ("alpha_beta", {"alpha": 2, "beta": 1}),
    "lrp_z_plus": ("z_plus", {}),
    "lrp_gamma_0_25": ("gamma", {"gamma": 0.25}),
    "lrp_gamma": ("gamma", {"gamma": 0.5}),
    "lrp_flat": ("flat", {}),
    "lrp_w_square": ("w_square", {}),
    # bias-free variants (iNNvestigate's bias=False: IgnoreBias analyzers) and ZPlusFast
    "lrp_z_ib": ("z", {"bias": False}),
    "lrp_epsilon_0_1_ib": ("epsilon", {"epsilon": 0.1, "bias": False}),
    "lrp_epsilon_0_5_std_x_ib": ("std_x", {"stdfactor": 0.5, "bias": False}),
    "lrp_alpha_2_beta_1_ib": ("alpha_beta", {"alpha": 2, "beta": 1, "bias": False}),
    "lrp_z_plus_fast": ("z_plus_fast", {}),
}


@pytest.mark.parametrize("name", sorted(HIDDEN_RULES))
def test_lrp_hidden_rules_mlp(name, floatx):
    net = mlp(floatx)
    x = cast(mlp_input(), floatx)
    rule, params = HIDDEN_RULES[name]
    expected = to_cf(
        lrp_numpy(net, to_cl(x).astype(np.float64), TARGETS_MLP, lambda i, layer: hidden_rule(rule, **params))
    )
    got = reference_map(parse(name), net.factory(), x, TARGETS_MLP)
    assert got.dtype == np.dtype(floatx)
    assert_close(got, expected, floatx, name)


@pytest.mark.parametrize(
    "name", sorted(set(HIDDEN_RULES) - {"lrp_epsilon_0_001", "lrp_gamma", "lrp_alpha_1_beta_0"})
)  # those: MLP and presets tests
def test_lrp_hidden_rules_convnet_with_batchnorm(name, floatx):
    """Conv, max/avg pooling and iNNvestigate's BN stand-in, which gets the analyzer's rule."""
    net = convnet(floatx)
    x = cast(conv_input(), floatx)
    rule, params = HIDDEN_RULES[name]
    expected = to_cf(
        lrp_numpy(net, to_cl(x).astype(np.float64), TARGETS_CONV, lambda i, layer: hidden_rule(rule, **params))
    )
    got = reference_map(parse(name), net.factory(), x, TARGETS_CONV)
    assert_close(got, expected, floatx, name)


INPUT_RULES = {
    "lrpz_epsilon_0_1": (("z", {}), ("epsilon", {"epsilon": 0.1})),
    "lrpsign_z": (("sign", {"mu": 0.0}), ("z", {})),
    "lrpsign_epsilon_0_1_mu_0_5": (("sign", {"mu": 0.5}), ("epsilon", {"epsilon": 0.1})),
    "lrpsign_epsilon_0_25_std_x_mu_neg_0_5": (("sign", {"mu": -0.5}), ("std_x", {"stdfactor": 0.25})),
    "w2lrp_epsilon_0_1": (("w_square", {}), ("epsilon", {"epsilon": 0.1})),
    "flatlrp_alpha_1_beta_0": (("flat", {}), ("alpha_beta", {"alpha": 1, "beta": 0})),
    "zblrp_epsilon_0_1": (("zbox", {"low": -2.5, "high": 3.0}), ("epsilon", {"epsilon": 0.1})),
}


@pytest.mark.parametrize("name", sorted(INPUT_RULES))
def test_lrp_input_layer_rules_mlp(name, floatx):
    net = mlp(floatx)
    x = cast(mlp_input(mu=0.5), floatx)
    (first, first_params), (rest, rest_params) = INPUT_RULES[name]
    first_kernel = next(i for i, layer in enumerate(net.layers) if isinstance(layer, Kernel))
    expected = to_cf(
        lrp_numpy(
            net,
            to_cl(x).astype(np.float64),
            TARGETS_MLP,
            lambda i, layer: (
                hidden_rule(first, **first_params) if i == first_kernel else hidden_rule(rest, **rest_params)
            ),
        )
    )
    kwargs = {"low": -2.5, "high": 3.0} if name.startswith("zblrp") else {}
    got = reference_map(parse(name, **kwargs), net.factory(), x, TARGETS_MLP)
    assert_close(got, expected, floatx, name)


def test_sign_rule_on_a_conv_input_layer(floatx):
    net = convnet(floatx)
    x = cast(conv_input(), floatx)
    expected = to_cf(
        lrp_numpy(
            net,
            to_cl(x).astype(np.float64),
            TARGETS_CONV,
            lambda i, layer: hidden_rule("sign", mu=0.0) if i == 0 else hidden_rule("epsilon", epsilon=0.01),
        )
    )
    got = reference_map(parse("lrpsign_epsilon_0_01"), net.factory(), x, TARGETS_CONV)
    assert_close(got, expected, floatx, "lrpsign_epsilon_0_01")


@pytest.mark.parametrize(
    "name,conv_rule", [("lrp_sequential_composite_a", (1, 0)), ("lrp_sequential_composite_b", (2, 1))]
)
def test_sequential_presets(name, conv_rule, floatx):
    """Dense: epsilon 0.1; conv: alpha-beta with bias; BN: AlphaBetaX2m100."""
    net = convnet(floatx)
    x = cast(conv_input(), floatx)
    alpha, beta = conv_rule

    def rule_of(i, layer):
        if isinstance(layer, BatchNorm):
            return hidden_rule("x2m100")
        if layer.kind == "dense":
            return hidden_rule("epsilon", epsilon=0.1)
        return hidden_rule("alpha_beta", alpha=alpha, beta=beta)

    expected = to_cf(lrp_numpy(net, to_cl(x).astype(np.float64), TARGETS_CONV, rule_of))
    got = reference_map(parse(name), net.factory(), x, TARGETS_CONV)
    assert_close(got, expected, floatx, name)


def test_gamma_zero_is_innvestigates_z_rule(float64_session):
    """The gamma rule's bias choice (the modifier also acts on the bias) makes gamma = 0
    exactly iNNvestigate's Z rule, BN stand-in included."""
    net = convnet("float64")
    x = conv_input()
    got = reference_map(parse("lrp_gamma_0"), net.factory(), x, TARGETS_CONV)
    z = reference_map(parse("lrp_z"), net.factory(), x, TARGETS_CONV)
    assert_close(got, z, "float64", "gamma 0 vs Z")


def test_deep_taylor_mlp(floatx):
    """iNNvestigate's deep_taylor: z+ (alpha 1, beta 0, no bias) on every kernel layer (a Keras
    Dense always has an ``activation`` attribute, so its W-square branch for kernel layers
    "without activation" never fires), relevance starting at ReLU(logit)."""
    net = mlp(floatx)
    x = cast(mlp_input(), floatx)
    trace, logits = net.forward(to_cl(x).astype(np.float64))
    expected = to_cf(lrp_numpy(net, to_cl(x).astype(np.float64), TARGETS_MLP, lambda i, layer: hidden_rule("z_plus")))
    positive = logits[np.arange(len(x)), TARGETS_MLP] > 0
    expected = expected * positive.reshape(-1, 1, 1, 1)
    got = reference_map(parse("lrp_deep_taylor"), net.factory(), x, TARGETS_MLP)
    assert positive.any() and not positive.all()
    assert_close(got, expected, floatx, "deep_taylor")


# ---------------------------------------------------------------------------------------------
# Gradient family
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gradient", "guided_backprop", "deconvnet"])
def test_gradient_and_guided_maps(mode, floatx):
    net = convnet(floatx)
    x = cast(conv_input(), floatx)
    expected = to_cf(backward_numpy(net, to_cl(x).astype(np.float64), TARGETS_CONV, mode))
    got = reference_map(parse(mode), net.factory(), x, TARGETS_CONV)
    assert_close(got, expected, floatx, mode)


@pytest.mark.parametrize(
    "name", ["gradient_x_input", "gradient_x_sign_mu_0_5", "gradient_x_input_x_sign", "guided_backprop_x_sign"]
)
def test_post_multipliers(name, floatx):
    net = mlp(floatx)
    x = cast(mlp_input(mu=0.5), floatx)
    spec = parse(name)
    mode = "guided_backprop" if name.startswith("guided") else "gradient"
    g = to_cf(backward_numpy(net, to_cl(x).astype(np.float64), TARGETS_MLP, mode))
    x64 = x.astype(np.float64)
    expected = g * x64 if "x_input" in spec.post else g
    if "x_sign" in spec.post:
        expected = expected * sign_mu(x64, spec.params["post_mu"])
    got = reference_map(spec, net.factory(), x, TARGETS_MLP)
    assert_close(got, expected, floatx, name)


def test_integrated_gradients(floatx):
    """Points (k / steps) * x for k = 0 .. steps-1, mean gradient times x."""
    net = convnet(floatx)
    x = cast(conv_input(), floatx)
    steps = 7
    x64 = to_cl(x).astype(np.float64)
    grads = [backward_numpy(net, (k / steps) * x64, TARGETS_CONV, "gradient") for k in range(steps)]
    expected = to_cf(np.mean(grads, axis=0) * x64)
    got = reference_map(parse("integrated_gradients", steps=steps), net.factory(), x, TARGETS_CONV)
    assert_close(got, expected, floatx, "integrated_gradients")


@pytest.mark.parametrize("name", ["smoothgrad", "vargrad"])
def test_smoothgrad_and_vargrad_with_given_noise(name, floatx):
    net = convnet(floatx)
    x = cast(conv_input(), floatx)
    noise = cast(np.random.default_rng(4).normal(size=(5,) + x.shape) * 0.3, floatx)
    noisy = (x[None] + noise).astype(np.float64)  # the addition in floatx, as the harness does
    grads = np.stack([to_cf(backward_numpy(net, to_cl(xn), TARGETS_CONV, "gradient")) for xn in noisy])
    expected = grads.mean(0) if name == "smoothgrad" else grads.var(0)
    got = reference_map(parse(name, noise=noise, num_samples=5), net.factory(), x, TARGETS_CONV)
    assert_close(got, expected, floatx, name)


@pytest.mark.parametrize("which", ["mlp", "convnet"])
def test_deeplift_rescale(which, floatx):
    net = mlp(floatx) if which == "mlp" else convnet(floatx)
    x = cast(mlp_input() if which == "mlp" else conv_input(), floatx)
    targets = TARGETS_MLP if which == "mlp" else TARGETS_CONV
    x64 = to_cl(x).astype(np.float64)
    g = backward_numpy(net, x64, targets, "deeplift", reference=np.zeros_like(x64))
    expected = to_cf(g * x64)
    got = reference_map(parse("deeplift_method"), net.factory(), x, targets)
    assert_close(got, expected, floatx, "deeplift")
    if which == "mlp":  # summation to delta holds without max pooling
        _, logits = net.forward(x64)
        _, ref_logits = net.forward(np.zeros_like(x64))
        idx = np.arange(len(targets))
        delta = logits[idx, targets] - ref_logits[idx, targets]
        np.testing.assert_allclose(
            got.reshape(len(x), -1).sum(1), delta, rtol=100 * TOL[floatx], atol=100 * TOL[floatx]
        )


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------


def resize_linear_loop(v, size_out):
    """1-D linear interpolation with half-pixel centres, clamped at the ends (loop form)."""
    size_in = len(v)
    out = np.empty(size_out)
    for i in range(size_out):
        c = min(max((i + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1.0)
        lo = int(np.floor(c))
        hi = min(lo + 1, size_in - 1)
        out[i] = v[lo] * (1 - (c - lo)) + v[hi] * (c - lo)
    return out


def resize_bilinear_loop(img, shape):
    rows = np.stack([resize_linear_loop(r, shape[1]) for r in img])
    return np.stack([resize_linear_loop(c, shape[0]) for c in rows.T]).T


def gradcam_net(dtype, seed=5):
    """Conv(relu, valid) -> Conv(relu, valid) [A] -> MaxPool -> Flatten -> Dense, 9x9x3 input."""
    rng = np.random.default_rng(seed)
    layers = [
        Kernel(rng.normal(size=(3, 3, 3, 4)) * 0.5, rng.normal(size=4) * 0.2, "relu"),
        Kernel(rng.normal(size=(2, 2, 4, 5)) * 0.5, rng.normal(size=5) * 0.2 + 0.3, "relu"),
        MaxPool(2),
        Flatten(),
        Kernel(rng.normal(size=(45, 4)) * 0.5, rng.normal(size=4) * 0.2),
    ]
    return Net((9, 9, 3), layers, dtype)


def gradcam_numpy(net, x_cl, targets, layer_index):
    """Grad-CAM at the output of net.layers[layer_index] (after its fused ReLU)."""
    trace, logits = net.forward(x_cl)
    feats = trace[layer_index][2]
    g = onehot(logits, targets, value=False)
    for i in reversed(range(layer_index + 1, len(net.layers))):
        layer, (xin, z, _) = net.layers[i], trace[i]
        if isinstance(layer, Kernel):
            g = g * (z > 0) if layer.act == "relu" else g
            g = (g.reshape(len(xin), -1) @ layer.matrix().T).reshape(xin.shape)
        elif isinstance(layer, MaxPool):
            g = layer.backward(xin, g)
        elif isinstance(layer, AvgPool):
            g = (g.reshape(len(xin), -1) @ layer.matrix().T).reshape(xin.shape)
        else:
            g = g.reshape(xin.shape)
    spatial = tuple(range(1, feats.ndim - 1))
    w = g.mean(axis=spatial, keepdims=True)
    cam = np.maximum((w * feats).sum(-1), 0)
    peak = cam.max(axis=tuple(range(1, cam.ndim)), keepdims=True)
    cam = cam / np.where(peak > 0, peak, 1.0)  # an all-zero map stays zero
    if cam.ndim == 3:
        cam = np.stack([resize_bilinear_loop(c, x_cl.shape[1:3]) for c in cam])
    else:
        cam = np.stack([resize_linear_loop(c, x_cl.shape[1]) for c in cam])
    return np.broadcast_to(cam[..., None], x_cl.shape)


def test_grad_cam_named_layer(floatx):
    net = gradcam_net(floatx)
    x = cast(np.random.default_rng(6).normal(size=(3, 3, 9, 9)), floatx)
    targets = np.array([1, 3, 0])
    factory = net.factory()
    conv_name = [layer.name for layer in factory().layers if isinstance(layer, keras.layers.Conv2D)][1]
    expected = to_cf(gradcam_numpy(net, to_cl(x).astype(np.float64), targets, 1))
    spec = parse("grad_cam", layer_name="features.2")
    got = reference_map(spec, factory, x, targets, layer_names={"features.2": conv_name})
    assert_close(got, expected, floatx, "grad_cam")
    peaks = got.max(axis=(1, 2, 3))  # resizing may move the peak of 1 between samples
    assert peaks[0] == 0 and np.all((peaks[1:] > 0.5) & (peaks[1:] <= 1)), peaks  # target 1: all-zero map
    # the default layer is the last conv layer
    got_default = reference_map(parse("grad_cam"), factory, x, targets)
    assert_close(got_default, expected, floatx, "grad_cam (last conv)")
    # guided Grad-CAM: guided backprop (from the logit's value) times the Grad-CAM map
    gb = to_cf(backward_numpy(net, to_cl(x).astype(np.float64), targets, "guided_backprop"))
    got_guided = reference_map(parse("guided_grad_cam"), factory, x, targets)
    assert_close(got_guided, gb * expected, floatx, "guided_grad_cam")


def test_grad_cam_first_layer_is_upsampled_bilinearly(floatx):
    net = gradcam_net(floatx)
    x = cast(np.random.default_rng(7).normal(size=(2, 3, 9, 9)), floatx)
    targets = np.array([2, 2])
    factory = net.factory()
    first = [layer.name for layer in factory().layers if isinstance(layer, keras.layers.Conv2D)][0]
    expected = to_cf(gradcam_numpy(net, to_cl(x).astype(np.float64), targets, 0))
    got = reference_map(parse("grad_cam", layer_name=first), factory, x, targets)
    assert_close(got, expected, floatx, "grad_cam first conv")


def test_grad_cam_timeseries(floatx):
    rng = np.random.default_rng(8)
    net = Net(
        (20, 2),
        [
            Kernel(rng.normal(size=(5, 2, 4)) * 0.5, rng.normal(size=4) * 0.2, "relu"),
            MaxPool(2),
            Kernel(rng.normal(size=(3, 4, 6)) * 0.5, rng.normal(size=6) * 0.2 + 0.2, "relu"),
            AvgPool(None),
            Kernel(rng.normal(size=(6, 3)) * 0.5, rng.normal(size=3) * 0.2),
        ],
        floatx,
    )
    x = cast(rng.normal(size=(3, 2, 20)), floatx)
    targets = np.array([0, 1, 2])
    expected = to_cf(gradcam_numpy(net, to_cl(x).astype(np.float64), targets, 2))
    got = reference_map(parse("grad_cam_timeseries"), net.factory(), x, targets)
    assert_close(got, expected, floatx, "grad_cam_timeseries")


@pytest.mark.parametrize("sizes", [(3, 9), (4, 9), (7, 8), (5, 5), (6, 4)])
def test_resize_matrix_matches_tf_image_resize(sizes):
    """The float64 resize equals tf.image.resize(bilinear, antialias=False) to float32 rounding."""
    size_in, size_out = sizes
    img = np.random.default_rng(9).normal(size=(1, size_in, size_in + 1, 1)).astype(np.float32)
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        t = tf.image.resize(tf.constant(img), (size_out, size_out + 2), method="bilinear", antialias=False)
        tf_out = sess.run(t)[0, :, :, 0]
    m_h = bilinear_resize_matrix(size_in, size_out)
    m_w = bilinear_resize_matrix(size_in + 1, size_out + 2)
    ours = m_h @ img[0, :, :, 0].astype(np.float64) @ m_w.T
    np.testing.assert_allclose(ours, tf_out, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        ours, resize_bilinear_loop(img[0, :, :, 0].astype(np.float64), (size_out, size_out + 2)), atol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Refusals and identity guards
# ---------------------------------------------------------------------------------------------


def test_random_uniform_has_no_reference(floatx):
    net = mlp(floatx)
    with pytest.raises(ReferenceUnavailable):
        reference_map(parse("random_uniform"), net.factory(), mlp_input(), TARGETS_MLP)


def test_hidden_input_layer_refuses_input_rules(floatx):
    net = mlp(floatx)
    x = cast(mlp_input(), floatx)
    with pytest.raises(ReferenceUnavailable, match="trap 12"):
        reference_map(parse("lrpsign_z"), net.factory(), x, TARGETS_MLP, input_layer_hidden=True)
    # rules without an input-layer rule are still available
    reference_map(parse("lrp_z"), net.factory(), x, TARGETS_MLP, input_layer_hidden=True)


def test_input_rule_refused_when_innvestigate_would_drop_it(floatx):
    """A ZeroPadding2D in front of the first conv (trap 12), or a model whose first layer was
    already called on another tensor (trap 10): iNNvestigate would drop the rule silently."""
    rng = np.random.default_rng(10)
    kernel, bias = rng.normal(size=(3, 3, 1, 2)), rng.normal(size=2)

    def padded():
        inp = keras.Input((5, 5, 1))
        conv = keras.layers.Conv2D(2, 3, activation="relu")
        h = conv(keras.layers.ZeroPadding2D(1)(inp))
        out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
        model = keras.Model(inp, out)
        conv.set_weights([kernel, bias])
        return model

    def reused():
        inp = keras.Input((5, 5, 1))
        conv = keras.layers.Conv2D(2, 3, activation="relu")
        out = keras.layers.Dense(2)(keras.layers.Flatten()(conv(inp)))
        conv(keras.layers.Activation("linear")(keras.Input((5, 5, 1))))  # a second node
        return keras.Model(inp, out)

    x = cast(rng.normal(size=(2, 1, 5, 5)), floatx)
    for factory in (padded, reused):
        with pytest.raises(ReferenceUnavailable, match="drop"):
            reference_map(parse("lrpz_epsilon_0_1"), factory, x, np.array([0, 1]))
        with pytest.raises(ReferenceUnavailable):
            check_identities(factory, x, np.array([0, 1]))


def test_identities_are_not_checked_where_the_input_skips_the_input_layer():
    """With the input also added to a later layer's output, relevance reaches it through the Add
    without the input rule, so lrpsign_z == gradient x sign(x) fails by construction."""

    def skip():
        inp = keras.Input((3,))
        hidden = keras.layers.Dense(3, activation="relu")(inp)
        return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Add()([inp, hidden])))

    x = np.random.default_rng(3).normal(size=(2, 3))
    with pytest.raises(ReferenceUnavailable, match="also reaches a layer other than a conv/dense"):
        check_identities(skip, x, np.array([0, 1]))


def test_identities_hold_without_batchnorm(floatx):
    net = mlp(floatx)
    gaps = check_identities(net.factory(), cast(mlp_input(), floatx), TARGETS_MLP)
    assert set(gaps) == {"lrp_z_vs_gradient_x_input", "lrpsign_z_vs_gradient_x_sign", "lrp_z_vs_lrpsign_z_x_abs"}
    assert max(gaps.values()) < TOL[floatx], gaps


def test_identities_with_batchnorm(floatx):
    """With iNNvestigate's BN stand-in only lrp_z == lrpsign_z * |x| survives (trap 11)."""
    net = convnet(floatx)
    gaps = check_identities(net.factory(), cast(conv_input(), floatx), TARGETS_CONV)
    assert gaps["lrp_z_vs_lrpsign_z_x_abs"] < TOL[floatx], gaps
    assert gaps["lrp_z_vs_gradient_x_input"] > 1e-3, gaps


# ---------------------------------------------------------------------------------------------
# End to end on the fixture models' Keras twins (parity.twin), against torch autograd
# ---------------------------------------------------------------------------------------------

#: module whose output is Grad-CAM's A_k: the named conv's activation when one follows it
GRADCAM_CAPTURE = {"digits_cnn": "features.4", "digits_cnn_bn": "4", "series_cnn1d": "4"}


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "digits_cnn_bn", "series_cnn1d"])
def test_fixture_twins_against_torch_autograd(fixture, float64_session):
    """Gradient, identities and Grad-CAM through the twin's layouts and layer names."""
    torch = pytest.importorskip("torch")
    twin_module = pytest.importorskip("parity.twin")
    from fixtures.models import FIXTURES, load_inputs, load_model

    info = FIXTURES[fixture]
    model = load_model(fixture).double()
    x = load_inputs(fixture).astype(np.float64)[:4]
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = model(xt)
    targets = logits.argmax(1).detach().numpy()
    logits[torch.arange(len(x)), torch.from_numpy(targets)].sum().backward()
    grad = xt.grad.numpy()
    twin = twin_module.to_keras(model, info.input_shape, dtype="float64")

    got = reference_map(parse("gradient"), twin.fresh, x, targets)
    assert_close(got, grad, "float64", f"{fixture} gradient")
    gaps = check_identities(twin.fresh, x, targets)
    assert gaps["lrp_z_vs_lrpsign_z_x_abs"] < TOL["float64"], gaps
    if fixture != "digits_cnn_bn":
        assert max(gaps.values()) < TOL["float64"], gaps

    if info.gradcam_layer is None:
        return
    captured = {}
    module = dict(model.named_modules())[GRADCAM_CAPTURE[fixture]]
    handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        out = model(torch.from_numpy(x))
    finally:
        handle.remove()
    feats = captured["a"]
    g = torch.autograd.grad(out[torch.arange(len(x)), torch.from_numpy(targets)].sum(), feats)[0]
    spatial = tuple(range(2, feats.dim()))
    cam = torch.relu((g.mean(dim=spatial, keepdim=True) * feats).sum(1, keepdim=True))
    peak = cam.amax(dim=spatial, keepdim=True)
    cam = cam / torch.where(peak > 0, peak, torch.ones_like(peak))
    mode = "bilinear" if feats.dim() == 4 else "linear"
    cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)
    expected = np.broadcast_to(cam.detach().numpy(), x.shape)
    got = reference_map(
        parse("grad_cam", layer_name=info.gradcam_layer), twin.fresh, x, targets, layer_names=twin.layer_names
    )
    assert_close(got, expected, "float64", f"{fixture} grad_cam")


def test_standalone_keras_relu_layers(floatx):
    """A standalone keras ReLU layer is outside iNNvestigate 2.1.2's convnet list (its warning
    check raises NotImplementedError), so LRP runs with the model checks off; the layer takes its
    gradient there, which equals passing relevance on wherever relevance is proportional to the
    ReLU's output (Z, epsilon), so those maps equal the fused model's. iNNvestigate's Deconvnet
    crashes copying the layer: refused clearly. The gradient and the own DeepLIFT code treat it
    like a fused ReLU."""
    net = mlp(floatx)
    x = cast(mlp_input(), floatx)
    fused = net.factory()

    def standalone():
        model = fused()
        inp = keras.Input(model.input_shape[1:])
        h = inp
        for layer in model.layers[1:]:
            if getattr(layer, "activation", None) is keras.activations.relu:
                layer.activation = keras.activations.linear
                h = keras.layers.ReLU()(layer(h))
            else:
                h = layer(h)
        return keras.Model(inp, h)

    with pytest.raises(ReferenceUnavailable, match="standalone keras ReLU"):
        reference_map(parse("deconvnet"), standalone, x, TARGETS_MLP)
    for name in ("gradient", "deeplift_method", "guided_backprop", "lrp_z", "lrp_epsilon_0_1"):
        assert_close(
            reference_map(parse(name), standalone, x, TARGETS_MLP),
            reference_map(parse(name), fused, x, TARGETS_MLP),
            floatx,
            name,
        )


# ---------------------------------------------------------------------------------------------
# iNNvestigate's own analyzer names
# ---------------------------------------------------------------------------------------------

#: keywords both sides get: the ones a name needs, and iNNvestigate's integrated-gradients steps
#: (the signxai name keeps its own default of 50)
NAME_KWARGS = {
    "deep_taylor.bounded": {"low": -2.5, "high": 3.0},
    "lrp.alpha_beta": {"alpha": 2},
    "integrated_gradients": {"steps": 64},
}
#: names whose maps are random (their noise is iNNvestigate's own draw): compared by parameters
RANDOM_NAMES = {"random", "smoothgrad"}


def _innvestigate_names():
    import innvestigate.analyzer as ia

    return sorted(set(ia.analyzers) - RANDOM_NAMES)


def test_random_innvestigate_names_have_its_noise_parameters():
    """Random: the input plus N(0, 1) noise (stddev=1); SmoothGrad: 64 samples of N(0, 1) noise
    when given iNNvestigate's defaults in its keyword spellings."""
    import innvestigate.analyzer as ia

    assert RANDOM_NAMES <= set(ia.analyzers)
    assert (parse("random").family, parse("random").params["stddev"]) == ("input", 1.0)
    smooth = parse("smoothgrad", augment_by_n=64, noise_scale=1.0)
    assert (smooth.family, smooth.params["num_samples"], smooth.params["noise_level"]) == ("smoothgrad", 64, 1.0)


@pytest.mark.parametrize("name", _innvestigate_names())
def test_every_create_analyzer_name_computes_what_create_analyzer_does(name, floatx):
    """``parse(name)`` through the harness equals ``innvestigate.create_analyzer(name)`` itself
    (so the alias table means what iNNvestigate's names mean); the names without a meaning for
    a PyTorch model are refused with the reason."""
    import innvestigate.analyzer as ia

    kwargs = NAME_KWARGS.get(name, {})
    try:
        spec = parse(name, **kwargs)
    except ValueError as err:
        assert "is not supported" in str(err), err
        assert name in ("lrp", "lrp.sequential_preset_b_flat_until_idx")
        return
    net = mlp(floatx)
    x = cast(mlp_input(), floatx)
    analyzer = ia.create_analyzer(name, net.factory()(), neuron_selection_mode="index", **kwargs)
    expected = to_cf(np.asarray(analyzer.analyze(to_cl(x), neuron_selection=TARGETS_MLP)))
    got = reference_map(spec, net.factory(), x, TARGETS_MLP)
    assert_close(got, expected, floatx, name)
