"""The engine: runs a :class:`~.grammar.MethodSpec` on a model and an input.

Every public entry point (both APIs and the analyzer classes) ends here: :func:`explain` converts
the input (:mod:`.io`), runs on a private eval-mode view of the model that shares its weights
(:mod:`.private`: the caller's model is never touched, so calls may run from many threads at
once; its large max pooling runs through the faster kernel, :mod:`.pooling`), dispatches to the family's
implementation, applies the post-multipliers and returns numpy. Families that attach rules to
modules read the model's graph (:mod:`.graph`, :mod:`.modular`) where fx can trace it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from . import gradcam as _gradcam
from . import gradient as _gradient
from .grammar import MethodSpec, parse
from .io import to_batch
from .lrp.family import lrp as _lrp
from .lrp.family import view_key as _lrp_view_key
from .private import private_view
from .signed import apply_post

__all__ = ["explain"]

#: words of torch's errors for inputs of the wrong size (wrong channels, features, lengths)
_SHAPE_WORDS = re.compile(r"shape|size|channels|dimension", re.IGNORECASE)

Family = Callable[[nn.Module, torch.Tensor, Any, MethodSpec], torch.Tensor]

_FAMILIES: dict[str, Family] = {
    "gradient": _gradient.gradient,
    "guided_backprop": _gradient.guided_backprop,
    "deconvnet": _gradient.deconvnet,
    "smoothgrad": _gradient.smoothgrad,
    "vargrad": _gradient.vargrad,
    "integrated_gradients": _gradient.integrated_gradients,
    "deeplift": _gradient.deeplift,
    "random_uniform": _gradient.random_uniform,
    "input": _gradient.input_map,
    "grad_cam": _gradcam.grad_cam,
    "guided_grad_cam": _gradcam.guided_grad_cam,
    "lrp": _lrp,
}


def explain(spec: MethodSpec | str, model: nn.Module, x: Any, target: Any = None, *, single: bool | None) -> np.ndarray:
    """Compute the relevance map(s) of ``spec`` for ``model`` at ``x``.

    Parameters
    ----------
    spec : MethodSpec or str
        The method (a name is parsed without keyword parameters).
    model : torch.nn.Module
        The model; it returns logits of shape (batch, classes).
    x : numpy.ndarray, torch.Tensor or list
        One input (``single=True``) or a batch (see :func:`.io.to_batch`).
    target : None, int or sequence of int
        The explained class: None for each input's largest logit.
    single : bool or None
        Whether ``x`` is one input; None decides from its rank (see :func:`.io.to_batch`).

    Returns
    -------
    numpy.ndarray
        Relevance of ``x``'s shape.
    """
    if isinstance(spec, str):
        spec = parse(spec)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batch = to_batch(x, model, single=single)
    family = _FAMILIES[spec.family]
    key = _lrp_view_key(spec) if spec.family == "lrp" else None
    with private_view(model, key) as view:
        try:
            try:
                relevance = family(view, batch.tensor, target, spec)
            except RuntimeError as error:
                if isinstance(error, NotImplementedError) or batch.tensor.is_contiguous():
                    raise
                # a model that cannot run on a channels-last batch (e.g. ``.view()`` of its
                # features): run it on the batch in the default layout
                batch = batch.in_default_layout()
                relevance = family(view, batch.tensor, target, spec)
        except RuntimeError as error:
            if isinstance(error, NotImplementedError) or not _SHAPE_WORDS.search(str(error)):
                raise
            raise ValueError(
                f"the model cannot take an input batch of shape {tuple(batch.tensor.shape)}: {error}"
            ) from error
    relevance = apply_post(relevance, batch.tensor, spec.post, spec.params.get("post_mu", 0.0))
    return batch.output(relevance)
