"""Explaining leaves the model and the caller's input exactly as they were, also when it raises.

Checked after every gradient-family method: hooks on every module (none added, none removed),
parameters and buffers bit-identical, ``requires_grad`` flags, ``.grad`` of parameters, every
module's train/eval flag (a mix is set up before the call), and the caller's tensor or array.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from signxai.torch_signxai import calculate_relevancemap, calculate_relevancemaps, remove_softmax
from signxai.torch_signxai.methods import wrappers
from signxai.torch_signxai.methods.grammar import parse

NAMES_FILE = Path(__file__).resolve().parents[2] / "shared" / "method_names.txt"
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
)


def gradient_family_names() -> list[str]:
    lines = (line.strip() for line in NAMES_FILE.read_text().splitlines())
    names = [line for line in lines if line and not line.startswith(("#", "["))]
    return [n for n in names if parse(n).family not in {"lrp", "grad_cam", "guided_grad_cam"}]


NAMES = gradient_family_names()
METHODS = [
    "gradient",
    "guided_backprop",
    "deconvnet",
    "smoothgrad",
    "vargrad",
    "integrated_gradients",
    "deeplift_method",
    "random_uniform",
    "gradient_x_input_x_sign",
]


def fast(name: str) -> dict:
    family = parse(name).family
    return {"smoothgrad": {"num_samples": 3}, "vargrad": {"num_samples": 3}, "integrated_gradients": {"steps": 3}}.get(
        family, {}
    )


class Net(nn.Module):
    """Conv-BN-ReLU-pool features and a dropout head; input (2, 6, 6), 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        with torch.no_grad():
            self.features[1].running_mean.uniform_(-0.2, 0.2)
            self.features[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.head(self.features(x))


def prepared_net() -> Net:
    """A float64 Net in a mixed state: root in train mode, features in eval except the BatchNorm,
    dropout in train mode, some parameters frozen, one parameter with a .grad already."""
    net = Net().double()
    net.train()
    net.features.eval()
    net.features[1].train()
    net.features[0].weight.requires_grad_(False)
    net.head[4].bias.requires_grad_(False)
    net.head[1].weight.grad = torch.full_like(net.head[1].weight, 0.5)
    return net


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: {attr: list(getattr(m, attr, {}).keys()) for attr in HOOK_DICTS} for n, m in model.named_modules()
        },
        "globals": {attr: len(getattr(module_globals, attr, {})) for attr in GLOBAL_HOOKS},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["globals"] == before["globals"]
    for kind in ("params", "buffers"):
        assert after[kind].keys() == before[kind].keys()
        for name, value in before[kind].items():
            assert after[kind][name].dtype == value.dtype
            assert torch.equal(after[kind][name], value), f"{kind} {name} changed"
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, f"{name}.grad was set"
        else:
            assert torch.equal(after["grads"][name], grad), f"{name}.grad changed"


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
        ):
            assert len(getattr(module, attr)) == 0, f"{attr} left on {name or 'the model'}"


def input_tensor(seed: int = 0, batch: int | None = None, requires_grad: bool = True) -> torch.Tensor:
    shape = (2, 6, 6) if batch is None else (batch, 2, 6, 6)
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=shape))
    x[0, 0, 0] = 0.0
    return x.requires_grad_(requires_grad)


# --------------------------------------------------------------------------- successful calls


def test_the_prepared_state_is_mixed():
    """The set-up the other tests rely on: otherwise restoring flags would be trivially true."""
    net = prepared_net()
    flags = snapshot(net)["training"]
    assert flags[""] and flags["head"] and flags["head.3"] and flags["features.1"]
    assert not flags["features"] and not flags["features.0"]
    assert not net.features[0].weight.requires_grad and net.features[0].bias.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_model_and_tensor_input_are_untouched(name):
    net = prepared_net()
    before = snapshot(net)
    x = input_tensor()
    x_before = x.detach().clone()
    result = calculate_relevancemap(net, x, method=name, target_class=1, **fast(name))
    assert result.shape == (2, 6, 6) and np.all(np.isfinite(result))
    assert_unchanged(net, before)
    assert_no_hooks(net)
    assert torch.equal(x.detach(), x_before)
    assert x.requires_grad and x.is_leaf and x.grad is None


@pytest.mark.parametrize("name", METHODS)
def test_numpy_input_and_batches_are_untouched(name):
    net = prepared_net()
    before = snapshot(net)
    x = np.random.default_rng(1).normal(size=(3, 2, 6, 6))
    x[1, 1, 2, 2] = 0.0
    x_before = x.copy()
    calculate_relevancemaps(net, x, method=name, target_class=[0, 2, 1], **fast(name))
    wrappers.calculate_relevancemaps(name, x, net, neuron_selection=[0, 2, 1], **fast(name))
    assert_unchanged(net, before)
    assert_no_hooks(net)
    np.testing.assert_array_equal(x, x_before)
    assert x.flags.writeable and x.dtype == np.float64


