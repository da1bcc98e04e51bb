"""parity.testing.assert_parity from a test process that stays in eager mode: TensorFlow runs in a
child process that imports this module to unpickle :class:`TinyCNN`."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from parity.testing import assert_parity

pytestmark = pytest.mark.tf  # the child process needs the parity extra (TensorFlow, iNNvestigate)

X = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)


class TinyCNN(nn.Module):
    """A user-defined model class: the child finds it by importing this test module."""

    def __init__(self, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), activation(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_good_model_passes_and_returns_rows_without_tensorflow_here():
    tensorflow_before = "tensorflow" in sys.modules
    rows = assert_parity(TinyCNN(), torch.from_numpy(X), methods=["gradient", "lrp_epsilon_0_1", "lrpsign_z"])
    assert [row["method"] for row in rows] == ["gradient", "lrp_epsilon_0_1", "lrpsign_z"]
    assert all(row["passed"] and row["tolerance"] == 1e-4 for row in rows)
    assert ("tensorflow" in sys.modules) == tensorflow_before


def test_failing_rows_are_listed_in_the_assertion():
    # float32 rounding differs between the frameworks for epsilon-LRP (rel. error ~1e-7), so a
    # floor of 1e-12 fails that row of the direct float32 comparison for a real, measured reason
    with pytest.raises(AssertionError) as failure:
        assert_parity(TinyCNN(), X, methods=["gradient", "lrp_epsilon_0_1"], rtol=1e-12, float64=False)
    lines = str(failure.value).splitlines()
    assert lines[0].startswith("parity: ") and "lrp_epsilon_0_1" in lines[0]
    assert lines[1].split() == ["method", "f32", "error", "allowed", "f64", "error", "pass"]
    assert lines[3].startswith("lrp_epsilon_0_1") and lines[3].split()[2:] == ["1.0e-12", "-", "NO"]


def test_model_the_twin_cannot_convert_raises_runtime_error_quoting_the_child():
    with pytest.raises(RuntimeError, match="unsupported layer for the Keras twin: Hardswish"):
        assert_parity(TinyCNN(nn.Hardswish), X, methods=["gradient"])


def test_class_defined_in_a_function_is_refused_before_any_child_runs():
    class Local(nn.Linear):
        pass

    with pytest.raises(ValueError, match="define test_class_defined_in_a_function.*Local at the top level"):
        assert_parity(Local(4, 2), np.zeros((1, 4), np.float32))


def test_input_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"x has shape \(3, 1, 8, 8\)"):
        assert_parity(TinyCNN(), X, input_shape=(3, 8, 8))


class PooledCNN(nn.Module):
    """Large enough (32 inputs of 3x32x32) that both max-pooling layers take signxai's
    channels-last pooling path (``methods/pooling.py``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.layers = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 8 * 8, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_channels_last_pooling_path_keeps_parity_with_innvestigate():
    from signxai.torch_signxai.methods import pooling

    x = np.random.default_rng(1).standard_normal((32, 3, 32, 32)).astype(np.float32)
    assert 32 * 8 * 16 * 16 >= pooling.MIN_ENTRIES  # the smaller pooling input takes the path too
    methods = ["gradient", "lrp_epsilon_0_1", "lrp_alpha_1_beta_0", "lrpsign_z", "guided_backprop"]
    rows = assert_parity(PooledCNN(), x, methods=methods)
    assert sorted(row["method"] for row in rows) == sorted(methods) and all(row["passed"] for row in rows)


def test_a_keras_model_is_checked_as_it_is():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1)
    inputs = tf.keras.Input((8, 8, 1))
    hidden = tf.keras.layers.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(tf.keras.layers.Flatten()(hidden)), name="user_cnn")
    x = np.moveaxis(X, 1, -1)  # the Keras model's own layout
    rows = assert_parity(model, x, methods=["gradient", "lrp_z", "lrpsign_epsilon_0_1"])
    assert [row["method"] for row in rows] == ["gradient", "lrp_z", "lrpsign_epsilon_0_1"]
    assert all(row["passed"] and row["rel_error_f64"] <= 1e-10 for row in rows)
    assert all(row["model"] == "user_cnn" for row in rows)
