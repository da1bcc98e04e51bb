"""The gradient family against independent references.

References are central finite differences in float64, closed forms on linear models, and numpy
re-implementations of each formula in METHODS.md (guided backprop, deconvnet, SmoothGrad, VarGrad,
integrated gradients on iNNvestigate's path, DeepLIFT's rescale rule). Models are float64, so the
library computes in float64 and tolerances are tight.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fixtures import load_inputs, load_model
from signxai.torch_signxai import calculate_relevancemap, calculate_relevancemaps
from signxai.torch_signxai.methods.grammar import parse

NAMES_FILE = Path(__file__).resolve().parents[2] / "shared" / "method_names.txt"
NOT_GRADIENT_FAMILY = {"lrp", "grad_cam", "guided_grad_cam"}


def listed_names() -> list[str]:
    lines = (line.strip() for line in NAMES_FILE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "["))]


GRADIENT_FAMILY_NAMES = [name for name in listed_names() if parse(name).family not in NOT_GRADIENT_FAMILY]


# --------------------------------------------------------------------------- models


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build().double().eval()


def mlp_tanh(seed: int = 0, sizes=(6, 5, 4)) -> nn.Sequential:
    return _seeded(seed, lambda: nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2])))


def mlp_relu(seed: int = 0, sizes=(6, 5, 4)) -> nn.Sequential:
    def build():
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    model = _seeded(seed, build)
    with torch.no_grad():  # biases large enough that some units are off and signs are mixed
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.bias.uniform_(-0.5, 0.5)
    return model


def cnn2d(seed: int = 0) -> nn.Sequential:
    """Input (2, 6, 6)."""
    return _seeded(
        seed,
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 5),
        ),
    )


def cnn1d(seed: int = 0) -> nn.Sequential:
    """Input (2, 10)."""
    return _seeded(
        seed,
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool1d(2),
            nn.Conv1d(3, 4, 3),
            nn.Softplus(),
            nn.Flatten(),
            nn.Linear(4 * 3, 3),
        ),
    )


MODELS = {
    "mlp_tanh": (mlp_tanh, (6,)),
    "mlp_relu": (lambda: mlp_relu(0, (6, 8, 7, 4)), (6,)),
    "cnn2d": (cnn2d, (2, 6, 6)),
    "cnn1d": (cnn1d, (2, 10)),
}


def linears(model: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in model if isinstance(m, nn.Linear)
    ]


def random_input(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


# --------------------------------------------------------------------------- references


def forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of a batch, float64 numpy (the model's forward only: no autograd)."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def fd_gradient(model: nn.Module, x: np.ndarray, target: int, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of logit ``target`` at one input ``x`` (no batch axis)."""
    x = np.asarray(x, dtype=np.float64)
    eye = np.eye(x.size).reshape(x.size, *x.shape) * h
    plus = forward(model, x[None] + eye)[:, target]
    minus = forward(model, x[None] - eye)[:, target]
    return ((plus - minus) / (2 * h)).reshape(x.shape)


def tanh_mlp_gradient(layers, x: np.ndarray, target: int) -> np.ndarray:
    """Analytic gradient of a Linear-Tanh-Linear net."""
    (w1, b1), (w2, _) = layers
    return w1.T @ (w2[target] * (1 - np.tanh(w1 @ x + b1) ** 2))


def tanh_mlp_forward(layers, x: np.ndarray) -> np.ndarray:
    (w1, b1), (w2, b2) = layers
    return w2 @ np.tanh(w1 @ x + b1) + b2


def relu_mlp_forward(layers, x: np.ndarray) -> np.ndarray:
    a = x
    for w, b in layers[:-1]:
        a = np.maximum(w @ a + b, 0)
    w, b = layers[-1]
    return w @ a + b


