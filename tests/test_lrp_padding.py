"""LRP of a convolution whose zero padding Keras spells as a layer of its own, against numpy
formulas of what iNNvestigate computes on that spelling.

Where TF's ``'same'`` cannot reproduce PyTorch's symmetric padding (a stride-2 3x3 convolution
with padding 1 on an even size), a Keras model has a ``ZeroPadding2D`` layer in front of a
``'valid'`` convolution, and iNNvestigate's rules see the padded tensor as the layer's input:
W-square and Flat count the padded entries as ones in their denominators, the std_x epsilon is
the std of the padded input. On a model whose padding ``'same'`` reproduces, nothing changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_lrp_rules import (
    Linear,
    assert_close,
    conv_linear,
    keras_pads_explicitly,
    rule_epsilon,
    rule_flat,
    rule_std_x,
    rule_w_square,
    rule_z,
    safe,
    zero_pad_matrix,
)
from torch import nn

from signxai.torch_signxai.methods.lrp.padding import explicit_padding
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps


class StridedResidual(nn.Module):
    """conv3x3 (stride 1) -> F.relu -> conv3x3 stride 2 padding 1 + conv1x1 stride 2 -> F.relu
    -> flatten -> dense."""

    def __init__(self, size: int) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(3, 4, 1, stride=2)
        out = (size + 1) // 2
        self.fc = nn.Linear(4 * out * out, 5)
        self.double().eval()

    def forward(self, x):
        y = F.relu(self.conv1(x))
        return self.fc(torch.flatten(F.relu(self.conv2(y) + self.conv3(y)), 1))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _conv(conv: nn.Conv2d, shape: tuple, keras_spelling: bool):
    """``(P, layer, out_shape)``: the convolution as a matrix on its input zero-padded by ``P``
    where Keras pads with a layer of its own (P None, or not ``keras_spelling``: on the input as
    it is, padding being no connection, as in a Keras ``'same'`` convolution)."""
    P = None
    padding = conv.padding
    if keras_spelling and keras_pads_explicitly(shape[1:], conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        P, shape = zero_pad_matrix(shape, conv.padding)
        padding = 0
    layer, out = conv_linear(_np(conv.weight), _np(conv.bias), shape, conv.stride, padding, conv.dilation)
    return P, layer, out


def reference(model: StridedResidual, x: np.ndarray, target: int, rule, keras_spelling: bool = True) -> np.ndarray:
    """LRP of one sample of :class:`StridedResidual`, node by node; the ReLUs pass relevance,
    the sum gets the Z rule, a padding layer its gradient (cropping)."""
    shape = x.shape
    _, L1, s1 = _conv(model.conv1, shape, keras_spelling)
    P2, L2, _ = _conv(model.conv2, s1, keras_spelling)
    _, L3, _ = _conv(model.conv3, s1, keras_spelling)
    W, b = _np(model.fc.weight), _np(model.fc.bias)
    fc = Linear(W, b, np.ones_like(W, dtype=bool), "dense")
    a0 = x.ravel()
    y = np.maximum(L1.M @ a0 + L1.b, 0.0)
    y2 = y if P2 is None else P2 @ y
    t2, t3 = L2.M @ y2 + L2.b, L3.M @ y + L3.b
    u = np.maximum(t2 + t3, 0.0)
    logits = fc.M @ u + fc.b
    r = np.zeros_like(logits)
    r[target] = logits[target]
    r = rule(fc, u, r)
    share = r / safe(t2 + t3)
    r2 = rule(L2, y2, t2 * share)
    r_y = (r2 if P2 is None else P2.T @ r2) + rule(L3, y, t3 * share)
    return rule(L1, a0, r_y).reshape(shape)


RULES = [
    ("lrp_w_square", rule_w_square),
    ("lrp_flat", rule_flat),
    ("lrp_epsilon_0_25_std_x", rule_std_x(0.25)),
    ("lrp_z", rule_z()),
    ("lrp_epsilon_0_1", rule_epsilon(0.1)),
]


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("name, rule", RULES)
def test_strided_residual_against_the_formulas(size, name, rule):
    model = StridedResidual(size)
    x = np.random.default_rng(size).normal(size=(2, 2, size, size))
    targets = [1, 3]
    got = calculate_relevancemaps(name, x, model, neuron_selection=targets)
    expected = np.stack([reference(model, x[i], t, rule) for i, t in enumerate(targets)])
    assert_close(got, expected)


@pytest.mark.parametrize("name, rule", RULES[:3])
def test_explicit_padding_changes_the_weight_only_and_std_x_rules(name, rule):
    """The premise: on an even size, the same formulas with the stride-2 padding as no connection
    (as a ``'same'`` convolution would have it) give another map."""
    model = StridedResidual(6)
    x = np.random.default_rng(6).normal(size=(1, 2, 6, 6))
    got = calculate_relevancemaps(name, x, model, neuron_selection=[1])[0]
    unpadded = reference(model, x[0], 1, rule, keras_spelling=False)
    assert np.abs(got - unpadded).max() > 1e-3 * np.abs(unpadded).max()


@pytest.mark.parametrize(
    "conv, size, expected",
    [
        (nn.Conv2d(1, 1, 3, padding=1), 6, None),  # stride 1: 'same'
        (nn.Conv2d(1, 1, 3, stride=2, padding=1), 6, (1, 1)),  # TF pads 0 before, 1 after
        (nn.Conv2d(1, 1, 3, stride=2, padding=1), 7, None),  # TF pads 1 and 1
        (nn.Conv2d(1, 1, 1, stride=2), 6, None),  # no padding
        (nn.Conv2d(1, 1, 3, padding="same"), 6, None),
        (nn.Conv1d(1, 1, 5, stride=2, padding=2), 8, (2,)),
        (nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1), 6, None),
    ],
)
def test_explicit_padding_is_where_tf_same_differs(conv, size, expected):
    x = torch.zeros((1, 1) + (size,) * (conv.weight.ndim - 2))
    assert explicit_padding(conv, x) == expected
