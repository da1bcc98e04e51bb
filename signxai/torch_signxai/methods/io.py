"""Input and output conversion: the one place where caller data becomes a model batch and back.

Callers hand numpy arrays or torch tensors, channels-first as the model takes them, with or
without the batch axis. :func:`to_batch` validates and converts them to a batch on the model's
device and dtype (never touching the caller's object); :meth:`Batch.output` turns a relevance
tensor back into a numpy array of the caller's shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Batch", "to_batch", "model_placement", "as_tensor_like", "in_layout_of"]

_CONV_RANK = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}


@dataclass(frozen=True)
class Batch:
    """A validated input batch and how to return results in the caller's shape.

    Attributes
    ----------
    tensor : torch.Tensor
        The batch, detached from the caller's tensor, on the model's device and dtype, in the
        memory layout of the caller's tensor (see :func:`to_batch`).
    added_batch_axis : bool
        Whether a batch axis was added to a single input (and is removed from the output).
    """

    tensor: torch.Tensor
    added_batch_axis: bool

    def output(self, relevance: torch.Tensor) -> np.ndarray:
        """Relevance of the batch's shape as a numpy array of the caller's input shape."""
        if relevance.shape != self.tensor.shape:
            raise RuntimeError(
                f"internal error: relevance of shape {tuple(relevance.shape)} "
                f"for an input of shape {tuple(self.tensor.shape)}"
            )
        array = relevance.detach().cpu().contiguous().numpy()
        return array[0] if self.added_batch_axis else array

    def in_default_layout(self) -> Batch:
        """The same batch laid out contiguously (row-major), as PyTorch lays out new tensors."""
        return Batch(tensor=self.tensor.contiguous(), added_batch_axis=self.added_batch_axis)


def in_layout_of(tensor: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``tensor`` (a batch of other points: noisy copies, path points) laid out as ``batch``."""
    if (
        tensor.ndim == 4
        and batch.ndim == 4
        and not batch.is_contiguous()
        and batch.is_contiguous(memory_format=torch.channels_last)
    ):
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def model_placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a model's parameters (CPU/float32 for a parameter-free one)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _expected_rank(model: nn.Module) -> int | None:
    """The input rank (batch axis included) a model's convolutions imply, or None for conv-free models."""
    for module in model.modules():
        for conv_type, rank in _CONV_RANK.items():
            if isinstance(module, conv_type):
                return rank
    return None


def as_tensor_like(value: Any, reference: torch.Tensor, what: str) -> torch.Tensor:
    """Convert ``value`` (array, tensor or scalar) to a tensor on ``reference``'s device and dtype,
    broadcastable to its shape."""
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    tensor = tensor.detach().to(device=reference.device, dtype=reference.dtype)
    try:
        torch.broadcast_shapes(tensor.shape, reference.shape)
    except RuntimeError:
        raise ValueError(
            f"{what} of shape {tuple(tensor.shape)} does not fit the input batch of shape {tuple(reference.shape)}"
        ) from None
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what} contains NaN or inf values")
    return tensor


def _to_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("empty input list")
        return torch.stack([_to_tensor(item) for item in x])
    array = np.asarray(x)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"input must be a numeric numpy array or torch tensor, got dtype {array.dtype}")
    return torch.from_numpy(np.array(array, copy=True))


def to_batch(x: Any | Sequence[Any], model: nn.Module, *, single: bool | None) -> Batch:
    """Validate the caller's input and make it a batch for ``model``.

    Parameters
    ----------
    x : numpy.ndarray, torch.Tensor, or a list of them
        One input (``single=True``), with or without a leading batch axis of size 1, or a batch
        (``single=False``): an array with a batch axis, or a list of single inputs.
    model : torch.nn.Module
        The model; the batch is put on its device and floating dtype.
    single : bool or None
        Whether ``x`` is one input. None decides from the rank: a model with convolutions of
        input rank r takes rank r as a batch and rank r-1 as one input; a conv-free model takes
        rank >= 2 as a batch.

    Returns
    -------
    Batch

    Raises
    ------
    ValueError
        For an empty input, a shape that does not fit the model's convolutions, or NaN/inf values.
    """
    tensor = _to_tensor(x)
    device, dtype = model_placement(model)
    if tensor.ndim == 0:
        raise ValueError("input must have at least one axis, got a scalar")
    if tensor.numel() == 0:
        raise ValueError(f"input of shape {tuple(tensor.shape)} is empty")
    rank = _expected_rank(model)
    added = False
    if single is None:
        single = tensor.ndim == rank - 1 if rank is not None else tensor.ndim == 1
    if single:
        if rank is not None:
            if tensor.ndim == rank - 1:
                added = True
            elif not (tensor.ndim == rank and tensor.shape[0] == 1):
                raise ValueError(
                    f"input of shape {tuple(tensor.shape)} does not fit this model: its convolutions "
                    f"take inputs of rank {rank} (batch, channels, ...); pass one input of rank "
                    f"{rank - 1} or a batch of one of rank {rank}"
                )
        else:
            added = not (tensor.ndim >= 2 and tensor.shape[0] == 1)
        if added:
            tensor = tensor.unsqueeze(0)
    elif rank is not None and tensor.ndim != rank:
        raise ValueError(
            f"input batch of shape {tuple(tensor.shape)} does not fit this model: its convolutions "
            f"take batches of rank {rank} (batch, channels, ...)"
        )
    elif rank is None and tensor.ndim < 2:
        raise ValueError(f"input batch of shape {tuple(tensor.shape)} needs a batch axis and a feature axis")
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"input contains {bad} NaN or inf value(s)")
    # never an alias of the caller's data; a channels-last tensor stays channels-last (PyTorch's
    # CPU convolution and max-pooling kernels are faster in that layout, but their float32
    # rounding errors are larger: not the default for numpy input)
    tensor = tensor.to(device=device, dtype=dtype, copy=True)
    return Batch(tensor=tensor, added_batch_axis=added)
