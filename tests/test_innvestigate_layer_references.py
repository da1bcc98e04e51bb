"""The library against iNNvestigate's own layer reference data (no TensorFlow).

iNNvestigate's repository tests its analyzers on six single-layer models (input (10, 10, 3) ->
Dense / Dense+ReLU / Conv2D / Conv2D+ReLU / AveragePooling2D / MaxPooling2D -> Flatten, random
weights, 8 random inputs; ``tests/analyzer/test_reference_layer.py``) against stored maps
(``tests/references/layer/*.hdf5``), kept here in ``fixtures/innvestigate_layer`` (see its README).
The models are rebuilt in PyTorch from the stored weights: a Keras Dense on the (10, 10, 3) input
acts on the last axis, so it is an ``nn.Linear`` on channels-last inputs; the convolution and
pooling models take the inputs channels-first, and the explained output neuron (iNNvestigate's
default: each sample's largest flattened output, stored with its value) is moved from Keras'
(h, w, c) flattening to PyTorch's (c, h, w).

Tolerance. The stored maps are iNNvestigate's float32 maps; ours is computed in float64 from the
same float32 inputs and weights, so it is the formula's value up to float64 rounding (~1e-15
relative), and the gap is iNNvestigate's float32 rounding alone. Every map value is a handful of
float32 operations on sums of at most 27 products (a 3x3x3 kernel): its rounding error is at most
about ``27 * 2**-24 * cond`` = 1.6e-6 relative at condition number 1, and the relevance sits on one
output neuron (the largest), whose pre-activation is far from zero. The bound asserted,
``FLOAT32_TOLERANCE`` = 1e-5 relative to the map's largest value, allows a condition number of 6;
measured: 8.9e-7 at most (IntegratedGradients, a mean of 64 float32 gradients), and live
iNNvestigate 2.1.2 reproduces the stored maps to 9.1e-7 (``convert.py --check``). A formula
difference is far larger: integrated gradients with 50 steps instead of 64 is off by 4.4e-3 on
the ReLU models, Deep Taylor without the Z-box input rule by 0.14 or more. Our own float32 map is
held to the project's float32 floor (:data:`parity.compare.FLOAT32_FLOOR`) against our float64 map.

What this data cannot tell apart: every stored bias is zero (Keras' initialiser) and every input
lies in (0, 1), so the bias-free analyzers equal their biased forms here, and ZPlusFast equals
ZPlus; ``tests/test_lrp_rules.py`` tests those against a numpy reference with random biases and
inputs of both signs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from parity.compare import FLOAT32_FLOOR, relative_error
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "innvestigate_layer" / "layer_references.npz"
FLOAT32_TOLERANCE = 1e-5

#: iNNvestigate's stored analyzer -> the method name and keywords that compute it (SmoothGrad's
#: maps depend on noise that is not stored; it is not in the data)
ANALYZERS = {
    "Gradient": ("gradient", {}),
    "InputTimesGradient": ("input_t_gradient", {}),
    "Deconvnet": ("deconvnet", {}),
    "GuidedBackprop": ("guided_backprop", {}),
    "IntegratedGradients": ("integrated_gradients", {"steps": 64}),  # iNNvestigate's default steps
    "LRPZ": ("lrp.z", {}),
    "LRPZIgnoreBias": ("lrp.z_IB", {}),
    "LRPZ_Flat_input_layer_rule": ("flatlrp_z", {}),
    "LRPZ_boxed_input_layer_rule": ("zblrp_z", {"low": -10.0, "high": 10.0}),
    "LRPZPlus": ("lrp.z_plus", {}),
    "LRPZPlusFast": ("lrp.z_plus_fast", {}),
    "LRPAlpha1Beta0": ("lrp.alpha_1_beta_0", {}),
    "LRPAlpha1Beta0IgnoreBias": ("lrp.alpha_1_beta_0_IB", {}),
    "LRPAlpha2Beta1": ("lrp.alpha_2_beta_1", {}),
    "LRPAlpha2Beta1IgnoreBias": ("lrp.alpha_2_beta_1_IB", {}),
    "LRPEpsilon": ("lrp.epsilon", {}),
    "LRPEpsilonIgnoreBias": ("lrp.epsilon_IB", {}),
    "LRPFlat": ("lrp.flat", {}),
    "LRPWSquare": ("lrp.w_square", {}),
    "LRPSequentialPresetA": ("lrp.sequential_preset_a", {}),
    "LRPSequentialPresetB": ("lrp.sequential_preset_b", {}),
    "LRPSequentialPresetAFlat": ("lrp.sequential_preset_a_flat", {}),
    "LRPSequentialPresetBFlat": ("lrp.sequential_preset_b_flat", {}),
    "DeepTaylor": ("deep_taylor", {}),
    "BoundedDeepTaylor": ("deep_taylor.bounded", {"low": -128.0, "high": 128.0}),
}
LAYERS = ("Dense", "Dense_relu", "Conv2D", "Conv2D_relu", "AveragePooling2D", "MaxPooling2D")


@pytest.fixture(scope="module")
def data():
    with np.load(DATA) as f:
        return dict(f)


def _torch_model(layer: str, weights: list[np.ndarray]) -> nn.Module:
    """The PyTorch twin of one single-layer model (float64)."""
    if layer.startswith("Dense"):
        kernel, bias = weights
        core = nn.Linear(3, 5)
        with torch.no_grad():
            core.weight.copy_(torch.from_numpy(kernel.T))
            core.bias.copy_(torch.from_numpy(bias))
    elif layer.startswith("Conv2D"):
        kernel, bias = weights
        core = nn.Conv2d(3, 5, 3)
        with torch.no_grad():
            core.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
            core.bias.copy_(torch.from_numpy(bias))
    else:
        core = nn.AvgPool2d(2) if layer == "AveragePooling2D" else nn.MaxPool2d(2)
    parts = [core] + ([nn.ReLU()] if layer.endswith("_relu") else []) + [nn.Flatten()]
    return nn.Sequential(*parts).double().eval()


def _channels_first(layer: str) -> bool:
    return not layer.startswith("Dense")


def _torch_target(layer: str, keras_index: np.ndarray) -> np.ndarray:
    """A Keras (h, w, c) flat output index as PyTorch's (c, h, w) one."""
    if not _channels_first(layer):
        return keras_index
    h, w, c = {"Conv2D": (8, 8, 5), "Conv2D_relu": (8, 8, 5)}.get(layer, (5, 5, 3))
    row, col, channel = keras_index // (w * c), keras_index // c % w, keras_index % c
    return channel * h * w + row * w + col


