"""SIGN: the thresholded sign of the input, and the post-multipliers ``_x_input`` / ``_x_sign``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["calculate_sign_mu", "sign_mu", "apply_post"]


def sign_mu(x: torch.Tensor, mu: float = 0.0) -> torch.Tensor:
    """+1 where ``x >= mu``, else -1 (so ``sign_mu(0, 0) == +1``), in ``x``'s dtype."""
    return torch.where(x >= mu, torch.ones_like(x), -torch.ones_like(x))


def calculate_sign_mu(x: Any, mu: float = 0) -> Any:
    """Calculate the sign of ``x`` with threshold ``mu``: +1 where ``x >= mu``, else -1.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        Input values.
    mu : float, optional
        Threshold; values at or above it count as positive. Default 0 (so s(0) = +1).

    Returns
    -------
    torch.Tensor or numpy.ndarray
        The signs, of ``x``'s type, shape and (floating) dtype.
    """
    if isinstance(x, torch.Tensor):
        return sign_mu(x if x.is_floating_point() else x.double(), mu)
    array = np.asarray(x)
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
    return np.where(array >= mu, 1.0, -1.0).astype(dtype)


def apply_post(relevance: torch.Tensor, x: torch.Tensor, post: tuple[str, ...], mu: float = 0.0) -> torch.Tensor:
    """Apply a spec's post-multipliers in order: ``x_input`` multiplies by ``x``, ``x_sign`` by
    ``sign_mu(x, mu)`` (the sign of the input, never of the map)."""
    for step in post:
        relevance = relevance * (x if step == "x_input" else sign_mu(x, mu))
    return relevance
