"""Model utilities: strip a trailing softmax so explanations start from logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["remove_softmax", "NoSoftmaxWrapper"]

_SOFTMAX_FUNCTIONS = {
    torch.softmax,
    torch.log_softmax,
    torch.nn.functional.softmax,
    torch.nn.functional.log_softmax,
    torch.Tensor.softmax,
    torch.Tensor.log_softmax,
    torch.special.softmax,
    torch.special.log_softmax,
}


class _SoftmaxRecorder(TorchFunctionMode):
    """Record the input of every softmax / log-softmax computed during a forward pass, keyed by the
    identity of its result."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[int, torch.Tensor] = {}
        self._keep: list[torch.Tensor] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Call ``func``; remember the input of a softmax."""
        result = func(*args, **(kwargs or {}))
        if func in _SOFTMAX_FUNCTIONS and isinstance(result, torch.Tensor):
            self.inputs[id(result)] = args[0]
            self._keep.append(result)  # keep ids unique while recording
        return result


class NoSoftmaxWrapper(nn.Module):
    """Wrap a model so that it returns the logits in front of its final softmax.

    The softmax (an ``nn.Softmax`` / ``nn.LogSoftmax`` module anywhere in the model, or a
    functional ``softmax`` / ``log_softmax`` call) is found at run time: when the model's output is
    the result of a softmax, the wrapper returns that softmax's input instead. A model without a
    trailing softmax is returned unchanged. The wrapper shares the model's submodules and
    parameters under their original names (so ``layer_name='features.28'`` still works) and
    never modifies the model.

    Parameters
    ----------
    model : torch.nn.Module
        PyTorch model with softmax.
    """

    wrapped: nn.Module

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        mode = model.training
        # set before Module.__init__, whose `self.training = True` goes through the property below
        object.__setattr__(self, "wrapped", model)
        super().__init__()
        self.training = mode  # undo Module.__init__'s write to the wrapped model's flag
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in model.named_buffers(recurse=False):
            self.register_buffer(name, buffer)

    @property
    def training(self) -> bool:
        """The wrapped model's training flag: the wrapper has no flag of its own, so the two never
        disagree (``train()``/``eval()`` on either, or restoring the flag directly, sets both)."""
        return self.wrapped.training

    @training.setter
    def training(self, mode: bool) -> None:
        self.wrapped.training = mode

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Forward pass that returns logits directly (no softmax).

        Parameters
        ----------
        x : torch.Tensor
            Input tensor.

        Returns
        -------
        torch.Tensor
            Model output before softmax.
        """
        with _SoftmaxRecorder() as recorder:
            output = self.wrapped(x, *args, **kwargs)
        return recorder.inputs.get(id(output), output)


def remove_softmax(model: nn.Module) -> nn.Module:
    """Remove the softmax activation from a PyTorch model.

    Parameters
    ----------
    model : torch.nn.Module
        PyTorch model; it is not modified.

    Returns
    -------
    torch.nn.Module
        A :class:`NoSoftmaxWrapper` of the model, which outputs raw logits.
    """
    return model if isinstance(model, NoSoftmaxWrapper) else NoSoftmaxWrapper(model)
