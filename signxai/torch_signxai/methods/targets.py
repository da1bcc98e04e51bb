"""Target selection: the one place that decides which output neuron is explained."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["resolve_targets", "output_seed", "check_logits"]


def check_logits(logits: Any) -> torch.Tensor:
    """Ensure a model output is a (batch, classes) tensor; raise a clear error otherwise."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model must return a tensor of logits, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits of shape (batch, classes), got shape {tuple(logits.shape)}")
    return logits


def resolve_targets(target: Any, logits: torch.Tensor) -> torch.Tensor:
    """Turn a caller's target into one class index per input.

    Parameters
    ----------
    target : None, int, sequence of int, numpy.ndarray or torch.Tensor
        None selects the largest logit of each input; an int selects that class for every
        input; a sequence gives one class per input.
    logits : torch.Tensor
        The model output, shape (batch, classes).

    Returns
    -------
    torch.Tensor
        Long tensor of shape (batch,) on the logits' device.

    Raises
    ------
    ValueError
        If a class index is out of range, or the number of targets differs from the batch size.
    """
    batch, classes = check_logits(logits).shape
    if target is None:
        return logits.detach().argmax(dim=1)
    if isinstance(target, torch.Tensor):
        values = target.detach().cpu().reshape(-1).tolist()
    else:
        values = np.asarray(target).reshape(-1).tolist()
    if not all(isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer()) for v in values):
        raise ValueError(f"target must be an int or integers, got {target!r}")
    values = [int(v) for v in values]
    if len(values) == 1:
        values = values * batch
    if len(values) != batch:
        raise ValueError(f"got {len(values)} targets for a batch of {batch} inputs")
    bad = [v for v in values if not 0 <= v < classes]
    if bad:
        raise ValueError(
            f"target index {bad[0]} is out of range for a model with {classes} outputs (valid: 0..{classes - 1})"
        )
    return torch.tensor(values, device=logits.device, dtype=torch.long)


def output_seed(
    logits: torch.Tensor, indices: torch.Tensor, *, from_logit: bool, positive_only: bool = False
) -> torch.Tensor:
    """The gradient seed at the output: one-hot of the targets, times the logit's value if ``from_logit``
    (clamped at zero if ``positive_only``: Deep Taylor explains ``ReLU(logit)``).

    iNNvestigate starts LRP, guided backprop and deconvnet from the selected logit's value; plain
    gradients start from 1.
    """
    seed = torch.zeros_like(logits)
    rows = torch.arange(logits.shape[0], device=logits.device)
    selected = logits.detach()[rows, indices]
    if positive_only:
        selected = selected.clamp(min=0)
    seed[rows, indices] = selected if from_logit else 1
    return seed
