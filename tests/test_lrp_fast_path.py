"""The LRP fast path against the general path and against a hook-free reference.

The composite lets rules that divide by a layer's own output (Z, epsilon, std_x epsilon, SIGN)
take that output from the forward pass, keeps a ReLU's output instead of the layer output
before it when the premise holds (see ``composite._Slot``), computes transposes by the layers'
own adjoints (``convolution_backward``, ``matmul``), and takes alpha-beta's shortcut for inputs
without negative entries. Every one of those must give the general path's numbers:

* fast path (default composite) == general path (``LRPComposite(..., reuse_outputs=False)``),
  float64, relative error <= 1e-12, on random models (in-place and out-of-place ReLUs, max and
  average pooling, BatchNorm, dense layers, a module called twice);
* both == a layer-by-layer reference written here without hooks (autograd transposes);
* the fall-backs: a ReLU output whose premise fails (a Sigmoid after it), epsilon = 0, an
  in-place LeakyReLU that overwrites a kept output;
* adjoints == autograd transposes, bitwise, for conv 1d/2d/3d and dense layers;
* nothing stays referenced after a call (weak references to the layers' activations die).
"""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parity.compare import relative_error  # noqa: E402
from signxai.torch_signxai.methods.gradient import attribute  # noqa: E402
from signxai.torch_signxai.methods.grammar import parse  # noqa: E402
from signxai.torch_signxai.methods.lrp.composite import LRPComposite  # noqa: E402
from signxai.torch_signxai.methods.lrp.plan import plan_for  # noqa: E402
from signxai.torch_signxai.methods.lrp.rules import (  # noqa: E402
    Affine,
    AlphaBetaRule,
    EpsilonRule,
    SignRule,
    ZRule,
)
from signxai.torch_signxai.methods.lrp.views import (  # noqa: E402
    batchnorm_view as _batchnorm_view,
)
from signxai.torch_signxai.methods.lrp.views import (
    conv_adjoint as _conv_adjoint,
)
from signxai.torch_signxai.methods.lrp.views import (
    kernel_view as _kernel_view,
)
from signxai.torch_signxai.methods.lrp.views import (
    pool_view as _pool_view,
)
from signxai.torch_signxai.methods.private import private_view  # noqa: E402
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps  # noqa: E402

#: methods whose hidden or input rule takes the fast path, and some that do not
METHODS = [
    "lrp_z",
    "lrp_epsilon_0_1",
    "lrp_epsilon_0_25_std_x",
    "lrpsign_epsilon_0_1",
    "lrpsign_z",
    "lrpz_epsilon_0_1",
    "w2lrp_epsilon_0_1",
    "flatlrp_z",
    "zblrp_epsilon_0_1_VGG16ILSVRC",
    "lrp_alpha_1_beta_0",
    "lrp_alpha_2_beta_1",
    "lrp_gamma",
    "lrp_epsilon_0_5_std_x",
    "lrpsign_epsilon_0_25_std_x",
]

TOLERANCE = 1e-12


def _general(name: str, model: nn.Module, x: np.ndarray, targets) -> np.ndarray:
    """The same explanation with every rule recomputing its layer's output."""
    composite = LRPComposite(plan_for(parse(name)), "innvestigate", reuse_outputs=False)
    with private_view(model) as view:
        return attribute(view, torch.from_numpy(x), targets, from_logit=True, composite=composite).numpy()


# ---------------------------------------------------------------------------------------------
# a hook-free reference for chains of layers (nn.Sequential of supported leaves)


def _reference(name: str, model: nn.Sequential, x: np.ndarray, targets) -> np.ndarray:
    """LRP of a chain of layers, layer by layer: rules on Affine views without adjoints (every
    transpose by autograd), ReLU passes relevance, max pooling and flatten take their gradient."""
    plan = plan_for(parse(name))
    layers = list(model)
    inputs, h = [], torch.from_numpy(x)
    with torch.no_grad():
        for layer in layers:
            inputs.append(h)
            h = layer(h.clone())
    logits = h
    rows = torch.arange(logits.shape[0])
    index = torch.as_tensor(targets)
    r = torch.zeros_like(logits)
    r[rows, index] = logits[rows, index]
    kernels = [i for i, layer in enumerate(layers) if isinstance(layer, (nn.Conv2d, nn.Linear))]
    for i in reversed(range(len(layers))):
        layer, x_i = layers[i], inputs[i]
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            view = _kernel_view(layer)
            view = Affine(view.weight, view.bias, view.apply)  # no adjoint: autograd transposes
            rule = plan.dense if isinstance(layer, nn.Linear) else plan.conv
            if plan.input is not None and i == kernels[0]:
                rule = plan.input
            r = rule.relevance(view, x_i, r)
        elif isinstance(layer, nn.BatchNorm2d):
            view = _batchnorm_view(layer, "innvestigate")
            r = plan.batchnorm.relevance(Affine(view.weight, view.bias, view.apply), x_i, r)
        elif isinstance(layer, nn.AvgPool2d):
            r = plan.average_pool.relevance(_pool_view(layer), x_i, r)
        elif isinstance(layer, nn.ReLU):
            pass
        else:  # max pooling, flatten: their gradient
            probe = x_i.clone().requires_grad_(True)
            (r,) = torch.autograd.grad(layer(probe), probe, grad_outputs=r)
    return r.numpy()


