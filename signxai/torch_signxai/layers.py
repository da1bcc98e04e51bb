"""Convolutions with TensorFlow's ``'same'`` padding, for models whose meaning comes from Keras.

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

This module needs torch alone: a model exported by ``parity.from_keras.export`` carries its
source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["tf_same_padding", "tf_same_pad", "Conv1dSame", "Conv2dSame", "SAME_CONVS"]


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
    x: torch.Tensor, kernels: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...]
) -> torch.Tensor:
    """``x`` (batch and channel axes first) zero-padded as TF's ``'same'`` pads the input of a
    convolution with these kernel sizes, strides and dilations (one per spatial axis)."""
    widths: list[int] = []
    for axis in reversed(range(len(kernels))):  # F.pad takes the last axis first
        widths.extend(tf_same_padding(x.shape[2 + axis], kernels[axis], strides[axis], dilations[axis]))
    return F.pad(x, widths)


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


#: the convolution classes of this module
SAME_CONVS = (Conv1dSame, Conv2dSame)
