"""The LRP family end to end: whole models against the numpy reference of ``test_lrp_rules.py``
(written from iNNvestigate 2.1.2's formulas, every layer an explicit matrix), the input-layer rule
on the first layer *executed*, BatchNorm in both APIs, pooling, conservation identities, every LRP
name of ``method_names.txt`` on the fixture models, model hygiene, unsupported layers, and
Hypothesis on random dense/conv stacks.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):  # fixtures/, and the shared numpy reference
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from test_lrp_rules import (  # noqa: E402
    API_METHODS,
    Method,
    assert_close,
    leaf_chain,
    np_logits,
    numpy_layers,
    reference,
    reference_batch,
    rule_alpha_beta,
    rule_epsilon,
    rule_flat,
    rule_gamma,
    rule_sign,
    rule_std_x,
    rule_w_square,
    rule_z,
    rule_z_plus,
    rule_zbox,
)

from fixtures.models import load_inputs, load_model  # noqa: E402
from signxai.torch_signxai import calculate_relevancemap as native_relevancemap  # noqa: E402
from signxai.torch_signxai.methods.grammar import parse  # noqa: E402
from signxai.torch_signxai.methods.lrp import UnsupportedLayerError  # noqa: E402
from signxai.torch_signxai.methods.wrappers import (  # noqa: E402
    calculate_relevancemap,
    calculate_relevancemaps,
)

METHOD_NAMES = Path(__file__).resolve().parents[2] / "shared" / "method_names.txt"


def _lrp_names() -> list[str]:
    names = [line.strip() for line in METHOD_NAMES.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#") and not n.startswith("[")]
    return [n for n in names if parse(n).family == "lrp"]


LRP_NAMES = _lrp_names()


def test_the_name_list_has_the_lrp_family():
    assert len(LRP_NAMES) >= 100
    assert {
        "lrp_z",
        "lrpsign_z",
        "zblrp_z_VGG16ILSVRC",
        "w2lrp_z",
        "flatlrp_z",
        "lrpz_epsilon_0_1",
        "lrp_sequential_composite_a",
        "lrp_sequential_composite_b",
        "lrp_epsilon_0_1_std_x",
        "lrp_gamma",
        "lrp_w_square",
        "lrp_flat",
        "lrp_z_plus",
    } <= set(LRP_NAMES)


# =============================================================================================
# Fixture models (float64 copies) against the reference
# =============================================================================================


def execution_chain(fixture: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules in the order the forward pass runs them (digits_cnn registers its classifier
    before its features)."""
    if fixture == "digits_cnn":
        return [(f"features.{n}", m) for n, m in model.features.named_children()] + [
            (f"classifier.{n}", m) for n, m in model.classifier.named_children()
        ]
    return leaf_chain(model)


def _fixture64(fixture: str):
    model = copy.deepcopy(load_model(fixture)).double()
    x = load_inputs(fixture)[:3].astype(np.float64)
    layers = numpy_layers(execution_chain(fixture, model), x.shape[1:])
    np.testing.assert_allclose(
        np_logits(layers, x), model(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12
    )
    return model, x, layers


FIXTURE_METHODS = {
    "lrp_z": Method(rule_z()),
    "lrp_epsilon_0_1": Method(rule_epsilon(0.1)),
    "lrp_epsilon_0_25_std_x": Method(rule_std_x(0.25)),
    "lrp_alpha_2_beta_1": Method(rule_alpha_beta(2, 1)),
    "lrp_z_plus": Method(rule_z_plus),
    "lrp_gamma": Method(rule_gamma(0.5)),
    "lrp_w_square": Method(rule_w_square),
    "lrp_flat": Method(rule_flat),
    "lrpz_epsilon_0_1": Method(rule_epsilon(0.1), rule_z()),
    "lrpsign_epsilon_0_1_mu_0_5": Method(rule_epsilon(0.1), rule_sign(0.5)),
    "w2lrp_alpha_1_beta_0": Method(rule_alpha_beta(1, 0), rule_w_square),
    "flatlrp_epsilon_1": Method(rule_epsilon(1.0), rule_flat),
    "zblrp_epsilon_0_1_VGG16ILSVRC": Method(rule_epsilon(0.1), rule_zbox(-123.68, 151.061)),
    "lrp_sequential_composite_a": Method(preset="a"),
    "lrpsign_sequential_composite_b": Method(input=rule_sign(0.0), preset="b"),
    "lrp_deep_taylor": Method(deep_taylor=True),
}


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "digits_cnn_bn", "series_cnn1d"])
def test_fixture_models_against_the_reference(fixture):
    model, x, layers = _fixture64(fixture)
    targets = [0, 1, 2]
    for name, method in FIXTURE_METHODS.items():
        got = calculate_relevancemaps(name, x, model, neuron_selection=targets)
        assert_close(got, reference_batch(layers, x, targets, method))


