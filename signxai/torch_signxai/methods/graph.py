"""The model graph: one description of a model that LRP, the gradient family, Grad-CAM and the
Keras twin read.

A model is traced once with :mod:`torch.fx` at module level: PyTorch's own layers (``torch.nn``
modules) stay nodes of their own, user modules are traced through, and the functional tensor
operations between modules (residual ``+``, ``torch.cat``, ``*`` gates, ``flatten``/``view``,
``F.relu``, functional pooling, ...) become nodes too. Every node gets a :class:`Kind` from one
table (:data:`MODULE_KINDS`, :data:`FUNCTION_KINDS`, :data:`METHOD_KINDS`); elementwise
activations also get an :class:`Activation` from :data:`ACTIVATIONS`. Those tables are the one
place that says what a layer is.

Interface
---------
:func:`model_graph` ``(model) -> ModelGraph | None``
    The model's graph, cached per model (weakly) and rebuilt when its module tree (module objects,
    their names, types or training flags) changes (a private view's, see :mod:`.private`, is kept
    for the view's life: its tree never changes); traced one model at a time, with other threads'
    forward passes left alone while fx patches ``nn.Module``; None when fx cannot trace the model (data-dependent
    control flow, a model that is a single leaf layer, ...): such models run as plain chains in
    execution order, as before. The graph of a :class:`~..utils.NoSoftmaxWrapper` is the wrapped
    model's without its trailing softmax.
:class:`ModelGraph`
    ``nodes`` (topological order), ``module`` (the traced :class:`torch.fx.GraphModule`, sharing the
    model's submodules and parameters), ``input_layers`` and ``last_layers`` (frozensets of node
    names), ``graph[name]``, :meth:`ModelGraph.consumers`, :meth:`ModelGraph.by_module`.
:class:`Node`
    ``name`` (fx node name, unique), ``op`` (fx op), ``target`` (module path for modules, else the
    function or method name), ``kind``, ``inputs`` (names of the tensor-carrying input nodes, in
    argument order, repeated where an argument repeats), ``module`` (the ``nn.Module`` or None),
    ``activation`` (an :class:`Activation` or None), ``fused_into`` (for an activation: the kernel
    node the Keras twin fuses it into, or None), ``fx`` (the fx node, for arguments) and ``label``
    (module path or ``name (function)``, for messages).
:class:`Kind`
    ``name`` (one of :data:`KIND_NAMES`), ``lrp`` (how iNNvestigate's LRP maps relevance through
    it: ``'rule'`` the analyzer's rule, ``'batchnorm'`` its BatchNorm rule, ``'z'`` always the Z
    rule, ``'gradient'`` its gradient, ``'activation'`` decided by :attr:`Activation.lrp`,
    ``'none'`` no relevance (inputs, outputs, shape arithmetic), ``'unsupported'``), ``reshape``
    (whether it only rearranges or drops out in eval mode, so that a kernel layer behind it is
    still an input layer).
:class:`Activation`
    ``name``, ``relu_like`` (guided backprop and deconvnet modify it), ``keras_layer`` and
    ``keras_config`` (its Keras spelling, following keras.applications; None where no Keras layer
    that iNNvestigate analyses computes it), ``lrp`` (``'pass'`` for a Keras ``Activation`` layer,
    which iNNvestigate's LRP passes relevance through, ``'gradient'`` for any other layer).

Positions
---------
*Input layers* are iNNvestigate's (its ``is_input_layer``): kernel nodes (conv, transposed conv,
linear) whose tensor inputs all come from the model's input through reshape-like nodes only
(:attr:`Kind.reshape`). A padding, pooling or activation in front of a kernel layer makes it no
input layer. *Last layers* are the kernel nodes from which no other kernel node is reachable.

Fusion
------
An activation with a Keras ``Activation`` spelling fuses into the kernel layer before it (as a
Keras ``Conv2D(..., activation=...)``) when its input is that kernel node's output, possibly
through eval-mode identities (dropout, ``nn.Identity``), and that output has no other consumer.
"""

from __future__ import annotations

import builtins
import operator
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..layers import SAME_LAYERS
from ..utils import NoSoftmaxWrapper
from .private import is_view