@st.composite
def chains(draw):
    """Random float64 chains: conv blocks (in-place or not ReLU, optional BN, max or average
    pooling), then dense layers; seeded weights with biases of both signs."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    channels, side = draw(st.integers(1, 3)), 8
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 2))):
        width = draw(st.integers(2, 5))
        layers.append(nn.Conv2d(channels, width, 3, padding=draw(st.sampled_from([0, 1]))))
        side = side - 2 if layers[-1].padding == (0, 0) else side
        if draw(st.booleans()):
            bn = nn.BatchNorm2d(width)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)
            layers.append(bn)
        layers.append(nn.ReLU(inplace=draw(st.booleans())))
        if side >= 4:
            layers.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
            side //= 2
        channels = width
    layers += [
        nn.Flatten(),
        nn.Linear(channels * side * side, 6),
        nn.ReLU(inplace=draw(st.booleans())),
        nn.Linear(6, 4),
    ]
    model = nn.Sequential(*layers).double().eval()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.uniform_(-0.2, 0.2)
    x = np.random.default_rng(seed).standard_normal((3, model[0].in_channels, 8, 8))
    return model, x


@settings(max_examples=10)
@given(chains(), st.sampled_from(METHODS))
def test_fast_path_equals_general_path_and_reference(chain, name):
    model, x = chain
    targets = [0, 3, 1]
    fast = calculate_relevancemaps(name, x, model, neuron_selection=targets)
    general = _general(name, model, x, targets)
    assert relative_error(fast, general) <= TOLERANCE
    assert relative_error(general, _reference(name, model, x, targets)) <= 1e-10


def test_fast_path_equals_general_path_on_every_method_of_one_model():
    torch.manual_seed(3)
    model = (
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.BatchNorm2d(5),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(20, 7),
            nn.ReLU(),
            nn.Linear(7, 3),
        )
        .double()
        .eval()
    )
    x = np.random.default_rng(3).standard_normal((4, 2, 8, 8))
    for name in METHODS + [
        "lrp_epsilon_1",
        "lrpsign_epsilon_0_1_mu_0_5",
        "lrp_z_plus",
        "lrp_sequential_composite_a",
        "lrp_sequential_composite_b",
        "lrp_flat",
    ]:
        fast = calculate_relevancemaps(name, x, model, neuron_selection=1)
        general = _general(name, model, x, 1)
        assert relative_error(fast, general) <= TOLERANCE, name
        np.testing.assert_array_equal(np.isnan(fast), np.isnan(general))


# ---------------------------------------------------------------------------------------------
# fall-backs of the fast path


def _compare(model: nn.Module, x: np.ndarray, names, targets=0) -> None:
    for name in names:
        fast = calculate_relevancemaps(name, x, model, neuron_selection=targets)
        general = _general(name, model, x, targets)
        assert relative_error(fast, general) <= TOLERANCE, name


def test_relu_premise_fails_behind_a_sigmoid():
    # relevance passes the Sigmoid unchanged, and sigmoid(0) = 0.5 multiplies the next layer's
    # relevance: it is not zero where the ReLU output is, so the kept ReLU output cannot stand in
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Sigmoid(), nn.Linear(8, 3)).double().eval()
    x = np.random.default_rng(0).standard_normal((6, 5))
    _compare(model, x, ["lrp_epsilon_0_1", "lrp_z", "lrpsign_epsilon_0_1"])


def test_epsilon_zero_divides_by_the_true_output():
    # epsilon 0 has no safe divide: a kept ReLU output (zeros where the layer output was
    # negative) would divide zero by zero; the fast path must recompute the output instead
    torch.manual_seed(1)
    model = (
        nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4, bias=False))
        .double()
        .eval()
    )
    x = np.random.default_rng(1).standard_normal((3, 1, 6, 6))
    _compare(model, x, ["lrp_epsilon_0", "lrp_z"])
    assert not np.isnan(calculate_relevancemaps("lrp_epsilon_0", x, model)).any()


def test_inplace_leaky_relu_overwrites_a_kept_output():
    # LeakyReLU is a Keras layer of its own (no relevance hook, its gradient); in place, it
    # overwrites the conv output the fast path kept: the rule must recompute it
    torch.manual_seed(2)
    model = (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)
        )
        .double()
        .eval()
    )
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 5))
    _compare(model, x, ["lrp_epsilon_0_1", "lrp_z", "lrpsign_z"])


class _Twice(nn.Module):
    """One dense layer and one ReLU module, each called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.relu = nn.ReLU()
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.relu(self.inner(self.relu(self.inner(x)))))