def guided_reference(layers, x: np.ndarray, target: int, kind: str, seed: float | None = None) -> np.ndarray:
    """Guided backprop / deconvnet on a ReLU MLP, started from the selected logit's value
    (or from ``seed``)."""
    pre = []
    a = x
    for w, b in layers[:-1]:
        z = w @ a + b
        pre.append(z)
        a = np.maximum(z, 0)
    w_out, b_out = layers[-1]
    logit = w_out[target] @ a + b_out[target]
    signal = (logit if seed is None else seed) * w_out[target]  # at the last hidden activation
    for (w, _), z in zip(reversed(layers[:-1]), reversed(pre), strict=True):
        signal = np.maximum(signal, 0)
        if kind == "guided":
            signal = signal * (z > 0)
        signal = w.T @ signal
    return signal


def sign_mu(x: np.ndarray, mu: float = 0.0) -> np.ndarray:
    """+1 where x >= mu, else -1 (written as a sign of the difference, zero counted positive)."""
    s = np.sign(np.asarray(x, dtype=np.float64) - mu)
    s[s == 0] = 1
    return s


def call(model, x, name, **kwargs) -> np.ndarray:
    return calculate_relevancemap(model, x, method=name, **kwargs)


# --------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("key", sorted(MODELS))
@pytest.mark.parametrize("target", [None, 1, 2])
def test_gradient_matches_finite_differences(key, target):
    build, shape = MODELS[key]
    model = build()
    x = random_input(shape, 1)
    t = int(np.argmax(forward(model, x[None])[0])) if target is None else target
    result = call(model, x, "gradient", target_class=target)
    assert result.shape == x.shape and result.dtype == np.float64
    np.testing.assert_allclose(result, fd_gradient(model, x, t), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_batched_gradient_matches_finite_differences_per_input(key):
    build, shape = MODELS[key]
    model = build()
    x = random_input((3, *shape), 2)
    targets = [2, 0, 1]
    result = calculate_relevancemaps(model, x, method="gradient", target_class=targets)
    expected = np.stack([fd_gradient(model, xi, t) for xi, t in zip(x, targets, strict=True)])
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-8)


def test_gradient_on_a_linear_model_is_the_weight_row():
    model = _seeded(3, lambda: nn.Linear(5, 3))
    weight = model.weight.detach().numpy()
    x = random_input((4, 5), 3)
    for t in range(3):
        result = calculate_relevancemaps(model, x, method="gradient", target_class=t)
        np.testing.assert_array_equal(result, np.broadcast_to(weight[t], x.shape))


# --------------------------------------------------------------------------- post-multipliers


def _cnn_input_with_special_values(mu: float = 0.0) -> np.ndarray:
    x = random_input((2, 6, 6), 4)
    x[0, 0, :3] = 0.0  # exact zeros
    x[1, 2, 1] = mu  # exactly at the threshold
    x[1, 3, 4] = np.nextafter(mu, -np.inf)  # just below it
    return x


@pytest.mark.parametrize("name", ["gradient_x_input", "input_t_gradient", "input_x_gradient"])
def test_gradient_x_input(name):
    model = cnn2d()
    x = _cnn_input_with_special_values()
    grad = fd_gradient(model, x, 3)
    np.testing.assert_allclose(call(model, x, name, target_class=3), grad * x, rtol=1e-6, atol=1e-8)


