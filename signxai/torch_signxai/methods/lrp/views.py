"""Layer views: a conv, dense, BatchNorm or average-pooling layer as an :class:`~.rules.Affine`
map ``z = W x + b``, the form every rule works on.

A view knows the layer's forward with modified parameters and, where a kernel computes it
without a forward pass, its transpose ``W^T v`` (a convolution's input gradient, a dense layer's
``v @ W``); everything else transposes by autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ...layers import SAME_CONVS
from ..graph import UnsupportedLayerError
from .padding import explicit_padding
from .rules import Affine

__all__ = ["kernel_view", "batchnorm_view", "pool_view", "conv_adjoint", "linear_adjoint"]

_CONV_TRANSPOSE = {
    nn.ConvTranspose1d: F.conv_transpose1d,
    nn.ConvTranspose2d: F.conv_transpose2d,
    nn.ConvTranspose3d: F.conv_transpose3d,
}


def linear_adjoint(v: torch.Tensor, like: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight^T v`` of a dense layer: what autograd computes as ``linear``'s input gradient."""
    return torch.matmul(v, weight)


def conv_adjoint(
    module: _ConvNd, padding: tuple[int, ...] | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``weight^T v`` of a convolution by its input-gradient kernel (``convolution_backward``,
    what autograd runs for the layer's own backward, without a forward pass), with the module's
    padding or ``padding``; None for padding that is not a plain zero padding of fixed size
    (autograd handles those, and TF's ``'same'`` of :mod:`signxai.torch_signxai.layers`, computed
    per input)."""
    if padding is None and (
        module.padding_mode != "zeros" or isinstance(module.padding, str) or isinstance(module, SAME_CONVS)
    ):
        return None
    stride, dilation, groups = module.stride, module.dilation, module.groups
    pads = cast(tuple[int, ...], module.padding) if padding is None else padding
    output_padding = (0,) * len(stride)

    def adjoint(v: torch.Tensor, like: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution_backward(
            v, like, weight, None, stride, pads, dilation, False, output_padding, groups, (True, False, False)
        )[0]

    return adjoint


#: dense weights of at least this many entries are modified block by block (Affine.row_block),
#: blocks of about this many entries (VGG16's first dense weight, 102.8M entries, would
#: otherwise take a 392 MiB copy per modifier)
_BLOCK_ENTRIES = 1 << 20


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _explicitly_padded(module: _ConvNd, padding: tuple[int, ...]) -> Affine:
    """Convolution ``module`` as the unpadded map of its input zero-padded by ``padding``."""
    function = _CONV[module.weight.ndim - 2]
    unpadded = (0,) * len(padding)

    def apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return function(x, weight, bias, module.stride, unpadded, module.dilation, module.groups)

    return Affine(module.weight, module.bias, apply, conv_adjoint(module, unpadded), 1, padding=padding)


def kernel_view(module: nn.Module, x: torch.Tensor | None = None) -> Affine:
    """A conv (any ``groups``), transposed conv or dense layer as an :class:`Affine` map.

    Given the layer's input ``x``, a convolution whose zero padding the Keras spelling of the
    model puts in a layer of its own (:func:`.padding.explicit_padding`) is the unpadded map of
    the padded input (:attr:`.rules.Affine.padding`), as iNNvestigate's rules see it.
    """
    padding = None if x is None else explicit_padding(module, x)
    if padding is not None:  # explicit_padding finds it for convolutions only
        return _explicitly_padded(cast(_ConvNd, module), padding)
    if isinstance(module, nn.Linear):
        rows = max(1, _BLOCK_ENTRIES // module.in_features) if module.weight.numel() > 4 * _BLOCK_ENTRIES else None
        return Affine(module.weight, module.bias, torch.nn.functional.linear, linear_adjoint, -1, rows)
    if isinstance(module, _ConvTransposeNd):
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"{type(module).__name__} with padding_mode={module.padding_mode!r} "
                f"has no relevance rule (only zero padding)"
            )
        function = next(f for cls, f in _CONV_TRANSPOSE.items() if isinstance(module, cls))
        padding = cast(tuple[int, ...], module.padding)  # transposed convolutions take no padding string

        def apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return function(
                x, weight, bias, module.stride, padding, module.output_padding, module.groups, module.dilation
            )

        return Affine(module.weight, module.bias, apply, None, 1)  # its transpose by autograd
    conv = cast(_ConvNd, module)  # the kinds table gives this view to conv layers only
    return Affine(conv.weight, conv.bias, conv._conv_forward, conv_adjoint(conv), 1)


def batchnorm_view(module: nn.Module, mode: str) -> Affine:
    """BatchNorm (eval) as ``scale * x + shift``: its true affine map (``mode='exact'``), or
    iNNvestigate 2.1.2's linearisation (``mode='innvestigate'``, what its
    ``apply_mapping_to_fused_bn_layer`` builds), whose scale is ``gamma / sqrt(var**2 + eps)`` and
    shift ``beta - mean / sqrt(var**2 + eps)``."""
    module = cast(_BatchNorm, module)  # the kinds table gives this view to BatchNorm layers only
    mean, var = module.running_mean, module.running_var
    if mean is None or var is None:
        raise UnsupportedLayerError(
            f"{type(module).__name__} without running statistics (track_running_stats=False) has no fixed affine map"
        )
    gamma = module.weight if module.weight is not None else torch.ones_like(mean)
    beta = module.bias if module.bias is not None else torch.zeros_like(mean)
    if mode == "innvestigate":
        root = torch.sqrt(var**2 + module.eps)
        scale, shift = gamma / root, beta - mean / root
    else:
        root = torch.sqrt(var + module.eps)
        scale, shift = gamma / root, beta - gamma * mean / root

    def apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = x * weight.view(shape)
        return out if bias is None else out + bias.view(shape)

    def adjoint(
        v: torch.Tensor, like: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:  # the input gradient of ``x * weight``
        return v * weight.view((1, -1) + (1,) * (v.ndim - 2))

    return Affine(scale.detach(), shift.detach(), apply, adjoint, 1)


def pool_view(module: nn.Module) -> Affine:
    """A parameter-free linear layer as an Affine with a unit scalar weight."""
    unit = torch.ones((), dtype=torch.float64)
    return Affine(unit, None, lambda x, weight, bias: module.forward(x) * weight.to(x.dtype))