__all__ = [
    "UnsupportedLayerError",
    "Add",
    "Mean",
    "Kind",
    "Activation",
    "Node",
    "ModelGraph",
    "model_graph",
    "activation_of_module",
    "kind_of_module",
    "KIND_NAMES",
    "KERNEL_KINDS",
    "ACTIVATIONS",
    "MODULE_KINDS",
    "FUNCTION_KINDS",
    "METHOD_KINDS",
    "activation_functions",
]


class UnsupportedLayerError(NotImplementedError):
    """A layer or operation a method has no rule for (named with its path in the model or its
    node in the model's graph, and why)."""


class Add(nn.Module):
    """The sum of its tensor inputs (out of place; broadcasting as ``+``): a tensor sum of the
    model's forward as a module of its own (see :mod:`.modular`)."""

    def forward(self, *terms: torch.Tensor) -> torch.Tensor:
        """``terms[0] + terms[1] + ...``."""
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


class Mean(nn.Module):
    """The mean over spatial axes, ``x.mean(dim, keepdim)`` (global average pooling), as a module
    of its own (see :mod:`.modular`).

    Parameters
    ----------
    dim : int or tuple of int
    keepdim : bool
    label : str
        The node, for the error about a mean over the batch or channel axis.
    """

    def __init__(self, dim: int | tuple[int, ...] | list[int], keepdim: bool = False, label: str = "") -> None:
        super().__init__()
        self.dim = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        self.keepdim, self.label = bool(keepdim), label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over :attr:`dim`; refused over the batch or channel axis."""
        axes = {d % x.ndim for d in self.dim}
        if x.ndim < 3 or axes & {0, 1}:
            raise UnsupportedLayerError(
                f"the mean at {self.label} runs over axes {sorted(axes)} of a rank-{x.ndim} tensor; "
                f"only a mean over spatial axes (2 and up: global average pooling) is a layer with a rule"
            )
        return x.mean(dim=self.dim, keepdim=self.keepdim)


@dataclass(frozen=True)
class Kind:
    """What a node is, for every family and for the twin (see the module docstring)."""

    name: str
    lrp: str
    reshape: bool = False


#: every kind, by name
KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            Kind("input", "none"),
            Kind("output", "none"),
            Kind("meta", "none"),  # shape arithmetic: x.size(0), x.shape, ...
            Kind("conv", "rule"),
            Kind("conv_transpose", "rule"),
            Kind("linear", "rule"),
            Kind("batchnorm", "batchnorm"),
            Kind("add", "z"),
            Kind("avg_pool", "z"),
            Kind("mean", "z"),  # mean over spatial axes (global average pooling)
            Kind("concat", "gradient"),
            Kind("gate", "gradient"),  # product of two tensors
            Kind("max_pool", "gradient"),
            Kind("upsample", "gradient"),
            Kind("pad", "gradient"),
            Kind("split", "gradient"),  # chunk/split into a tuple
            Kind("getitem", "gradient"),  # an item of a split, or a slice
            Kind("softmax", "gradient"),
            Kind("reshape", "gradient", reshape=True),
            Kind("identity", "gradient", reshape=True),  # dropout, nn.Identity: identities in eval mode
            Kind("activation", "activation"),
            Kind("attribute", "unsupported"),  # a parameter or buffer used outside its module
            Kind("unknown", "unsupported"),
        )
    }
)
KIND_NAMES = tuple(KINDS)
#: kinds of the layers that carry a kernel (the analyzer's rule applies to them)
KERNEL_KINDS = frozenset({"conv", "conv_transpose", "linear"})


@dataclass(frozen=True)
class Activation:
    """An elementwise activation and how each family and the twin treat it.

    Attributes
    ----------
    name : str
        ``'relu'``, ``'relu6'``, ``'silu'``, ``'sigmoid'``, ``'tanh'``, ``'leaky_relu'``, ``'elu'``,
        ``'gelu'``, ``'softplus'``, ``'hardswish'``, ``'hardsigmoid'``, ``'selu'``, ``'softsign'``,
        ``'prelu'``, ``'celu'``, ``'mish'`` or ``'hardtanh'``.
    relu_like : bool
        Whether guided backprop and deconvnet modify its backward (ReLU and ReLU6: iNNvestigate's
        guided mappings apply to every Keras ReLU activation and ReLU layer).
    keras_layer : str or None
        The Keras layer class the twin uses (``'Activation'``, ``'ReLU'``, ``'LeakyReLU'``,
        ``'ELU'``), or None when no Keras layer that iNNvestigate analyses computes it.
    keras_config : Mapping
        That layer's arguments, e.g. ``{'activation': 'swish'}`` or ``{'max_value': 6.0}``.
    """

    name: str
    relu_like: bool
    keras_layer: str | None
    keras_config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lrp(self) -> str:
        """``'pass'``: relevance passes unchanged (a Keras ``Activation`` layer, or one fused into
        a kernel layer); ``'gradient'``: iNNvestigate's default mapping, its gradient (any other
        Keras layer, e.g. ``ReLU(6.)``, ``LeakyReLU``)."""
        return "pass" if self.keras_layer == "Activation" else "gradient"


def _keras_activation(name: str) -> Callable[..., tuple]:
    return lambda **_: ("Activation", {"activation": name})


def _elu(alpha: float = 1.0, **_: Any) -> tuple:
    return ("Activation", {"activation": "elu"}) if alpha == 1.0 else ("ELU", {"alpha": float(alpha)})


def _gelu(approximate: str = "none", **_: Any) -> tuple:
    return ("Activation", {"activation": "gelu"}) if approximate == "none" else (None, {})


def _softplus(beta: float = 1.0, **_: Any) -> tuple:
    return ("Activation", {"activation": "softplus"}) if beta == 1.0 else (None, {})


#: activation name -> (relu_like, Keras spelling from the activation's parameters), following
#: keras.applications: ``Activation('relu')`` (ResNet, DenseNet), ``ReLU(6.)`` (MobileNetV2),
#: ``Activation('swish')`` (EfficientNet); MobileNetV3 builds hard-swish from ``ReLU(6.)`` and
#: operator layers iNNvestigate rejects, so hard-swish and hard-sigmoid have no spelling (their
#: relevance is their gradient, as that composite's would be)
ACTIVATIONS: Mapping[str, tuple[bool, Callable[..., tuple]]] = MappingProxyType(
    {
        "relu": (True, _keras_activation("relu")),
        "relu6": (True, lambda **_: ("ReLU", {"max_value": 6.0})),
        "silu": (False, _keras_activation("swish")),
        "sigmoid": (False, _keras_activation("sigmoid")),
        "tanh": (False, _keras_activation("tanh")),
        "leaky_relu": (False, lambda negative_slope=0.01, **_: ("LeakyReLU", {"alpha": float(negative_slope)})),
        "elu": (False, _elu),
        "gelu": (False, _gelu),
        "softplus": (False, _softplus),
        "hardswish": (False, lambda **_: (None, {})),
        "hardsigmoid": (False, lambda **_: (None, {})),
        "selu": (False, _keras_activation("selu")),
        "softsign": (False, _keras_activation("softsign")),
        "prelu": (False, lambda **_: (None, {})),
        "celu": (False, lambda **_: (None, {})),
        "mish": (False, lambda **_: (None, {})),
        "hardtanh": (False, lambda **_: (None, {})),
    }
)


def make_activation(name: str, **params: Any) -> Activation:
    """The :class:`Activation` ``name`` with its parameters (``negative_slope``, ``alpha``, ...)."""
    relu_like, spelling = ACTIVATIONS[name]
    layer, config = spelling(**params)
    return Activation(name, relu_like, layer, MappingProxyType(dict(config)))


_KIND = KINDS.__getitem__

#: module classes -> kind (subclasses match too; the most derived class listed wins)
MODULE_KINDS: Mapping[type, Kind] = MappingProxyType(
    {
        **{cls: _KIND("conv") for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
        **{cls: _KIND("conv_transpose") for cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)},
        nn.Linear: _KIND("linear"),
        **{cls: _KIND("batchnorm") for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
        **{
            cls: _KIND("avg_pool")
            for cls in (
                nn.AvgPool1d,
                nn.AvgPool2d,
                nn.AvgPool3d,
                nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d,
                nn.AdaptiveAvgPool3d,
            )
        },
        **{
            cls: _KIND("max_pool")
            for cls in (
                nn.MaxPool1d,
                nn.MaxPool2d,
                nn.MaxPool3d,
                nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d,
                nn.AdaptiveMaxPool3d,
            )
        },
        **{cls: _KIND("upsample") for cls in (nn.Upsample, nn.UpsamplingNearest2d)},
        **{cls: _KIND("pad") for cls in (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)},
        **{cls: _KIND("reshape") for cls in (nn.Flatten, nn.Unflatten)},
        **{
            cls: _KIND("identity")
            for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
        },
        **{cls: _KIND("softmax") for cls in (nn.Softmax, nn.LogSoftmax)},
        Add: _KIND("add"),
        Mean: _KIND("mean"),
        **{
            cls: _KIND("activation")
            for cls in (
                nn.ReLU,
                nn.ReLU6,
                nn.SiLU,
                nn.Sigmoid,
                nn.Tanh,
                nn.LeakyReLU,
                nn.ELU,
                nn.GELU,
                nn.Softplus,
                nn.Hardswish,
                nn.Hardsigmoid,
                nn.SELU,
                nn.Softsign,
                nn.PReLU,
                nn.CELU,
                nn.Mish,
                nn.Hardtanh,
            )
        },
    }
)

#: functions (``call_function`` targets) -> kind
FUNCTION_KINDS: Mapping[Any, Kind] = MappingProxyType(
    {
        **{fn: _KIND("add") for fn in (operator.add, operator.iadd, torch.add)},
        **{fn: _KIND("gate") for fn in (operator.mul, operator.imul, torch.mul)},
        **{fn: _KIND("concat") for fn in (torch.cat, torch.concat, torch.concatenate)},
        **{
            fn: _KIND("reshape")
            for fn in (torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze)
        },
        **{fn: _KIND("split") for fn in (torch.chunk, torch.split)},
        operator.getitem: _KIND("getitem"),
        builtins.getattr: _KIND("meta"),
        **{
            fn: _KIND("avg_pool")
            for fn in (
                F.avg_pool1d,
                F.avg_pool2d,
                F.avg_pool3d,
                F.adaptive_avg_pool1d,
                F.adaptive_avg_pool2d,
                F.adaptive_avg_pool3d,
            )
        },
        **{
            fn: _KIND("max_pool")
            for fn in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d)
        },
        torch.mean: _KIND("mean"),
        F.interpolate: _KIND("upsample"),
        F.pad: _KIND("pad"),
        **{fn: _KIND("identity") for fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)},
        **{fn: _KIND("softmax") for fn in (F.softmax, torch.softmax, F.log_softmax, torch.log_softmax)},
        **{
            fn: _KIND("activation")
            for fn in (
                F.relu,
                torch.relu,
                F.relu_,
                torch.relu_,
                F.relu6,
                F.silu,
                torch.sigmoid,
                F.sigmoid,
                torch.tanh,
                F.tanh,
                F.leaky_relu,
                F.elu,
                F.gelu,
                F.softplus,
                F.hardswish,
                F.hardsigmoid,
            )
        },
    }
)

#: tensor methods (``call_method`` targets) -> kind
METHOD_KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        **{name: _KIND("add") for name in ("add", "add_", "__add__", "__iadd__")},
        **{name: _KIND("gate") for name in ("mul", "mul_")},
        **{
            name: _KIND("reshape")
            for name in ("flatten", "view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "contiguous")
        },
        **{name: _KIND("split") for name in ("chunk", "split")},
        **{name: _KIND("meta") for name in ("size", "dim", "numel")},
        "mean": _KIND("mean"),
        **{name: _KIND("softmax") for name in ("softmax", "log_softmax")},
        **{name: _KIND("activation") for name in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_")},
    }
)

#: activation modules -> activation name and the attributes that are its parameters
_MODULE_ACTIVATIONS: Mapping[type, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {
        nn.ReLU: ("relu", ()),
        nn.ReLU6: ("relu6", ()),
        nn.SiLU: ("silu", ()),
        nn.Sigmoid: ("sigmoid", ()),
        nn.Tanh: ("tanh", ()),
        nn.LeakyReLU: ("leaky_relu", ("negative_slope",)),
        nn.ELU: ("elu", ("alpha",)),
        nn.GELU: ("gelu", ("approximate",)),
        nn.Softplus: ("softplus", ("beta",)),
        nn.Hardswish: ("hardswish", ()),
        nn.Hardsigmoid: ("hardsigmoid", ()),
        nn.SELU: ("selu", ()),
        nn.Softsign: ("softsign", ()),
        nn.PReLU: ("prelu", ()),
        nn.CELU: ("celu", ()),
        nn.Mish: ("mish", ()),
        nn.Hardtanh: ("hardtanh", ()),
    }
)
#: activation functions and methods -> activation name and (position, keyword) of its parameter
_CALL_ACTIVATIONS: Mapping[Any, tuple[str, tuple[int, str] | None]] = MappingProxyType(
    {
        **{fn: ("relu", None) for fn in (F.relu, torch.relu, F.relu_, torch.relu_, "relu", "relu_")},
        F.relu6: ("relu6", None),
        F.silu: ("silu", None),
        **{fn: ("sigmoid", None) for fn in (torch.sigmoid, F.sigmoid, "sigmoid", "sigmoid_")},
        **{fn: ("tanh", None) for fn in (torch.tanh, F.tanh, "tanh", "tanh_")},
        F.leaky_relu: ("leaky_relu", (1, "negative_slope")),
        F.elu: ("elu", (1, "alpha")),
        F.gelu: ("gelu", (1, "approximate")),
        F.softplus: ("softplus", (1, "beta")),
        F.hardswish: ("hardswish", None),
        F.hardsigmoid: ("hardsigmoid", None),
    }
)
#: functions of other packages, by (module, name): torchvision's stochastic depth is an identity
#: in eval mode
_EXTERNAL_KINDS = MappingProxyType({("torchvision.ops.stochastic_depth", "stochastic_depth"): _KIND("identity")})


def activation_functions(relu_like: bool | None = None) -> frozenset:
    """The activation functions and tensor methods (as ``torch.Tensor`` attributes, the way
    ``__torch_function__`` sees them) of the table; only the ReLU-like ones (``relu_like=True``)
    or only the others (``False``)."""
    found = set()
    for target, (name, _) in _CALL_ACTIVATIONS.items():
        if relu_like is None or ACTIVATIONS[name][0] == relu_like:
            found.add(getattr(torch.Tensor, target) if isinstance(target, str) else target)
    return frozenset(found)


def kind_of_module(module: nn.Module) -> Kind:
    """The kind of a module (``'unknown'`` for a class outside :data:`MODULE_KINDS`)."""
    for cls in type(module).__mro__:
        if cls in MODULE_KINDS:
            return MODULE_KINDS[cls]
    return KINDS["unknown"]


def activation_of_module(module: nn.Module) -> Activation | None:
    """The :class:`Activation` of an activation module, or None for any other module."""
    for cls in type(module).__mro__:
        if cls in _MODULE_ACTIVATIONS:
            name, attributes = _MODULE_ACTIVATIONS[cls]
            return make_activation(name, **{a: getattr(module, a) for a in attributes})
    return None


def _kind_of_call(node: fx.Node) -> Kind:
    if node.op == "call_method":
        return METHOD_KINDS.get(cast(str, node.target), KINDS["unknown"])  # a method name
    target = node.target
    try:
        if target in FUNCTION_KINDS:
            return FUNCTION_KINDS[target]
    except TypeError:  # an unhashable target
        return KINDS["unknown"]
    key = (getattr(target, "__module__", ""), getattr(target, "__name__", ""))
    return _EXTERNAL_KINDS.get(key, KINDS["unknown"])


def _activation_of_call(node: fx.Node) -> Activation | None:
    entry = _CALL_ACTIVATIONS.get(node.target)
    if entry is None:
        return None
    name, param = entry
    params = {}
    if param is not None:
        position, keyword = param
        if len(node.args) > position:
            params[keyword] = node.args[position]
        elif keyword in node.kwargs:
            params[keyword] = node.kwargs[keyword]
    return make_activation(name, **params)


@dataclass(frozen=True, eq=False)
class Node:
    """One node of a :class:`ModelGraph` (see the module docstring)."""

    name: str
    op: str
    target: Any
    kind: Kind
    inputs: tuple[str, ...]
    module: nn.Module | None = None
    activation: Activation | None = None
    fused_into: str | None = None
    fx: fx.Node = field(kw_only=True, repr=False)

    @property
    def label(self) -> str:
        """The node for messages: its module path, or its fx name and function."""
        if self.op == "call_module":
            return f"'{self.target}'"
        what = self.target if isinstance(self.target, str) else getattr(self.target, "__name__", self.target)
        return f"'{self.name}' ({what})"


@dataclass(frozen=True, eq=False)
class ModelGraph:
    """A model as a graph of modules and functional operations (see the module docstring)."""

    nodes: tuple[Node, ...]
    module: fx.GraphModule = field(repr=False)
    input_layers: frozenset = frozenset()
    last_layers: frozenset = frozenset()
    _index: dict[str, Node] = field(init=False, repr=False)
    _users: dict[str, tuple[Node, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Index the nodes by name and by the nodes they feed."""
        index = {node.name: node for node in self.nodes}
        users: dict[str, list[Node]] = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for name in dict.fromkeys(node.inputs):
                users[name].append(node)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_users", {name: tuple(nodes) for name, nodes in users.items()})

    def __getitem__(self, name: str) -> Node:
        """The node named ``name``."""
        return self._index[name]

    def consumers(self, name: str) -> tuple[Node, ...]:
        """The nodes that take node ``name``'s output as an input (each once)."""
        return self._users[name]

    def by_module(self, module: nn.Module) -> tuple[Node, ...]:
        """The nodes that call ``module`` (a module may be called more than once)."""
        return tuple(node for node in self.nodes if node.module is module)