def test_input_rule_goes_to_the_first_layer_executed_not_the_first_registered():
    model, x, layers = _fixture64("digits_cnn")
    assert next(n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))) == "classifier.1"
    assert layers[0].name == "features.0"
    registered_first = [layer.name for layer in layers].index("classifier.1")
    for name in [
        "lrpz_epsilon_0_1",
        "lrpsign_epsilon_0_1",
        "w2lrp_epsilon_0_1",
        "flatlrp_epsilon_0_1",
        "zblrp_epsilon_0_1_VGG16ILSVRC",
    ]:
        input_rule = {
            "lrpz": rule_z(),
            "lrpsign": rule_sign(0.0),
            "w2lrp": rule_w_square,
            "flatlrp": rule_flat,
            "zblrp": rule_zbox(-123.68, 151.061),
        }[name.split("_")[0]]
        method = Method(rule_epsilon(0.1), input_rule)
        got = calculate_relevancemaps(name, x, model, neuron_selection=[3, 3, 3])
        assert_close(got, reference_batch(layers, x, [3, 3, 3], method))
        wrong = reference_batch(layers, x, [3, 3, 3], method, input_layer=registered_first)
        assert not np.allclose(got, wrong, rtol=1e-6), name


class _Untraced(nn.Module):
    """A model fx cannot trace (a branch on the batch size) around ``model``: LRP runs it as a chain."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        if x.shape[0] > 10**9:
            return x
        return self.model(x)


#: (name, keywords) -> what iNNvestigate does: Flat (or another rule) on the conv/dense layers
#: numbered 0..k in execution order, the input rule still first, the analyzer's rules elsewhere
UNTIL_METHODS = {
    ("lrp.sequential_preset_b_flat_until_idx", 1): Method(input=rule_flat, preset="b", until=(1, rule_flat)),
    ("lrp.sequential_preset_b_flat_until_idx", 2): Method(input=rule_flat, preset="b", until=(2, rule_flat)),
    ("lrp_epsilon_0_1", 1, "z"): Method(rule_epsilon(0.1), until=(1, rule_z())),
    ("lrpsign_epsilon_0_1", 2, "w_square"): Method(rule_epsilon(0.1), rule_sign(0.0), until=(2, rule_w_square)),
}


@pytest.mark.parametrize("traced", [True, False], ids=["graph", "chain"])
def test_until_layer_idx_numbers_the_conv_dense_layers_executed(traced):
    """digits_cnn registers its classifier first and runs its features first; its four conv/dense
    layers are numbered as they run, in the graph and in a chain alike."""
    model, x, layers = _fixture64("digits_cnn")
    assert sum(layer.op == "linear" for layer in layers) == 4
    subject = model if traced else _Untraced(model)
    targets = [3, 1, 0]
    for (name, index, *rule), method in UNTIL_METHODS.items():
        kwargs = {"until_layer_idx": index, **({"until_layer_rule": rule[0]} if rule else {})}
        got = calculate_relevancemaps(name, x, subject, neuron_selection=targets, **kwargs)
        assert_close(got, reference_batch(layers, x, targets, method))
        kwargs["until_layer_idx"] = None
        without = calculate_relevancemaps(name, x, subject, neuron_selection=targets, **kwargs)
        assert not np.allclose(got, without, rtol=1e-6), (name, index)
    preset_b_flat = calculate_relevancemaps("flatlrp_sequential_composite_b", x, subject, neuron_selection=targets)
    np.testing.assert_array_equal(
        calculate_relevancemaps("lrp.sequential_preset_b_flat_until_idx", x, subject, neuron_selection=targets),
        preset_b_flat,
    )


def test_until_layer_idx_is_checked():
    for kwargs, words in [
        ({"until_layer_idx": 2}, "needs until_layer_rule"),
        ({"until_layer_idx": -1, "until_layer_rule": "flat"}, "int >= 0"),
        ({"until_layer_idx": 1.5, "until_layer_rule": "flat"}, "int >= 0"),
        ({"until_layer_idx": 1, "until_layer_rule": "sequential_composite_a"}, "single rule"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse("lrp_epsilon_0_1", **kwargs)
    with pytest.raises(ValueError, match="Deep Taylor has none"):
        parse("lrp_deep_taylor", until_layer_idx=1, until_layer_rule="flat")


# =============================================================================================
# BatchNorm: iNNvestigate's linearisation (TF-compatible API) and the true map (native API)
# =============================================================================================


def _with_running_stats(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) * 2.5 + 0.2)
    return model.eval()


BN_MODELS = {
    "dense_bn": (lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)), (5,)),
    "conv_bn": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
        ),
        (2, 4, 4),
    ),
}

BN_NAMES = [
    "lrp_z",
    "lrp_epsilon_0_1",
    "lrp_epsilon_0_5_std_x",
    "lrp_alpha_1_beta_0",
    "lrp_alpha_2_beta_1",
    "lrp_z_plus",
    "lrp_gamma",
    "lrp_w_square",
    "lrp_flat",
    "lrpsign_epsilon_0_1",
    "lrp_sequential_composite_a",
    "lrp_sequential_composite_b",
    "lrp_deep_taylor",
]


@pytest.mark.parametrize("model_name", sorted(BN_MODELS))
def test_batchnorm_in_both_apis(model_name):
    build, shape = BN_MODELS[model_name]
    model = _with_running_stats(build().double(), 11)
    rng = np.random.default_rng(12)
    x = rng.normal(size=shape)
    layers = numpy_layers(leaf_chain(model), shape)
    methods = {
        **API_METHODS,
        **FIXTURE_METHODS,
        "lrp_alpha_1_beta_0": Method(rule_alpha_beta(1, 0)),
        "lrpsign_epsilon_0_1": Method(rule_epsilon(0.1), rule_sign(0.0)),
    }
    logits = model(torch.from_numpy(x)[None]).detach().numpy()[0]
    target = int(np.argmax(logits))
    for name in BN_NAMES:
        tf_map = calculate_relevancemap(name, x, model, neuron_selection=target)
        native = native_relevancemap(model, x, method=name, target_class=target)
        assert_close(tf_map, reference(layers, x.ravel(), target, methods[name], bn="innvestigate").reshape(shape))
        assert_close(native, reference(layers, x.ravel(), target, methods[name], bn="exact").reshape(shape))
        # the bias of the BN stand-in matters to these (W-square and Flat pass relevance through a
        # diagonal map as it is, Z+ only sees the sign of its scale, Deep Taylor takes BN's gradient)
        if name in (
            "lrp_z",
            "lrp_epsilon_0_1",
            "lrp_epsilon_0_5_std_x",
            "lrp_alpha_2_beta_1",
            "lrp_gamma",
            "lrpsign_epsilon_0_1",
        ):
            assert np.any(tf_map != 0), name
            assert not np.allclose(tf_map, native, rtol=1e-6), name


def test_batchnorm_linearisation_is_innvestigates_not_the_true_map():
    """lrp_z through one BatchNorm1d: R_in = x * k * R / (k x + c) with iNNvestigate's
    k = gamma / sqrt(var**2 + eps), c = beta - mean / sqrt(var**2 + eps) (TF-compatible API)
    and with gamma / sqrt(var + eps), beta - gamma * mean / sqrt(var + eps) (native API)."""
    bn = nn.BatchNorm1d(3, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -0.5, 1.5]))
        bn.bias.copy_(torch.tensor([0.3, 0.1, -0.2]))
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 0.25]))
        bn.running_var.copy_(torch.tensor([0.25, 2.0, 1.0]))
    model = nn.Sequential(bn).double().eval()
    x = np.array([1.0, 2.0, -0.5])
    target = 0
    y = model(torch.from_numpy(x)[None]).detach().numpy()[0]
    g, b, m, v = (t.detach().numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
    for mode, api in (
        ("innvestigate", lambda: calculate_relevancemap("lrp_z", x, model, neuron_selection=target)),
        ("exact", lambda: native_relevancemap(model, x, method="lrp_z", target_class=target)),
    ):
        if mode == "innvestigate":
            k, c = g / np.sqrt(v**2 + 1e-3), b - m / np.sqrt(v**2 + 1e-3)
        else:
            k, c = g / np.sqrt(v + 1e-3), b - g * m / np.sqrt(v + 1e-3)
        expected = np.zeros(3)
        expected[target] = x[target] * k[target] * y[target] / (k[target] * x[target] + c[target])
        assert_close(api(), expected)


# =============================================================================================
# Pooling
# =============================================================================================


def _pool_model(pool: nn.Module, dim: int = 2) -> tuple[nn.Module, tuple]:
    conv = nn.Conv2d(1, 2, 3, padding=1) if dim == 2 else nn.Conv1d(1, 2, 3, padding=1)
    size = (1, 4, 4) if dim == 2 else (1, 8)
    features = 2 * (4 if dim == 2 else 4)
    model = nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), nn.Linear(features, 3))
    return _with_running_stats(model.double(), 21 + dim), size


@pytest.mark.parametrize(
    "name",
    [
        "lrp_z",
        "lrp_alpha_2_beta_1",
        "lrp_epsilon_1",
        "lrp_w_square",
        "lrp_flat",
        "lrp_sequential_composite_b",
        "lrp_deep_taylor",
    ],
)
@pytest.mark.parametrize("pool", ["avg1d", "avg2d", "adaptive1d", "max1d", "max2d"])
def test_pooling(pool, name):
    dim = 1 if pool.endswith("1d") else 2
    module = {
        "avg1d": nn.AvgPool1d(2),
        "avg2d": nn.AvgPool2d(2),
        "adaptive1d": nn.AdaptiveAvgPool1d(2),
        "max1d": nn.MaxPool1d(2),
        "max2d": nn.MaxPool2d(2),
    }[pool]
    if pool == "adaptive1d":
        module = nn.AdaptiveAvgPool1d(1)
        model, shape = _pool_model(module, 1)
        model[4] = nn.Linear(2, 3).double()
        model = _with_running_stats(model, 5)
    else:
        model, shape = _pool_model(module, dim)
    rng = np.random.default_rng(31)
    x = rng.normal(size=shape)
    layers = numpy_layers(leaf_chain(model), shape)
    methods = {**API_METHODS, "lrp_epsilon_1": Method(rule_epsilon(1.0))}
    for target in range(3):
        got = calculate_relevancemap(name, x, model, neuron_selection=target)
        assert_close(got, reference(layers, x.ravel(), target, methods[name]).reshape(shape))


def test_deep_taylor_relu_passes_where_fused_and_takes_the_gradient_elsewhere():
    """Conv -> MaxPool -> ReLU (a ReLU of its own: gradient), Conv -> ReLU (fused: passes),
    AvgPool (gradient), Linear -> Dropout -> ReLU (fused through the dropped Dropout), Linear."""
    model = _with_running_stats(
        nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 5),
            nn.Dropout(),
            nn.ReLU(),
            nn.Linear(5, 3),
        ).double(),
        41,
    )
    x = np.random.default_rng(42).normal(size=(4, 1, 8, 8))
    layers = numpy_layers(leaf_chain(model), x.shape[1:])
    logits = model(torch.from_numpy(x)).detach().numpy()
    targets = [int(np.argmax(row)) for row in logits]
    got = calculate_relevancemaps("lrp_deep_taylor", x, model, neuron_selection=targets)
    assert np.any(got != 0)
    assert_close(got, reference_batch(layers, x, targets, Method(deep_taylor=True)))


def test_average_pooling_gets_the_z_rule_whatever_the_analyzer():
    """A model that is one average pool: relevance x_i * R_t / z_t * (1/k) (Z rule), not the
    gradient R_t / k, for alpha-beta and epsilon analyzers alike; Deep Taylor takes the gradient."""
    model = nn.Sequential(nn.AvgPool1d(2), nn.Flatten())  # no parameters: runs in float32
    x = np.array([[[1.0, 3.0, -2.0, 0.5]]])
    z = np.array([2.0, -0.75])
    for name in ["lrp_alpha_2_beta_1", "lrp_epsilon_10", "lrp_z_plus", "lrp_w_square"]:
        got = calculate_relevancemap(name, x, model, neuron_selection=0)
        assert_close(got, [[[1.0 / 2, 3.0 / 2, 0.0, 0.0]]], rtol=1e-6)  # x_i / 2 * z_0 / z_0
        got = calculate_relevancemap(name, x, model, neuron_selection=1)
        assert_close(got, [[[0.0, 0.0, -2.0 / 2, 0.5 / 2]]], rtol=1e-6)
    got = calculate_relevancemap("lrp_deep_taylor", x, model, neuron_selection=0)
    assert_close(got, [[[z[0] / 2, z[0] / 2, 0.0, 0.0]]], rtol=1e-6)
    assert np.all(calculate_relevancemap("lrp_deep_taylor", x, model, neuron_selection=1) == 0)


# =============================================================================================
# Conservation and identities
# =============================================================================================


def _bias_free(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None and not isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.bias.zero_()
    return model


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "series_cnn1d"])
def test_conservation_and_identities_on_bias_free_relu_nets(fixture):
    model = _bias_free(copy.deepcopy(load_model(fixture)).double())
    x = load_inputs(fixture)[:4].astype(np.float64)
    logits = model(torch.from_numpy(x)).detach().numpy()
    targets = [0, 1, 2, 1]
    selected = logits[np.arange(4), targets]
    for name in ["lrp_z", "lrp_epsilon_0"]:
        got = calculate_relevancemaps(name, x, model, neuron_selection=targets)
        np.testing.assert_allclose(got.reshape(4, -1).sum(axis=1), selected, rtol=1e-10, atol=1e-12)
    lrp_z = calculate_relevancemaps("lrp_z", x, model, neuron_selection=targets)
    assert_close(lrp_z, calculate_relevancemaps("gradient_x_input", x, model, neuron_selection=targets))
    assert_close(
        calculate_relevancemaps("lrpsign_z", x, model, neuron_selection=targets),
        calculate_relevancemaps("gradient_x_sign", x, model, neuron_selection=targets),
    )
    # epsilon > 0 absorbs: the bias-free totals shrink towards zero, never past it
    eps = calculate_relevancemaps("lrp_epsilon_1", x, model, neuron_selection=targets).reshape(4, -1).sum(axis=1)
    assert not np.allclose(eps, selected, rtol=1e-3)


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "series_cnn1d"])
def test_with_biases_the_identities_hold_but_the_biases_absorb(fixture):
    """Relevance starts at the logit value, so R_j / z_j is the gradient at every layer even with
    biases: lrp_z == gradient_x_input still; but the biases take their share of the total."""
    model = copy.deepcopy(load_model(fixture)).double()
    x = load_inputs(fixture)[:2].astype(np.float64)
    lrp_z = calculate_relevancemaps("lrp_z", x, model, neuron_selection=[0, 1])
    assert_close(lrp_z, calculate_relevancemaps("gradient_x_input", x, model, neuron_selection=[0, 1]))
    logits = model(torch.from_numpy(x)).detach().numpy()[[0, 1], [0, 1]]
    assert not np.allclose(lrp_z.reshape(2, -1).sum(axis=1), logits, rtol=1e-3)


def test_lrp_z_identity_with_batchnorm_holds_only_for_the_true_map():
    """The native API's BN map is the forward's, so lrp_z == gradient_x_input; iNNvestigate's
    stand-in is not, so the TF-compatible map differs, while lrp_z == lrpsign_z * x * s(x) holds."""
    model = copy.deepcopy(load_model("digits_cnn_bn")).double()
    x = load_inputs("digits_cnn_bn")[:2].astype(np.float64)
    gxi = calculate_relevancemaps("gradient_x_input", x, model, neuron_selection=[4, 5])
    native = np.stack([native_relevancemap(model, x[n], method="lrp_z", target_class=4 + n) for n in range(2)])
    assert_close(native, gxi)
    tf_map = calculate_relevancemaps("lrp_z", x, model, neuron_selection=[4, 5])
    assert not np.allclose(tf_map, gxi, rtol=1e-3)
    sign = calculate_relevancemaps("lrpsign_z", x, model, neuron_selection=[4, 5])
    assert_close(tf_map, sign * np.abs(x))


# =============================================================================================
# Every LRP name of method_names.txt on the fixture models
# =============================================================================================

_FIXTURE_CACHE: dict = {}


def _fixture(fixture):
    if fixture not in _FIXTURE_CACHE:
        _FIXTURE_CACHE[fixture] = (load_model(fixture), load_inputs(fixture)[:2])
    return _FIXTURE_CACHE[fixture]


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "digits_cnn_bn", "series_cnn1d"])
def test_every_lrp_name_gives_a_finite_map_of_the_input_shape(fixture):
    model, x = _fixture(fixture)
    for name in LRP_NAMES:
        single = calculate_relevancemap(name, x[0], model, neuron_selection=1)
        assert single.shape == x[0].shape, name
        assert np.all(np.isfinite(single)), name
        assert np.any(single != 0), name
        batch = calculate_relevancemaps(name, x, model, neuron_selection=[1, 2])
        assert batch.shape == x.shape and np.all(np.isfinite(batch)), name


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "series_cnn1d"])
def test_native_and_tf_compatible_apis_agree_without_batchnorm(fixture):
    model, x = _fixture(fixture)
    for name in LRP_NAMES + ["lrp_deep_taylor"]:
        tf_map = calculate_relevancemap(name, x[0], model, neuron_selection=2)
        native = native_relevancemap(model, x[0], method=name, target_class=2)
        np.testing.assert_array_equal(tf_map, native, err_msg=name)


def test_the_apis_differ_on_batchnorm_models():
    model, x = _fixture("digits_cnn_bn")
    for name in ["lrp_z", "lrp_epsilon_0_1", "lrp_sequential_composite_a"]:
        tf_map = calculate_relevancemap(name, x[0], model, neuron_selection=2)
        native = native_relevancemap(model, x[0], method=name, target_class=2)
        assert not np.allclose(tf_map, native, rtol=1e-3), name


# =============================================================================================
# The model is left as it was: hooks, parameters, buffers, flags (also after an error)
# =============================================================================================


def _state(model: nn.Module) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


def _assert_untouched(model: nn.Module, before: dict) -> None:
    for name, m in model.named_modules():
        assert not m._forward_hooks, name
        assert not m._forward_pre_hooks, name
        assert not m._backward_hooks, name
        assert not getattr(m, "_backward_pre_hooks", {}), name
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks
    assert not nn.modules.module._global_backward_hooks
    after = _state(model)
    for kind in ("params", "buffers"):
        assert before[kind].keys() == after[kind].keys()
        for n in before[kind]:
            assert torch.equal(before[kind][n], after[kind][n]), (kind, n)
            assert before[kind][n].dtype == after[kind][n].dtype
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]


def _mixed_flags(model: nn.Module) -> nn.Module:
    model.train()
    for i, (_, p) in enumerate(model.named_parameters()):
        p.requires_grad_(i % 2 == 0)
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d)))
    first.eval()
    return model


@pytest.mark.parametrize(
    "name",
    [
        "lrp_epsilon_0_1",
        "lrpsign_sequential_composite_a",
        "lrp_deep_taylor",
        "zblrp_alpha_1_beta_0_VGG16ILSVRC",
        "w2lrp_epsilon_0_25_std_x",
    ],
)
@pytest.mark.parametrize("fixture", ["digits_cnn", "digits_cnn_bn"])
def test_the_model_is_left_as_it_was(fixture, name):
    model = _mixed_flags(load_model(fixture))
    x = load_inputs(fixture)[:2]
    x_copy = x.copy()
    before = _state(model)
    calculate_relevancemaps(name, x, model, neuron_selection=[1, 2])
    _assert_untouched(model, before)
    tensor = torch.from_numpy(x.copy()).requires_grad_(True)
    calculate_relevancemaps(name, tensor, model, neuron_selection=[1, 2])
    assert tensor.grad is None and tensor.requires_grad and np.array_equal(tensor.detach().numpy(), x_copy)
    np.testing.assert_array_equal(x, x_copy)
    native_relevancemap(model, x[0], method=name, target_class=3)
    _assert_untouched(model, before)
    # also after errors raised while the rules are registered, or before
    with pytest.raises(ValueError):
        calculate_relevancemap(name, x[0], model, neuron_selection=99)
    _assert_untouched(model, before)
    with pytest.raises(ValueError):
        calculate_relevancemap(name, np.full_like(x[0], np.nan), model)
    _assert_untouched(model, before)


class _Block(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = norm

    def forward(self, x):
        return self.norm(self.linear(x))


class _UntraceableResidual(nn.Module):
    """A residual sum in a model fx cannot trace (data-dependent control flow): it runs as a chain,
    where an operation outside any module has no rule."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.relu, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[0] > 10**9:  # a branch on the batch size: fx cannot trace it
            return self.b(x)
        return self.b(self.relu(self.a(x)) + x)


