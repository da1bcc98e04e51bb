"""The shared implementation of the public entry points: split keyword arguments into the target
and the method's parameters, parse, and run the engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import nn

from .engine import explain
from .grammar import parse

__all__ = ["run_method"]

_TARGET_KEYS = ("neuron_selection", "target_class", "target")


def run_method(
    method: str, model: nn.Module, x: Any, kwargs: dict[str, Any], *, single: bool | None, batchnorm: str
) -> np.ndarray:
    """Parse ``method`` with the method parameters in ``kwargs`` and explain ``x``.

    Parameters
    ----------
    method : str
        Method name (see :mod:`.grammar`).
    model : torch.nn.Module
    x : array-like
        Input(s).
    kwargs : dict
        Method parameters plus at most one target keyword (``neuron_selection``,
        ``target_class`` or ``target``).
    single : bool or None
        One input, a batch, or (None) decided from the input's rank.
    batchnorm : str
        ``'exact'`` (PyTorch's affine map) or ``'innvestigate'`` (iNNvestigate 2.1.2's
        linearisation: kernel ``gamma / sqrt(var**2 + eps)``, bias ``beta - mean / sqrt(var**2 + eps)``)
        for BatchNorm layers under LRP.
    """
    kwargs = dict(kwargs)
    given = [key for key in _TARGET_KEYS if key in kwargs]
    if len(given) > 1:
        raise ValueError(f"give the target once, got {' and '.join(given)}")
    target = kwargs.pop(given[0]) if given else None
    if isinstance(target, str) and target == "max_activation":
        target = None
    spec = dataclasses.replace(parse(method, **kwargs), batchnorm=batchnorm)
    return explain(spec, model, x, target, single=single)
