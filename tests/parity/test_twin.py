"""Tests of the Keras twin converter :mod:`parity.twin` (TF graph mode, see conftest)."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F
from graph_models import randomize_batchnorm
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from parity import twin as twin_module
from parity.twin import (
    Twin,
    TwinMismatchError,
    UnsupportedLayerError,
    to_channels_first,
    to_channels_last,
    to_keras,
)
from signxai.torch_signxai.layers import (
    AvgPool1dSame,
    AvgPool2dSame,
    Conv1dSame,
    Conv2dSame,
    MaxPool1dSame,
    MaxPool2dSame,
)

pytestmark = pytest.mark.tf

REPO = Path(__file__).resolve().parents[2]
layers = tf.keras.layers


@pytest.fixture(autouse=True)
def _fresh_graph():
    """Start every test on an empty TF graph, so graphs do not pile up."""
    tf.keras.backend.clear_session()


def _seq(*modules: nn.Module, seed: int = 0) -> nn.Sequential:
    """An eval-mode Sequential with seeded weights and random BN statistics."""
    torch.manual_seed(seed)
    return randomize_batchnorm(nn.Sequential(*modules), seed).eval()


def _layer(twin: Twin, path: str) -> tf.keras.layers.Layer:
    """The Keras layer a PyTorch module path maps to."""
    return twin.keras_model.get_layer(twin.layer_names[path])


def _layer_types(twin: Twin) -> list[str]:
    """Class names of the twin's layers after the input layer."""
    return [type(layer).__name__ for layer in twin.keras_model.layers[1:]]


def _predict(model: tf.keras.Model, x: np.ndarray) -> np.ndarray:
    """Keras forward pass on a channels-first batch, returned channels-first."""
    out = model.predict(to_channels_last(x), verbose=0)
    return to_channels_first(out) if out.ndim > 2 else out


# ----------------------------------------------------------------------------
# Layout helpers


def test_channel_helpers_move_the_channel_axis_and_invert_each_other():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    last = to_channels_last(x)
    assert last.shape == (2, 4, 5, 3)
    assert last[1, 2, 3, 0] == x[1, 0, 2, 3]
    assert np.array_equal(to_channels_first(last), x)
    assert to_channels_last(np.ones((2, 7))).shape == (2, 7)


# ----------------------------------------------------------------------------
# Convolutions and padding


@pytest.mark.parametrize(
    ("conv", "size", "keras_padding", "explicit"),
    [
        (nn.Conv2d(2, 3, 3), 7, "valid", None),
        (nn.Conv2d(2, 3, 3, padding=1), 6, "same", None),
        (nn.Conv2d(2, 3, 3, stride=2, padding=1), 7, "same", None),
        (nn.Conv2d(2, 3, 3, stride=2, padding=1), 8, "valid", (1, 1)),
        (nn.Conv2d(2, 3, 5, padding=1), 7, "valid", (1, 1)),
        (nn.Conv2d(2, 3, 3, padding=2, dilation=2), 7, "same", None),
        (nn.Conv2d(2, 3, (3, 1), padding=(1, 0)), 6, "same", None),
        (nn.Conv2d(2, 3, (3, 5), padding=(1, 1)), 6, "valid", (1, 1)),
        (nn.Conv2d(2, 3, 4, padding="same"), 6, "same", None),
        (nn.Conv2d(2, 3, 3, padding="valid", bias=False), 6, "valid", None),
        (Conv2dSame(2, 3, 3, stride=2), 8, "same", None),  # TF pads (0, 1) inside the layer
        (Conv2dSame(2, 3, 4), 7, "same", None),
        (Conv2dSame(2, 2, 3, stride=2, groups=2), 6, "same", None),  # depthwise
    ],
)
def test_conv2d_uses_keras_padding_only_where_it_reproduces_pytorch(conv, size, keras_padding, explicit):
    model = _seq(nn.Conv2d(2, 2, 1), nn.ReLU(), conv)
    twin = to_keras(model, (2, size, size))
    keras_conv = _layer(twin, "2")
    assert isinstance(keras_conv, (layers.Conv2D, layers.DepthwiseConv2D))
    assert keras_conv.padding == keras_padding
    assert keras_conv.use_bias == (conv.bias is not None)
    has_padding_layer = "ZeroPadding2D" in _layer_types(twin)
    assert has_padding_layer == (explicit is not None)
    if explicit is not None:
        assert twin.keras_model.get_layer("2_pad").padding == ((1, 1), (1, 1))


