"""A model's graph run with every relevance-carrying operation as a module of its own.

Rules and modified backward passes attach to modules (Zennit hooks). :func:`modular` rebuilds a
model's :class:`~.graph.ModelGraph` as a private :class:`torch.fx.GraphModule` in which each
functional operation that has a mapping of its own becomes a small module, as Zennit's ``Sum``
canonizer does for ResNets:

* tensor sums (``+``, ``torch.add``, ``sum`` of tensors) -> :class:`~.graph.Add`;
* functional activations (``F.relu``, ``torch.sigmoid``, ``x.relu()``, ...) -> the matching
  ``torch.nn`` activation module (out of place);
* functional average pooling -> ``nn.AvgPool*d`` / ``nn.AdaptiveAvgPool*d``;
* ``mean`` -> :class:`~.graph.Mean`.

Everything else (concatenation, gates, reshapes, max pooling, upsampling, padding) stays a
function: its relevance is its gradient. The module shares the model's submodules and parameters
(same objects, same paths); the model itself is never modified. Constant terms of a sum
(other than the 0 that Python's ``sum`` starts from) and operations outside the kinds table stay
as they are: :attr:`Modular.unsupported` lists them for the families that must refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import Add, Mean, ModelGraph, Node, model_graph

__all__ = ["Modular", "modular", "of_model"]


#: functional average pooling -> module class taking the same arguments after the input
_POOL_MODULES: dict[Any, type[nn.Module]] = {
    F.avg_pool1d: nn.AvgPool1d,
    F.avg_pool2d: nn.AvgPool2d,
    F.avg_pool3d: nn.AvgPool3d,
    F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d,
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    F.adaptive_avg_pool3d: nn.AdaptiveAvgPool3d,
}
#: activation name -> module class taking the function's arguments after the input
_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
}


@dataclass(frozen=True, eq=False)
class Modular:
    """A model's graph as modules (see the module docstring).

    Attributes
    ----------
    graph : ModelGraph
        The graph it is built from.
    module : torch.fx.GraphModule
        Runs like the model; its leaves are the model's modules and the added ones.
    nodes : Mapping
        Module -> the graph nodes it runs (a module the model calls twice runs two nodes).
    unsupported : tuple of (Node, str)
        Nodes no relevance mapping applies to, with the reason.
    """

    graph: ModelGraph = field(repr=False)
    module: fx.GraphModule = field(repr=False)
    nodes: Mapping[nn.Module, tuple[Node, ...]] = field(repr=False)
    unsupported: tuple = ()


def _replacement(node: Node, fx_node: fx.Node) -> tuple[nn.Module | None, tuple, str | None]:
    """The module standing in for a functional node (``fx_node``: its copy, whose arguments are
    the copied graph's nodes), its tensor arguments, and why none can; no module but one tensor
    argument: the node is that argument itself."""
    args, kwargs = fx_node.args, dict(fx_node.kwargs)
    kind = node.kind.name
    if kind == "add":
        operands = [
            *zip(node.fx.args, args, strict=True),
            *((node.fx.kwargs[k], kwargs[k]) for k in ("other",) if k in kwargs),
        ]
        terms = [new for old, new in operands if isinstance(old, fx.Node) and old.name in node.inputs]
        constants = [old for old, _ in operands if not (isinstance(old, fx.Node) and old.name in node.inputs)]
        # Python's sum() starts from the constant 0, which adds nothing
        if (
            kwargs.get("alpha", 1) != 1
            or len(operands) != 2
            or not terms
            or any(isinstance(c, fx.Node) or c != 0 for c in constants)
        ):
            return None, (), "adds a constant or a scaled term, which has no relevance rule"
        return (Add() if len(terms) == 2 else None), tuple(terms), None  # 0 + t is t itself
    if kind == "activation" and node.op != "call_module" and node.activation is not None:
        kwargs.pop("inplace", None)  # the module works out of place (see _build for in-place calls)
        module = _ACTIVATION_MODULES[node.activation.name](*args[1:], **kwargs)
        if getattr(module, "inplace", False):
            module.inplace = False  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules
        return module, (args[0],), None
    if kind == "avg_pool" and node.fx.target in _POOL_MODULES:
        return _POOL_MODULES[node.fx.target](*args[1:], **kwargs), (args[0],), None
    if kind == "mean":
        # fx arguments of a traced call: whatever the model passed
        dim: Any = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim: Any = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dim is None or "dtype" in kwargs:
            return None, (), "is a mean over all axes (or with a dtype), which has no relevance rule"
        return Mean(dim, keepdim, node.label), (args[0],), None
    return None, (), None


def _in_place(node: Node) -> bool:
    """Whether a functional activation works in place (``F.relu_``, ``x.relu_()``,
    ``F.relu(x, inplace=True)``)."""
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.kind.name == "activation" and (
        target.endswith("_") or node.fx.kwargs.get("inplace") is True or any(a is True for a in node.fx.args[1:])
    )


def _later_nodes(graph: fx.Graph, node: fx.Node) -> frozenset:
    nodes = list(graph.nodes)
    return frozenset(nodes[nodes.index(node) + 1 :])


def _reason(node: Node) -> str | None:
    if node.kind.lrp == "unsupported":
        if node.kind.name == "attribute":
            return "uses a parameter or buffer outside its module, which no relevance rule covers"
        if node.op == "call_module":
            return f"is a {type(node.module).__name__} layer, which has no relevance rule"
        return "is an operation outside the table of layer kinds, which has no relevance rule"
    if node.kind.name == "gate" and (len(node.inputs) != 2 or len(node.fx.args) != 2):
        return "multiplies by a constant, which has no relevance rule (only products of two tensors do)"
    return None


def _build(graph: ModelGraph) -> Modular:
    copied = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    copied.output(copied.graph_copy(graph.module.graph, mapping))
    root: dict[str, Any] = {}
    owners: dict[nn.Module, list[Node]] = {}
    unsupported = []
    for node in graph.nodes:
        new = mapping.get(node.fx)  # None for the output node: graph_copy returns its value instead
        if node.op == "call_module":
            assert node.module is not None  # a module call's node names its module
            root[node.target] = node.module
            owners.setdefault(node.module, []).append(node)
        elif node.op == "get_attr":
            root[node.target] = _attribute(graph.module, node.target)
        module, terms, reason = (
            _replacement(node, new)
            if new is not None and node.op in ("call_function", "call_method")
            else (None, (), None)
        )
        reason = reason or _reason(node)
        if reason is not None:
            unsupported.append((node, reason))
        if new is None:
            continue
        if module is None and len(terms) == 1:
            new.replace_all_uses_with(terms[0])
            copied.erase_node(new)
        if module is None:
            continue
        name = f"_graph_{node.name}"
        root[name] = module
        owners.setdefault(module, []).append(node)
        later = _later_nodes(copied, new) if _in_place(node) else ()
        with copied.inserting_after(new):
            call = copied.call_module(name, tuple(terms))
        new.replace_all_uses_with(call)
        if later:  # what read the modified tensor after the in-place call reads the module's output
            terms[0].replace_all_uses_with(call, delete_user_cb=later.__contains__)
        copied.erase_node(new)
    gm = fx.GraphModule(root, copied, class_name="Modular")
    return Modular(graph, gm, {m: tuple(n) for m, n in owners.items()}, tuple(unsupported))


def _attribute(module: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner), name)


def modular(graph: ModelGraph) -> Modular:
    """The :class:`Modular` form of ``graph`` (built once per graph, kept with it)."""
    found = graph.__dict__.get("_modular")
    if found is None:
        found = _build(graph)
        object.__setattr__(graph, "_modular", found)
    return found


def of_model(model: nn.Module) -> Modular | None:
    """The :class:`Modular` form of ``model``'s graph, or None for a model fx cannot trace."""
    graph = model_graph(model)
    return None if graph is None else modular(graph)
