"""The channels-last max pooling path gives exactly PyTorch's own pooling: values, winners
(gradient routing, ties included) and whole explanations, bit for bit."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from signxai.torch_signxai import calculate_relevancemaps
from signxai.torch_signxai.methods import pooling
from signxai.torch_signxai.methods.pooling import channels_last_max_pool


@st.composite
def pooling_cases(draw):
    kernel = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, kernel // 2))
    stride = draw(st.integers(1, 3))
    ceil_mode = draw(st.booleans())
    span = dilation * (kernel - 1) + 1
    height, width = draw(st.integers(span, 9)), draw(st.integers(span, 9))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), height, width)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    # few distinct values: many ties inside windows, as after a ReLU
    values = torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    if draw(st.booleans()):
        values = values.clamp_min(0)
    return nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode), values


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pooling_cases())
def test_values_and_gradient_routing_equal_pytorch_pooling(monkeypatch_entries, case):
    module, values = case
    x_native = values.clone().requires_grad_(True)
    native = module(x_native)
    x_fast = values.clone().requires_grad_(True)
    with channels_last_max_pool(module):
        fast = module(x_fast)
    assert fast.is_contiguous() and torch.equal(fast, native)
    upstream = torch.randn(native.shape, dtype=values.dtype, generator=torch.Generator().manual_seed(1))
    (grad_native,) = torch.autograd.grad(native, x_native, upstream)
    (grad_fast,) = torch.autograd.grad(fast, x_fast, upstream)
    assert torch.equal(grad_fast, grad_native)


@pytest.fixture
def monkeypatch_entries(monkeypatch):
    """Send every input, however small, through the channels-last path."""
    monkeypatch.setattr(pooling, "MIN_ENTRIES", 0)


def test_large_inputs_take_the_channels_last_path_and_small_ones_do_not(monkeypatch):
    module = nn.MaxPool2d(2)
    calls = []
    original = pooling._MaxPool2d.apply
    monkeypatch.setattr(pooling._MaxPool2d, "apply", lambda *a: calls.append(a[0].numel()) or original(*a))
    with channels_last_max_pool(module):
        module(torch.randn(1, 4, 8, 8))
        module(torch.randn(4, 16, 32, 32))
        module(torch.randn(4, 16, 32, 32).contiguous(memory_format=torch.channels_last))
    assert calls == [4 * 16 * 32 * 32]


def test_modules_are_restored_also_after_an_error():
    model = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(RuntimeError, match="boom"):
        with channels_last_max_pool(model):
            assert "forward" in model[0].__dict__ and "forward" not in model[1].__dict__
            raise RuntimeError("boom")
    assert all("forward" not in module.__dict__ for module in model)


class _Net(nn.Module):
    """For 32 inputs of 3x32x32 both pooling layers take the channels-last path (2**18 and 2**16 entries)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 5))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize(
    "method",
    ["gradient", "smoothgrad", "lrp_epsilon_0_1", "lrp_alpha_1_beta_0", "lrpsign_z", "guided_backprop", "grad_cam"],
)
def test_explanations_equal_those_with_pytorch_pooling(monkeypatch, method):
    model = _Net().eval()
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)).repeat(1, 1, 2, 2)
    kwargs = {"seed": 0} if method == "smoothgrad" else {}
    fast = calculate_relevancemaps(model, x, method=method, **kwargs)
    monkeypatch.setattr(pooling, "MIN_ENTRIES", 1 << 62)
    native = calculate_relevancemaps(model, x, method=method, **kwargs)
    assert np.array_equal(fast, native)
    assert all("forward" not in module.__dict__ for module in model.modules())
