"""A guard on a forward pass: functions that must not run outside certain modules.

Methods that attach their rules to modules cannot see a function a model calls between modules
(LRP on a chain) or one that stands in for a module (a functional ReLU under guided backprop);
:class:`OperationGuard` refuses such calls with an :class:`~.graph.UnsupportedLayerError`
naming the function and the module that ran last. The guard is a torch function mode, which
PyTorch keeps per thread: it is entered by the guarded model's own forward pre-hook and left by
its forward hook (on a private view of the caller's model, see :mod:`.private`), so it sees the
calls of that forward pass only, never another thread's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

from .graph import UnsupportedLayerError

__all__ = ["OperationGuard", "GuardError"]


class GuardError(UnsupportedLayerError):
    """An :class:`~.graph.UnsupportedLayerError` raised by an :class:`OperationGuard`; ``operation``
    is the refused function."""

    def __init__(self, operation: Callable, message: str) -> None:
        super().__init__(message)
        self.operation = operation


class OperationGuard(TorchFunctionMode):
    """During a forward pass, reject functions that ``rejects`` outside the modules that
    ``inside`` accepts (by default: outside any leaf module), naming the function and the module
    that ran last.

    Parameters
    ----------
    model : torch.nn.Module
    rejects : callable
        ``rejects(function) -> bool``.
    advice : str
        What the error says after naming the function.
    method : str
        The method, for the error.
    inside : callable, optional
        ``inside(module) -> bool``: modules whose own forward may call anything.
    """

    def __init__(
        self,
        model: nn.Module,
        rejects: Callable,
        advice: str,
        method: str,
        inside: Callable[[nn.Module], bool] = lambda m: next(m.children(), None) is None,
    ) -> None:
        super().__init__()
        self.rejects, self.advice, self.method = rejects, advice, method
        self.depth = 0
        self.current = ""
        self.handles = []
        self.inside = {module for module in model.modules() if inside(module)}
        for module in model.modules():
            if module in self.inside or next(module.children(), None) is None:
                self.handles.append(module.register_forward_pre_hook(self._enter, prepend=True))
                self.handles.append(module.register_forward_hook(self._exit, always_call=True))
        self.names = {module: name for name, module in model.named_modules()}

    def _enter(self, module: nn.Module, args: Any) -> None:
        self.depth += module in self.inside

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        self.depth -= module in self.inside
        if next(module.children(), None) is None:
            self.current = self.names.get(module, "")

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Call ``func``, or raise :class:`GuardError` if it is rejected outside the allowed modules."""
        if self.depth == 0 and self.rejects(func):
            after = f" after '{self.current}'" if self.current else ""
            raise GuardError(
                func,
                f"{self.method} cannot explain the operation {getattr(func, '__qualname__', func)}{after} in the "
                f"model's forward: {self.advice}",
            )
        return func(*args, **(kwargs or {}))

    def start(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of the model: start guarding."""
        self.__enter__()

    def stop(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook of the model: stop guarding."""
        self.__exit__(None, None, None)

    def remove(self) -> None:
        """Remove the hooks on the model's modules."""
        for handle in self.handles:
            handle.remove()
