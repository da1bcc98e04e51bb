"""TensorFlow-compatible API: ``calculate_relevancemap(method_name, x, model_no_softmax, **kwargs)``.

Gives, for a PyTorch model, the numbers iNNvestigate 2.1.2 gives for the same method on a Keras
twin of the model (the documentation's "Parity harness" page, ``docs/parity.md``, says how that
is checked). That includes iNNvestigate's
own BatchNorm linearisation under LRP (kernel ``gamma / sqrt(var**2 + eps)``, bias
``beta - mean / sqrt(var**2 + eps)``), which is not BatchNorm's true affine map: it is what a
TensorFlow user's maps contain.
The PyTorch-native API (:func:`signxai.torch_signxai.calculate_relevancemap`) uses the true map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from .api import run_method

__all__ = ["calculate_relevancemap", "calculate_relevancemaps"]


def calculate_relevancemap(method_name: str, x: Any, model_no_softmax: nn.Module, **kwargs: Any) -> np.ndarray:
    """Calculate a relevance map using the TensorFlow-compatible API style.

    Parameters
    ----------
    method_name : str
        Name of the explanation method, e.g. ``'lrp_epsilon_0_1'`` (the grammar of
        :mod:`signxai.torch_signxai.methods.grammar`).
    x : numpy.ndarray or torch.Tensor
        One input, channels-first as the model takes it, with or without a batch axis of 1.
    model_no_softmax : torch.nn.Module
        PyTorch model with softmax removed (see :func:`signxai.torch_signxai.utils.remove_softmax`).
    **kwargs
        ``neuron_selection`` (None: the largest logit; or a class index) and the method's
        parameters (``epsilon``, ``mu``, ``steps``, ``noise_level``, ``num_samples``, ``seed``,
        ``layer_name``, ...).

    Returns
    -------
    numpy.ndarray
        The relevance map, of ``x``'s shape.
    """
    return run_method(method_name, model_no_softmax, x, kwargs, single=True, batchnorm="innvestigate")


def calculate_relevancemaps(method_name: str, X: Any, model_no_softmax: nn.Module, **kwargs: Any) -> np.ndarray:
    """Calculate relevance maps for a batch of inputs, in one batched pass.

    Parameters
    ----------
    method_name : str
        Name of the explanation method.
    X : list or numpy.ndarray or torch.Tensor
        A batch (leading batch axis) or a list of single inputs.
    model_no_softmax : torch.nn.Module
        PyTorch model with softmax removed.
    **kwargs
        As for :func:`calculate_relevancemap`; ``neuron_selection`` may give one class per input.

    Returns
    -------
    numpy.ndarray
        The relevance maps, shape ``(len(X), *input shape)``.
    """
    return run_method(method_name, model_no_softmax, X, kwargs, single=False, batchnorm="innvestigate")