def _ours(name, kwargs, model, x, layer, targets, dtype):
    x = x.astype(dtype)
    model = model if dtype == np.float64 else model.float()
    if _channels_first(layer):
        got = calculate_relevancemaps(name, x.transpose(0, 3, 1, 2), model, neuron_selection=targets, **kwargs)
        return got.transpose(0, 2, 3, 1)
    return calculate_relevancemaps(name, x, model, neuron_selection=targets, **kwargs)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("analyzer", sorted(ANALYZERS))
def test_matches_innvestigates_stored_layer_reference(data, analyzer, layer):
    name, kwargs = ANALYZERS[analyzer]
    prefix = f"{analyzer}/{layer}"
    weights = [data[k] for k in (f"{prefix}/weight0", f"{prefix}/weight1") if k in data]
    model = _torch_model(layer, [w.astype(np.float64) for w in weights])
    x = data["input"].astype(np.float32).astype(np.float64)  # what the float32 Keras model saw
    targets = _torch_target(layer, data[f"{prefix}/target"])
    with torch.no_grad():
        inputs = torch.from_numpy(x.transpose(0, 3, 1, 2) if _channels_first(layer) else x)
        outputs = model(inputs).numpy()
    np.testing.assert_allclose(
        outputs[np.arange(len(targets)), targets], data[f"{prefix}/target_value"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(outputs.argmax(axis=1), targets)  # the neuron iNNvestigate explained
    stored = data[f"{prefix}/attribution"]
    ours64 = _ours(name, kwargs, model, x, layer, targets, np.float64)
    assert relative_error(ours64, stored) <= FLOAT32_TOLERANCE, relative_error(ours64, stored)
    ours32 = _ours(name, kwargs, _torch_model(layer, weights), x, layer, targets, np.float32)
    assert relative_error(ours32, ours64) <= FLOAT32_FLOOR


def test_the_data_has_zero_biases_and_positive_inputs(data):
    """The limits stated in the module docstring (if the data changes, so must the statement)."""
    assert all(not np.any(data[k]) for k in data if k.endswith("/weight1"))
    assert data["input"].min() > 0


def test_every_stored_analyzer_is_compared(data):
    stored = {key.split("/")[0] for key in data if "/" in key}
    assert stored == set(ANALYZERS)
