"""Where a convolution's zero padding is a layer of its own in the Keras spelling of the model.

TensorFlow's ``'same'`` padding puts ``max((out - 1) * stride + kernel - size, 0) // 2`` zeros
before each spatial axis and the rest after it. It gives PyTorch's windows for a symmetric
padding ``p`` only where it has as many windows and puts ``p`` zeros in front: always at stride 1
with an odd kernel and ``p = kernel // 2``, but not, for example, for a 3x3 convolution with
stride 2 and padding 1 on an even size (TF pads 0 before and 1 after). There a Keras model spells
the convolution as a ``ZeroPadding`` layer followed by a ``'valid'`` convolution, as
keras.applications does in front of its strided convolutions (ResNet, MobileNetV2, ...), and so
does the parity harness's Keras twin.

That spelling changes iNNvestigate's maps, because its rules see the padded tensor as the
convolution's input: the W-square and Flat rules divide by the layer applied to ``ones_like`` of
that input, in which the padded entries count as ones (the relevance they receive is then cropped
away by the padding layer's gradient), and a per-layer epsilon of ``S * std(input)`` takes the
standard deviation over the padded input, zeros included. Rules that multiply by the input
(Z, epsilon, alpha-beta, ...) give the padded entries nothing and are unchanged. LRP reproduces
this: the rule of a convolution whose padding Keras spells as a layer runs on the zero-padded
input, and its result is cropped (:func:`explicit_padding` says which).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ...layers import tf_same_padding

__all__ = ["same_reproduces", "keras_padding", "explicit_padding"]


def same_reproduces(size: int, kernel: int, stride: int, pad: int) -> bool:
    """Whether TF ``'same'`` gives PyTorch's windows for symmetric padding ``pad`` of one axis.

    Both produce windows starting at ``i * stride - before``; they agree when the number of
    windows and the padding in front agree. ``kernel`` is the effective (dilated) kernel size.
    """
    torch_out = (size + 2 * pad - kernel) // stride + 1
    return torch_out == -(-size // stride) and tf_same_padding(size, kernel, stride)[0] == pad


def keras_padding(
    sizes: Sequence[int], kernels: Sequence[int], strides: Sequence[int], pads: Sequence[int]
) -> tuple[str, tuple[int, ...] | None]:
    """Keras padding mode for symmetric PyTorch padding, and the explicit padding if needed.

    Returns
    -------
    tuple
        ``('valid', None)`` without padding, ``('same', None)`` where TF's ``'same'`` gives
        PyTorch's windows on every axis, else ``('valid', pads)``: a ``ZeroPadding`` layer of
        ``pads`` (per spatial axis, both sides) in front of a ``'valid'`` layer.
    """
    if not any(pads):
        return "valid", None
    if all(map(same_reproduces, sizes, kernels, strides, pads)):
        return "same", None
    return "valid", tuple(pads)


def explicit_padding(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """The zero padding (per spatial axis, both sides) of convolution ``module`` on input ``x``
    that the Keras spelling of the model puts in a layer of its own, or None.

    None for anything but a convolution with a fixed-size zero padding (transposed convolutions,
    ``padding='same'``/``'valid'`` strings, other padding modes keep their own spelling).
    """
    if (
        not isinstance(module, _ConvNd)
        or isinstance(module, _ConvTransposeNd)
        or isinstance(module.padding, str)
        or module.padding_mode != "zeros"
    ):
        return None
    effective = [d * (k - 1) + 1 for k, d in zip(module.kernel_size, module.dilation, strict=True)]
    return keras_padding(tuple(x.shape[2:]), effective, module.stride, module.padding)[1]