def test_module_called_twice_keeps_one_slot_per_call():
    torch.manual_seed(4)
    model = _Twice().double().eval()
    x = np.random.default_rng(4).standard_normal((5, 6))
    _compare(model, x, ["lrp_epsilon_0_1", "lrp_z", "lrp_alpha_1_beta_0"])


def test_float32_fast_path_matches_general_path():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    ).eval()
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    for name in ["lrp_epsilon_0_1", "lrp_z", "lrpsign_epsilon_0_1", "lrp_alpha_1_beta_0"]:
        fast = calculate_relevancemaps(name, x, model)
        general = _general(name, model, x, None)
        assert relative_error(fast, general) <= 1e-6, name


# ---------------------------------------------------------------------------------------------
# adjoints and the alpha-beta shortcut


def _autograd_transpose(view: Affine, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return Affine(view.weight, view.bias, view.apply).transpose(v, like)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(3, 4, 3),
        nn.Conv1d(3, 4, 5, stride=2, padding=2, dilation=1),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.Conv3d(2, 3, 3, padding=1, stride=2),
    ],
)
def test_conv_adjoint_is_autograd_transpose(conv):
    conv = conv.double()
    view = _kernel_view(conv)
    assert view.adjoint is not None
    x = torch.randn(2, conv.in_channels, *([9] * (conv.weight.ndim - 2)), dtype=torch.float64)
    v = torch.randn_like(conv(x))
    assert torch.equal(view.transpose(v, x), _autograd_transpose(view, v, x))
    assert torch.equal(
        view.transpose(v, x, lambda t: t.clamp(min=0)),
        Affine(view.weight.clamp(min=0), None, view.apply).transpose(v, x),
    )


def test_conv_without_plain_zero_padding_uses_autograd():
    assert _conv_adjoint(nn.Conv2d(2, 2, 3, padding="same")) is None
    assert _conv_adjoint(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")) is None


@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 7)])
def test_linear_adjoint_is_autograd_transpose(shape):
    layer = nn.Linear(7, 5).double()
    view = _kernel_view(layer)
    x = torch.randn(*shape, dtype=torch.float64)
    v = torch.randn(*shape[:-1], 5, dtype=torch.float64)
    assert torch.equal(view.transpose(v, x), _autograd_transpose(view, v, x))


def test_batchnorm_adjoint_is_autograd_transpose():
    bn = nn.BatchNorm2d(3).double().eval()
    bn.running_var.uniform_(0.5, 2)
    view = _batchnorm_view(bn, "innvestigate")
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    v = torch.randn_like(x)
    assert torch.equal(view.transpose(v, x), _autograd_transpose(view, v, x))


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (2.0, 1.0)])
@pytest.mark.parametrize("bias", [True, False])
def test_alpha_beta_shortcut_for_nonnegative_inputs(alpha, beta, bias):
    torch.manual_seed(6)
    conv = nn.Conv2d(3, 4, 3, padding=1).double().requires_grad_(False)
    fast = _kernel_view(conv)
    full = Affine(fast.weight, fast.bias, fast.apply)  # no channel axis: no shortcut
    x = torch.relu(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    r = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    rule = AlphaBetaRule(alpha, beta, bias)
    expected = rule.relevance(full, x, r)
    assert relative_error(rule.relevance(fast, x, r).numpy(), expected.numpy()) <= TOLERANCE


@pytest.mark.parametrize("rule", [ZRule(), EpsilonRule(0.1), SignRule(0.0)])
def test_rules_take_the_output_they_would_compute(rule):
    layer = _kernel_view(nn.Linear(4, 3).double().requires_grad_(False))
    x = torch.randn(5, 4, dtype=torch.float64)
    r = torch.randn(5, 3, dtype=torch.float64)
    assert rule.reuses_output
    assert torch.equal(rule.relevance(layer, x, r, z=layer(x)), rule.relevance(layer, x, r))


# ---------------------------------------------------------------------------------------------
# nothing held after a call


def test_nothing_stays_referenced_after_a_call():
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).eval()
    refs: list = []

    def keep(module, inputs, output):
        refs.extend(weakref.ref(t) for t in (*inputs, output) if isinstance(t, torch.Tensor))

    handles = [module.register_forward_hook(keep) for module in model]
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for name in ["lrp_epsilon_0_1", "lrp_z", "lrpsign_epsilon_0_1", "lrp_alpha_1_beta_0"]:
        refs.clear()
        calculate_relevancemaps(name, x, model)
        gc.collect()
        assert refs and all(ref() is None for ref in refs), name
    for handle in handles:
        handle.remove()
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_fast_path_is_taken_on_a_relu_chain(monkeypatch):
    # every conv/dense layer of a plain ReLU chain reuses its output (the ReLU output for those
    # followed by a ReLU), so no rule recomputes a layer output
    from signxai.torch_signxai.methods.lrp import hooks

    outputs = []
    original = hooks.Slot.output

    def recording(self, r):
        z = original(self, r)
        outputs.append((self.fused, z is not None))
        return z

    monkeypatch.setattr(hooks.Slot, "output", recording)
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).eval()
    x = np.random.default_rng(8).standard_normal((2, 3, 8, 8)).astype(np.float32)
    calculate_relevancemaps("lrpsign_epsilon_0_1", x, model)
    assert outputs == [(False, True), (True, True), (True, True), (True, True)]


