"""The gradient family: gradient, guided backprop, deconvnet, SmoothGrad, VarGrad, integrated
gradients, DeepLIFT (rescale) and the random baseline.

Every function here has the engine's family signature ``(model, x, target, spec) -> relevance``:
``x`` is a validated batch on the model's device, ``target`` the caller's raw target (resolved by
:mod:`.targets`), and the result a tensor of ``x``'s shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from zennit.core import Composite, Hook
from zennit.rules import ReLUDeconvNet, ReLUGuidedBackprop

from .grammar import MethodSpec
from .graph import activation_functions, activation_of_module, kind_of_module
from .guard import GuardError, OperationGuard
from .io import as_tensor_like, in_layout_of
from .modular import of_model
from .targets import check_logits, output_seed, resolve_targets

T = TypeVar("T")

__all__ = [
    "attribute",
    "with_activation_modules",
    "guard_activations",
    "fixed_targets",
    "gradient",
    "guided_backprop",
    "deconvnet",
    "smoothgrad",
    "vargrad",
    "integrated_gradients",
    "deeplift",
    "random_uniform",
    "input_map",
]


def with_activation_modules(run: Callable[[nn.Module], T], model: nn.Module) -> T:
    """``run(model)`` for a method that modifies or records activation modules, guarded (see
    :func:`guard_activations`); when the model computes an activation outside an activation
    module, ``run`` again on the model's graph with every functional activation a module of its
    own (:mod:`.modular`), or, for a model fx cannot trace, the guard's error.

    The model itself runs first, so that its own ``forward`` (with whatever else it does) is
    what is explained wherever it can be.
    """
    try:
        return run(model)
    except GuardError:
        modular = of_model(model)
        if modular is None:
            raise
        return run(modular.module)


def _is_activation(module: nn.Module) -> bool:
    return kind_of_module(module).name == "activation"


def _is_relu_like(module: nn.Module) -> bool:
    activation = activation_of_module(module)
    return activation is not None and activation.relu_like


@contextmanager
def guard_activations(model: nn.Module, method: str, relu_like: bool | None = None) -> Iterator[None]:
    """Within the block, ``model``'s forward passes refuse activation functions (only ReLU-like
    ones: ``relu_like=True``) outside the matching activation modules: their backward would
    escape the method's modification (a functional ReLU between modules, or inside a layer of
    another kind)."""
    inside = _is_relu_like if relu_like else _is_activation
    guard = OperationGuard(
        model,
        rejects=activation_functions(relu_like).__contains__,
        inside=inside,
        method=method,
        advice="an activation computed outside an activation module "
        "keeps its plain gradient; use an activation module "
        "(nn.ReLU, ...) there",
    )
    handles: list[OperationGuard | RemovableHandle] = [
        guard,
        model.register_forward_pre_hook(guard.start),
        model.register_forward_hook(guard.stop, always_call=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ActivationComposite(Composite):
    """A Zennit composite putting a copy of ``hook`` on every ReLU-like activation module (the
    kinds table's ``relu_like``: ``nn.ReLU``, ``nn.ReLU6``)."""

    def __init__(self, hook: Hook) -> None:
        super().__init__(module_map=lambda ctx, name, module: hook if _is_relu_like(module) else None)


def _relu_method(model: nn.Module, x: torch.Tensor, target: Any, hook: Hook, method: str) -> torch.Tensor:
    def run(module: nn.Module) -> torch.Tensor:
        with guard_activations(module, method, relu_like=True):
            return attribute(module, x, target, from_logit=True, composite=ActivationComposite(hook))

    return with_activation_modules(run, model)


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: Any,
    *,
    from_logit: bool = False,
    positive_only: bool = False,
    composite: Composite | None = None,
) -> torch.Tensor:
    """One forward and one (possibly rule-modified) backward pass: d(seed . logits)/dx.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        Input batch.
    target : Any
        The caller's target (see :func:`.targets.resolve_targets`).
    from_logit : bool
        Seed the backward pass with the selected logit's value instead of 1.
    positive_only : bool
        With ``from_logit``, seed with ``max(logit, 0)``.
    composite : zennit.core.Composite, optional
        Rules registered on the model for this pass only (LRP, guided backprop, ...).

    Returns
    -------
    torch.Tensor
        The gradient (the relevance, under a composite) of ``x``'s shape.
    """
    x = x.detach().requires_grad_(True)
    context = composite.context(model) if composite is not None else nullcontext()
    with torch.enable_grad(), context:
        logits = check_logits(model(x.clone()))  # a private copy: the model may modify its input in place
        seed = output_seed(logits, resolve_targets(target, logits), from_logit=from_logit, positive_only=positive_only)
        (grad,) = torch.autograd.grad(logits, x, grad_outputs=seed)
    return grad