class _Exp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.exp(self.a(x)))


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.a(x) * 0.5)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(4, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).unsqueeze(0)
        return self.head(self.attn(tokens, tokens, tokens)[0][0])


def _unsupported_cases():
    return {
        "layernorm": (
            nn.Sequential(nn.Linear(4, 4), _Block(nn.LayerNorm(4)), nn.Linear(4, 3)),
            (4,),
            ["LayerNorm", "'1.norm'"],
        ),
        "untraceable_residual": (_UntraceableResidual(), (4,), ["add", "'relu'"]),
        "functional_exp": (_Exp(), (4,), ["exp", "'exp'"]),
        "scaled": (_Scaled(), (4,), ["mul", "constant"]),
        "attention": (_Attention(), (4,), ["MultiheadAttention", "'attn'"]),
    }


@pytest.mark.parametrize(
    "case", ["layernorm", "block_norm", "untraceable_residual", "functional_exp", "scaled", "attention"]
)
def test_unsupported_layers_raise_naming_the_layer_and_its_path(case):
    if case == "block_norm":

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = _Block(nn.LayerNorm(4))
                self.head = nn.Linear(4, 3)

            def forward(self, x):
                return self.head(self.block(x))

        model, shape, needles = Net(), (4,), ["LayerNorm", "'block.norm'"]
    else:
        model, shape, needles = _unsupported_cases()[case]
    model = model.double()
    _mixed_flags(model)
    before = _state(model)
    x = np.random.default_rng(0).normal(size=shape)
    for name in ["lrp_epsilon_0_1", "lrp_deep_taylor", "lrpz_sequential_composite_b"]:
        with pytest.raises(UnsupportedLayerError) as info:
            calculate_relevancemap(name, x, model, neuron_selection=0)
        for needle in needles:
            assert needle in str(info.value), (needle, str(info.value))
        _assert_untouched(model, before)
        with pytest.raises(UnsupportedLayerError):
            native_relevancemap(model, x, method=name, target_class=0)
        _assert_untouched(model, before)
    assert issubclass(UnsupportedLayerError, NotImplementedError)