@pytest.mark.parametrize(
    ("conv", "size", "keras_padding"),
    [
        (nn.Conv1d(2, 3, 3), 9, "valid"),
        (nn.Conv1d(2, 3, 3, padding=1), 9, "same"),
        (nn.Conv1d(2, 3, 3, stride=2, padding=1), 10, "valid"),
        (nn.Conv1d(2, 3, 3, dilation=3, padding=3, bias=False), 11, "same"),
        (Conv1dSame(2, 3, 3, stride=2), 10, "same"),
    ],
)
def test_conv1d(conv, size, keras_padding):
    twin = to_keras(_seq(nn.Conv1d(2, 2, 1), nn.ReLU(), conv), (2, size))
    keras_conv = _layer(twin, "2")
    assert isinstance(keras_conv, layers.Conv1D)
    assert keras_conv.padding == keras_padding


def test_conv_weights_are_copied_exactly():
    model = _seq(nn.Conv2d(3, 4, (2, 3)), nn.Flatten(), nn.Linear(4 * 5 * 4, 2))
    twin = to_keras(model, (3, 6, 6))
    kernel, bias = _layer(twin, "0").get_weights()
    assert np.array_equal(kernel, model[0].weight.detach().numpy().transpose(2, 3, 1, 0))
    assert np.array_equal(bias, model[0].bias.detach().numpy())


def test_flatten_permutes_the_first_dense_layers_input_weights():
    model = _seq(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 2, 5))
    twin = to_keras(model, (3, 5, 4))
    kernel = _layer(twin, "2").get_weights()[0]
    weight = model[2].weight.detach().numpy()  # (5, C*H*W), PyTorch order
    # Keras feature (h, w, c) must read PyTorch feature (c, h, w).
    assert np.array_equal(kernel.reshape(3, 2, 4, 5), weight.reshape(5, 4, 3, 2).transpose(2, 3, 1, 0))


