"""Metrics and tolerances of a parity comparison.

The gate is 1e-4 relative error (max |ours - ref| / max |ref|) in float32 for every method; rows
above 1e-5 are flagged (a careful Zennit-based implementation reached 1e-5 on every LRP rule).
A method may only get a looser tolerance with a measured reason written next to it in
:data:`LOOSER_TOLERANCES`; there is no fitted factor anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TOLERANCE", "FLAG_ABOVE", "LOOSER_TOLERANCES", "Metrics", "compare", "tolerance_for"]

TOLERANCE = 1e-4
FLAG_ABOVE = 1e-5
#: method name -> (tolerance, measured reason). Empty: every method meets the gate.
LOOSER_TOLERANCES: dict[str, tuple[float, str]] = {}


def tolerance_for(method: str) -> float:
    """The relative-error tolerance of ``method``."""
    return LOOSER_TOLERANCES.get(method, (TOLERANCE, ""))[0]


@dataclass(frozen=True)
class Metrics:
    """How far our map is from the reference map."""

    rel_error: float
    max_abs_error: float
    correlation: float
    reference_scale: float

    def passed(self, tolerance: float) -> bool:
        return bool(self.rel_error <= tolerance)


def compare(ours: np.ndarray, reference: np.ndarray) -> Metrics:
    """Compare two maps of the same shape.

    Returns
    -------
    Metrics
        ``rel_error`` = max |ours - ref| / max |ref| (the absolute error when the reference is all
        zero), ``max_abs_error``, Pearson ``correlation`` (1.0 for two identical constant maps,
        NaN for a constant map against a varying one) and the reference's max |value|.
    """
    if ours.shape != reference.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape}, reference {reference.shape}")
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    diff = float(np.max(np.abs(ours - reference)))
    scale = float(np.max(np.abs(reference)))
    rel = diff / scale if scale > 0 else diff
    a, b = ours.ravel() - ours.mean(), reference.ravel() - reference.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    if norm > 0:
        correlation = float(a @ b / norm)
    else:
        correlation = 1.0 if diff == 0 else float("nan")
    return Metrics(rel_error=rel, max_abs_error=diff, correlation=correlation, reference_scale=scale)
