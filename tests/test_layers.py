"""The library's TF-'same' convolutions (signxai.torch_signxai.layers) against TF's padding rule.

Golden paddings are worked by hand from TF's rule (``out = ceil(n / s)``, ``total = max((out - 1)
* s + k - n, 0)`` for the dilated kernel ``k``, the smaller half in front); the forward passes are
compared with PyTorch's convolution on an input padded explicitly by those numbers. Their LRP maps
are checked against the numpy reference in ``tests/test_lrp_rules.py`` (the ``*_same2`` models),
their Keras spelling in ``tests/parity/test_twin.py`` and ``tests/parity/test_from_keras.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from signxai.torch_signxai.layers import (
    AvgPool1dSame,
    AvgPool2dSame,
    Conv1dSame,
    Conv2dSame,
    MaxPool1dSame,
    MaxPool2dSame,
    tf_same_padding,
)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "dilation", "expected"),
    [
        (8, 3, 2, 1, (0, 1)),  # out 4: 3 * 2 + 3 - 8 = 1
        (7, 3, 2, 1, (1, 1)),  # out 4: 6 + 3 - 7 = 2
        (32, 7, 2, 1, (2, 3)),  # ResNet's stem at 32: 30 + 7 - 32 = 5
        (9, 4, 1, 1, (1, 2)),  # even kernel: 8 + 4 - 9 = 3
        (10, 3, 1, 2, (2, 2)),  # dilated kernel 5: 9 + 5 - 10 = 4
        (5, 1, 2, 1, (0, 0)),  # 1x1 at stride 2: 4 + 1 - 5 = 0
        (3, 3, 4, 1, (0, 0)),  # out 1: 0 + 3 - 3 = 0
        (2, 5, 1, 1, (2, 2)),  # kernel larger than the input: 1 + 5 - 2 = 4
    ],
)
def test_tf_same_padding_follows_tf_rule(size, kernel, stride, dilation, expected):
    assert tf_same_padding(size, kernel, stride, dilation) == expected


def test_conv2d_same_pads_inside_the_layer_as_tf_does():
    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, (3, 4), stride=(2, 1), dilation=(1, 2)).double()
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64)
    # height 8, k 3, s 2: (0, 1); width 9, dilated k 7, s 1: 6 zeros, (3, 3)
    expected = F.conv2d(F.pad(x, (3, 3, 0, 1)), conv.weight, conv.bias, (2, 1), 0, (1, 2))
    out = conv(x)
    assert out.shape == (2, 4, 4, 9)  # ceil(n / s) on each axis
    assert torch.equal(out, expected)
    assert conv.padding == (0, 0)


def test_conv1d_same_and_groups():
    torch.manual_seed(1)
    conv = Conv1dSame(4, 8, 3, stride=2, groups=4)
    x = torch.randn(1, 4, 10)
    assert torch.equal(conv(x), F.conv1d(F.pad(x, (0, 1)), conv.weight, conv.bias, 2, 0, 1, 4))


@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"padding_mode": "reflect"}])
def test_padding_arguments_are_refused(kwargs):
    with pytest.raises(TypeError, match="Conv2dSame pads as TF's 'same' does"):
        Conv2dSame(3, 4, 3, **kwargs)
    with pytest.raises(TypeError, match="no padding"):
        Conv2dSame(3, 4, 3, 1, 1)  # padding given positionally


def test_fx_traces_a_model_using_it():
    torch.manual_seed(2)
    model = torch.nn.Sequential(Conv2dSame(1, 2, 3, stride=2), torch.nn.ReLU()).eval()
    traced = torch.fx.symbolic_trace(model)
    for size in (6, 7):  # the padding follows each input's size in the traced graph too
        x = torch.randn(1, 1, size, size)
        assert torch.equal(traced(x), model(x))


def _tf_same_pool_reference(x: torch.Tensor, kernel: int, stride: int, reduce) -> torch.Tensor:
    """TF's 'same' pooling of a (N, C, H, W) tensor by loops: ``ceil(n / s)`` windows per axis,
    window ``i`` starting ``before`` entries ahead of ``i * s``, reduced over its real entries."""
    outs = []
    for n in x.shape[2:]:
        before = tf_same_padding(n, kernel, stride)[0]
        outs.append(
            [(max(i * stride - before, 0), min(i * stride - before + kernel, n)) for i in range(-(-n // stride))]
        )
    out = torch.empty(*x.shape[:2], len(outs[0]), len(outs[1]), dtype=x.dtype)
    for i, (r0, r1) in enumerate(outs[0]):
        for j, (c0, c1) in enumerate(outs[1]):
            out[:, :, i, j] = reduce(x[:, :, r0:r1, c0:c1].flatten(2))
    return out


@pytest.mark.parametrize("size", [(8, 7), (6, 6), (5, 9)])
def test_same_poolings_take_tf_windows_of_real_entries(size):
    torch.manual_seed(3)
    x = torch.randn(2, 3, *size, dtype=torch.float64) - 2.0  # mostly negative: a padded zero would win a max
    maximum = _tf_same_pool_reference(x, 3, 2, lambda cells: cells.amax(dim=-1))
    mean = _tf_same_pool_reference(x, 3, 2, lambda cells: cells.mean(dim=-1))
    assert torch.equal(MaxPool2dSame(3, 2)(x), maximum)
    torch.testing.assert_close(AvgPool2dSame(3, 2)(x), mean, rtol=1e-15, atol=1e-15)
    assert AvgPool2dSame(3, 2).count_include_pad is False


def test_same_poolings_in_one_dimension():
    x = torch.tensor([[[-3.0, -1.0, -4.0, -1.0, -5.0, -9.0]]])  # 6 entries, k 3, s 2: TF pads (0, 1)
    assert MaxPool1dSame(3, 2)(x).tolist() == [[[-1.0, -1.0, -5.0]]]
    torch.testing.assert_close(AvgPool1dSame(3, 2)(x), torch.tensor([[[-8.0 / 3, -10.0 / 3, -7.0]]]))