def fixed_targets(model: nn.Module, x: torch.Tensor, target: Any) -> torch.Tensor:
    """Class indices for ``x`` resolved once on the clean input (for methods that evaluate the
    model on other points: noisy copies, path points)."""
    with torch.no_grad():
        return resolve_targets(target, check_logits(model(x.clone())))  # the model may modify its input


def _gradients(model: nn.Module, points: torch.Tensor, indices: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Input gradients of the selected logits at ``points`` of shape (k, batch, ...): one pass,
    laid out as the input batch ``x``."""
    k, batch = points.shape[:2]
    flat = in_layout_of(points.reshape(k * batch, *points.shape[2:]), x)
    grad = attribute(model, flat, indices.repeat(k))
    return grad.reshape(points.shape)


def _chunks(total: int, batch: int, budget: int) -> Iterator[tuple[int, int]]:
    """Split ``total`` samples into chunks of at most ``budget`` rows (``batch`` rows a sample)."""
    step = max(1, budget // batch)
    for start in range(0, total, step):
        yield start, min(total, start + step)


def gradient(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """Plain input gradient of the selected logit."""
    return attribute(model, x, target)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """Guided backpropagation, seeded with the logit: every ReLU-like unit (module or functional)
    passes the positive part of its gradient, ``grad_in * (grad_out > 0)``."""
    return _relu_method(model, x, target, ReLUGuidedBackprop(), "guided backprop")


def deconvnet(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """DeconvNet, seeded with the logit: every ReLU-like unit (module or functional) passes
    ``max(grad_out, 0)``."""
    return _relu_method(model, x, target, ReLUDeconvNet(), "deconvnet")


def _noise_chunks(x: torch.Tensor, spec: MethodSpec) -> Callable[[int, int], torch.Tensor]:
    """A function giving the perturbations of samples ``start:stop``, shape (stop-start, *x.shape)."""
    samples = spec["num_samples"]
    if spec["noise"] is not None:
        noise = as_tensor_like(spec["noise"], x, "noise")
        if noise.ndim == x.ndim and x.shape[0] == 1:
            noise = noise.unsqueeze(1)
        if tuple(noise.shape) != (samples, *x.shape):
            raise ValueError(
                f"noise must have shape (num_samples, *input batch shape) = "
                f"{(samples, *x.shape)}, got {tuple(noise.shape)}"
            )
        return lambda start, stop: noise[start:stop]
    generator = _generator(spec["seed"])

    def draw(start: int, stop: int) -> torch.Tensor:
        normal = torch.randn((stop - start, *x.shape), generator=generator, dtype=torch.float64)
        return (normal * spec["noise_level"]).to(device=x.device, dtype=x.dtype)

    return draw


def _noisy_moments(
    model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of the gradients at ``x + noise`` over the samples, computed
    chunk by chunk (Chan et al.'s pairwise update), each chunk one batched pass."""
    indices = fixed_targets(model, x, target)
    noise = _noise_chunks(x, spec)
    count, mean, m2 = 0, torch.zeros_like(x), torch.zeros_like(x)
    for start, stop in _chunks(spec["num_samples"], x.shape[0], spec["batch_size"]):
        grads = _gradients(model, x.unsqueeze(0) + noise(start, stop), indices, x)
        size, chunk_mean = stop - start, grads.mean(dim=0)
        delta = chunk_mean - mean
        total = count + size
        mean = mean + delta * (size / total)
        m2 = m2 + ((grads - chunk_mean) ** 2).sum(dim=0) + delta**2 * (count * size / total)
        count = total
    return mean, m2 / count


def smoothgrad(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """SmoothGrad: mean gradient over ``num_samples`` copies ``x + N(0, noise_level**2)``."""
    return _noisy_moments(model, x, target, spec)[0]


def vargrad(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """VarGrad: population variance (ddof 0) of the gradient over the same noisy copies."""
    return _noisy_moments(model, x, target, spec)[1]


def _reference(x: torch.Tensor, spec: MethodSpec) -> torch.Tensor:
    if spec["reference"] is None:
        return torch.zeros_like(x)
    return as_tensor_like(spec["reference"], x, "reference").expand_as(x)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """Integrated gradients on iNNvestigate's path: points ``ref + k/steps * (x - ref)`` for
    ``k = 0 .. steps-1``; the mean gradient times ``x - ref``."""
    indices = fixed_targets(model, x, target)
    reference = _reference(x, spec)
    delta = x - reference
    steps = spec["steps"]
    total = torch.zeros_like(x)
    for start, stop in _chunks(steps, x.shape[0], spec["batch_size"]):
        alphas = torch.arange(start, stop, device=x.device, dtype=x.dtype) / steps
        points = reference.unsqueeze(0) + alphas.view(-1, *[1] * x.ndim) * delta.unsqueeze(0)
        total = total + _gradients(model, points, indices, x).sum(dim=0)
    return total / steps * delta


class _Rescale(torch.autograd.Function):
    """Pass an activation's output forward; backward, scale by DeepLIFT's multiplier
    ``(f(x) - f(x0)) / (x - x0)``, falling back to the local gradient where ``x == x0``."""

    @staticmethod
    def forward(
        ctx: Any,
        inp: torch.Tensor,
        out: torch.Tensor,
        ref_in: torch.Tensor,
        ref_out: torch.Tensor,
        local_grad: torch.Tensor,
    ) -> torch.Tensor:
        delta_in = inp - ref_in
        safe = delta_in.abs() > 1e-12 * (1 + inp.abs())
        ratio = (out - ref_out) / torch.where(safe, delta_in, torch.ones_like(delta_in))
        ctx.save_for_backward(torch.where(safe, ratio, local_grad))
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (multiplier,) = ctx.saved_tensors
        return grad_out * multiplier, None, None, None, None


def deeplift(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """DeepLIFT with the rescale rule at every elementwise activation (module or functional, by
    the kinds table); linear layers and pooling pass gradients. Returns multipliers times
    ``x - reference``."""
    reference = _reference(x, spec)
    return with_activation_modules(lambda module: _deeplift(module, x, target, reference), model)


def _deeplift(model: nn.Module, x: torch.Tensor, target: Any, reference: torch.Tensor) -> torch.Tensor:
    recorded: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    activations = [m for m in model.modules() if _is_activation(m)]

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        recorded.setdefault(module, []).append((inputs[0].detach(), output.detach()))

    def rescale(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        ref_in, ref_out = recorded[module].pop(0)
        inp = inputs[0]
        with torch.enable_grad():
            probe = inp.detach().requires_grad_(True)
            (local_grad,) = torch.autograd.grad(module.forward(probe).sum(), probe)
        return _Rescale.apply(inp, output.detach(), ref_in, ref_out, local_grad)

    handles = [m.register_forward_hook(record) for m in activations]
    try:
        with torch.no_grad(), guard_activations(model, "DeepLIFT"):
            model(reference.clone())
    finally:
        for handle in handles:
            handle.remove()
    handles = [m.register_forward_hook(rescale) for m in activations]
    try:
        grad = attribute(model, x, target)
    finally:
        for handle in handles:
            handle.remove()
    return grad * (x - reference)


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (None: a fresh random seed)."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(int(seed))
    else:
        generator.seed()
    return generator


def random_uniform(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """U(-1, 1) noise, seeded, one map shared across the channel axis (axis 1 of inputs of rank >= 3).

    The map does not depend on the model, but the model is run once so that its output and the
    target are validated as for every other method."""
    fixed_targets(model, x, target)
    shape = (x.shape[0], 1, *x.shape[2:]) if x.ndim >= 3 else tuple(x.shape)
    values = torch.rand(shape, generator=_generator(spec["seed"]), dtype=torch.float64) * 2 - 1
    return values.to(device=x.device, dtype=x.dtype).expand_as(x).clone()


def input_map(model: nn.Module, x: torch.Tensor, target: Any, spec: MethodSpec) -> torch.Tensor:
    """The input itself (iNNvestigate's ``Input``), plus independent N(0, stddev**2) noise on every
    value when ``stddev > 0`` (its ``Random``, seeded here); the model is run once, as for
    :func:`random_uniform`."""
    fixed_targets(model, x, target)
    if not spec["stddev"]:
        return x.detach().clone()
    normal = torch.randn(tuple(x.shape), generator=_generator(spec["seed"]), dtype=torch.float64)
    return x.detach() + (normal * spec["stddev"]).to(device=x.device, dtype=x.dtype)
