"""Grad-CAM family (grad_cam, grad_cam_timeseries, guided_grad_cam_*).

Grad-CAM of class ``t`` at a layer with features ``A_k`` is ``ReLU(sum_k w_k A_k)`` with
``w_k`` the spatial mean of ``d y_t / d A_k`` (the backward pass seeded with 1 on the selected
logit), divided by its maximum per sample, resized to the input's spatial size with half-pixel
centres (linear in 1-D, bilinear in 2-D) and broadcast over the input's channels.

The layer is a module path of the model (``spec['layer_name']``, e.g. ``'features.28'``), or, when
None, the convolution farthest from the input by graph position: the one with the most
convolutions on a path from the input to it, itself included (so on a residual block with a
projection shortcut, the main branch's last conv, not the shortcut's), the one executed last
among equals; for a model fx cannot trace, the last convolution executed. When a convolution's output goes directly
into an elementwise activation (the next module executed, consuming that tensor), ``A`` is the
activation's output, as a Keras convolution with a built-in activation gives it. A functional
activation (``F.relu``, ``torch.relu``) counts as a module would: where the model computes one,
Grad-CAM runs on the model's graph with every functional activation a module of its own
(:mod:`.modular`), and refuses a model fx cannot trace. What is a convolution and what an
activation comes from the kinds table of :mod:`.graph`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gradient import guard_activations, with_activation_modules
from .gradient import guided_backprop as _guided_backprop
from .grammar import MethodSpec
from .graph import Node, kind_of_module, model_graph
from .targets import check_logits, output_seed, resolve_targets

__all__ = ["grad_cam", "guided_grad_cam", "deepest_conv"]


def _is_conv(module: nn.Module) -> bool:
    """Whether Grad-CAM treats ``module`` as a convolution (default layer, activation convention,
    error listings)."""
    return kind_of_module(module).name == "conv"


def _is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an elementwise activation (a convolution's built-in one, if it
    directly follows)."""
    return kind_of_module(module).name == "activation"


#: interpolation mode by the number of spatial axes
_RESIZE_MODES = {1: "linear", 2: "bilinear"}


def _lookup(model: nn.Module, layer_name: str | None) -> nn.Module | None:
    """The module at ``layer_name`` (None stays None).

    Raises
    ------
    ValueError
        If the model has no module of that name; the message lists the conv layers' names.
    """
    if layer_name is None:
        return None
    modules = dict(model.named_modules())
    if layer_name not in modules:
        convs = [name for name, module in modules.items() if _is_conv(module)]
        raise ValueError(
            f"layer_name {layer_name!r} is not a module of the model; its conv layers are: {', '.join(convs) or 'none'}"
        )
    return modules[layer_name]


def deepest_conv(model: nn.Module) -> str | None:
    """Module path of Grad-CAM's default layer: the convolution with the most convolutions on a
    path from the input to it (itself included), the last in execution order among equals; None
    when fx cannot trace the model or it calls no convolution."""
    graph = model_graph(model)
    if graph is None:
        return None
    depth: dict[str, int] = {}
    best: Node | None = None
    for node in graph.nodes:  # in execution order
        conv = node.op == "call_module" and node.module is not None and _is_conv(node.module)
        depth[node.name] = max((depth.get(name, 0) for name in node.inputs), default=0) + int(conv)
        if conv and (best is None or depth[node.name] >= depth[best.name]):
            best = node
    if best is None:
        return None
    return next(name for name, module in model.named_modules() if module is best.module)


def _is_leaf(module: nn.Module) -> bool:
    """Whether ``module`` has no submodules (its forward hook fires in execution order)."""
    return next(module.children(), None) is None


class _FeatureRecorder:
    """Forward hooks that keep Grad-CAM's features ``A`` during one forward pass.

    Hooks sit on every leaf module (and on the selected module), so they fire in execution order.
    The selected module's output is kept (its last call, if it runs more than once); for a
    convolution, the output of the next leaf module replaces it when that module is an elementwise
    activation taking the convolution's output, unmodified, as its input.

    Parameters
    ----------
    model : torch.nn.Module
        The caller's model, in which ``layer_name`` is looked up (the module that runs may be its
        graph with added activation modules, sharing its submodules).
    layer_name : str or None
        Module path of the layer; None selects :func:`deepest_conv`, or, where fx cannot trace the
        model, the last convolution executed.
    """

    def __init__(self, model: nn.Module, layer_name: str | None):
        layer_name = deepest_conv(model) if layer_name is None else layer_name
        self._layer = _lookup(model, layer_name)
        self._names = {module: name for name, module in model.named_modules()}
        self._pending: torch.Tensor | None = None
        self._direct = False
        self._features: Any = None
        self._version = 0
        self.name: str | None = layer_name

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Register the hooks for the duration of the block, removing every one afterwards."""
        modules = [module for module in model.modules() if _is_leaf(module)]
        if self._layer is not None and not _is_leaf(self._layer):
            modules.append(self._layer)
        handles = []
        try:
            for module in modules:
                handles.append(module.register_forward_pre_hook(self._before))
                handles.append(module.register_forward_hook(self._record))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _selects(self, module: nn.Module) -> bool:
        """Whether ``module`` is the selected layer (any conv, when none is named)."""
        if self._layer is None:
            return _is_conv(module)
        return module is self._layer

    def _before(self, module: nn.Module, inputs: tuple) -> None:
        """Forward pre-hook: whether ``module`` takes the pending conv output, unmodified since."""
        pending = self._pending
        self._direct = bool(
            pending is not None and inputs and inputs[0] is pending and pending._version == self._version
        )

    def _record(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        """Forward hook: keep the selected layer's output, or the activation directly after it."""
        direct, self._pending, self._direct = self._direct, None, False
        if direct and _is_activation(module):
            self._keep(output)
        if self._selects(module):
            self._keep(output)
            if self._layer is None:
                self.name = self._names.get(module)
            self._pending = output if _is_conv(module) and isinstance(output, torch.Tensor) else None

    def _keep(self, output: Any) -> None:
        """Keep ``output`` as the features, with its in-place version counter."""
        self._features = output
        self._version = output._version if isinstance(output, torch.Tensor) else 0

    def features(self) -> torch.Tensor:
        """The recorded features.

        Raises
        ------
        ValueError
            If no layer was recorded, the layer's output is not a tensor, or it was modified in
            place later in the forward pass (its gradient would then be another tensor's).
        """
        if self._features is None:
            if self._layer is None:
                raise ValueError(
                    "Grad-CAM needs a conv layer: the forward pass executed no "
                    "Conv1d/Conv2d/Conv3d module (pass layer_name= to pick a layer)"
                )
            raise ValueError(f"layer {self.name!r} was not executed in the forward pass")
        if not isinstance(self._features, torch.Tensor):
            raise ValueError(f"layer {self.name!r} returns a {type(self._features).__name__}, not a feature tensor")
        if self._features._version != self._version:
            raise ValueError(
                f"the output of layer {self.name!r} is modified in place later in the "
                f"forward pass, so its gradient cannot be taken; pick another layer"
            )
        return self._features


