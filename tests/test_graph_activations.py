"""Guided backprop, deconvnet and DeepLIFT treat functional and module activations alike (every
ReLU-like unit is modified, ReLU6 included), or refuse where they cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from signxai.torch_signxai import calculate_relevancemap, calculate_relevancemaps
from signxai.torch_signxai.methods.graph import UnsupportedLayerError

#: how each spelling computes the hidden activation
SPELLINGS = {
    "module": None,
    "F.relu": F.relu,
    "torch.relu": torch.relu,
    "method": lambda t: t.relu(),
    "inplace": lambda t: F.relu(t, inplace=True),
}


class Net(nn.Module):
    """dense -> activation -> dense -> activation -> dense, with the activations spelled one way."""

    def __init__(self, spelling: str, relu6: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.ReLU6() if relu6 else nn.ReLU()
        self.spelling = spelling
        self.double().eval()

    def _act(self, t):
        if self.spelling == "module":
            return self.act(t)
        if self.spelling == "F.relu6":
            return F.relu6(t)
        return SPELLINGS[self.spelling](t)

    def forward(self, x):
        return self.c(self._act(self.b(self._act(self.a(x)))))


def _numpy_guided(model: Net, x: np.ndarray, target: int, kind: str, top: float) -> np.ndarray:
    """Guided backprop / deconvnet of the dense net, from the formulas: seed = logit value;
    through a unit with input z: guided ``g * (g > 0) * (0 < z < top)``, deconvnet ``max(g, 0)``."""
    w = [m.weight.detach().numpy() for m in (model.a, model.b, model.c)]
    b = [m.bias.detach().numpy() for m in (model.a, model.b, model.c)]
    z1 = w[0] @ x + b[0]
    h1 = np.clip(z1, 0, top)
    z2 = w[1] @ h1 + b[1]
    h2 = np.clip(z2, 0, top)
    logits = w[2] @ h2 + b[2]
    g = np.zeros(3)
    g[target] = logits[target]
    g = w[2].T @ g
    for z, weight in ((z2, w[1]), (z1, w[0])):
        g = g * (g > 0) * ((z > 0) & (z < top)) if kind == "guided_backprop" else np.maximum(g, 0)
        g = weight.T @ g
    return g


@pytest.mark.parametrize("kind", ["guided_backprop", "deconvnet"])
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_relu_spelling_is_modified(kind, spelling):
    model = Net(spelling)
    x = np.random.default_rng(1).normal(size=6) * 3
    got = calculate_relevancemap(model, x, method=kind, target_class=1)
    np.testing.assert_allclose(got, _numpy_guided(model, x, 1, kind, np.inf), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["guided_backprop", "deconvnet"])
@pytest.mark.parametrize("spelling", ["module", "F.relu6"])
def test_relu6_is_relu_like(kind, spelling):
    model = Net(spelling, relu6=True)
    with torch.no_grad():  # large enough weights that some units saturate at 6
        for layer in (model.a, model.b):
            layer.weight.mul_(6.0)
    for seed in range(50):  # an input where both clips are met and the modification matters
        x = np.random.default_rng(seed).normal(size=6) * 2
        z1 = model.a.weight.detach().numpy() @ x + model.a.bias.detach().numpy()
        expected = _numpy_guided(model, x, 0, kind, 6.0)
        with torch.no_grad():
            logit = float(model(torch.from_numpy(x)[None])[0, 0])
        plain = calculate_relevancemap(model, x, method="gradient", target_class=0) * logit
        if (z1 > 6).any() and (z1 < 0).any() and not np.allclose(expected, plain):
            break
    else:
        pytest.fail("no input meets the premise")
    got = calculate_relevancemap(model, x, method=kind, target_class=0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_functional_and_module_guided_backprop_agree_on_a_batch():
    x = np.random.default_rng(3).normal(size=(4, 6))
    maps = [
        calculate_relevancemaps(Net(s), x, method="guided_backprop", target_class=[0, 1, 2, 0])
        for s in ("module", "F.relu")
    ]
    np.testing.assert_array_equal(maps[0], maps[1])


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.double()

    def forward(self, x):
        if x.shape[0] > 10**9:  # fx cannot trace a branch on the batch size
            return self.b(self.a(x))
        return self.b(F.relu(self.a(x)))


@pytest.mark.parametrize("kind", ["guided_backprop", "deconvnet", "deeplift_method"])
def test_untraceable_functional_relu_is_refused(kind):
    model = Untraceable()
    with pytest.raises(UnsupportedLayerError, match="relu.*after 'a'.*activation module"):
        calculate_relevancemap(model, np.ones(6), method=kind)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


class TanhNet(nn.Module):
    def __init__(self, functional: bool) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.act = nn.Linear(5, 7), nn.Linear(7, 2), nn.Tanh()
        self.functional = functional
        self.double()

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(h) if self.functional else self.act(h))


def test_deeplift_rescales_functional_activations_too():
    x = np.random.default_rng(5).normal(size=5)
    ref = np.random.default_rng(6).normal(size=5)
    module, functional = (
        calculate_relevancemap(TanhNet(f), x, method="deeplift_method", target_class=1, reference=ref)
        for f in (False, True)
    )
    np.testing.assert_array_equal(module, functional)
    # completeness: the map sums to the logit's change (rescale rule, one hidden layer)
    net = TanhNet(True)
    with torch.no_grad():
        delta = (net(torch.from_numpy(x)[None]) - net(torch.from_numpy(ref)[None]))[0, 1].item()
    assert abs(functional.sum() - delta) < 1e-12 * max(1.0, abs(delta))