def test_gradient_x_sign_counts_zero_as_positive():
    model = cnn2d()
    x = _cnn_input_with_special_values()
    grad = fd_gradient(model, x, 3)
    result = call(model, x, "gradient_x_sign", target_class=3)
    np.testing.assert_allclose(result, grad * sign_mu(x), rtol=1e-6, atol=1e-8)
    zeros = x == 0
    assert zeros.sum() == 4 and np.all(np.abs(grad[zeros]) > 1e-6)  # three zeros + the threshold 0
    np.testing.assert_allclose(result[zeros], grad[zeros], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "name, kwargs, mu",
    [
        ("gradient_x_sign_mu_0_5", {}, 0.5),
        ("gradient_x_sign_mu_neg_0_5", {}, -0.5),
        ("gradient_x_sign_mu_0", {}, 0.0),
        ("gradient_x_sign_mu", {}, 0.0),
        ("gradient_x_sign_mu", {"mu": 0.25}, 0.25),
        ("gradient_x_sign_mu_0_5", {"mu": -1.0}, -1.0),
    ],
)
def test_gradient_x_sign_mu_thresholds_the_input(name, kwargs, mu):
    model = cnn2d()
    x = _cnn_input_with_special_values(mu)
    grad = fd_gradient(model, x, 3)
    result = call(model, x, name, target_class=3, **kwargs)
    np.testing.assert_allclose(result, grad * sign_mu(x, mu), rtol=1e-6, atol=1e-8)
    at, below = (1, 2, 1), (1, 3, 4)
    assert result[at] == pytest.approx(grad[at], rel=1e-6)
    assert result[below] == pytest.approx(-grad[below], rel=1e-6)
    # the threshold is on x, not on the map: the two differ here
    assert not np.allclose(result, grad * sign_mu(grad, mu), rtol=1e-3)


@pytest.mark.parametrize("base", ["gradient", "guided_backprop", "deconvnet", "deeplift"])
def test_x_input_x_sign_is_the_map_times_abs_x(base):
    model = mlp_relu(5, (6, 8, 4))
    x = random_input(6, 5)
    x[2] = 0.0
    plain = call(model, x, base, target_class=1)
    combined = call(model, x, f"{base}_x_input_x_sign", target_class=1)
    np.testing.assert_allclose(combined, plain * np.abs(x), rtol=1e-12, atol=1e-15)
    assert combined[2] == 0.0


# --------------------------------------------------------------------------- guided backprop, deconvnet


@pytest.mark.parametrize("sizes", [(6, 5, 4), (6, 8, 7, 4)])
@pytest.mark.parametrize("kind, name", [("guided", "guided_backprop"), ("deconv", "deconvnet")])
def test_guided_backprop_and_deconvnet_match_numpy(sizes, kind, name):
    model = mlp_relu(7, sizes)
    layers = linears(model)
    x = random_input(sizes[0], 7)
    logits = relu_mlp_forward(layers, x)
    np.testing.assert_allclose(forward(model, x[None])[0], logits, rtol=1e-12)
    negative = int(np.argmin(logits))
    assert logits[negative] < 0, "the test needs a negative logit"
    for target in (None, negative, int(np.argmax(logits))):
        t = int(np.argmax(logits)) if target is None else target
        expected = guided_reference(layers, x, t, kind)
        result = call(model, x, name, target_class=target)
        np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, name", [("guided", "guided_backprop"), ("deconv", "deconvnet")])
