"""Both public APIs: native vs TF-compatible, short forms, batching, targets, input forms, dtypes.

Expected values come from closed forms (a linear model's gradient is a weight row) and float64
central finite differences, or from the equality of two independent ways of asking for the
same map (batched vs one by one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fixtures import load_inputs, load_model
from signxai.torch_signxai import calculate_relevancemap, calculate_relevancemaps
from signxai.torch_signxai.methods import wrappers
from signxai.torch_signxai.methods.grammar import parse

NAMES_FILE = Path(__file__).resolve().parents[2] / "shared" / "method_names.txt"
STOCHASTIC = {"smoothgrad", "vargrad", "random_uniform"}


def gradient_family_names() -> list[str]:
    lines = (line.strip() for line in NAMES_FILE.read_text().splitlines())
    names = [line for line in lines if line and not line.startswith(("#", "["))]
    return [n for n in names if parse(n).family not in {"lrp", "grad_cam", "guided_grad_cam"}]


def seeded(name: str) -> dict:
    return {"seed": 0} if parse(name).family in STOCHASTIC else {}


def cnn(seed: int = 0) -> nn.Module:
    """float64 CNN, input (2, 5, 5), 4 classes."""
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))
        .double()
        .eval()
    )


def linear(seed: int = 0, features: int = 5, classes: int = 4) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(features, classes).double().eval()


def rng_input(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def fd_gradient(model: nn.Module, x: np.ndarray, target: int, h: float = 1e-6) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    eye = np.eye(x.size).reshape(x.size, *x.shape) * h
    with torch.no_grad():
        plus = model(torch.from_numpy(x[None] + eye))[:, target].numpy()
        minus = model(torch.from_numpy(x[None] - eye))[:, target].numpy()
    return ((plus - minus) / (2 * h)).reshape(x.shape)


CNN = cnn()
CNN_SHAPE = (2, 5, 5)


# --------------------------------------------------------------------------- native == TF-compatible


@pytest.fixture(scope="module")
def digits():
    return load_model("digits_cnn"), load_inputs("digits_cnn")[:3]


@pytest.mark.parametrize("name", gradient_family_names())
def test_native_and_tf_compatible_apis_agree(digits, name):
    model, inputs = digits
    native = calculate_relevancemap(model, inputs[0], method=name, target_class=2, **seeded(name))
    tf_style = wrappers.calculate_relevancemap(name, inputs[0], model, neuron_selection=2, **seeded(name))
    np.testing.assert_array_equal(native, tf_style)
    assert native.shape == inputs[0].shape
    native_batch = calculate_relevancemaps(model, inputs, method=name, **seeded(name))
    tf_batch = wrappers.calculate_relevancemaps(name, inputs, model, **seeded(name))
    np.testing.assert_array_equal(native_batch, tf_batch)
    assert native_batch.shape == inputs.shape


def test_tf_compatible_api_matches_finite_differences():
    x = rng_input(CNN_SHAPE, 1)
    result = wrappers.calculate_relevancemap("gradient", x, CNN, neuron_selection=3)
    np.testing.assert_allclose(result, fd_gradient(CNN, x, 3), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- short forms and defaults


def test_default_method_is_the_gradient():
    x = rng_input(CNN_SHAPE, 2)
    t = int(np.argmax(CNN(torch.from_numpy(x[None])).detach().numpy()))
    np.testing.assert_allclose(calculate_relevancemap(CNN, x), fd_gradient(CNN, x, t), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        calculate_relevancemaps(CNN, x[None]), fd_gradient(CNN, x, t)[None], rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize(
    "short, full",
    [
        ("gradients", "gradient"),
        ("vanilla_gradient", "gradient"),
        ("input_t_gradient", "gradient_x_input"),
        ("input_x_gradient", "gradient_x_input"),
        ("deeplift", "deeplift_method"),
    ],
)
def test_short_forms_give_the_full_names_maps(short, full):
    x = rng_input(CNN_SHAPE, 3)
    np.testing.assert_array_equal(
        calculate_relevancemap(CNN, x, method=short, target_class=1),
        calculate_relevancemap(CNN, x, method=full, target_class=1),
    )
    np.testing.assert_array_equal(
        wrappers.calculate_relevancemap(short, x, CNN, neuron_selection=1),
        calculate_relevancemap(CNN, x, method=full, target_class=1),
    )


def test_gradients_short_form_matches_finite_differences():
    x = rng_input(CNN_SHAPE, 4)
    np.testing.assert_allclose(
        calculate_relevancemap(CNN, x, method="gradients", target_class=0), fd_gradient(CNN, x, 0), rtol=1e-6, atol=1e-9
    )


# --------------------------------------------------------------------------- batch == per sample

BATCH_METHODS = {
    "gradient": {},
    "gradient_x_sign_mu_0_5": {},
    "guided_backprop_x_input": {},
    "deconvnet": {},
    "integrated_gradients": {"steps": 5},
    "deeplift_method": {},
    "vargrad": {"num_samples": 3},
    "smoothgrad_x_sign": {"num_samples": 3},
}


@given(
    size=st.integers(1, 4),
    name=st.sampled_from(sorted(BATCH_METHODS)),
    target_kind=st.sampled_from(["none", "int", "list", "array", "tensor"]),
    data=st.data(),
    seed=st.integers(0, 2**16),
    tf_api=st.booleans(),
)
def test_batched_maps_equal_per_sample_maps(size, name, target_kind, data, seed, tf_api):
    x = rng_input((size, *CNN_SHAPE), seed)
    kwargs = dict(BATCH_METHODS[name])
    noise = None
    if parse(name).family in {"smoothgrad", "vargrad"}:
        noise = rng_input((3, size, *CNN_SHAPE), seed + 1) * 0.2
    if target_kind == "none":
        target, per_sample = None, [None] * size
    elif target_kind == "int":
        target = data.draw(st.integers(0, 3))
        per_sample = [target] * size
    else:
        per_sample = data.draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
        target = {"list": per_sample, "array": np.array(per_sample), "tensor": torch.tensor(per_sample)}[target_kind]
    batch_kwargs = dict(kwargs, **({"noise": noise} if noise is not None else {}))
    if tf_api:
        batched = wrappers.calculate_relevancemaps(name, x, CNN, neuron_selection=target, **batch_kwargs)
    else:
        batched = calculate_relevancemaps(CNN, x, method=name, target_class=target, **batch_kwargs)
    assert batched.shape == x.shape
    for i in range(size):
        one_kwargs = dict(kwargs, **({"noise": noise[:, i]} if noise is not None else {}))
        single = calculate_relevancemap(CNN, x[i], method=name, target_class=per_sample[i], **one_kwargs)
        np.testing.assert_allclose(batched[i], single, rtol=1e-10, atol=1e-12)


class CountingModel(nn.Module):
    """A float64 linear model that records the batch size of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.linear = nn.Linear(5, 3).double()
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.linear(x)