def test_linear_with_and_without_bias():
    model = _seq(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    twin = to_keras(model, (6,))
    assert isinstance(_layer(twin, "0"), layers.Dense)
    assert _layer(twin, "0").use_bias and not _layer(twin, "2").use_bias
    assert np.array_equal(_layer(twin, "2").get_weights()[0], model[2].weight.detach().numpy().T)


# ----------------------------------------------------------------------------
# Activations


@pytest.mark.parametrize(
    ("activation", "keras_name"),
    [(nn.ReLU(), "relu"), (nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid"), (nn.ELU(), "elu")],
)
def test_activation_directly_after_conv_or_dense_is_fused(activation, keras_name):
    model = _seq(nn.Conv1d(2, 3, 3), activation, nn.Flatten(), nn.Linear(12, 4), copy.deepcopy(activation))
    twin = to_keras(model, (2, 6))
    assert twin.layer_names["0"] == twin.layer_names["1"] == "0"
    assert twin.layer_names["3"] == twin.layer_names["4"] == "3"
    assert _layer(twin, "0").activation is tf.keras.activations.get(keras_name)
    assert _layer(twin, "3").activation is tf.keras.activations.get(keras_name)
    assert _layer_types(twin) == ["Conv1D", "Flatten", "Dense"]


@pytest.mark.parametrize(
    ("activation", "keras_class", "attribute", "value"),
    [
        (nn.LeakyReLU(), layers.LeakyReLU, "alpha", 0.01),
        (nn.LeakyReLU(0.2), layers.LeakyReLU, "alpha", 0.2),
        (nn.ELU(alpha=0.5), layers.ELU, "alpha", 0.5),
    ],
)
def test_activation_with_parameters_is_its_own_layer(activation, keras_class, attribute, value):
    twin = to_keras(_seq(nn.Linear(4, 6), activation, nn.Linear(6, 2)), (4,))
    keras_layer = _layer(twin, "1")
    assert isinstance(keras_layer, keras_class)
    assert float(getattr(keras_layer, attribute)) == pytest.approx(value)
    assert _layer(twin, "0").activation is tf.keras.activations.get("linear")


def test_activation_not_directly_after_conv_is_an_activation_layer():
    model = _seq(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2), nn.Sigmoid())
    twin = to_keras(model, (2, 6, 6))
    assert _layer_types(twin) == [
        "Conv2D",
        "BatchNormalization",
        "Activation",
        "Activation",
        "MaxPooling2D",
        "Activation",
    ]
    assert _layer(twin, "5").activation is tf.keras.activations.get("sigmoid")


def test_functional_calls_in_a_custom_forward():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3)
            self.fc1 = nn.Linear(4 * 3 * 3, 8)
            self.fc2 = nn.Linear(8, 8)
            self.fc3 = nn.Linear(8, 3)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = torch.tanh(self.conv2(x))
            x = x.view(x.size(0), -1)
            x = torch.relu(self.fc1(x))
            x = F.leaky_relu(self.fc2(x), 0.3)
            return self.fc3(torch.flatten(x, 1))

    torch.manual_seed(0)
    twin = to_keras(Net().eval(), (1, 7, 7))
    assert _layer_types(twin) == ["Conv2D", "Conv2D", "Flatten", "Dense", "Dense", "LeakyReLU", "Dense"]
    assert _layer(twin, "conv1").activation is tf.keras.activations.get("relu")
    assert _layer(twin, "conv2").activation is tf.keras.activations.get("tanh")
    assert float(twin.keras_model.get_layer("op_leaky_relu").alpha) == pytest.approx(0.3)


# ----------------------------------------------------------------------------
# Pooling


@pytest.mark.parametrize(
    ("pool", "size", "keras_padding", "explicit"),
    [
        (nn.MaxPool2d(2), 8, "valid", False),
        (nn.MaxPool2d(3, stride=2, padding=1), 7, "same", False),
        (nn.MaxPool2d(3, stride=2, padding=1), 8, "valid", True),  # zero pad after ReLU is exact
        (nn.MaxPool2d((2, 3), stride=(1, 2)), 7, "valid", False),
        (nn.MaxPool1d(3, stride=1, padding=1), 7, "same", False),
        (nn.MaxPool1d(2), 7, "valid", False),
        (nn.MaxPool2d(2, ceil_mode=True), 7, "valid", True),  # an overhanging last window
        (nn.MaxPool2d(2, ceil_mode=True), 8, "valid", False),  # none overhangs
        (nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), 8, "valid", True),
        (nn.MaxPool1d(3, stride=2, ceil_mode=True), 8, "valid", True),
        (MaxPool2dSame(3, 2), 8, "same", False),  # TF's (0, 1), inside the layer
        (MaxPool1dSame(2, 3), 8, "same", False),
    ],
)
def test_maxpool(pool, size, keras_padding, explicit):
    rank = 1 if isinstance(pool, nn.MaxPool1d) else 2
    conv = nn.Conv1d(2, 3, 1) if rank == 1 else nn.Conv2d(2, 3, 1)
    twin = to_keras(_seq(conv, nn.ReLU(), pool), (2,) + (size,) * rank)
    keras_pool = _layer(twin, "2")
    assert type(keras_pool).__name__ == f"MaxPooling{rank}D"
    assert keras_pool.padding == keras_padding
    assert any(name.startswith("ZeroPadding") for name in _layer_types(twin)) == explicit


