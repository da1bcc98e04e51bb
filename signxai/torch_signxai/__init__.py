"""Explanations for PyTorch models: gradient, SIGN and LRP methods, numerically equal to
iNNvestigate on TensorFlow.

PyTorch-native API: :func:`calculate_relevancemap` / :func:`calculate_relevancemaps`.
TensorFlow-compatible API: :mod:`signxai.torch_signxai.methods.wrappers`.
Whole datasets into a resumable zarr store, locally or on Ray: :func:`explain_dataset`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from .dataset import explain_dataset
from .methods.api import run_method
from .utils import NoSoftmaxWrapper, remove_softmax

__all__ = ["calculate_relevancemap", "calculate_relevancemaps", "remove_softmax", "NoSoftmaxWrapper", "explain_dataset"]


def calculate_relevancemap(model: nn.Module, input_tensor: Any, method: str = "gradients", **kwargs: Any) -> np.ndarray:
    """Calculate a relevance map for a model, an input and a method, PyTorch-native style.

    Parameters
    ----------
    model : torch.nn.Module
        PyTorch model returning logits.
    input_tensor : torch.Tensor or numpy.ndarray
        One input, channels-first, with or without a batch axis of 1.
    method : str, optional
        Name of the explanation method: any TF-compatible name (``'lrp_epsilon_0_1'``, ...) or
        a short form (``'gradients'``, ``'lrp_epsilon'`` with ``epsilon=``, ``'lrp_alphabeta'``
        with ``alpha=``/``beta=``, ``'lrp_zplus'``, ...).
    **kwargs
        ``target_class`` (None: the largest logit) and the method's parameters.

    Returns
    -------
    numpy.ndarray
        Relevance map of the input's shape. BatchNorm layers under LRP use their true affine map
        (the TF-compatible API reproduces iNNvestigate's linearisation instead).
    """
    return run_method(method, model, input_tensor, kwargs, single=True, batchnorm="exact")


def calculate_relevancemaps(
    model: nn.Module, input_tensors: Any, method: str = "gradients", **kwargs: Any
) -> np.ndarray:
    """Calculate relevance maps for several inputs in one batched pass, PyTorch-native style.

    Parameters
    ----------
    model : torch.nn.Module
        PyTorch model returning logits.
    input_tensors : list or torch.Tensor or numpy.ndarray
        A batch (leading batch axis) or a list of single inputs.
    method : str, optional
        Name of the explanation method.
    **kwargs
        ``target_class`` (None, an int, or one per input) and the method's parameters.

    Returns
    -------
    numpy.ndarray
        Batch of relevance maps.
    """
    return run_method(method, model, input_tensors, kwargs, single=False, batchnorm="exact")