@pytest.mark.parametrize(
    "name, kwargs, rows",
    [
        ("gradient", {}, 6),
        ("guided_backprop", {}, 6),
        ("integrated_gradients", {"steps": 8}, 48),
        ("smoothgrad", {"num_samples": 8}, 48),
    ],
)
def test_maps_of_a_batch_come_from_batched_passes(name, kwargs, rows):
    model = CountingModel()
    x = rng_input((6, 5), 6)
    calculate_relevancemaps(model, x, method=name, **kwargs)
    assert max(model.calls) == rows  # every row of the work in one forward call
    assert len(model.calls) <= 2  # at most one more pass, on the clean batch, for the targets


# --------------------------------------------------------------------------- targets


def test_target_none_is_the_argmax_of_each_input():
    model = linear(7)
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    x = rng_input((6, 5), 7)
    argmax = np.argmax(x @ w.T + b, axis=1)
    assert len(set(argmax.tolist())) > 1, "the inputs should pick different classes"
    for result in (
        calculate_relevancemaps(model, x, method="gradient"),
        calculate_relevancemaps(model, x, method="gradient", target_class=None),
        wrappers.calculate_relevancemaps("gradient", x, model, neuron_selection=None),
        calculate_relevancemaps(model, x, method="gradient", neuron_selection="max_activation"),
    ):
        np.testing.assert_array_equal(result, w[argmax])
    for i in range(6):
        np.testing.assert_array_equal(calculate_relevancemap(model, x[i], method="gradient"), w[argmax[i]])


