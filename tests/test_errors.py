"""Bad input gives a clear error: the exception type and the key words of its message."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from signxai.torch_signxai import calculate_relevancemap, calculate_relevancemaps
from signxai.torch_signxai.methods import wrappers
from signxai.torch_signxai.methods.grammar import parse

NAMES_FILE = Path(__file__).resolve().parents[2] / "shared" / "method_names.txt"


def gradient_family_names() -> list[str]:
    lines = (line.strip() for line in NAMES_FILE.read_text().splitlines())
    names = [line for line in lines if line and not line.startswith(("#", "["))]
    return [n for n in names if parse(n).family not in {"lrp", "grad_cam", "guided_grad_cam"}]


#: one name per gradient family, with a post-multiplier variant
METHODS = [
    "gradient",
    "gradient_x_sign_mu_0_5",
    "guided_backprop",
    "deconvnet_x_input",
    "smoothgrad",
    "vargrad",
    "integrated_gradients",
    "deeplift_method",
    "random_uniform",
]
SMALL = {"smoothgrad": {"num_samples": 2}, "vargrad": {"num_samples": 2}, "integrated_gradients": {"steps": 2}}


def small(name: str) -> dict:
    return dict(SMALL.get(parse(name).family, {}))


def cnn() -> nn.Module:
    """float64 CNN, input (2, 5, 5), 4 classes."""
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))
        .double()
        .eval()
    )


def x_cnn(*batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(*batch, 2, 5, 5))


# --------------------------------------------------------------------------- unknown method


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, name: calculate_relevancemap(m, x, method=name),
        lambda m, x, name: calculate_relevancemaps(m, x[None], method=name),
        lambda m, x, name: wrappers.calculate_relevancemap(name, x, m),
        lambda m, x, name: wrappers.calculate_relevancemaps(name, x[None], m),
    ],
    ids=["native", "native_batch", "tf", "tf_batch"],
)
@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("gradeint", "gradient"),
        ("smoothgrad_x_sing", "smoothgrad_x_sign"),
        ("integrated_gradient", "integrated_gradients"),
        ("lrp_epsilon_0_1_stdx", "lrp_epsilon_0_1_std_x"),
    ],
)
def test_unknown_method_names_a_close_valid_name(call, name, suggestion):
    with pytest.raises(ValueError) as info:
        call(cnn(), x_cnn(), name)
    message = str(info.value)
    assert "Unknown method name" in message and repr(name) in message
    assert "Closest valid names:" in message and suggestion in message


def test_method_must_be_a_string():
    with pytest.raises(TypeError, match="str"):
        calculate_relevancemap(cnn(), x_cnn(), method=None)


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("gradient", {"steps": 3}, "steps"),
        ("smoothgrad", {"epsilon": 0.1}, "epsilon"),
        ("integrated_gradients", {"num_samples": 0}, "num_samples"),
        ("smoothgrad", {"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_method_parameters_name_the_parameter(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        calculate_relevancemap(cnn(), x_cnn(), method=name, **kwargs)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(5, 5), (2, 25), (1, 1, 2, 5, 5), (50,)])
def test_single_input_of_the_wrong_rank(shape):
    x = np.zeros(shape)
    with pytest.raises(ValueError) as info:
        calculate_relevancemap(cnn(), x, method="gradient")
    message = str(info.value)
    assert "shape" in message and str(shape) in message
    assert "rank" in message


def test_single_api_rejects_a_batch_of_several():
    with pytest.raises(ValueError, match=re.escape("(3, 2, 5, 5)")):
        calculate_relevancemap(cnn(), x_cnn(3), method="gradient")
    with pytest.raises(ValueError, match=re.escape("(3, 2, 5, 5)")):
        wrappers.calculate_relevancemap("gradient", x_cnn(3), cnn())


@pytest.mark.parametrize("shape", [(2, 5, 5), (4, 1, 2, 5, 5)])
def test_batch_of_the_wrong_rank(shape):
    with pytest.raises(ValueError) as info:
        calculate_relevancemaps(cnn(), np.zeros(shape), method="gradient")
    assert "shape" in str(info.value) and str(shape) in str(info.value)


def test_conv1d_model_wrong_rank():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6, 2)).double()
    with pytest.raises(ValueError, match=re.escape("(8,)")):
        calculate_relevancemap(model, np.zeros(8), method="gradient")
    with pytest.raises(ValueError, match=re.escape("(1, 8)")):
        calculate_relevancemaps(model, np.zeros((1, 8)), method="gradient")


def test_conv_free_batch_needs_a_feature_axis():
    with pytest.raises(ValueError, match="batch axis"):
        calculate_relevancemaps(nn.Linear(3, 2), np.zeros(3), method="gradient")


@pytest.mark.parametrize(
    "x, word",
    [
        (np.float64(1.0), "scalar"),
        (np.zeros((0, 2, 5, 5)), "empty"),
        ([], "empty"),
    ],
)
def test_scalar_and_empty_inputs(x, word):
    with pytest.raises(ValueError, match=word):
        calculate_relevancemaps(cnn(), x, method="gradient")


def test_non_numeric_input_is_a_type_error():
    with pytest.raises(TypeError, match="numeric"):
        calculate_relevancemap(cnn(), np.full((2, 5, 5), "a"), method="gradient")


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="Module"):
        calculate_relevancemap(lambda x: x, x_cnn(), method="gradient")


# --------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("name", METHODS)
def test_non_finite_input(bad, as_torch, name):
    x = x_cnn()
    x[1, 2, 3] = bad
    x[0, 0, 0] = bad
    arg = torch.from_numpy(x) if as_torch else x
    with pytest.raises(ValueError) as info:
        calculate_relevancemap(cnn(), arg, method=name, **small(name))
    assert "NaN or inf" in str(info.value) and "2" in str(info.value)


@pytest.mark.parametrize(
    "name, key",
    [
        ("integrated_gradients", "reference"),
        ("deeplift_method", "reference"),
        ("smoothgrad", "noise"),
        ("vargrad", "noise"),
    ],
)
def test_non_finite_reference_or_noise(name, key):
    value = np.zeros((2, 1, 2, 5, 5)) if key == "noise" else np.zeros((2, 5, 5))
    value.flat[7] = np.nan
    kwargs = {key: value, **({"num_samples": 2} if key == "noise" else {})}
    with pytest.raises(ValueError, match=f"{key} contains NaN or inf"):
        calculate_relevancemap(cnn(), x_cnn(), method=name, **kwargs)


@pytest.mark.parametrize("name", ["smoothgrad", "vargrad"])
def test_noise_of_the_wrong_shape(name):
    with pytest.raises(ValueError) as info:
        calculate_relevancemaps(cnn(), x_cnn(2), method=name, num_samples=3, noise=np.zeros((3, 1, 2, 5, 5)))
    message = str(info.value)
    assert "noise" in message and "(3, 2, 2, 5, 5)" in message and "(3, 1, 2, 5, 5)" in message
    with pytest.raises(ValueError, match="noise"):
        calculate_relevancemaps(cnn(), x_cnn(2), method=name, num_samples=4, noise=np.zeros((3, 2, 2, 5, 5)))


@pytest.mark.parametrize("name", ["integrated_gradients", "deeplift_method"])
def test_reference_of_the_wrong_shape(name):
    with pytest.raises(ValueError, match=r"reference of shape \(3, 5\)"):
        calculate_relevancemap(cnn(), x_cnn(), method=name, reference=np.zeros((3, 5)))


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize("target", [4, -1, 100])
@pytest.mark.parametrize("name", METHODS)
def test_target_out_of_range(name, target):
    with pytest.raises(ValueError) as info:
        calculate_relevancemap(cnn(), x_cnn(), method=name, target_class=target, **small(name))
    message = str(info.value)
    assert f"target index {target}" in message
    assert "0..3" in message and "4 outputs" in message


@pytest.mark.parametrize("name", METHODS)
def test_one_bad_target_among_several(name):
    with pytest.raises(ValueError, match=r"target index 7 .*0\.\.3"):
        calculate_relevancemaps(cnn(), x_cnn(3), method=name, target_class=[0, 7, 1], **small(name))


@pytest.mark.parametrize("targets", [[0, 1], [0, 1, 2, 3], np.array([1, 1]), torch.tensor([0, 0, 0, 0, 0])])
@pytest.mark.parametrize("name", METHODS)
def test_wrong_number_of_targets(name, targets):
    with pytest.raises(ValueError) as info:
        calculate_relevancemaps(cnn(), x_cnn(3), method=name, target_class=targets, **small(name))
    message = str(info.value)
    assert f"{len(targets)} targets" in message and "3 inputs" in message


@pytest.mark.parametrize("target", [1.5, "cat", [0.5, 1]])
def test_non_integer_targets(target):
    with pytest.raises(ValueError, match="int"):
        calculate_relevancemaps(cnn(), x_cnn(2), method="gradient", target_class=target)


def test_target_given_twice():
    with pytest.raises(ValueError, match="neuron_selection and target_class"):
        calculate_relevancemap(cnn(), x_cnn(), method="gradient", neuron_selection=1, target_class=1)


# --------------------------------------------------------------------------- model output


class Reshaped(nn.Module):
    """A conv model whose output is reshaped to something that is not (batch, classes)."""

    def __init__(self, shape_of) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(2, 4, 3, padding=1).double()
        self.shape_of = shape_of

    def forward(self, x):
        features = self.conv(x)
        return features.reshape(self.shape_of(features))


@pytest.mark.parametrize(
    "shape_of, shown",
    [
        (lambda f: f.shape, "(1, 4, 5, 5)"),  # feature maps, not logits
        (lambda f: (f.shape[0], 4, 25), "(1, 4, 25)"),
        (lambda f: (-1,), "(100,)"),
    ],
)
@pytest.mark.parametrize("name", METHODS)
def test_model_output_must_be_batch_by_classes(name, shape_of, shown):
    with pytest.raises(ValueError) as info:
        calculate_relevancemap(Reshaped(shape_of), x_cnn(), method=name, **small(name))
    message = str(info.value)
    assert "(batch, classes)" in message and shown in message


class TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.linear(x), x


@pytest.mark.parametrize("name", METHODS)
def test_model_output_must_be_a_tensor(name):
    with pytest.raises(TypeError, match="tuple"):
        calculate_relevancemap(TupleOutput(), np.zeros(3), method=name, **small(name))


def test_every_gradient_family_name_checks_the_target():
    for name in gradient_family_names():
        with pytest.raises(ValueError, match="target index 9"):
            calculate_relevancemap(cnn(), x_cnn(), method=name, target_class=9, **small(name))


@pytest.mark.parametrize("name", ["gradient", "lrp_epsilon_0_1", "smoothgrad"])
def test_right_rank_wrong_size_names_the_shape(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    kwargs = {"seed": 0} if name == "smoothgrad" else {}
    with pytest.raises(ValueError, match=r"input batch of shape \(1, 2, 6, 6\).*channels"):
        calculate_relevancemap(model, torch.randn(2, 6, 6), method=name, **kwargs)
    with pytest.raises(ValueError, match=r"input batch of shape \(1, 1, 7, 7\)"):
        calculate_relevancemap(model, torch.randn(1, 7, 7), method=name, **kwargs)