@pytest.mark.parametrize(
    ("pool", "size", "keras_padding", "explicit"),
    [
        (nn.AvgPool2d(2), 7, "valid", False),
        (nn.AvgPool2d(3, stride=2, padding=1), 7, "valid", True),  # count_include_pad=True
        (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), 7, "same", False),
        (nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), 6, "same", False),
        (nn.AvgPool1d(3, stride=1, padding=1), 6, "valid", True),
        (nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False), 9, "same", False),
        (AvgPool2dSame(3, 2), 6, "same", False),  # TF's (0, 1), real entries only
        (AvgPool1dSame(4, 1), 7, "same", False),
    ],
)
def test_avgpool_padding_and_count_include_pad(pool, size, keras_padding, explicit):
    rank = 1 if isinstance(pool, nn.AvgPool1d) else 2
    conv = nn.Conv1d(2, 3, 1) if rank == 1 else nn.Conv2d(2, 3, 1)
    twin = to_keras(_seq(conv, pool), (2,) + (size,) * rank)
    keras_pool = _layer(twin, "1")
    assert type(keras_pool).__name__ == f"AveragePooling{rank}D"
    assert keras_pool.padding == keras_padding
    assert any(name.startswith("ZeroPadding") for name in _layer_types(twin)) == explicit


@pytest.mark.parametrize(
    ("pool", "shape", "keras_types"),
    [
        (nn.AdaptiveAvgPool2d(1), (2, 5, 6), ["GlobalAveragePooling2D", "Flatten"]),
        (nn.AdaptiveAvgPool2d((1, 1)), (2, 5, 5), ["GlobalAveragePooling2D", "Flatten"]),
        (nn.AdaptiveAvgPool1d(1), (2, 7), ["GlobalAveragePooling1D", "Flatten"]),
        (nn.AdaptiveAvgPool2d((2, 3)), (2, 4, 6), ["AveragePooling2D", "Flatten"]),
        (nn.AdaptiveAvgPool2d((None, 2)), (2, 3, 4), ["AveragePooling2D", "Flatten"]),
        (nn.AdaptiveAvgPool2d(4), (2, 4, 4), ["Flatten"]),
    ],
)
def test_adaptive_avgpool_followed_by_flatten(pool, shape, keras_types):
    conv = nn.Conv1d(2, 3, 1) if len(shape) == 2 else nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        out = pool(torch.zeros(1, 3, *shape[1:]))
    model = _seq(conv, pool, nn.Flatten(), nn.Linear(out[0].numel(), 2))
    twin = to_keras(model, shape)
    assert _layer_types(twin) == ["Conv1D" if len(shape) == 2 else "Conv2D", *keras_types, "Dense"]
    assert ("1" in twin.dropped) == (keras_types == ["Flatten"])


# ----------------------------------------------------------------------------
# BatchNorm, Dropout, Identity, Flatten, Softmax, containers


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
def test_batchnorm2d_carries_epsilon_and_running_stats(eps):
    model = _seq(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, eps=eps), nn.ReLU())
    twin = to_keras(model, (2, 6, 5))
    bn = _layer(twin, "1")
    assert isinstance(bn, layers.BatchNormalization)
    # Keras's default kernel (fused for this 4-d float32 input) unless eps is below cuDNN's 1.001e-5
    assert bn.epsilon == eps and bn.fused is (eps >= 1.001e-5)
    gamma, beta, mean, var = bn.get_weights()
    assert np.array_equal(mean, model[1].running_mean.numpy())
    assert np.array_equal(var, model[1].running_var.numpy())
    assert np.array_equal(gamma, model[1].weight.detach().numpy())
    assert np.array_equal(beta, model[1].bias.detach().numpy())


def test_batchnorm1d_on_sequences_without_affine_parameters():
    model = _seq(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3, affine=False), nn.Conv1d(3, 2, 1))
    twin = to_keras(model, (2, 9))
    bn = _layer(twin, "1")
    assert not bn.scale and not bn.center and len(bn.get_weights()) == 2


def test_batchnorm1d_after_flatten_gets_permuted_statistics():
    model = _seq(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.BatchNorm1d(3 * 3 * 3), nn.ReLU(), nn.Linear(27, 4))
    twin = to_keras(model, (2, 4, 4))
    assert _layer_types(twin) == ["Conv2D", "Flatten", "BatchNormalization", "Activation", "Dense"]


def test_dropout_and_identity_have_no_keras_layer():
    model = _seq(
        nn.Conv2d(2, 3, 3),
        nn.Dropout2d(0.5),
        nn.ReLU(),
        nn.Identity(),
        nn.Flatten(),
        nn.Dropout(0.9),
        nn.Linear(27, 3),
    )
    model.train()  # the twin reproduces eval mode whatever mode the model is in
    twin = to_keras(model, (2, 5, 5))
    assert _layer_types(twin) == ["Conv2D", "Flatten", "Dense"]
    assert set(twin.dropped) == {"1", "3", "5"}
    assert model.training  # left as it was


