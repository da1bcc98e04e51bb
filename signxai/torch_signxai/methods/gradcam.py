"""Grad-CAM family (grad_cam, grad_cam_timeseries, guided_grad_cam_*)."""
from __future__ import annotations

import torch

from .grammar import MethodSpec

__all__ = ["grad_cam", "guided_grad_cam"]


def grad_cam(model, x, target, spec: MethodSpec) -> torch.Tensor:
    """Grad-CAM of the named (or last) conv layer."""
    raise NotImplementedError(f"method {spec.name!r}: Grad-CAM is not implemented yet")


def guided_grad_cam(model, x, target, spec: MethodSpec) -> torch.Tensor:
    """Guided backprop times Grad-CAM."""
    raise NotImplementedError(f"method {spec.name!r}: guided Grad-CAM is not implemented yet")