def test_a_bare_layer_is_a_model_too():
    torch.manual_seed(3)
    layer = nn.Linear(5, 3).double()
    x = np.random.default_rng(1).normal(size=5)
    layers = numpy_layers([("", layer)], (5,))
    before = _state(layer)
    for name in ["lrp_z", "lrp_epsilon_0_1", "lrpsign_alpha_2_beta_1"]:
        got = calculate_relevancemap(name, x, layer, neuron_selection=1)
        assert_close(
            got,
            reference(
                layers,
                x,
                1,
                {**API_METHODS, "lrpsign_alpha_2_beta_1": Method(rule_alpha_beta(2, 1), rule_sign())}[name],
            ),
        )
    _assert_untouched(layer, before)


def test_leaky_relu_takes_the_gradient_as_a_keras_layer_of_its_own():
    """The Keras twin has LeakyReLU as a layer of its own; iNNvestigate's LRP maps it by its
    gradient (only ``Activation`` layers pass relevance unchanged)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6), nn.LeakyReLU(0.1), nn.Linear(6, 3)).double().eval()
    x = np.random.default_rng(2).normal(size=5)
    layers = numpy_layers(leaf_chain(model), (5,))
    for name in ["lrp_z", "lrp_epsilon_0_1", "lrp_alpha_2_beta_1"]:
        for target in range(3):
            got = calculate_relevancemap(name, x, model, neuron_selection=target)
            assert_close(got, reference(layers, x, target, API_METHODS[name]))


# =============================================================================================
# Hypothesis: random small dense/conv stacks
# =============================================================================================


@st.composite
def stacks(draw, bias=None, positive=False):
    """A random chain (float64, seeded weights): [conv (+ReLU) (+pool)]* Flatten [Linear ReLU]* Linear."""
    seed = draw(st.integers(0, 2**31 - 1))
    dim = draw(st.sampled_from([0, 1, 2]))
    has_bias = draw(st.booleans()) if bias is None else bias
    modules = []
    if dim == 0:
        shape = (draw(st.integers(2, 6)),)
        features = shape[0]
    else:
        channels, size = draw(st.integers(1, 2)), draw(st.integers(4, 7))
        shape = (channels,) + (size,) * dim
        conv, maxpool, avgpool = (
            (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d) if dim == 1 else (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
        )
        for _ in range(draw(st.integers(1, 2))):
            out, k = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            pad, stride = draw(st.integers(0, k // 2)), draw(st.integers(1, 2))
            new = (size + 2 * pad - k) // stride + 1
            if new < 1:
                continue
            modules += [conv(channels, out, k, stride=stride, padding=pad, bias=has_bias), nn.ReLU()]
            channels, size = out, new
            pool = draw(st.sampled_from([None, "max", "avg"]))
            if pool is not None and size >= 2:
                modules.append(maxpool(2) if pool == "max" else avgpool(2))
                size //= 2
        modules.append(nn.Flatten())
        features = channels * size**dim
    for _ in range(draw(st.integers(0, 1))):
        width = draw(st.integers(2, 5))
        modules += [nn.Linear(features, width, bias=has_bias), nn.ReLU()]
        features = width
    modules.append(nn.Linear(features, draw(st.integers(2, 4)), bias=has_bias))
    model = nn.Sequential(*modules).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            values = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(values.abs() if positive else values)
    x = np.random.default_rng(seed).normal(size=(2,) + shape)
    if positive:
        x = np.abs(x) + 0.05
    return model, x


def _target_pair(model, x):
    logits = model(torch.from_numpy(x)).detach().numpy()
    return [int(np.argmax(logits[0])), int(np.argmin(logits[1]))]


@given(stacks(bias=False))
def test_hypothesis_lrp_z_is_gradient_times_input_without_biases(case):
    model, x = case
    targets = _target_pair(model, x)
    assert_close(
        calculate_relevancemaps("lrp_z", x, model, neuron_selection=targets),
        calculate_relevancemaps("gradient_x_input", x, model, neuron_selection=targets),
        rtol=1e-9,
    )
    assert_close(
        calculate_relevancemaps("lrpsign_z", x, model, neuron_selection=targets),
        calculate_relevancemaps("gradient_x_sign", x, model, neuron_selection=targets),
        rtol=1e-9,
    )


@given(st.integers(0, 2**31 - 1), st.sampled_from([0, 1, 2]), st.floats(0.01, 10.0))
def test_hypothesis_epsilon_absorbs_in_one_bias_free_layer(seed, dim, eps):
    """One bias-free layer, relevance z_t at the output: the input total is z_t * z_t / (z_t + eps s(z_t)),
    of z_t's sign and smaller in size."""
    rng = np.random.default_rng(seed)
    if dim == 0:
        model, shape = nn.Sequential(nn.Linear(5, 3, bias=False)), (5,)
    else:
        conv = nn.Conv1d(2, 2, 3, padding=1, bias=False) if dim == 1 else nn.Conv2d(2, 2, 3, padding=1, bias=False)
        model, shape = nn.Sequential(conv, nn.Flatten()), (2, 4) if dim == 1 else (2, 3, 3)
    model = model.double()
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(rng.normal(size=tuple(model[0].weight.shape))))
    x = rng.normal(size=shape)
    logits = model(torch.from_numpy(x)[None]).detach().numpy()[0]
    target = int(rng.integers(len(logits)))
    z = logits[target]
    total = calculate_relevancemap("lrp_epsilon", x, model, neuron_selection=target, epsilon=eps).sum()
    expected = z * z / (z + eps * (1.0 if z >= 0 else -1.0))
    np.testing.assert_allclose(total, expected, rtol=1e-10, atol=1e-12 * abs(z))
    assert abs(total) <= abs(z) and total * z >= 0