@pytest.mark.parametrize("name", METHODS)
def test_torch_input_without_grad_and_float32_input(name):
    net = prepared_net()
    x = input_tensor(2, batch=2, requires_grad=False).float()
    x_before = x.clone()
    calculate_relevancemaps(net, x, method=name, **fast(name))
    assert torch.equal(x, x_before) and x.dtype == torch.float32
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name", METHODS)
def test_users_hooks_are_kept(name):
    net = prepared_net()
    calls = []
    handles = [
        net.head[4].register_forward_hook(lambda m, i, o: calls.append("forward")),
        net.features[0].register_forward_pre_hook(lambda m, i: calls.append("pre")),
        net.head[1].register_full_backward_hook(lambda m, gi, go: None),
    ]
    before = snapshot(net)
    calculate_relevancemap(net, input_tensor(3), method=name, **fast(name))
    assert_unchanged(net, before)
    assert len(net.head[4]._forward_hooks) == 1 and len(net.features[0]._forward_pre_hooks) == 1
    assert len(net.head[1]._backward_hooks) == 1
    calls.clear()
    with torch.no_grad():
        net(input_tensor(4, batch=1, requires_grad=False))
    assert calls == ["pre", "forward"]  # still registered and working after the call
    for handle in handles:
        handle.remove()
    assert_no_hooks(net)


@pytest.mark.parametrize("name", ["gradient", "guided_backprop", "integrated_gradients", "deeplift_method"])
def test_maps_are_of_the_inference_function(name):
    """Train-mode dropout / BatchNorm do not leak into the map: it equals the eval-mode model's."""
    net = prepared_net()
    reference = copy.deepcopy(net).eval()
    x = input_tensor(5, batch=2)
    first = calculate_relevancemaps(net, x, method=name, target_class=2, **fast(name))
    second = calculate_relevancemaps(net, x, method=name, target_class=2, **fast(name))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(
        first, calculate_relevancemaps(reference, x, method=name, target_class=2, **fast(name)), rtol=1e-12, atol=1e-14
    )


# --------------------------------------------------------------------------- calls that raise


@pytest.mark.parametrize("name", NAMES)
def test_untouched_when_the_target_is_out_of_range(name):
    net = prepared_net()
    before = snapshot(net)
    x = input_tensor(6)
    x_before = x.detach().clone()
    with pytest.raises(ValueError, match="target index 3"):
        calculate_relevancemap(net, x, method=name, target_class=3, **fast(name))
    assert_unchanged(net, before)
    assert_no_hooks(net)
    assert torch.equal(x.detach(), x_before) and x.requires_grad and x.grad is None


class FailsOnCall(nn.Module):
    """Runs ``inner`` but raises on forward call number ``fail_at`` (1-based)."""

    def __init__(self, inner: nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.count = 0

    def forward(self, x):
        self.count += 1
        if self.count == self.fail_at:
            raise RuntimeError("model failed on purpose")
        return self.inner(x)


@pytest.mark.parametrize("fail_at", [1, 2])
@pytest.mark.parametrize("name", METHODS)
def test_untouched_when_the_model_raises(name, fail_at):
    net = FailsOnCall(prepared_net(), fail_at)
    before = snapshot(net)
    x = input_tensor(7)
    x_before = x.detach().clone()
    try:
        calculate_relevancemap(net, x, method=name, **fast(name))
    except RuntimeError as error:
        assert "on purpose" in str(error)
        raised = True
    else:
        raised = False
    assert raised or net.count < fail_at, "a forward call that should have failed was not made"
    assert_unchanged(net, before)
    assert_no_hooks(net)
    assert torch.equal(x.detach(), x_before) and x.requires_grad and x.grad is None


@pytest.mark.parametrize("name", METHODS)
def test_untouched_when_the_input_is_rejected(name):
    net = prepared_net()
    before = snapshot(net)
    x = input_tensor(8)
    with torch.no_grad():
        x[1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        calculate_relevancemap(net, x, method=name, **fast(name))
    assert_unchanged(net, before)
    assert x.grad is None and x.requires_grad


# --------------------------------------------------------------------------- through remove_softmax


class SoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Net()
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.body(x))


@pytest.mark.parametrize("name", METHODS)
def test_wrapped_model_keeps_its_flags(name):
    inner = SoftmaxNet().double()
    inner.train()
    inner.body.features.eval()
    inner.body.head[1].weight.requires_grad_(False)
    model = remove_softmax(inner)
    before_inner, before_wrapper = snapshot(inner), snapshot(model)
    result = calculate_relevancemap(model, input_tensor(9), method=name, **fast(name))
    assert np.all(np.isfinite(result))
    assert inner.training and model.training
    assert_unchanged(inner, before_inner)
    assert_unchanged(model, before_wrapper)
    assert_no_hooks(inner)


# --------------------------------------------------------------------------- models that modify their input


class ScalesInPlace(nn.Module):
    """A linear model that doubles its input in place before using it: logit = W (2 x) + b."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.linear = nn.Linear(4, 3).double()

    def forward(self, x):
        x.mul_(2.0)
        return self.linear(x)


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_a_model_modifying_its_input_in_place(name, as_torch):
    model = ScalesInPlace()
    w = model.linear.weight.detach().numpy()
    x_np = np.array([0.5, -1.0, 0.0, 2.0])
    x = torch.from_numpy(x_np.copy()) if as_torch else x_np.copy()
    result = calculate_relevancemap(model, x, method=name, target_class=1, **fast(name))
    np.testing.assert_array_equal(np.asarray(x), x_np)  # the caller's data is never the model's
    family = parse(name).family
    if family in {"gradient", "integrated_gradients", "deeplift"}:
        # each pass sees the clean input once: the map of the linear map x -> W (2 x)
        base = 2 * w[1] * (x_np if family != "gradient" else 1.0)
        spec = parse(name)
        for step in spec.post:
            base = base * (x_np if step == "x_input" else np.where(x_np >= spec.params["post_mu"], 1.0, -1.0))
        np.testing.assert_allclose(result, base, rtol=1e-13, atol=1e-15)
