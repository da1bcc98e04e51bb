"""The library against live iNNvestigate on a residual twin with BatchNorm and a strided
convolution whose padding Keras spells as a ``ZeroPadding2D`` layer (TF's ``'same'`` pads a
stride-2 3x3 convolution on an even size asymmetrically), in float64.

iNNvestigate's rules see the padded tensor as that convolution's input: W-square and Flat count
the padded entries as ones, the harness's std_x epsilon takes the std of the padded input. The
library's TF-compatible API must give the same maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from graph_models import resnet_block

from parity.reference import reference_map
from parity.twin import to_keras
from signxai.torch_signxai.methods.grammar import parse
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

pytestmark = pytest.mark.tf

#: float64 formula identity through iNNvestigate's BN stand-in (its 1/sqrt(var**2 + eps) scale
#: amplifies rounding; observed <= 1e-13 on this model)
TOL64 = 1e-10

NAMES = [
    "lrp_w_square",
    "lrp_flat",
    "lrp_epsilon_0_25_std_x",
    "lrp_epsilon_0_1_std_x",
    "lrpsign_epsilon_0_25_std_x",
    "flatlrp_w_square",
    "w2lrp_flat",
    "lrpz_flat",
    "lrp_z",
    "lrp_epsilon_0_1",
    "lrp_alpha_2_beta_1",
]


@pytest.fixture(scope="module")
def case():
    tf.keras.backend.clear_session()
    model, shape = resnet_block()
    model = model.double()
    twin = to_keras(model, shape, dtype="float64", rtol=1e-12)
    x = np.random.default_rng(4).standard_normal((2, *shape))
    return model, twin, x, np.array([1, 4])


def test_the_strided_conv_is_explicitly_padded(case):
    _, twin, _, _ = case
    types = [type(layer).__name__ for layer in twin.keras_model.layers]
    assert "ZeroPadding2D" in types and "Add" in types and "BatchNormalization" in types


@pytest.mark.parametrize("name", NAMES)
def test_library_equals_innvestigate_behind_a_padding_layer(case, name):
    model, twin, x, targets = case
    with twin.floatx():
        expected = reference_map(
            parse(name),
            twin.fresh,
            x,
            targets,
            input_layer_hidden=twin.input_layer_hidden,
            layer_names=twin.layer_names,
        )
    got = calculate_relevancemaps(name, x, model, neuron_selection=targets)
    gap = np.abs(got - expected).max() / np.abs(expected).max()
    assert gap <= TOL64, gap


@pytest.mark.parametrize("name", ["grad_cam", "guided_grad_cam"])
def test_default_gradcam_layer_is_the_main_branch_conv_on_both_sides(case, name):
    """The block's projection shortcut runs last; the default layer is the conv farthest from the
    input (most convs on its path), the main branch's ``conv2``, in both frameworks."""
    model, twin, x, targets = case
    with twin.floatx():
        default = reference_map(parse(name), twin.fresh, x, targets, layer_names=twin.layer_names)
        named = reference_map(parse(name, layer_name="2.conv2"), twin.fresh, x, targets, layer_names=twin.layer_names)
        shortcut = reference_map(
            parse(name, layer_name="2.shortcut.0"), twin.fresh, x, targets, layer_names=twin.layer_names
        )
    assert np.array_equal(default, named) and not np.allclose(default, shortcut)
    got = calculate_relevancemaps(name, x, model, neuron_selection=targets)
    assert np.abs(got - default).max() <= TOL64 * np.abs(default).max()


@pytest.mark.parametrize("index", [1, 2, 3])
@pytest.mark.parametrize(
    "name, kwargs",
    [("lrp.sequential_preset_b_flat_until_idx", {}), ("lrp_epsilon_0_1", {"until_layer_rule": "z"})],
)
def test_until_layer_idx_reaches_the_same_layers_in_both_frameworks(case, name, kwargs, index):
    """Conv/dense layers numbered as they run (stem 0, conv1 1, conv2 2, the projection shortcut 3,
    which runs last); iNNvestigate gets the model.layers index of the same layer."""
    model, twin, x, targets = case
    spec = parse(name, until_layer_idx=index, **kwargs)
    with twin.floatx():
        expected = reference_map(spec, twin.fresh, x, targets, layer_names=twin.layer_names)
        without = reference_map(
            parse(name, until_layer_idx=index - 1, **kwargs), twin.fresh, x, targets, layer_names=twin.layer_names
        )
    assert not np.allclose(expected, without, rtol=1e-6)  # layer `index` really changed its rule
    got = calculate_relevancemaps(name, x, model, neuron_selection=targets, until_layer_idx=index, **kwargs)
    assert np.abs(got - expected).max() <= TOL64 * np.abs(expected).max()