@pytest.mark.parametrize(
    "rule", [AlphaBetaRule(1.0, 0.0), AlphaBetaRule(2.0, 1.0), AlphaBetaRule(1.0, 0.0, bias=False)]
)
@pytest.mark.parametrize("signed", [False, True])
def test_dense_weights_modified_in_row_blocks(rule, signed):
    # a large dense weight is modified block by block (no whole modified copy); the blocks'
    # forward and transpose equal the whole modified layer's
    from signxai.torch_signxai.methods.lrp.views import linear_adjoint as _linear_adjoint

    torch.manual_seed(9)
    weight, bias = torch.randn(11, 7, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    whole = Affine(weight, bias, torch.nn.functional.linear, _linear_adjoint, -1)
    blocks = Affine(weight, bias, torch.nn.functional.linear, _linear_adjoint, -1, row_block=3)
    x = torch.randn(4, 7, dtype=torch.float64)
    x = x if signed else x.clamp(min=0)
    r = torch.randn(4, 11, dtype=torch.float64)
    expected = rule.relevance(whole, x, r)
    assert relative_error(rule.relevance(blocks, x, r).numpy(), expected.numpy()) <= TOLERANCE


def test_vgg_sized_dense_layer_gets_row_blocks():
    view = _kernel_view(nn.Linear(25088, 256))
    assert view.row_block is not None and view.row_block * 25088 <= 1 << 20
    assert _kernel_view(nn.Linear(64, 10)).row_block is None


# ---------------------------------------------------------------------------------------------
# channels-last batches (a channels-last input tensor runs channels-last, opt-in)


class _ViewFlatten(nn.Module):
    """Features flattened with ``.view``, which a channels-last batch cannot do."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = self.features(x)
        return self.classifier(h.view(h.size(0), -1))


def _layout_cases():
    torch.manual_seed(10)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 4),
    ).eval()
    x = np.random.default_rng(10).standard_normal((5, 3, 8, 8)).astype(np.float32)
    return model, x


def _channels_last(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("gradient", {}),
        ("smoothgrad", {"num_samples": 4, "seed": 1}),
        ("integrated_gradients", {"steps": 4}),
        ("lrp_epsilon_0_1", {}),
        ("lrpsign_z", {}),
        ("lrp_alpha_1_beta_0", {}),
        ("grad_cam", {"layer_name": "3"}),
        ("guided_backprop", {}),
    ],
)
def test_channels_last_batch_matches_the_default_layout(name, kwargs):
    from signxai.torch_signxai.methods import io

    model, x = _layout_cases()
    assert io.to_batch(x, model, single=False).tensor.is_contiguous()
    assert io.to_batch(_channels_last(x), model, single=False).tensor.is_contiguous(memory_format=torch.channels_last)
    got = calculate_relevancemaps(name, _channels_last(x), model, **kwargs)
    assert got.flags["C_CONTIGUOUS"]
    expected = calculate_relevancemaps(name, x, model, **kwargs)
    assert relative_error(got, expected) <= 1e-5


def test_model_that_views_its_features_runs_in_the_default_layout():
    torch.manual_seed(11)
    model = _ViewFlatten().eval()
    x = np.random.default_rng(11).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(RuntimeError, match="view"):
        model(_channels_last(x))
    for name in ["gradient", "lrp_epsilon_0_1", "smoothgrad"]:
        kwargs = {"seed": 0} if name == "smoothgrad" else {}
        got = calculate_relevancemaps(name, _channels_last(x), model, **kwargs)
        np.testing.assert_array_equal(got, calculate_relevancemaps(name, x, model, **kwargs))
