"""Convolutions and poolings with TensorFlow's ``'same'`` padding, for models whose meaning comes
from Keras.

TF's ``'same'`` pads each spatial axis of size ``n`` with ``max((ceil(n / s) - 1) * s + k - n, 0)``
zeros, half before and the odd one after (``k`` the dilated kernel size, ``s`` the stride): at
stride 2 on an even size a 3x3 kernel gets 0 zeros before and 1 after, which no symmetric
PyTorch padding gives. :class:`Conv1dSame` and :class:`Conv2dSame` pad that way inside the layer,
computed from each input's size, as a Keras ``Conv1D``/``Conv2D``/``DepthwiseConv2D`` with
``padding='same'`` does. The library treats them as the convolutions they are: LRP rules see the
layer's unpadded input (the padded zeros count as zeros, also where a rule applies the layer to
``ones_like`` of its input, as iNNvestigate's rules do on a Keras ``'same'`` convolution), and
the parity harness's Keras twin writes them as ``padding='same'``. The Keras converter
(``parity.from_keras``) builds them where a Keras convolution's ``'same'`` is asymmetric.
:class:`MaxPool1dSame`, :class:`MaxPool2dSame`, :class:`AvgPool1dSame` and
:class:`AvgPool2dSame` are Keras's ``'same'`` max and average pooling in the same way: a padded
entry never wins a maximum, and an average is over the window's real entries.

This module needs torch alone: a model exported by ``parity.from_keras.export`` carries its
source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "tf_same_padding",
    "tf_same_pad",
    "Conv1dSame",
    "Conv2dSame",
    "MaxPool1dSame",
    "MaxPool2dSame",
    "AvgPool1dSame",
    "AvgPool2dSame",
    "SAME_CONVS",
    "SAME_POOLS",
    "SAME_LAYERS",
]


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF's ``'same'`` padding of one axis of ``size`` entries: (zeros before, zeros after).

    Parameters
    ----------
    size : int
        The axis' length.
    kernel, stride, dilation : int
        The layer's kernel size, stride and dilation along it.

    Returns
    -------
    tuple of int
        Half the zeros before, the rest (the odd one) after.
    """
    effective = dilation * (kernel - 1) + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


@torch.fx.wrap  # one call in a torch.fx graph: its widths depend on the input's size
def tf_same_pad(
    x: torch.Tensor,
    kernels: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    value: float = 0.0,
) -> torch.Tensor:
    """``x`` (batch and channel axes first) padded with ``value`` as TF's ``'same'`` pads the input
    of a convolution or pooling with these kernel sizes, strides and dilations (one per spatial
    axis)."""
    widths: list[int] = []
    for axis in reversed(range(len(kernels))):  # F.pad takes the last axis first
        widths.extend(tf_same_padding(x.shape[2 + axis], kernels[axis], strides[axis], dilations[axis]))
    return F.pad(x, widths, value=value)


class _SamePadding:
    """What :class:`Conv1dSame` and :class:`Conv2dSame` add to their PyTorch convolution."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if "padding" in kwargs or "padding_mode" in kwargs or len(args) > 4:
            raise TypeError(f"{type(self).__name__} pads as TF's 'same' does; it takes no padding or padding_mode")
        super().__init__(*args, **kwargs)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        padded = tf_same_pad(input, self.kernel_size, self.stride, self.dilation)  # type: ignore[attr-defined]
        return super()._conv_forward(padded, weight, bias)  # type: ignore[misc]


class Conv1dSame(_SamePadding, nn.Conv1d):
    """``nn.Conv1d`` with TF's ``'same'`` zero padding, computed from each input's size
    (:func:`tf_same_padding`); it takes ``nn.Conv1d``'s arguments but ``padding`` and
    ``padding_mode``."""


class Conv2dSame(_SamePadding, nn.Conv2d):
    """``nn.Conv2d`` with TF's ``'same'`` zero padding, computed from each input's size
    (:func:`tf_same_padding`); it takes ``nn.Conv2d``'s arguments but ``padding`` and
    ``padding_mode``."""


def _per_axis(value: int | tuple[int, ...], rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank


class _SamePooling:
    """What the pooling classes add to their PyTorch pooling: TF's ``'same'`` windows."""

    #: the value the input is padded with
    fill = 0.0

    def __init__(self, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] | None = None) -> None:
        super().__init__(kernel_size, stride)  # type: ignore[call-arg]

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.ndim - 2
        kernels, strides = (_per_axis(v, rank) for v in (self.kernel_size, self.stride))  # type: ignore[attr-defined]
        return tf_same_pad(x, kernels, strides, (1,) * rank, self.fill)


class _SameMaxPooling(_SamePooling):
    fill = float("-inf")  # a padded entry never wins, as in TF

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(self._padded(input))  # type: ignore[misc]


class _SameAveragePooling(_SamePooling):
    def __init__(self, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] | None = None) -> None:
        super().__init__(kernel_size, stride)
        self.count_include_pad = False  # TF's 'same' average counts the real entries only

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # the mean over the zero-padded window over the share of real entries in it: TF's mean of
        # the real entries
        total = super().forward(self._padded(input))  # type: ignore[misc]
        return total / super().forward(self._padded(torch.ones_like(input[:1, :1])))  # type: ignore[misc]


class MaxPool1dSame(_SameMaxPooling, nn.MaxPool1d):
    """``nn.MaxPool1d(kernel_size, stride)`` with TF's ``'same'`` windows (padded entries never
    win)."""


class MaxPool2dSame(_SameMaxPooling, nn.MaxPool2d):
    """``nn.MaxPool2d(kernel_size, stride)`` with TF's ``'same'`` windows (padded entries never
    win)."""


class AvgPool1dSame(_SameAveragePooling, nn.AvgPool1d):
    """``nn.AvgPool1d(kernel_size, stride)`` with TF's ``'same'`` windows, each averaging its
    real entries only."""


class AvgPool2dSame(_SameAveragePooling, nn.AvgPool2d):
    """``nn.AvgPool2d(kernel_size, stride)`` with TF's ``'same'`` windows, each averaging its
    real entries only."""


#: the convolution classes of this module
SAME_CONVS = (Conv1dSame, Conv2dSame)
#: the pooling classes of this module
SAME_POOLS = (MaxPool1dSame, MaxPool2dSame, AvgPool1dSame, AvgPool2dSame)
#: every layer of this module
SAME_LAYERS = SAME_CONVS + SAME_POOLS