@pytest.mark.parametrize("key", ["target_class", "neuron_selection", "target"])
def test_target_keywords(key):
    model = linear(8)
    w = model.weight.detach().numpy()
    x = rng_input((3, 5), 8)
    np.testing.assert_array_equal(
        calculate_relevancemaps(model, x, method="gradient", **{key: 2}), np.stack([w[2]] * 3)
    )
    np.testing.assert_array_equal(calculate_relevancemap(model, x[0], method="gradient", **{key: 1}), w[1])
    np.testing.assert_array_equal(wrappers.calculate_relevancemap("gradient", x[0], model, **{key: 3}), w[3])


@pytest.mark.parametrize(
    "make",
    [list, tuple, np.array, torch.tensor, lambda v: np.array(v, dtype=np.int32), lambda v: np.array(v, dtype=float)],
)
def test_one_target_per_input(make):
    model = linear(9)
    w = model.weight.detach().numpy()
    x = rng_input((4, 5), 9)
    targets = [3, 0, 0, 2]
    np.testing.assert_array_equal(
        calculate_relevancemaps(model, x, method="gradient", target_class=make(targets)), w[targets]
    )


@pytest.mark.parametrize("target", [2, np.int64(2), torch.tensor(2), [2], np.array([2]), 2.0])
def test_single_target_forms(target):
    model = linear(10)
    w = model.weight.detach().numpy()
    x = rng_input((3, 5), 10)
    np.testing.assert_array_equal(
        calculate_relevancemaps(model, x, method="gradient", target_class=target), np.stack([w[2]] * 3)
    )
    np.testing.assert_array_equal(calculate_relevancemap(model, x[1], method="gradient", target_class=target), w[2])


def test_targets_select_the_map_for_every_gradient_method():
    """On a linear model every gradient-based map is a function of the selected weight row."""
    model = linear(11)
    w = model.weight.detach().numpy()
    x = rng_input((2, 5), 11)
    targets = [1, 3]
    np.testing.assert_allclose(
        calculate_relevancemaps(model, x, method="integrated_gradients", target_class=targets),
        w[targets] * x,
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        calculate_relevancemaps(model, x, method="deeplift_method", target_class=targets), w[targets] * x, rtol=1e-13
    )
    np.testing.assert_allclose(
        calculate_relevancemaps(model, x, method="smoothgrad", num_samples=4, target_class=targets, seed=1),
        w[targets],
        rtol=1e-13,
    )
    logits = x @ w.T + model.bias.detach().numpy()
    # guided backprop on a model without ReLU is the gradient seeded with the logit's value
    np.testing.assert_allclose(
        calculate_relevancemaps(model, x, method="guided_backprop", target_class=targets),
        w[targets] * logits[[0, 1], targets][:, None],
        rtol=1e-13,
    )


# --------------------------------------------------------------------------- input forms


@pytest.mark.parametrize("as_torch", [False, True])
def test_single_input_with_and_without_batch_axis(as_torch):
    x = rng_input(CNN_SHAPE, 12)
    expected = fd_gradient(CNN, x, 2)
    convert = torch.from_numpy if as_torch else (lambda a: a)
    without = calculate_relevancemap(CNN, convert(x.copy()), method="gradient", target_class=2)
    with_axis = calculate_relevancemap(CNN, convert(x[None].copy()), method="gradient", target_class=2)
    for result, shape in ((without, CNN_SHAPE), (with_axis, (1, *CNN_SHAPE))):
        assert isinstance(result, np.ndarray)
        assert result.shape == shape
        assert result.dtype == np.float64
        np.testing.assert_allclose(result.reshape(CNN_SHAPE), expected, rtol=1e-6, atol=1e-9)
    tf_style = wrappers.calculate_relevancemap("gradient", convert(x[None].copy()), CNN, neuron_selection=2)
    assert tf_style.shape == (1, *CNN_SHAPE)