def _check_input(x: torch.Tensor) -> None:
    """Grad-CAM explains inputs with one or two spatial axes."""
    if x.ndim - 2 not in _RESIZE_MODES:
        raise ValueError(
            f"Grad-CAM needs a conv layer and an input with one or two spatial axes, "
            f"(batch, channels, length) or (batch, channels, height, width); got an "
            f"input batch of shape {tuple(x.shape)}"
        )


def _check_features(name: str | None, features: torch.Tensor, x: torch.Tensor, timeseries: bool) -> None:
    """The features must be (batch, channels, *spatial) with the input's spatial rank; 1-D for
    grad_cam_timeseries."""
    shape = tuple(features.shape)
    if timeseries and features.ndim != 3:
        raise ValueError(
            f"grad_cam_timeseries needs a 1-D conv layer with features of shape "
            f"(batch, channels, length); layer {name!r} gives shape {shape} "
            f"(use grad_cam for 2-D inputs)"
        )
    if features.ndim != x.ndim or shape[0] != x.shape[0]:
        raise ValueError(
            f"Grad-CAM needs a conv layer: layer {name!r} gives features of shape "
            f"{shape}, not (batch, channels, *spatial) for an input batch of shape "
            f"{tuple(x.shape)}"
        )


def _features_and_gradients(
    model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec, recorder: _FeatureRecorder
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and one backward pass of ``model``: the features ``A`` and ``d y_t / d A``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with recorder.attached(model):
            logits = check_logits(model(x))
        features = recorder.features()
        _check_features(recorder.name, features, x, bool(spec.params.get("timeseries")))
        seed = output_seed(logits, resolve_targets(target, logits), from_logit=False)
        (grads,) = torch.autograd.grad(logits, features, grad_outputs=seed)
    return features.detach(), grads


def _class_map(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)`` with ``w_k`` the spatial mean of the gradient; shape (batch, *spatial)."""
    weights = grads.mean(dim=tuple(range(2, grads.ndim)), keepdim=True)
    return torch.relu((weights * features).sum(dim=1))


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Divide each sample's map by its maximum; an all-zero map stays zero."""
    peak = cam.flatten(1).amax(dim=1).view(-1, *[1] * (cam.ndim - 1))
    return cam / torch.where(peak > 0, peak, torch.ones_like(peak))


def _resize(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Resize (half-pixel centres) to ``x``'s spatial size and broadcast over its channels."""
    mode = _RESIZE_MODES[cam.ndim - 1]
    resized = F.interpolate(cam.unsqueeze(1), size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    return resized.expand_as(x).contiguous()


def grad_cam(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """Grad-CAM of the named (or default, :func:`deepest_conv`) conv layer, of ``x``'s shape.

    Parameters
    ----------
    model : torch.nn.Module
        Model returning logits of shape (batch, classes).
    x : torch.Tensor
        Input batch (batch, channels, length) or (batch, channels, height, width).
    target : Any
        The caller's target (see :func:`.targets.resolve_targets`).
    spec : MethodSpec
        ``spec['layer_name']``: module path of the layer, or None for :func:`deepest_conv`;
        ``spec.params['timeseries']``: require a 1-D layer (grad_cam_timeseries).

    Returns
    -------
    torch.Tensor
        The map, in [0, 1], the same for every channel.

    Raises
    ------
    ValueError
        For an input without spatial axes, an unknown or unexecuted layer, features that are not
        conv features of the input's spatial rank, or a 2-D layer under grad_cam_timeseries.
    UnsupportedLayerError
        For a model that computes an activation outside a module and that fx cannot trace.
    """
    _check_input(x)

    def run(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        with guard_activations(module, "grad_cam"):
            return _features_and_gradients(module, x, target, spec, _FeatureRecorder(model, spec["layer_name"]))

    features, grads = with_activation_modules(run, model)
    return _resize(_normalise(_class_map(features, grads)), x)


def guided_grad_cam(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """Guided backprop (seeded with the logit's value) times the Grad-CAM map; see :func:`grad_cam`."""
    cam = grad_cam(model, x, target, spec)
    return _guided_backprop(model, x, target, spec) * cam