def test_trailing_softmax_is_removed_by_default_and_kept_on_request():
    model = _seq(nn.Linear(4, 3), nn.Softmax(dim=1))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    removed = to_keras(model, (4,))
    assert _layer_types(removed) == ["Dense"] and removed.dropped == ("1",)
    with torch.no_grad():
        logits = model[0](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_predict(removed.keras_model, x), logits, rtol=1e-5, atol=1e-6)
    tf.keras.backend.clear_session()
    kept = to_keras(model, (4,), keep_softmax=True)
    assert _layer(kept, "1").activation is tf.keras.activations.get("softmax")
    np.testing.assert_allclose(_predict(kept.keras_model, x), F.softmax(torch.from_numpy(logits), 1), rtol=1e-5)


def test_nested_sequentials_keep_module_paths():
    features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)))
    model = _seq(nn.Sequential(features), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    twin = to_keras(model, (1, 6, 6))
    assert twin.layer_names == {
        "0.0.0": "0_0_0",
        "0.0.1.0": "0_0_0",
        "0.0.1.1": "0_0_1_1",
        "1": "1",
        "2": "2",
    }


def test_layer_names_map_to_layers_with_equal_outputs():
    model = _seq(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    twin = to_keras(model, (2, 4, 4))
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype("float32")
    with torch.no_grad():
        pooled = model[:3](torch.from_numpy(x)).numpy()
    probe = tf.keras.Model(twin.keras_model.inputs, _layer(twin, "2").output)
    np.testing.assert_allclose(_predict(probe, x), pooled, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Unsupported layers and topologies


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        self.a(x)
        return self.b(x)


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class _PlusOne(nn.Module):
    def forward(self, x):
        return x + 1


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class _FunctionalPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x):
        return F.max_pool2d(self.conv(x), 2)


@pytest.mark.parametrize(
    ("modules", "shape", "expected"),
    [
        ([nn.Conv3d(2, 2, 1)], (2, 3, 3, 3), ["Conv3d", "'0'"]),
        ([nn.ConvTranspose2d(2, 4, 3, groups=2)], (2, 5, 5), ["ConvTranspose2d", "'0'", "groups"]),
        ([nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")], (2, 5, 5), ["Conv2d", "'0'", "reflect"]),
        ([nn.Conv2d(2, 2, 3, stride=2, dilation=2)], (2, 9, 9), ["Conv2d", "'0'", "dilation"]),
        ([_Unused()], (2, 5, 5), ["Conv2d", "'0.a'", "never uses"]),
        ([nn.Linear(2, 2), _Scale()], (2,), ["'1.scale'", "directly"]),
        ([nn.Conv2d(2, 2, 1), _PlusOne()], (2, 5, 5), ["_PlusOne", "'1'", "add"]),
        ([nn.Conv2d(2, 2, 1), _FunctionalPool()], (2, 5, 5), ["_FunctionalPool", "'1'", "max_pool2d"]),
        (
            [nn.Conv2d(2, 2, 1), nn.Upsample(scale_factor=2, mode="bilinear")],
            (2, 5, 5),
            ["Upsample", "'1'", "bilinear"],
        ),
        ([nn.Conv1d(2, 2, 1), nn.Linear(5, 3)], (2, 5), ["Linear", "'1'", "flat"]),
        ([nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)], (4,), ["Softmax", "'1'", "final"]),
        ([nn.Conv2d(2, 2, 1), nn.MaxPool2d(2, ceil_mode=True)], (2, 5, 5), ["MaxPool2d", "'1'", "negative"]),
        ([nn.Conv2d(2, 2, 1), nn.MaxPool2d(3, 2, padding=1)], (2, 8, 8), ["MaxPool2d", "'1'", "negative"]),
        (
            [nn.Conv2d(2, 2, 1), nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)],
            (2, 8, 8),
            ["AvgPool2d", "'1'", "count_include_pad=False"],
        ),
        ([nn.Conv2d(2, 2, 1), nn.AdaptiveAvgPool2d(3)], (2, 8, 8), ["AdaptiveAvgPool2d", "'1'", "divisor"]),
        (
            [nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)],
            (2, 5, 5),
            ["BatchNorm2d", "'1'", "track_running_stats"],
        ),
        ([nn.Conv2d(2, 2, 1), nn.Flatten(0)], (2, 5, 5), ["Flatten", "'1'"]),
        ([nn.LSTM(4, 3)], (5, 4), ["LSTM", "'0'"]),
        ([nn.Conv2d(2, 2, 1), _Branchy()], (2, 5, 5), ["Sequential", "cannot be traced"]),
    ],
)
def test_unsupported_layers_are_named_with_their_path(modules, shape, expected):
    with pytest.raises(UnsupportedLayerError) as info:
        to_keras(_seq(*modules), shape)
    for text in expected:
        assert text in str(info.value)


def test_unsupported_layer_in_a_nested_module_names_the_full_path():
    model = _seq(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Sequential(nn.Conv2d(2, 2, 1), nn.Hardswish())))
    with pytest.raises(UnsupportedLayerError, match=r"Hardswish at '0\.1\.1'"):
        to_keras(model, (2, 4, 4))