@pytest.mark.parametrize("container", [list, tuple])
@pytest.mark.parametrize("as_torch", [False, True])
def test_list_of_inputs(container, as_torch):
    x = rng_input((3, *CNN_SHAPE), 13)
    items = container(torch.from_numpy(xi.copy()) if as_torch else xi.copy() for xi in x)
    result = calculate_relevancemaps(CNN, items, method="gradient", target_class=[0, 1, 2])
    assert isinstance(result, np.ndarray) and result.shape == x.shape
    expected = np.stack([fd_gradient(CNN, xi, t) for xi, t in zip(x, [0, 1, 2], strict=True)])
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-9)
    tf_style = wrappers.calculate_relevancemaps("gradient", items, CNN, neuron_selection=[0, 1, 2])
    np.testing.assert_array_equal(tf_style, result)


def test_feature_vector_inputs_of_a_conv_free_model():
    model = linear(14)
    w = model.weight.detach().numpy()
    x = rng_input(5, 14)
    assert calculate_relevancemap(model, x, method="gradient", target_class=1).shape == (5,)
    assert calculate_relevancemap(model, x[None], method="gradient", target_class=1).shape == (1, 5)
    np.testing.assert_array_equal(
        calculate_relevancemap(model, torch.from_numpy(x), method="gradient", target_class=1), w[1]
    )
    assert calculate_relevancemaps(model, [x, x, x], method="gradient").shape == (3, 5)


def test_one_d_inputs_of_a_conv1d_model():
    torch.manual_seed(15)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6, 3)).double().eval()
    x = rng_input((2, 8), 15)
    result = calculate_relevancemap(model, x, method="gradient", target_class=0)
    assert result.shape == (2, 8)
    np.testing.assert_allclose(result, fd_gradient(model, x, 0), rtol=1e-6, atol=1e-9)
    assert calculate_relevancemaps(model, np.stack([x, x]), method="gradient").shape == (2, 2, 8)


def test_integer_and_float32_inputs_are_converted_to_the_models_dtype():
    x_int = np.arange(50).reshape(CNN_SHAPE) % 7 - 3
    result = calculate_relevancemap(CNN, x_int, method="gradient_x_input", target_class=1)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, fd_gradient(CNN, x_int.astype(float), 1) * x_int, rtol=1e-6, atol=1e-8)
    x32 = rng_input(CNN_SHAPE, 16).astype(np.float32)
    result = calculate_relevancemap(CNN, x32, method="gradient", target_class=1)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, fd_gradient(CNN, x32.astype(np.float64), 1), rtol=1e-6, atol=1e-9)


def test_float64_model_computes_in_float64():
    model = nn.Linear(3, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1 / 3, 2 / 7, 1e-9 + 1], [0.1, 0.2, 0.3]], dtype=torch.float64))
    x = np.array([1 / 3, 1 / 7, 1 / 11], dtype=np.float64)
    w = model.weight.detach().numpy()
    assert not np.array_equal(w.astype(np.float32).astype(np.float64), w)  # float32 would show
    np.testing.assert_array_equal(calculate_relevancemap(model, x, method="gradient", target_class=0), w[0])
    ig = calculate_relevancemap(model, x, method="integrated_gradients", target_class=0)
    assert ig.dtype == np.float64
    np.testing.assert_allclose(ig, w[0] * x, rtol=1e-15)


def test_float32_model_returns_float32():
    model = cnn(17).float()
    x = rng_input(CNN_SHAPE, 17)
    result = calculate_relevancemap(model, x, method="gradient", target_class=2)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, fd_gradient(cnn(17), x, 2), rtol=1e-4, atol=1e-6)