@given(stacks(bias=False, positive=True), st.floats(0.001, 1.0), st.floats(1.5, 20.0))
def test_hypothesis_epsilon_totals_shrink_with_epsilon_on_positive_nets(case, eps, factor):
    """All weights and inputs positive, no biases: every relevance is >= 0, each layer keeps the
    share z/(z + eps) < 1 of its total, so 0 <= total(eps * factor) <= total(eps) <= total(0) = logit."""
    model, x = case
    logits = model(torch.from_numpy(x)).detach().numpy()
    targets = [0, 0]
    totals = [
        calculate_relevancemaps("lrp_epsilon", x, model, neuron_selection=targets, epsilon=e).reshape(2, -1).sum(axis=1)
        for e in (0.0, eps, eps * factor)
    ]
    np.testing.assert_allclose(totals[0], logits[:, 0], rtol=1e-10)
    tol = 1e-12 * np.abs(logits[:, 0])
    assert np.all(totals[2] >= -tol)
    assert np.all(totals[2] <= totals[1] + tol)
    assert np.all(totals[1] <= totals[0] + tol)


HYPOTHESIS_NAMES = [
    "lrp_z",
    "lrp_epsilon_0_1",
    "lrp_epsilon_0_5_std_x",
    "lrp_alpha_2_beta_1",
    "lrp_z_plus",
    "lrp_gamma",
    "lrp_w_square",
    "lrp_flat",
    "lrpz_epsilon_0_1",
    "lrpsign_z",
    "lrpsign_epsilon_0_1_mu_0_3",
    "w2lrp_epsilon_0_1",
    "flatlrp_alpha_1_beta_0",
    "zblrp_epsilon_0_1_VGG16ILSVRC",
    "lrp_sequential_composite_a",
    "lrp_sequential_composite_b",
    "lrp_deep_taylor",
]


@settings(max_examples=max(60, settings.default.max_examples))
@given(stacks(), st.sampled_from(HYPOTHESIS_NAMES))
def test_hypothesis_random_stacks_against_the_reference(case, name):
    model, x = case
    targets = _target_pair(model, x)
    layers = numpy_layers(leaf_chain(model), x.shape[1:])
    got = calculate_relevancemaps(name, x, model, neuron_selection=targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = reference_batch(layers, x, targets, API_METHODS[name])
    # NaN only where iNNvestigate's formula itself divides 0 by 0 (a dead layer input under std_x)
    assert_close(got, expected, nan_where_expected=name.endswith("std_x"))


@given(stacks(), st.sampled_from(HYPOTHESIS_NAMES))
def test_hypothesis_batch_equals_per_sample(case, name):
    model, x = case
    targets = _target_pair(model, x)
    batch = calculate_relevancemaps(name, x, model, neuron_selection=targets)
    single = np.stack([calculate_relevancemap(name, x[n], model, neuron_selection=targets[n]) for n in range(2)])
    assert_close(batch, single, nan_where_expected=name.endswith("std_x"))