# ----------------------------------------------------------------------------
# fresh(), input-layer visibility, dtypes, the self-check


def test_fresh_builds_new_uncalled_layers_with_equal_outputs():
    model = _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    twin = to_keras(model, (3, 6, 6))
    first, second = twin.fresh(), twin.fresh()
    old_ids = {id(layer) for layer in twin.keras_model.layers}
    for fresh in (first, second):
        assert not old_ids & {id(layer) for layer in fresh.layers}
        assert [layer.name for layer in fresh.layers] == [layer.name for layer in twin.keras_model.layers]
        assert all(len(layer._inbound_nodes) == 1 for layer in fresh.layers[1:])
    x = np.random.default_rng(2).standard_normal((4, 3, 6, 6)).astype("float32")
    expected = _predict(twin.keras_model, x)
    assert np.array_equal(_predict(first, x), expected)
    assert np.array_equal(_predict(second, x), expected)
    twin.verify(first)


def test_input_layer_hidden_when_first_conv_needs_explicit_padding():
    model = _seq(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    twin = to_keras(model, (3, 8, 8))  # TF 'same' pads (0, 1) here, PyTorch (1, 1)
    assert twin.input_layer_hidden
    assert "ZeroPadding2D" in twin.hidden_reason and "input_layer_rule" in twin.hidden_reason
    tf.keras.backend.clear_session()
    odd = to_keras(model[:2], (3, 7, 7))  # here 'same' reproduces PyTorch
    assert not odd.input_layer_hidden and odd.hidden_reason is None


def test_input_layer_hidden_when_a_layer_precedes_the_first_conv():
    twin = to_keras(_seq(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3)), (2, 5, 5))
    assert twin.input_layer_hidden and "BatchNormalization" in twin.hidden_reason
    tf.keras.backend.clear_session()
    flat = to_keras(_seq(nn.Flatten(), nn.Linear(8, 2)), (2, 2, 2))
    assert not flat.input_layer_hidden


def test_float64_twin():
    model = _seq(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ELU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    floatx = tf.keras.backend.floatx()
    twin = to_keras(model, (2, 9, 9), dtype="float64", rtol=1e-12)
    assert tf.keras.backend.floatx() == floatx
    assert all(layer.dtype == "float64" for layer in twin.keras_model.layers)
    assert all(w.dtype == np.float64 for w in twin.keras_model.get_weights())
    assert twin.verify(rtol=1e-12) < 1e-13
    assert model[0].weight.dtype == torch.float32  # the model is left as it was


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="float16"):
        to_keras(_seq(nn.Linear(2, 2)), (2,), dtype="float16")


def test_perturbed_keras_weights_are_reported_at_their_layer():
    model = _seq(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    twin = to_keras(model, (2, 6, 6))
    layer = _layer(twin, "2")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 1.01, bias])
    with pytest.raises(TwinMismatchError, match=r"Keras layer '2' \(PyTorch '2 \+ 3'\)"):
        twin.verify()
    twin.verify(twin.fresh())  # fresh models keep the converted weights