def test_guided_methods_start_from_the_logit_value_not_one(kind, name):
    model = mlp_relu(8, (6, 8, 7, 4))
    layers = linears(model)
    x = random_input(6, 8)
    logits = relu_mlp_forward(layers, x)
    t = int(np.argmin(logits))
    assert logits[t] < 0
    result = call(model, x, name, target_class=t)
    assert np.any(result != 0)
    # seeded with the (negative) logit, not 1: the positive-part filters pass other paths, so the
    # map is not a multiple of the map seeded with 1
    from_one = guided_reference(layers, x, t, kind, seed=1.0)
    assert np.any(from_one != 0)
    assert not np.allclose(result, from_one)
    assert not np.allclose(result, logits[t] * from_one)
    np.testing.assert_allclose(result, guided_reference(layers, x, t, kind), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, name", [("guided", "guided_backprop"), ("deconv", "deconvnet")])
def test_guided_methods_batched_with_per_input_targets(kind, name):
    model = mlp_relu(9, (6, 8, 7, 4))
    layers = linears(model)
    x = random_input((4, 6), 9)
    targets = np.array([0, 3, 1, 3])
    result = calculate_relevancemaps(model, x, method=name, neuron_selection=targets)
    expected = np.stack([guided_reference(layers, xi, int(t), kind) for xi, t in zip(x, targets, strict=True)])
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "suffix, factor",
    [
        ("_x_input", lambda x: x),
        ("_x_sign", lambda x: sign_mu(x)),
        ("_x_sign_mu_0_5", lambda x: sign_mu(x, 0.5)),
        ("_x_sign_mu_neg_0_5", lambda x: sign_mu(x, -0.5)),
    ],
)
@pytest.mark.parametrize("kind, name", [("guided", "guided_backprop"), ("deconv", "deconvnet")])
def test_guided_methods_with_post_multipliers(kind, name, suffix, factor):
    model = mlp_relu(10, (6, 8, 4))
    layers = linears(model)
    x = random_input(6, 10)
    x[0], x[1] = 0.0, 0.5
    expected = guided_reference(layers, x, 2, kind) * factor(x)
    np.testing.assert_allclose(call(model, x, name + suffix, target_class=2), expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- SmoothGrad, VarGrad


def test_smoothgrad_and_vargrad_with_injected_noise_match_numpy():
    model = mlp_tanh(11)
    layers = linears(model)
    x = random_input((3, 6), 11)
    targets = [1, 3, 0]
    noise = random_input((7, 3, 6), 12) * 0.3
    grads = np.stack([[tanh_mlp_gradient(layers, x[i] + noise[k, i], targets[i]) for i in range(3)] for k in range(7)])
    for batch_size in (64, 4, 1):  # one chunk, several, one sample per chunk
        kwargs = dict(noise=noise, num_samples=7, batch_size=batch_size, target_class=targets)
        smooth = calculate_relevancemaps(model, x, method="smoothgrad", **kwargs)
        var = calculate_relevancemaps(model, x, method="vargrad", **kwargs)
        np.testing.assert_allclose(smooth, grads.mean(axis=0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(var, grads.var(axis=0), rtol=1e-10, atol=1e-14)


def test_smoothgrad_noise_without_batch_axis_for_one_input():
    model = mlp_tanh(12)
    layers = linears(model)
    x = random_input(6, 13)
    noise = random_input((5, 6), 14) * 0.2
    grads = np.stack([tanh_mlp_gradient(layers, x + n, 2) for n in noise])
    np.testing.assert_allclose(
        call(model, x, "smoothgrad", noise=noise, num_samples=5, target_class=2),
        grads.mean(axis=0),
        rtol=1e-12,
        atol=1e-14,
    )
    np.testing.assert_allclose(
        call(model, x, "vargrad", noise=noise[:, None], num_samples=5, target_class=2),
        grads.var(axis=0),
        rtol=1e-10,
        atol=1e-14,
    )


def test_smoothgrad_keeps_the_clean_inputs_target():
    model = mlp_tanh(13)
    layers = linears(model)
    x = random_input(6, 15)
    clean = int(np.argmax(tanh_mlp_forward(layers, x)))
    noise = random_input((8, 6), 16) * 3.0
    noisy_argmax = [int(np.argmax(tanh_mlp_forward(layers, x + n))) for n in noise]
    assert any(t != clean for t in noisy_argmax), "the noise must move some argmax for this test"
    grads = np.stack([tanh_mlp_gradient(layers, x + n, clean) for n in noise])
    np.testing.assert_allclose(
        call(model, x, "smoothgrad", noise=noise, num_samples=8), grads.mean(axis=0), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(
        call(model, x, "vargrad", noise=noise, num_samples=8), grads.var(axis=0), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize("key", ["cnn2d", "cnn1d"])
def test_smoothgrad_on_conv_nets_matches_finite_differences(key):
    build, shape = MODELS[key]
    model = build()
    x = random_input(shape, 17)
    noise = random_input((3, 1, *shape), 18) * 0.1
    grads = np.stack([fd_gradient(model, x + n[0], 1) for n in noise])
    kwargs = dict(noise=noise, num_samples=3, target_class=1)
    np.testing.assert_allclose(call(model, x, "smoothgrad", **kwargs), grads.mean(axis=0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(call(model, x, "vargrad", **kwargs), grads.var(axis=0), rtol=1e-4, atol=1e-9)


def test_zero_noise_level_gives_the_gradient_and_zero_variance():
    model = cnn2d()
    x = random_input((2, 6, 6), 19)
    grad = fd_gradient(model, x, 4)
    np.testing.assert_allclose(
        call(model, x, "smoothgrad", noise_level=0.0, num_samples=3, target_class=4), grad, rtol=1e-6, atol=1e-8
    )
    # identical gradients: zero up to the rounding of their mean (squared, so ~1e-37 at most)
    var = call(model, x, "vargrad", noise_level=0.0, num_samples=3, target_class=4)
    assert np.all(var >= 0) and np.all(var <= (1e-15 * np.abs(grad).max()) ** 2)


@pytest.mark.parametrize("name", ["smoothgrad", "vargrad", "smoothgrad_x_sign"])
def test_seeded_noise_is_reproducible_and_seeds_differ(name):
    model = mlp_tanh(14)
    x = random_input(6, 20)
    first = call(model, x, name, seed=5, num_samples=10)
    again = call(model, x, name, seed=5, num_samples=10)
    other = call(model, x, name, seed=6, num_samples=10)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(call(model, x, name, num_samples=10), call(model, x, name, num_samples=10))


class Quadratic(nn.Module):
    """Logit 0 is sum(x**2) / 2, so its gradient is x itself; logit 1 is constant."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        first = 0.5 * (x**2).flatten(1).sum(1)
        return torch.stack([first, torch.zeros_like(first) + self.anchor], dim=1)


@pytest.mark.parametrize("sigma", [0.2, 0.5])
def test_noise_level_is_the_standard_deviation_in_input_units(sigma):
    model = Quadratic()
    x = random_input(256, 21)
    kwargs = dict(noise_level=sigma, num_samples=400, seed=0, target_class=0)
    smooth = call(model, x, "smoothgrad", **kwargs)
    var = call(model, x, "vargrad", **kwargs)
    # gradient = x + noise: the mean is x up to sigma / sqrt(n) per element, the variance sigma**2
    assert np.abs(smooth - x).max() < 5 * sigma / np.sqrt(400)
    assert var.mean() == pytest.approx(sigma**2, rel=0.03)


def test_default_noise_level_and_sample_count():
    model = Quadratic()
    x = random_input(400, 22)
    var = call(model, x, "vargrad", seed=1, target_class=0)
    assert var.mean() == pytest.approx(0.2**2, rel=0.05)  # default noise_level 0.2
    # default num_samples 50: injected noise of 50 draws is accepted and gives the ddof-0 variance
    noise = np.random.default_rng(23).normal(size=(50, 400))
    ddof0 = call(model, x, "vargrad", noise=noise, target_class=0)
    np.testing.assert_allclose(ddof0, noise.var(axis=0), rtol=1e-10)


# --------------------------------------------------------------------------- integrated gradients


def ig_reference(gradient, x: np.ndarray, reference: np.ndarray, steps: int) -> np.ndarray:
    points = [reference + k / steps * (x - reference) for k in range(steps)]
    return np.mean([gradient(p) for p in points], axis=0) * (x - reference)


@pytest.mark.parametrize("steps, batch_size", [(7, 64), (7, 3), (1, 64)])
def test_integrated_gradients_match_the_numpy_path_integral(steps, batch_size):
    model = mlp_tanh(15)
    layers = linears(model)
    x = random_input((2, 6), 24)
    targets = [3, 1]
    result = calculate_relevancemaps(
        model, x, method="integrated_gradients", steps=steps, batch_size=batch_size, target_class=targets
    )
    expected = np.stack(
        [
            ig_reference(lambda p, t=t: tanh_mlp_gradient(layers, p, t), xi, np.zeros(6), steps)
            for xi, t in zip(x, targets, strict=True)
        ]
    )
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-14)


def test_integrated_gradients_default_steps_and_nonzero_reference():
    model = mlp_tanh(16)
    layers = linears(model)
    x = random_input(6, 25)
    reference = random_input(6, 26) * 0.5
    grad = lambda p: tanh_mlp_gradient(layers, p, 2)  # noqa: E731
    np.testing.assert_allclose(
        call(model, x, "integrated_gradients", target_class=2),
        ig_reference(grad, x, np.zeros(6), 50),
        rtol=1e-12,
        atol=1e-14,
    )
    np.testing.assert_allclose(
        call(model, x, "integrated_gradients", target_class=2, reference=reference),
        ig_reference(grad, x, reference, 50),
        rtol=1e-12,
        atol=1e-14,
    )


def test_integrated_gradients_first_point_is_the_reference():
    """k = 0 .. steps-1: with steps=2 the points are ref and the midpoint, not the midpoint and x."""
    model = Quadratic()
    x = random_input(5, 27)
    # gradient at a point p is p: mean over {0, x/2} is x/4, times x
    np.testing.assert_allclose(call(model, x, "integrated_gradients", steps=2, target_class=0), x * x / 4, rtol=1e-14)


def test_integrated_gradients_on_a_linear_model_is_gradient_times_input():
    model = _seeded(17, lambda: nn.Linear(6, 3))
    weight = model.weight.detach().numpy()
    x = random_input((3, 6), 28)
    result = calculate_relevancemaps(model, x, method="integrated_gradients", target_class=[0, 2, 1])
    np.testing.assert_allclose(result, weight[[0, 2, 1]] * x, rtol=1e-13, atol=0)


def test_integrated_gradients_on_a_conv_net_match_finite_differences():
    model = cnn1d()
    x = random_input((2, 10), 29)
    grad = lambda p: fd_gradient(model, p, 2)  # noqa: E731
    np.testing.assert_allclose(
        call(model, x, "integrated_gradients", steps=4, target_class=2),
        ig_reference(grad, x, np.zeros_like(x), 4),
        rtol=1e-6,
        atol=1e-8,
    )


# --------------------------------------------------------------------------- DeepLIFT


def deeplift_one_hidden(layers, activation, derivative, x, reference, target):
    """Rescale rule on Linear-activation-Linear: multipliers (f(z) - f(z0)) / (z - z0)."""
    (w1, b1), (w2, _) = layers
    z, z0 = w1 @ x + b1, w1 @ reference + b1
    delta = z - z0
    safe = np.abs(delta) > 1e-12
    multiplier = np.where(safe, (activation(z) - activation(z0)) / np.where(safe, delta, 1), derivative(z))
    return ((w2[target] * multiplier) @ w1) * (x - reference)


@pytest.mark.parametrize("with_reference", [False, True])
def test_deeplift_on_a_linear_model_is_gradient_times_delta(with_reference):
    model = _seeded(18, lambda: nn.Linear(6, 3))
    weight = model.weight.detach().numpy()
    x = random_input(6, 30)
    reference = random_input(6, 31) if with_reference else np.zeros(6)
    kwargs = {"reference": reference} if with_reference else {}
    np.testing.assert_allclose(
        call(model, x, "deeplift_method", target_class=1, **kwargs), weight[1] * (x - reference), rtol=1e-13, atol=1e-15
    )


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_deeplift_rescale_on_one_hidden_layer(act, with_reference):
    model = mlp_tanh(19, (6, 9, 4)) if act == "tanh" else mlp_relu(19, (6, 9, 4))
    layers = linears(model)
    if act == "relu":
        activation, derivative = (lambda v: np.maximum(v, 0)), (lambda v: (v > 0).astype(float))
    else:
        activation, derivative = np.tanh, (lambda v: 1 - np.tanh(v) ** 2)
    x = random_input(6, 32)
    reference = random_input(6, 33) * 0.5 if with_reference else np.zeros(6)
    kwargs = {"reference": reference} if with_reference else {}
    for t in range(4):
        expected = deeplift_one_hidden(layers, activation, derivative, x, reference, t)
        result = call(model, x, "deeplift_method", target_class=t, **kwargs)
        np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-13)
    grad_x_input = call(model, x, "gradient_x_input", target_class=0)
    assert not np.allclose(call(model, x, "deeplift_method", target_class=0), grad_x_input), (
        "DeepLIFT must differ from gradient*input on this net for the test to mean anything"
    )


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_deeplift_completeness(act):
    if act == "relu":
        model = mlp_relu(20, (6, 8, 7, 5))
    else:
        torch.manual_seed(20)
        model = (
            nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 7), nn.Sigmoid(), nn.Linear(7, 5)).double().eval()
        )
    x = random_input((4, 6), 34)
    reference = random_input(6, 35) * 0.3
    targets = [0, 4, 2, 2]
    for ref, kwargs in ((np.zeros(6), {}), (reference, {"reference": reference})):
        result = calculate_relevancemaps(model, x, method="deeplift_method", target_class=targets, **kwargs)
        delta = forward(model, x)[np.arange(4), targets] - forward(model, ref[None])[0, targets]
        np.testing.assert_allclose(result.sum(axis=1), delta, rtol=1e-10, atol=1e-12)


def test_deeplift_short_name_and_post_multipliers():
    model = mlp_relu(21, (6, 8, 4))
    layers = linears(model)
    x = random_input(6, 36)
    x[4] = 0.0
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    step = lambda v: (v > 0).astype(float)  # noqa: E731
    expected = deeplift_one_hidden(layers, relu, step, x, np.zeros(6), 3)
    np.testing.assert_allclose(call(model, x, "deeplift", target_class=3), expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(call(model, x, "deeplift_x_input", target_class=3), expected * x, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(
        call(model, x, "deeplift_x_sign", target_class=3), expected * sign_mu(x), rtol=1e-10, atol=1e-13
    )


# --------------------------------------------------------------------------- random_uniform


def pooled_cnn(channels: int, dims: int) -> nn.Module:
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
    return _seeded(22, lambda: nn.Sequential(conv(channels, 2, 1), pool, nn.Flatten(), nn.Linear(2, 2)))


def test_random_uniform_range_distribution_and_channel_sharing_2d():
    model = pooled_cnn(3, 2)
    x = random_input((2, 3, 40, 40), 37)
    result = calculate_relevancemaps(model, x, method="random_uniform", seed=0)
    assert result.shape == x.shape and result.dtype == np.float64
    assert np.all(result >= -1) and np.all(result <= 1)
    for c in (1, 2):
        np.testing.assert_array_equal(result[:, c], result[:, 0])
    values = result[:, 0].ravel()
    assert values.min() < -0.99 and values.max() > 0.99
    assert abs(values.mean()) < 0.03
    # quartiles of U(-1, 1): a quarter of the values in each
    counts = np.histogram(values, bins=[-1, -0.5, 0, 0.5, 1])[0] / values.size
    np.testing.assert_allclose(counts, 0.25, atol=0.02)
    assert not np.array_equal(result[0], result[1])


def test_random_uniform_shared_across_channels_1d():
    model = pooled_cnn(4, 1)
    x = random_input((4, 50), 38)
    result = call(model, x, "random_uniform", seed=3)
    assert result.shape == x.shape
    for c in range(1, 4):
        np.testing.assert_array_equal(result[c], result[0])
    assert len(np.unique(result[0])) == 50


def test_random_uniform_on_feature_vectors_is_elementwise():
    model = _seeded(23, lambda: nn.Linear(30, 2))
    x = random_input((3, 30), 39)
    result = calculate_relevancemaps(model, x, method="random_uniform", seed=4)
    assert len(np.unique(result)) == result.size
    assert np.all(np.abs(result) <= 1)


def test_random_uniform_seeded_reproducible_and_seeds_differ():
    model = pooled_cnn(3, 2)
    x = random_input((3, 8, 8), 40)
    first = call(model, x, "random_uniform", seed=7)
    np.testing.assert_array_equal(first, call(model, x, "random_uniform", seed=7))
    assert not np.allclose(first, call(model, x, "random_uniform", seed=8))
    assert not np.allclose(call(model, x, "random_uniform"), call(model, x, "random_uniform"))


def test_random_uniform_does_not_depend_on_the_input_values():
    model = pooled_cnn(3, 2)
    a = call(model, random_input((3, 8, 8), 41), "random_uniform", seed=9)
    b = call(model, random_input((3, 8, 8), 42), "random_uniform", seed=9)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- every listed name

FIXTURE_MODELS = ["digits_mlp", "digits_cnn", "series_cnn1d"]


def test_gradient_family_names_are_the_expected_ones():
    families = {parse(name).family for name in GRADIENT_FAMILY_NAMES}
    assert families == {
        "gradient",
        "guided_backprop",
        "deconvnet",
        "smoothgrad",
        "vargrad",
        "integrated_gradients",
        "deeplift",
        "random_uniform",
    }
    by_text = [
        name
        for name in listed_names()
        if "grad_cam" not in name and name.split("_")[0] not in {"lrp", "lrpz", "lrpsign", "w2lrp", "flatlrp", "zblrp"}
    ]
    assert GRADIENT_FAMILY_NAMES == by_text and len(by_text) == 46


@pytest.fixture(scope="module")
def fixture_models():
    return {name: (load_model(name), load_inputs(name)[:2]) for name in FIXTURE_MODELS}


def _base_and_factor(name: str):
    """(base name, numpy multiplier of x) for a listed gradient-family name."""
    if name == "input_t_gradient":
        return "gradient", lambda x: x
    base, mu = name, None
    for suffix, value in (
        ("_x_sign_mu_neg_0_5", -0.5),
        ("_x_sign_mu_0_5", 0.5),
        ("_x_sign_mu_0", 0.0),
        ("_x_sign_mu", 0.0),
        ("_x_sign", 0.0),
    ):
        if base.endswith(suffix):
            base, mu = base[: -len(suffix)], value
            break
    times_input = base.endswith("_x_input")
    if times_input:
        base = base[: -len("_x_input")]

    def factor(x):
        sign = np.ones_like(x) if mu is None else sign_mu(x, mu).astype(x.dtype)
        return x * sign if times_input else sign

    return base, factor


@pytest.mark.parametrize("model_name", FIXTURE_MODELS)
@pytest.mark.parametrize("name", GRADIENT_FAMILY_NAMES)
def test_every_gradient_family_name_gives_a_finite_map(fixture_models, model_name, name):
    model, inputs = fixture_models[model_name]
    x = inputs[0]
    seeded = {"seed": 0} if parse(name).family in {"smoothgrad", "vargrad", "random_uniform"} else {}
    result = calculate_relevancemap(model, x, method=name, **seeded)
    assert isinstance(result, np.ndarray)
    assert result.shape == x.shape
    assert result.dtype == np.float32
    assert np.all(np.isfinite(result))
    assert np.any(result != 0)
    base, factor = _base_and_factor(name)
    if base != name:
        plain = calculate_relevancemap(model, x, method=base, **seeded)
        np.testing.assert_allclose(result, plain * factor(x), rtol=1e-6, atol=1e-7)
    batch = calculate_relevancemaps(model, inputs, method=name, **seeded)
    assert batch.shape == inputs.shape and np.all(np.isfinite(batch))
