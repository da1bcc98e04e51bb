"""Private views of a model: what every explanation runs on, so that the caller's model is never
touched, not even while an explanation runs.

A view is a copy of the model's module tree in which every module is a shallow copy of the
caller's (same class, same ``forward``, same attributes) with dictionaries of its own: its
parameters and buffers are new tensors aliasing the caller's storage (no ``requires_grad``, not
the caller's ``Parameter`` objects), its submodules (and modules it holds as plain attributes,
such as a wrapper's model) are views, its hook dictionaries are copies (the caller's own hooks
still run; hooks put on the view stay on the view) and it is in eval mode. Methods attach their
rules, hooks and pooling kernels to the view; the caller's modules, flags and ``forward`` stay as
they are, and so does every other thread's view. (Modules a model keeps in plain lists or other
containers, unregistered, are not copied: they run as the caller's, as no method sees them.)

Views are built once per model and kept in a pool keyed weakly on the model
(:func:`private_view` leases one to one explanation at a time and takes it back afterwards; a
call that raised drops its view), so that what is prepared on a view (its fx graph, its modular
form, an LRP method's registered composite: views leased under a key serve that key only) is
prepared once. Updates of
the caller's weights made in place (an optimiser step, ``load_state_dict``) reach a view through
the shared storage; a replaced parameter, buffer, submodule, hook or other attribute changes the
model's :func:`signature` and the pool is rebuilt.

Scripted modules (``torch.jit``) cannot be copied: a scripted model runs as it is, and must be in
eval mode.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from .pooling import install_channels_last_max_pool

T = TypeVar("T")

__all__ = ["private_view", "prepared", "signature", "build_view", "is_view"]

#: per-module dictionaries whose entries are a module's hooks (copied into a view)
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _pointers(tensors: Mapping[str, torch.Tensor | None]) -> tuple:
    return tuple([tensor.data_ptr() for tensor in tensors.values() if tensor is not None])


def signature(model: nn.Module) -> tuple:
    """What a view of ``model`` copies and does not alias, for every module of the tree: the
    module object, its attribute names and values (by object identity: submodules, parameter and
    buffer tensors, hook dictionaries, numbers, ...) but not its training flag, the storage of its
    parameters and buffers (``param.data = ...`` keeps the object), and its hooks."""
    parts = []
    stack, seen = [model], set()
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        state = vars(module)
        keys = tuple(state)
        ids = list(map(id, state.values()))
        if "training" in state:
            ids[keys.index("training")] = 0
        children, params, buffers = state["_modules"], state["_parameters"], state["_buffers"]
        parts.append(
            (
                id(module),
                keys,
                tuple(ids),
                tuple(children),
                tuple(map(id, children.values())),
                tuple(params),
                tuple(map(id, params.values())),
                _pointers(params),
                tuple(buffers),
                tuple(map(id, buffers.values())),
                _pointers(buffers),
                *(tuple(state.get(key, ())) for key in _HOOK_DICTS),
            )
        )
        stack.extend(child for child in children.values() if child is not None)
    return tuple(parts)


def _alias(tensor: torch.Tensor | None, memo: dict) -> torch.Tensor | None:
    """A tensor sharing ``tensor``'s storage and version counter, without autograd history or
    flags; a ``Parameter`` stays a ``Parameter`` (with ``requires_grad=False``)."""
    if tensor is None:
        return None
    found = memo.get(id(tensor))
    if found is None:
        found = tensor.detach()
        if isinstance(tensor, nn.Parameter):
            found = nn.Parameter(found, requires_grad=False)
        memo[id(tensor)] = found
    return found


def _view_of(module: nn.Module, memo: dict) -> nn.Module:
    found = memo.get(id(module))
    if found is not None:
        return found
    view = copy.copy(module)
    memo[id(module)] = view
    state = vars(view)
    for key, value in list(state.items()):
        if isinstance(value, (dict, set)):
            state[key] = copy.copy(value)
        elif isinstance(value, nn.Module):  # a module held outside _modules (a wrapper's model)
            state[key] = _view_of(value, memo)
    for key, tensor in state["_parameters"].items():
        state["_parameters"][key] = _alias(tensor, memo)
    for key, tensor in state["_buffers"].items():
        state["_buffers"][key] = _alias(tensor, memo)
    for key, child in state["_modules"].items():
        state["_modules"][key] = None if child is None else _view_of(child, memo)
    view.training = False
    return view


def _scripted(model: nn.Module) -> bool:
    return any(isinstance(module, torch.jit.ScriptModule) for module in model.modules())


#: every view built (weakly): private module trees that never change once built
_VIEWS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def build_view(model: nn.Module) -> nn.Module:
    """A new private view of ``model`` (see the module docstring); its large 2-D max pooling runs
    through the channels-last kernel (:func:`.pooling.install_channels_last_max_pool`)."""
    view = _view_of(model, {})
    install_channels_last_max_pool(view)
    _VIEWS.add(view)
    return view


def is_view(module: nn.Module) -> bool:
    """Whether ``module`` is the root of a view from :func:`build_view` (its tree never changes)."""
    return module in _VIEWS


class _Pool:
    """The free views of one model, all built for one :func:`signature`."""

    __slots__ = ("lock", "signature", "scripted", "free")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.signature: tuple = ()
        self.scripted = False
        #: key -> views leased under it before
        self.free: dict = {}


_POOLS: weakref.WeakKeyDictionary[nn.Module, _Pool] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def _pool(model: nn.Module) -> _Pool:
    pool = _POOLS.get(model)
    if pool is None:
        with _POOLS_LOCK:
            pool = _POOLS.get(model)
            if pool is None:
                pool = _POOLS[model] = _Pool()
    return pool


#: the view's own attribute holding (key, what was prepared on it): kept with the view, so that it
#: goes when the view goes (it refers to the view's modules)
_PREPARED = "_private_view_prepared"


def prepared(view: nn.Module, key: Hashable, build: Callable[[], T]) -> T:
    """What ``build()`` prepares on ``view`` for ``key`` (e.g. a composite registered on it), built
    on the view's first use and kept with it; the view must have been leased under ``key``.

    Raises
    ------
    RuntimeError
        When ``view`` was prepared for another key (its preparations would interfere).
    """
    state = vars(view)
    found = state.get(_PREPARED)
    if found is None:
        found = state[_PREPARED] = key, build()
    elif found[0] != key:
        raise RuntimeError("a private view is prepared for one method only; lease it under that method's key")
    return found[1]


@contextmanager
def private_view(model: nn.Module, key: Hashable = None) -> Iterator[nn.Module]:
    """Lease a private view of ``model`` for the block (one explanation): no other call uses it
    meanwhile; afterwards it goes back to the model's pool, unless the model changed since.

    Views leased under a ``key`` only ever serve that key again, so that what a method
    :func:`prepared` on one (a registered composite) stays valid and meets no other method's.

    Raises
    ------
    TypeError
        For a model that is no ``nn.Module``.
    ValueError
        For a scripted model in train mode (it cannot be copied, and explaining it in train mode
        would take dropout and batch statistics into the map).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    pool = _pool(model)
    current = signature(model)
    with pool.lock:
        if pool.signature != current:
            pool.signature, pool.scripted, pool.free = current, _scripted(model), {}
        scripted = pool.scripted
        free = pool.free.setdefault(key, [])
        view = None if scripted or not free else free.pop()
    if scripted:
        if any(module.training for module in model.modules()):
            raise ValueError(
                "a scripted (torch.jit) model cannot be copied into a private eval-mode view; "
                "call model.eval() before explaining it"
            )
        yield model
        return
    if view is None:
        view = build_view(model)
    yield view  # a call that raised may have left state on its view: that view is dropped
    with pool.lock:
        if pool.signature == current:
            pool.free.setdefault(key, []).append(view)