def test_perturbed_torch_weights_after_conversion_are_reported():
    model = _seq(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Linear(6, 2))
    twin = to_keras(model, (5,))
    with torch.no_grad():
        model[2].bias += 0.1
    with pytest.raises(TwinMismatchError, match=r"first diverge at Keras layer '2'"):
        twin.verify()


def test_conversion_check_catches_a_missing_flatten_permutation(monkeypatch):
    monkeypatch.setattr(twin_module, "_feature_order", lambda shape, layout: None)
    model = _seq(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 2))
    with pytest.raises(TwinMismatchError, match=r"Keras layer '2' \(PyTorch '2'\)"):
        to_keras(model, (2, 5, 5))


# ----------------------------------------------------------------------------
# iNNvestigate on twins


def test_innvestigate_analyses_a_fresh_twin_and_sees_input_layer_rules():
    innvestigate = pytest.importorskip("innvestigate")
    model = _seq(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )
    twin = to_keras(model, (3, 8, 8))
    assert not twin.input_layer_hidden
    x = to_channels_last(np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype("float32"))
    relevance = innvestigate.create_analyzer("lrp.epsilon", twin.fresh()).analyze(x)
    assert relevance.shape == x.shape and np.all(np.isfinite(relevance))
    plain = innvestigate.analyzer.LRPEpsilon(twin.fresh(), epsilon=0.1).analyze(x)
    with_z = innvestigate.analyzer.LRPEpsilon(twin.fresh(), epsilon=0.1, input_layer_rule="Z").analyze(x)
    assert np.abs(plain - with_z).max() > 1e-3 * np.abs(plain).max()


def test_innvestigate_analyses_a_float64_twin_inside_its_floatx_block():
    innvestigate = pytest.importorskip("innvestigate")
    model = _seq(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 3))
    twin = to_keras(model, (2, 4, 4), dtype="float64")
    x = to_channels_last(np.random.default_rng(5).standard_normal((2, 2, 4, 4)))
    with twin.floatx():
        assert tf.keras.backend.floatx() == "float64"
        lrp_z = innvestigate.create_analyzer("lrp.z", twin.fresh()).analyze(x)
        gradient_x_input = innvestigate.create_analyzer("input_t_gradient", twin.fresh()).analyze(x)
    assert tf.keras.backend.floatx() == "float32"
    assert lrp_z.dtype == np.float64
    np.testing.assert_allclose(lrp_z, gradient_x_input, rtol=1e-10, atol=1e-12)  # a ReLU-net identity