def _tensor_inputs(node: fx.Node, meta: set) -> tuple[str, ...]:
    names: list[str] = []

    def collect(n: fx.Node) -> fx.Node:
        names.append(n.name)
        return n

    fx.node.map_arg((node.args, node.kwargs), collect)
    return tuple(name for name in names if name not in meta)


def _strip_softmax(traced: fx.Graph, modules: Mapping[str, nn.Module]) -> None:
    """Make a trailing softmax's input the graph's output (what :class:`~..utils.NoSoftmaxWrapper`
    returns)."""
    output = next(node for node in traced.nodes if node.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node) or not last.args:
        return
    if last.op == "call_module":
        kind = kind_of_module(modules[cast(str, last.target)])  # a module path
    elif last.op in ("call_function", "call_method"):
        kind = _kind_of_call(last)
    else:
        return
    if kind.name == "softmax":
        output.args = (last.args[0],)
        if not last.users:
            traced.erase_node(last)


_TRACE_LOCK = threading.Lock()


class _Tracer(fx.Tracer):
    """fx's tracer, safe while other threads run models: tracing patches ``nn.Module.__call__`` and
    ``__getattr__`` for the whole process, and those patches send every module call to the tracer;
    here calls from other threads run the module as it is (the patches are then transparent to
    them). Traces run one at a time (one trace's patches would capture another's calls)."""

    _thread: int | None = None

    def trace(self, root: nn.Module | Callable[..., Any], concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """``fx.Tracer.trace``, one trace at a time, recording the tracing thread."""
        with _TRACE_LOCK:
            self._thread = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._thread = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """fx's leaves (torch.nn's layers), and the library's own convolutions and poolings
        (:mod:`signxai.torch_signxai.layers`), which are layers of the kinds table too."""
        return isinstance(m, SAME_LAYERS) or super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``fx.Tracer.call_module`` in the tracing thread; other threads run the module."""
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        """``fx.Tracer.getattr`` in the tracing thread; other threads read the attribute."""
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _build(model: nn.Module) -> ModelGraph | None:
    root = model.wrapped if isinstance(model, NoSoftmaxWrapper) else model
    if next(root.children(), None) is None:
        return None  # a single layer: fx would trace its functional body
    modules = dict(root.named_modules())
    try:
        traced = _Tracer().trace(root)
        if root is not model:
            _strip_softmax(traced, modules)
        module = fx.GraphModule(root, traced, class_name=type(root).__name__)
    except Exception:  # data-dependent control flow, untraceable constructs: run as a chain
        return None
    meta: set = set()
    nodes: list[Node] = []
    for fx_node in module.graph.nodes:
        submodule, activation = None, None
        if fx_node.op == "placeholder":
            kind = KINDS["input"]
        elif fx_node.op == "output":
            kind = KINDS["output"]
        elif fx_node.op == "get_attr":
            kind = KINDS["attribute"]
        elif fx_node.op == "call_module":
            submodule = modules[fx_node.target]
            kind, activation = kind_of_module(submodule), activation_of_module(submodule)
        else:
            kind = _kind_of_call(fx_node)
            activation = _activation_of_call(fx_node) if kind.name == "activation" else None
        inputs = _tensor_inputs(fx_node, meta)
        if kind.name == "meta" or (
            fx_node.op not in ("placeholder", "get_attr", "output") and not inputs and fx_node.all_input_nodes
        ):
            meta.add(fx_node.name)
            kind = KINDS["meta"]
        nodes.append(Node(fx_node.name, fx_node.op, fx_node.target, kind, inputs, submodule, activation, fx=fx_node))
    nodes = _with_fusion(nodes)
    return ModelGraph(tuple(nodes), module, _input_layers(nodes), _last_layers(nodes))


def _with_fusion(nodes: list[Node]) -> list[Node]:
    """Set :attr:`Node.fused_into` on activations the twin fuses into a kernel layer."""
    index = {node.name: node for node in nodes}
    users: dict[str, int] = {node.name: 0 for node in nodes}
    for node in nodes:
        for name in set(node.inputs):
            users[name] += 1
    fused: dict[str, str] = {}
    for node in nodes:
        if node.activation is None or node.activation.keras_layer != "Activation" or len(node.inputs) != 1:
            continue
        source = index[node.inputs[0]]
        while source.kind.name == "identity" and len(source.inputs) == 1 and users[source.name] == 1:
            source = index[source.inputs[0]]
        if source.kind.name in KERNEL_KINDS and users[source.name] == 1 and source.name not in fused.values():
            fused[node.name] = source.name
    return [
        Node(n.name, n.op, n.target, n.kind, n.inputs, n.module, n.activation, fused.get(n.name), fx=n.fx)
        if n.name in fused
        else n
        for n in nodes
    ]


def _input_layers(nodes: list[Node]) -> frozenset:
    index = {node.name: node for node in nodes}

    def from_input(name: str) -> bool:
        node = index[name]
        if node.kind.name == "input":
            return True
        return node.kind.reshape and bool(node.inputs) and all(from_input(i) for i in node.inputs)

    return frozenset(
        node.name
        for node in nodes
        if node.kind.name in KERNEL_KINDS and node.inputs and all(from_input(i) for i in node.inputs)
    )


def _last_layers(nodes: list[Node]) -> frozenset:
    """Kernel nodes with no kernel node downstream (walking the nodes backwards once)."""
    kernels = {node.name for node in nodes if node.kind.name in KERNEL_KINDS}
    users: dict[str, list[str]] = {node.name: [] for node in nodes}
    for node in nodes:
        for name in node.inputs:
            users[name].append(node.name)
    feeds_kernel: set = set()  # nodes with a kernel node downstream
    for node in reversed(nodes):
        if any(user in kernels or user in feeds_kernel for user in users[node.name]):
            feeds_kernel.add(node.name)
    return frozenset(kernels - feeds_kernel)


def _signature(model: nn.Module) -> tuple:
    return tuple((name, id(module), type(module), module.training) for name, module in model.named_modules())


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def model_graph(model: nn.Module) -> ModelGraph | None:
    """The :class:`ModelGraph` of ``model``, or None when fx cannot trace it (see the module
    docstring); cached per model until its module tree changes."""
    with _CACHE_LOCK:
        cached = _CACHE.get(model)
    if cached is not None and is_view(model):
        return cached[1]  # a private view's module tree never changes
    signature = _signature(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    graph = _build(model)
    with _CACHE_LOCK:
        _CACHE[model] = (signature, graph)
    return graph