def test_innvestigate_drops_input_layer_rules_on_a_hidden_twin():
    innvestigate = pytest.importorskip("innvestigate")
    model = _seq(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    twin = to_keras(model, (3, 8, 8))
    assert twin.input_layer_hidden
    x = to_channels_last(np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype("float32"))
    plain = innvestigate.analyzer.LRPEpsilon(twin.fresh(), epsilon=0.1).analyze(x)
    with_z = innvestigate.analyzer.LRPEpsilon(twin.fresh(), epsilon=0.1, input_layer_rule="Z").analyze(x)
    assert np.array_equal(plain, with_z)  # what input_layer_hidden warns about


# ----------------------------------------------------------------------------
# Eager mode and imports (own processes: graph mode is process-wide)


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_twin_works_in_eager_mode_and_parity_imports_without_tensorflow():
    code = (
        "import sys, parity\n"
        "assert 'tensorflow' not in sys.modules\n"
        "import tensorflow as tf, torch\n"
        "from torch import nn\n"
        "from parity.twin import to_keras\n"
        "assert tf.executing_eagerly()\n"
        "torch.manual_seed(0)\n"
        "m = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),\n"
        "                  nn.Flatten(), nn.Linear(48, 2)).eval()\n"
        "t = to_keras(m, (2, 8, 8))\n"
        "t.verify(t.fresh())\n"
        "print('ok', t.input_layer_hidden)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "True"]


# ----------------------------------------------------------------------------
# Random architectures


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def _conv_nets(draw, rank: int):
    """A random conv/pool/BN/dense chain: (model, input shape)."""
    conv_cls, bn_cls = (nn.Conv1d, nn.BatchNorm1d) if rank == 1 else (nn.Conv2d, nn.BatchNorm2d)
    max_cls, avg_cls = (nn.MaxPool1d, nn.AvgPool1d) if rank == 1 else (nn.MaxPool2d, nn.AvgPool2d)
    channels = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(4, 12), min_size=rank, max_size=rank))
    shape = (channels, *sizes)
    modules = []
    for _ in range(draw(st.integers(1, 3))):
        kernel, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        dilation = 1 if stride > 1 else draw(st.integers(1, 2))
        padding = draw(st.integers(0, 2))
        new_sizes = [_out_size(s, kernel, stride, padding, dilation) for s in sizes]
        if min(new_sizes) < 1:
            break
        out_channels = draw(st.integers(1, 4))
        modules.append(conv_cls(channels, out_channels, kernel, stride, padding, dilation, bias=draw(st.booleans())))
        channels, sizes = out_channels, new_sizes
        if draw(st.booleans()):
            modules.append(bn_cls(channels, eps=draw(st.sampled_from([1e-5, 1e-3]))))
        activation = draw(st.sampled_from([None, "relu", "tanh", "leaky"]))
        if activation is not None:
            modules.append({"relu": nn.ReLU(), "tanh": nn.Tanh(), "leaky": nn.LeakyReLU(0.1)}[activation])
        pool = draw(st.sampled_from([None, "max", "avg"]))
        if pool is not None:
            kernel, stride = draw(st.integers(2, 3)), draw(st.integers(1, 2))
            # Zero padding is exact for max pooling only on non-negative inputs.
            may_pad = pool == "avg" or activation == "relu"
            padding = draw(st.integers(0, kernel // 2)) if may_pad else 0
            new_sizes = [_out_size(s, kernel, stride, padding) for s in sizes]
            if min(new_sizes) >= 1:
                if pool == "max":
                    modules.append(max_cls(kernel, stride, padding))
                else:
                    modules.append(avg_cls(kernel, stride, padding, count_include_pad=draw(st.booleans())))
                sizes = new_sizes
    if draw(st.booleans()):
        modules += [(nn.AdaptiveAvgPool1d if rank == 1 else nn.AdaptiveAvgPool2d)(1), nn.Flatten()]
        features = channels
    else:
        modules.append(nn.Flatten())
        features = channels * int(np.prod(sizes))
    hidden = draw(st.integers(1, 6))
    modules += [nn.Linear(features, hidden, bias=draw(st.booleans())), nn.ReLU(), nn.Linear(hidden, 3)]
    return _seq(*modules, seed=draw(st.integers(0, 2**16))), shape


def _convert_or_explain(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Convert (the check runs inside); only padded pooling may be refused."""
    tf.keras.backend.clear_session()
    try:
        to_keras(model, shape)
    except UnsupportedLayerError as error:
        assert "Pool" in str(error) and "pads by" in str(error), str(error)
        event("refused: padded pooling Keras cannot reproduce")
    else:
        event("converted")


_RANDOM = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_RANDOM
@given(_conv_nets(rank=1))
def test_random_1d_conv_nets_match_pytorch(net):
    _convert_or_explain(*net)


@_RANDOM
@given(_conv_nets(rank=2))
def test_random_2d_conv_nets_match_pytorch(net):
    _convert_or_explain(*net)


@_RANDOM
@given(
    features=st.integers(1, 8),
    widths=st.lists(st.integers(1, 8), min_size=1, max_size=3),
    batchnorm=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_dense_nets_match_pytorch(features, widths, batchnorm, seed):
    modules, previous = [], features
    for width in widths:
        modules += [nn.Linear(previous, width), nn.BatchNorm1d(width) if batchnorm else nn.Identity(), nn.ReLU()]
        previous = width
    modules.append(nn.Linear(previous, 2))
    tf.keras.backend.clear_session()
    to_keras(_seq(*modules, seed=seed), (features,), dtype="float64", rtol=1e-12)
