"""Keras twins of PyTorch models, for comparing maps with iNNvestigate.

:func:`to_keras` turns a PyTorch model into a tf.keras (Keras 2) functional
model that is channels-last, built only from standard Keras layers
(iNNvestigate rejects ``Lambda`` and ``TFOpLambda`` layers) and carries the
same weights. The model is traced once with :func:`torch.fx.symbolic_trace`
and converted node by node, so residual connections, concatenations,
squeeze-and-excitation gates and every other graph of supported layers and
functional operations (``+``, ``torch.cat``, ``*``, ``torch.flatten``,
``view``/``reshape``/``permute``/``transpose``, ``F.relu``, ``x.mean((2, 3))``,
...) are accepted. Every conversion checks itself by running both models on
seeded random inputs, layer by layer.

The twin reproduces the model's eval-mode semantics (Dropout removed,
BatchNorm with running statistics) whatever mode the model is in, and leaves
the model itself untouched.

Supported PyTorch layers and operations, and their Keras spelling
------------------------------------------------------------------
Where a torch layer has several Keras spellings the twin follows
keras.applications, because the spelling decides iNNvestigate's reference
(an ``Activation`` layer passes relevance on, a ``ReLU`` layer takes its
gradient):

==========================================  ===========================================
Conv1d/Conv2d, ``groups=1``                 Conv1D/Conv2D
Conv1d/Conv2d, ``groups == in_channels``    DepthwiseConv1D/2D (``depth_multiplier``)
Conv1d/Conv2d, other ``groups``             Conv1D/Conv2D(``groups=g``)
Conv1dSame/Conv2dSame (signxai's layers)   the same, ``padding='same'``
ConvTranspose1d/2d (``groups=1``)           Conv1DTranspose/Conv2DTranspose, Cropping
Linear                                      Dense
BatchNorm1d/2d                              BatchNormalization (``training=False``,
                                            PyTorch's eps; ``fused=False`` below 1.001e-5)
ReLU, ``F.relu``, ``torch.relu``            ``Activation('relu')`` (fused into a
                                            directly preceding conv/dense layer)
ReLU6, ``F.relu6``, Hardtanh(0, 6)          ``ReLU(6.)``
SiLU, ``F.silu``                            ``Activation('swish')``
Sigmoid, Tanh, ELU(alpha=1)                 ``Activation`` (fused where possible)
LeakyReLU, ELU                              LeakyReLU, ELU
``+`` / ``torch.add`` of two tensors        Add
``*`` / ``torch.mul`` of two tensors        Multiply (broadcasting, e.g. a gate)
``torch.cat``                               Concatenate (dim 1 of NCHW is axis -1)
MaxPool/AvgPool 1d/2d (MaxPool ceil_mode)   MaxPooling/AveragePooling (+ ZeroPadding)
Max/AvgPool1dSame, Max/AvgPool2dSame        MaxPooling/AveragePooling, ``padding='same'``
AdaptiveAvgPool (module or functional),     GlobalAveragePooling (size 1),
``x.mean`` over all spatial axes            AveragePooling (a divisor), nothing
                                            (the input size)
Upsample / ``F.interpolate``, nearest       UpSampling1D/2D (integer factors)
ZeroPad, ConstantPad(0), ``F.pad``          ZeroPadding1D/2D
Flatten, ``view``/``reshape``, ``permute``  Flatten, Reshape, Permute
Dropout*, Identity, ``contiguous``          nothing
a final Softmax                             removed (or ``Activation('softmax')``)
==========================================  ===========================================

Keras 2 and TensorFlow 2.14 facts the twin relies on
----------------------------------------------------
* TF's ``'same'`` padding puts the extra padding at the end, so at stride 2 it
  is often not PyTorch's symmetric padding; the twin then uses an explicit
  ``ZeroPadding`` layer and ``'valid'``.
* iNNvestigate finds input layers by graph position, skipping only
  Flatten/Permute/Reshape layers: any other layer in front of a first
  conv/dense layer makes it silently drop ``input_layer_rule`` there. Such
  twins report ``input_layer_hidden=True``.
* Keras ``Flatten`` flattens NHWC; the first Dense layer after it gets its
  input weights permuted so that it sees PyTorch's NCHW feature order. A
  ``permute``/``transpose`` needs no Keras layer: the twin tracks which torch
  axis each Keras axis holds and adds a ``Permute`` only where a layer needs
  channels-last input or a ``Reshape`` needs PyTorch's order.
* ``BatchNormalization`` is called with ``training=False`` and built with Keras'
  default ``fused=None`` (the fused kernel for 4-d float32 inputs, as in a Keras
  user's own model, so that Keras -> PyTorch -> Keras is bitwise), except where
  PyTorch's eps is below 1.001e-5, the smallest cuDNN's fused kernel takes (older
  Keras raised a smaller one to it): there ``fused=False``, which computes with
  PyTorch's eps on any device. On the CPU, Keras 2.14's fused and unfused kernels
  agree to rounding for eps from 1e-7 to 1e-3.
* Keras cannot build a convolution with both strides > 1 and
  dilation_rate > 1.
* In graph mode a grouped ``Conv2D`` can be differentiated only when its
  weights enter through initializers and one gradient through it is built
  before any session runs (otherwise TensorFlow fails with "Connecting to
  invalid output 1 of source node"). The twin therefore gives every layer its
  weights through ``Constant`` initializers and builds that gradient.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import tensorflow as tf
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from signxai.torch_signxai.layers import SAME_CONVS, SAME_POOLS
from signxai.torch_signxai.methods.graph import (
    Activation,
    ModelGraph,
    Node,
    make_activation,
    model_graph,
)
from signxai.torch_signxai.methods.lrp.padding import keras_padding

from .compare import relative_error

__all__ = [
    "Twin",
    "TwinMismatchError",
    "UnsupportedLayerError",
    "keras_floatx",
    "to_channels_first",
    "to_channels_last",
    "to_keras",
]

#: the smallest BatchNorm epsilon cuDNN's fused kernel takes (see the module docstring)
_FUSED_MIN_EPSILON = 1.001e-5

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_SHAPE_BATCH = 2
_INPUT = "input"
_RESHAPE_LAYERS = (tf.keras.layers.Flatten, tf.keras.layers.Permute, tf.keras.layers.Reshape)


class UnsupportedLayerError(TypeError):
    """A PyTorch layer or operation that the Keras twin cannot reproduce.

    The message names the module type (or the operation and the module whose
    ``forward`` calls it), its path in the model, and why.
    """


class TwinMismatchError(AssertionError):
    """The Keras twin's forward pass does not agree with the PyTorch model's.

    The message names the first Keras layer (and its PyTorch counterpart) whose
    activations diverge, and the relative errors.
    """


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """Move the channel axis of a batch to the end.

    Parameters
    ----------
    x : numpy.ndarray
        Array of shape ``(N, C, ...)``.

    Returns
    -------
    numpy.ndarray
        Contiguous array of shape ``(N, ..., C)``; a 2-D array is returned
        unchanged in layout.
    """
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """Move the channel axis of a batch from the end to axis 1.

    Parameters
    ----------
    x : numpy.ndarray
        Array of shape ``(N, ..., C)``.

    Returns
    -------
    numpy.ndarray
        Contiguous array of shape ``(N, C, ...)``; the inverse of
        :func:`to_channels_last`.
    """
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


@contextlib.contextmanager
def keras_floatx(dtype: str) -> Iterator[None]:
    """Set Keras' floatx to ``dtype`` for the ``with`` block, then restore it (Keras casts
    floating inputs of ``predict`` to floatx, and iNNvestigate builds its constants in it)."""
    previous = tf.keras.backend.floatx()
    tf.keras.backend.set_floatx(dtype)
    try:
        yield
    finally:
        tf.keras.backend.set_floatx(previous)


def _channels_last(rank: int) -> tuple[int, ...]:
    """The layout of a channels-last tensor of ``rank`` non-batch axes.

    A layout lists, for each Keras axis after the batch axis, the PyTorch axis
    (batch axis dropped) it holds.
    """
    return (*range(1, rank), 0) if rank > 1 else tuple(range(rank))


@dataclass
class _LayerSpec:
    """Everything needed to build one Keras layer of the twin again.

    Attributes
    ----------
    cls : type
        The Keras layer class.
    config : dict
        Constructor keyword arguments, including ``name`` (not ``dtype``).
    inputs : tuple of str
        Names of the Keras layers (or ``'input'``) whose outputs it takes.
    initial : dict of str to numpy.ndarray
        Weights in Keras order, by initializer argument (``kernel_initializer``,
        ...); they enter the layer as ``Constant`` initializers.
    call_kwargs : dict
        Keyword arguments of the layer call (``training=False`` for BN).
    """

    cls: type
    config: dict[str, Any]
    inputs: tuple[str, ...]
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    call_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Checkpoint:
    """A Keras layer whose output must equal a PyTorch node's output.

    Attributes
    ----------
    node : str
        Name of the torch.fx node.
    layer : str
        Name of the Keras layer.
    label : str
        The PyTorch module path(s) or operation, for error messages.
    layout : tuple of int
        The PyTorch axis each Keras axis holds (batch axis dropped).
    perm : numpy.ndarray or None
        For flat tensors after a Flatten: Keras feature ``k`` holds PyTorch
        feature ``perm[k]``. None when no features are permuted.
    """

    node: str
    layer: str
    label: str
    layout: tuple[int, ...]
    perm: np.ndarray | None = None


@dataclass
class Twin:
    """A Keras twin of a PyTorch model.

    Attributes
    ----------
    keras_model : tf.keras.Model
        Channels-last functional model with the PyTorch model's weights. Build
        analyzers on :meth:`fresh` models rather than on this one when several
        analyzers are needed (iNNvestigate silently drops ``input_layer_rule``
        on layers that were already called on other tensors).
    layer_names : dict of str to str
        PyTorch module path (e.g. ``'features.0'``) to the Keras layer name
        whose output equals that module's output. A conv/linear layer and the
        activation fused into it both map to the fused Keras layer.
    input_layer_hidden : bool
        True when a layer other than Flatten/Permute/Reshape sits between the
        Keras input and a first conv/dense layer (e.g. an explicit
        ``ZeroPadding2D``), so iNNvestigate silently drops ``input_layer_rule``
        there.
    hidden_reason : str or None
        Why the input layer is hidden, or None.
    dropped : tuple of str
        PyTorch module paths with no Keras layer (Dropout, Identity, an
        identity adaptive pooling, a removed Softmax).
    input_shape : tuple of int
        The PyTorch input shape, channels-first, without the batch axis.
    dtype : str
        ``'float32'`` or ``'float64'``: the dtype of every Keras layer.
    """

    keras_model: tf.keras.Model
    layer_names: dict[str, str]
    input_layer_hidden: bool
    hidden_reason: str | None
    dropped: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()
    dtype: str = "float32"
    _specs: list[_LayerSpec] = field(default_factory=list, repr=False)
    _checkpoints: list[_Checkpoint] = field(default_factory=list, repr=False)
    _output: str = field(default=_INPUT, repr=False)
    _graph_module: fx.GraphModule | None = field(default=None, repr=False)

    def fresh(self) -> tf.keras.Model:
        """Build a new Keras model with the twin's weights.

        Returns
        -------
        tf.keras.Model
            A model made of new layer objects that were never called before,
            with the same layer names and weights as :attr:`keras_model`.
        """
        return _build(self._specs, self.input_shape, self.dtype, self._output)

    @contextlib.contextmanager
    def floatx(self) -> Iterator[None]:
        """Set Keras' floatx to the twin's dtype for the ``with`` block, then restore it.

        iNNvestigate builds its constants in floatx, so a float64 twin must be
        analysed inside this block (building the twin itself needs no floatx).
        """
        with keras_floatx(self.dtype):
            yield

    def verify(
        self,
        keras_model: tf.keras.Model | None = None,
        *,
        rtol: float = 1e-5,
        seed: int = 0,
        batch: int = 4,
    ) -> float:
        """Check a Keras model against the PyTorch model on random inputs.

        Parameters
        ----------
        keras_model : tf.keras.Model, optional
            The model to check, by default :attr:`keras_model`; it must have
            the twin's layer names (e.g. a :meth:`fresh` model).
        rtol : float
            Largest accepted error, relative to the largest absolute PyTorch
            output.
        seed : int
            Seed of the standard-normal inputs.
        batch : int
            Number of random inputs.

        Returns
        -------
        float
            The relative error of the output (of the Keras output layer, which
            is compared with the PyTorch model's logits when a final softmax
            was removed).

        Raises
        ------
        TwinMismatchError
            When the output error exceeds ``rtol``; the message names the
            first layer whose activations diverge by more than ``rtol``.
        """
        keras_model = self.keras_model if keras_model is None else keras_model
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, *self.input_shape)).astype(self.dtype)
        assert self._graph_module is not None, "verify needs the twin as to_keras builds it"
        torch_acts = _record(_eval_copy(self._graph_module, self.dtype), torch.from_numpy(x))
        x = to_channels_last(x)
        output = keras_model.predict(x, verbose=0)
        final = next(c for c in reversed(self._checkpoints) if c.layer == self._output)
        error = _checkpoint_error(final, output, torch_acts)
        if error > rtol:
            layer_errors = (
                (c, _checkpoint_error(c, _layer_output(keras_model, c.layer, x), torch_acts)) for c in self._checkpoints
            )
            first, first_error = next((c, e) for c, e in layer_errors if e > rtol)
            raise TwinMismatchError(
                f"Keras twin output differs from PyTorch by {error:.3g} (relative to the "
                f"largest |output|, rtol {rtol:g}); activations first diverge at Keras layer "
                f"'{first.layer}' (PyTorch '{first.label}') with relative error {first_error:.3g}"
            )
        return error


def to_keras(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    keep_softmax: bool = False,
    dtype: str = "float32",
    check: bool = True,
    rtol: float = 1e-5,
    seed: int = 0,
) -> Twin:
    """Convert a PyTorch model into a Keras twin with identical weights.

    Parameters
    ----------
    model : torch.nn.Module
        A traceable graph of supported layers and operations (see the module
        docstring) with one input and one output tensor. It is neither
        modified nor switched between train and eval mode; the twin
        reproduces its eval-mode behaviour.
    input_shape : tuple of int
        PyTorch input shape without the batch axis, channels first, e.g.
        ``(3, 32, 32)``.
    keep_softmax : bool
        Keep a final Softmax as a Keras ``Activation('softmax')`` layer; by
        default it is removed, so the twin outputs logits.
    dtype : {'float32', 'float64'}
        dtype of every Keras layer and of the weights.
    check : bool
        Run :meth:`Twin.verify` before returning.
    rtol : float
        Tolerance of the check, relative to the largest absolute output.
    seed : int
        Seed of the check's random inputs.

    Returns
    -------
    Twin
        The Keras model, the layer-name mapping and the input-layer flag.

    Raises
    ------
    UnsupportedLayerError
        For a layer, operation or topology the twin cannot reproduce.
    TwinMismatchError
        When ``check`` is set and the outputs disagree.
    ValueError
        For an unknown ``dtype`` or an input shape the model rejects.
    """
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    input_shape = tuple(int(d) for d in input_shape)
    graph = _graph(model)
    graph_module = graph.module
    reference = _eval_copy(graph_module, dtype)
    sample = torch.zeros((_SHAPE_BATCH, *input_shape), dtype=_TORCH_DTYPES[dtype])
    try:
        outputs = _record(reference, sample)
    except Exception as error:
        raise ValueError(f"{type(model).__name__} does not accept inputs of shape {input_shape}: {error}") from error
    converter = _Converter(graph, reference, outputs, keep_softmax)
    output = converter.convert()
    if not converter.specs:
        raise UnsupportedLayerError(f"{type(model).__name__} (the model itself) has no layer with a Keras counterpart")
    hidden_reason = _hidden_reason(converter.specs)
    twin = Twin(
        keras_model=_build(converter.specs, input_shape, dtype, output),
        layer_names=converter.layer_names,
        input_layer_hidden=hidden_reason is not None,
        hidden_reason=hidden_reason,
        dropped=tuple(converter.dropped),
        input_shape=input_shape,
        dtype=dtype,
        _specs=converter.specs,
        _checkpoints=converter.checkpoints,
        _output=output,
        _graph_module=graph_module,
    )
    if check:
        twin.verify(rtol=rtol, seed=seed)
    return twin


# ----------------------------------------------------------------------------
# Tracing and running the PyTorch side


def _graph(model: nn.Module) -> ModelGraph:
    """The model's graph, or an UnsupportedLayerError when torch.fx cannot trace it."""
    graph = model_graph(model)
    if graph is None:
        try:
            fx.symbolic_trace(model)
        except Exception as error:
            why = f"cannot be traced by torch.fx, so its graph is unknown: {error}"
        else:
            why = "is a single layer; wrap it in torch.nn.Sequential"
        raise UnsupportedLayerError(f"{type(model).__name__} (the model itself) {why}")
    return graph


def _eval_copy(graph_module: fx.GraphModule, dtype: str) -> fx.GraphModule:
    """Deep copy of a traced model in eval mode, on the CPU, in ``dtype``."""
    reference = copy.deepcopy(graph_module).eval()
    return reference.to(device="cpu", dtype=_TORCH_DTYPES[dtype])


class _Recorder(fx.Interpreter):
    """fx interpreter that keeps every node's output."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.outputs: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        """Run one node and remember its output under the node's name."""
        result = super().run_node(n)
        self.outputs[n.name] = result
        return result


def _record(module: fx.GraphModule, x: torch.Tensor) -> dict[str, Any]:
    """Run ``module`` on ``x``; return every node's output by node name."""
    recorder = _Recorder(module)
    with torch.no_grad():
        recorder.run(x)
    return recorder.outputs


def _describe(node: fx.Node, root: nn.Module) -> str:
    """Name a node for error messages: its module type and path in the model."""
    if node.op == "call_module":
        module = root.get_submodule(cast(str, node.target))  # a module path
        return f"{type(module).__name__} at '{node.target}'"
    if node.op == "call_method":
        operation = f"Tensor.{node.target}"
    else:
        operation = getattr(node.target, "__name__", str(node.target))
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, owner = list(stack.values())[-1]
        owner_name = getattr(owner, "__name__", str(owner))
        return f"operation {operation} in the forward of {owner_name} at '{path}'"
    return f"operation {operation} in the forward of {type(root).__name__} (the model itself)"


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``name`` (positional ``index``) of a functional or method call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _dims(value: Any, rank: int) -> tuple[int, ...]:
    """Dimension argument(s) as non-negative ints of a ``rank``-axis tensor."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    return tuple(int(v) % rank for v in values)


# ----------------------------------------------------------------------------
# Reading the model graph

#: activations whose outputs are never negative (zero padding then keeps a maximum)
_NONNEGATIVE = frozenset({"relu", "relu6", "sigmoid"})
#: torch functions and methods the "reshape" kind covers that only move axes
_PERMUTES = (torch.permute, torch.transpose, "permute", "transpose")
#: Keras activation layers by the class name the graph's activation table gives
_KERAS_ACTIVATION_LAYERS = {
    "Activation": tf.keras.layers.Activation,
    "ReLU": tf.keras.layers.ReLU,
    "LeakyReLU": tf.keras.layers.LeakyReLU,
    "ELU": tf.keras.layers.ELU,
}


def _activation(node: Node) -> Activation | None:
    """The node's activation from the graph; a Hardtanh(0, 6) (module or functional) is a
    ReLU6, the one Hardtanh range a Keras layer reproduces (the graph's table has no
    Keras spelling for Hardtanh)."""
    activation = node.activation
    if activation is not None and activation.name != "hardtanh":
        return activation
    if isinstance(node.module, nn.Hardtanh):
        bounds = (node.module.min_val, node.module.max_val)
    elif node.op == "call_function" and node.target is F.hardtanh:
        bounds = (_arg(node.fx, 1, "min_val", -1.0), _arg(node.fx, 2, "max_val", 1.0))
    else:
        return activation
    return make_activation("relu6") if tuple(map(float, bounds)) == (0.0, 6.0) else activation


# ----------------------------------------------------------------------------
# Padding arithmetic


def _ntuple(value: Any, rank: int) -> tuple:
    """Expand an int (or a tuple) to a tuple of length ``rank``."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,) * rank


def _feature_order(shape: tuple[int, ...], layout: tuple[int, ...]) -> np.ndarray | None:
    """Feature order of a Keras Flatten: Keras feature ``k`` is PyTorch feature ``perm[k]``.

    ``shape`` is the PyTorch shape being flattened (batch axis dropped) and
    ``layout`` the PyTorch axis each Keras axis holds. None when the orders agree.
    """
    torch_index = np.arange(math.prod(shape)).reshape(shape)
    perm = np.transpose(torch_index, layout).ravel()
    return None if np.array_equal(perm, np.arange(perm.size)) else perm


# ----------------------------------------------------------------------------
# Conversion


@dataclass(frozen=True)
class _Value:
    """A Keras tensor of the twin standing for a PyTorch node's output.

    Attributes
    ----------
    name : str
        The Keras layer that outputs it, or ``'input'``.
    shape : tuple of int
        The PyTorch shape, batch axis dropped.
    layout : tuple of int
        The PyTorch axis each Keras axis holds.
    perm : numpy.ndarray or None
        For flat tensors: Keras feature ``k`` holds PyTorch feature ``perm[k]``.
    nonnegative : bool
        Whether every entry is >= 0 (zero padding then keeps maxima).
    """

    name: str
    shape: tuple[int, ...]
    layout: tuple[int, ...]
    perm: np.ndarray | None = None
    nonnegative: bool = False

    @property
    def rank(self) -> int:
        """Number of non-batch axes."""
        return len(self.shape)


@dataclass
class _Step:
    """One node of the graph, with its module (in the twin's dtype), input values and
    output shape."""

    node: Node
    #: the called module, of the class the node's kind dispatches on (a conv, a pooling layer,
    #: ...), or None for a functional node
    module: Any
    inputs: list[_Value]
    out_shape: tuple[int, ...]
    is_last: bool


class _Converter:
    """Walks the model graph and collects Keras layer specs, names and checkpoints.

    Parameters
    ----------
    graph : ModelGraph
        The model's graph (node kinds, activations, fusion).
    root : torch.fx.GraphModule
        The eval-mode reference copy of ``graph.module``, in the twin's dtype
        (weights are read from it).
    outputs : dict
        Every node's output on a sample batch (for the shapes).
    keep_softmax : bool
        Keep a final Softmax.
    """

    def __init__(self, graph: ModelGraph, root: fx.GraphModule, outputs: dict[str, Any], keep_softmax: bool):
        self.graph = graph
        self.root = root
        self.outputs = outputs
        self.keep_softmax = keep_softmax
        self.specs: list[_LayerSpec] = []
        self.checkpoints: list[_Checkpoint] = []
        self.layer_names: dict[str, str] = {}
        self.dropped: list[str] = []
        self._values: dict[str, _Value] = {}
        self._specs_by_node: dict[str, _LayerSpec] = {}
        self._used_names = {_INPUT}
        self._handlers: dict[str, Callable[[_Step], None]] = {
            "conv": self._conv,
            "conv_transpose": self._conv_transpose,
            "linear": self._linear,
            "batchnorm": self._batchnorm,
            "max_pool": self._maxpool,
            "avg_pool": self._avgpool,
            "mean": self._mean,
            "upsample": self._upsample,
            "pad": self._pad,
            "add": self._merge,
            "gate": self._merge,
            "concat": self._cat,
            "reshape": self._reshape,
            "softmax": self._softmax,
            "identity": self._identity,
        }

    # -- walking ----------------------------------------------------------

    def convert(self) -> str:
        """Convert every node in graph order; return the Keras output layer's name."""
        placeholders = [n for n in self.graph.nodes if n.kind.name == "input"]
        if len(placeholders) != 1:
            raise UnsupportedLayerError(
                f"{type(self.root).__name__} (the model itself) takes "
                f"{len(placeholders)} inputs; the twin needs exactly one"
            )
        for node in self.graph.nodes:
            kind = node.kind.name
            if kind == "input":
                shape = self._shape(node)
                self._values[node.name] = _Value(_INPUT, shape, _channels_last(len(shape)))
            elif kind == "output":
                return self._output(node)
            elif kind == "meta":
                continue
            elif kind == "attribute":
                raise UnsupportedLayerError(
                    f"parameter or buffer '{node.target}' is used directly in a forward; "
                    "the twin only supports layers and functional operations on activations"
                )
            elif not self.graph.consumers(node.name):
                raise UnsupportedLayerError(
                    f"{_describe(node.fx, self.root)} computes a result the model never uses; "
                    "the twin needs every operation to lead to the output"
                )
            else:
                self._convert_node(node)
        raise AssertionError("a traced graph ends with its output node")

    def _output(self, node: Node) -> str:
        """Check the graph's output and bring it into the Keras layout of the PyTorch output."""
        result = node.fx.args[0]
        if not isinstance(result, fx.Node):
            raise UnsupportedLayerError(
                f"{type(self.root).__name__} (the model itself) returns {type(result).__name__}; "
                "the twin needs a single tensor output"
            )
        value = self._values[result.name]
        if value.perm is not None:
            raise UnsupportedLayerError(
                f"{_describe(result, self.root)} gives the model's output as flattened spatial "
                "features, whose order differs in Keras' channels-last layout; end the model "
                "with a Linear layer or a pooling over the spatial axes"
            )
        value = self._relayout(value, _channels_last(value.rank), self.graph[result.name])
        if value.name == _INPUT:
            raise UnsupportedLayerError(
                f"{type(self.root).__name__} (the model itself) has no layer with a Keras counterpart"
            )
        return value.name

    def _shape(self, node: Node) -> tuple[int, ...]:
        """Shape of a node's output without the batch axis."""
        value = self.outputs[node.name]
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != _SHAPE_BATCH:
            raise UnsupportedLayerError(f"{_describe(node.fx, self.root)} does not return a batch of tensors")
        return tuple(value.shape[1:])

    def _convert_node(self, node: Node) -> None:
        """Dispatch one node to its handler by its kind in the graph."""
        activation = _activation(node)
        handler = self._handlers.get(node.kind.name)
        if activation is None and handler is None:
            raise UnsupportedLayerError(
                f"{_describe(node.fx, self.root)} is not supported by the Keras twin (graph kind {node.kind.name!r})"
            )
        module = self.root.get_submodule(node.target) if node.op == "call_module" else None
        step = _Step(
            node=node,
            module=module,
            inputs=[self._values[name] for name in node.inputs],
            out_shape=self._shape(node),
            is_last=all(user.kind.name == "output" for user in self.graph.consumers(node.name)),
        )
        if activation is not None:
            self._activation(step, activation)
            return
        if node.kind.name not in ("add", "gate", "concat") and len(step.inputs) != 1:
            raise self._unsupported(step, f"takes {len(step.inputs)} tensors; the twin expects one here")
        assert handler is not None  # refused above when there is neither an activation nor a handler
        handler(step)

    # -- bookkeeping ------------------------------------------------------

    def _unsupported(self, step: _Step, why: str) -> UnsupportedLayerError:
        """An UnsupportedLayerError naming the step's type and path."""
        return UnsupportedLayerError(f"{_describe(step.node.fx, self.root)} {why}")

    def _label(self, step: _Step) -> str:
        """The PyTorch name of a step: module path or fx node name."""
        return step.node.target if step.module is not None else step.node.name

    def _base_name(self, node: Node) -> str:
        """The stem of a node's Keras layer names: its module path, or ``op_`` and its fx
        name (bare fx names such as ``add`` are Keras' own default names, which the layers
        iNNvestigate adds would then repeat)."""
        return node.target if node.op == "call_module" else f"op_{node.name}"

    def _keras_name(self, base: str) -> str:
        """A unique, valid Keras layer name derived from ``base``."""
        name = re.sub(r"\W", "_", base).lstrip("_") or "layer"
        candidate, suffix = name, 1
        while candidate in self._used_names:
            suffix += 1
            candidate = f"{name}_{suffix}"
        self._used_names.add(candidate)
        return candidate

    def _add_spec(self, spec: _LayerSpec) -> None:
        """Append a layer spec."""
        self.specs.append(spec)

    def _emit(
        self,
        step: _Step,
        cls: type,
        config: dict[str, Any],
        inputs: list[_Value],
        *,
        initial: dict[str, np.ndarray] | None = None,
        call_kwargs: dict[str, Any] | None = None,
        layout: tuple[int, ...] | None = None,
        perm: np.ndarray | None = None,
        nonnegative: bool = False,
    ) -> _Value:
        """Add the Keras layer that reproduces ``step``, with a checkpoint.

        The output gets ``layout`` (channels-last by default) and ``perm``.
        """
        name = self._keras_name(self._base_name(step.node))
        spec = _LayerSpec(
            cls, {**config, "name": name}, tuple(v.name for v in inputs), initial or {}, call_kwargs or {}
        )
        self._add_spec(spec)
        self._specs_by_node[step.node.name] = spec
        if step.module is not None:
            self.layer_names[step.node.target] = name
        layout = _channels_last(len(step.out_shape)) if layout is None else layout
        self.checkpoints.append(_Checkpoint(step.node.name, name, self._label(step), layout, perm))
        value = _Value(name, step.out_shape, layout, perm, nonnegative)
        self._values[step.node.name] = value
        return value

    def _helper(
        self,
        step: _Step,
        suffix: str,
        cls: type,
        config: dict[str, Any],
        source: _Value,
        shape: tuple[int, ...],
        layout: tuple[int, ...],
    ) -> _Value:
        """Add a Keras layer with no PyTorch node of its own (padding, a layout change)."""
        name = self._keras_name(f"{self._base_name(step.node)}_{suffix}")
        self._add_spec(_LayerSpec(cls, {**config, "name": name}, (source.name,)))
        return _Value(name, shape, layout, None, source.nonnegative)

    def _alias(self, step: _Step, value: _Value) -> None:
        """Let a step's output be an existing Keras tensor (no layer)."""
        if step.module is not None:
            self.dropped.append(step.node.target)
        self._values[step.node.name] = value

    def _relayout(self, value: _Value, layout: tuple[int, ...], node: Node) -> _Value:
        """``value`` with Keras axes in ``layout``, through a Permute layer if needed."""
        if value.layout == layout:
            return value
        dims = tuple(value.layout.index(axis) + 1 for axis in layout)
        name = self._keras_name(f"{self._base_name(node)}_permute")
        self._add_spec(_LayerSpec(tf.keras.layers.Permute, {"dims": dims, "name": name}, (value.name,)))
        self.checkpoints.append(_Checkpoint(node.name, name, node.name, layout))
        return _Value(name, value.shape, layout, None, value.nonnegative)

    def _spatial_input(self, step: _Step, expected: int) -> _Value:
        """The step's input, checked to be ``(C, *spatial)`` with ``expected`` spatial
        axes and brought to channels-last."""
        value = step.inputs[0]
        if value.rank != expected + 1:
            raise self._unsupported(step, f"gets an input of shape {value.shape}, expected {expected} spatial axes")
        return self._relayout(value, _channels_last(value.rank), step.node)

    def _zero_pad(self, step: _Step, value: _Value, pads: tuple[tuple[int, int], ...]) -> _Value:
        """Add an explicit ZeroPadding layer on a channels-last ``value``."""
        cls = tf.keras.layers.ZeroPadding1D if len(pads) == 1 else tf.keras.layers.ZeroPadding2D
        padding = pads[0] if len(pads) == 1 else pads
        shape = (value.shape[0], *(s + a + b for s, (a, b) in zip(value.shape[1:], pads, strict=True)))
        return self._helper(step, "pad", cls, {"padding": padding}, value, shape, value.layout)

    # -- handlers ---------------------------------------------------------

    def _activation(self, step: _Step, activation: Activation) -> None:
        """An activation in its Keras spelling, fused into the kernel layer before it
        where the graph says so."""
        if len(step.inputs) != 1:
            raise self._unsupported(step, f"takes {len(step.inputs)} tensors")
        if activation.keras_layer is None:
            raise self._unsupported(
                step,
                f"is a {activation.name} activation with these parameters, which no Keras "
                "layer that iNNvestigate analyses computes",
            )
        value = step.inputs[0]
        nonnegative = activation.name in _NONNEGATIVE
        fused_into = step.node.fused_into
        spec = None if fused_into is None else self._specs_by_node.get(fused_into)
        if spec is not None and spec.config.get("activation", "") is None:
            spec.config["activation"] = activation.keras_config["activation"]
            checkpoint = next(c for c in self.checkpoints if c.layer == spec.config["name"])
            checkpoint.node = step.node.name
            checkpoint.label = f"{checkpoint.label} + {self._label(step)}"
            if step.module is not None:
                self.layer_names[step.node.target] = spec.config["name"]
            self._values[step.node.name] = _Value(value.name, value.shape, value.layout, value.perm, nonnegative)
            return
        cls = _KERAS_ACTIVATION_LAYERS[activation.keras_layer]
        self._emit(
            step,
            cls,
            dict(activation.keras_config),
            [value],
            layout=value.layout,
            perm=value.perm,
            nonnegative=nonnegative,
        )

    def _identity(self, step: _Step) -> None:
        """Dropout, Identity, ``contiguous``: no Keras layer in eval mode."""
        self._alias(step, step.inputs[0])

    def _softmax(self, step: _Step) -> None:
        """Remove (or keep) a final softmax over the features."""
        if step.module is not None:
            dim = step.module.dim
        else:
            dim = _arg(step.node.fx, 1, "dim", None)
        if step.node.target in (F.log_softmax, torch.log_softmax, "log_softmax") or isinstance(
            step.module, nn.LogSoftmax
        ):
            raise self._unsupported(step, "is a log-softmax, which the twin does not reproduce")
        if not step.is_last:
            raise self._unsupported(step, "is a softmax that is not the model's final layer")
        value = step.inputs[0]
        if value.rank != 1 or dim not in (None, 1, -1):
            raise self._unsupported(step, f"is a softmax over dim {dim} of a non-flat tensor")
        if self.keep_softmax:
            self._emit(step, tf.keras.layers.Activation, {"activation": "softmax"}, [value], perm=value.perm)
        else:
            self._alias(step, value)

    def _reshape(self, step: _Step) -> None:
        """Flatten to features (Keras Flatten, feature order remembered), a Reshape, or a
        permutation of axes (no layer)."""
        if step.node.target in _PERMUTES:
            self._permute(step)
            return
        value = step.inputs[0]
        if step.out_shape == value.shape:
            self._alias(step, value)
        elif step.out_shape == (math.prod(value.shape),):
            perm = _feature_order(value.shape, value.layout)
            self._emit(
                step, tf.keras.layers.Flatten, {}, [value], layout=(0,), perm=perm, nonnegative=value.nonnegative
            )
        elif value.perm is not None:
            raise self._unsupported(
                step,
                f"reshapes flattened spatial features {value.shape} to {step.out_shape}; "
                "their Keras order differs from PyTorch's",
            )
        else:
            value = self._relayout(value, tuple(range(value.rank)), step.node)
            layout = tuple(range(len(step.out_shape)))
            self._emit(
                step,
                tf.keras.layers.Reshape,
                {"target_shape": step.out_shape},
                [value],
                layout=layout,
                nonnegative=value.nonnegative,
            )

    def _permute(self, step: _Step) -> None:
        """``permute``/``transpose`` of non-batch axes: only the recorded layout changes."""
        node, value = step.node.fx, step.inputs[0]
        rank = value.rank + 1
        if node.target in (torch.transpose, "transpose"):
            first, second = _dims(node.args[1], rank)[0], _dims(node.args[2], rank)[0]
            order = list(range(rank))
            order[first], order[second] = second, first
        else:
            dims: Any = node.args[1:] if node.op == "call_method" else (node.args[1],)  # fx arguments
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = dims[0]
            order = list(_dims(tuple(dims), rank))
        if order[0] != 0:
            raise self._unsupported(step, "moves the batch axis")
        moved = [axis - 1 for axis in order[1:]]  # output axis i is input axis moved[i]
        layout = tuple(moved.index(axis) for axis in value.layout)
        self._values[node.name] = _Value(value.name, step.out_shape, layout, value.perm, value.nonnegative)

    def _merge(self, step: _Step) -> None:
        """Add or Multiply of two tensors (Multiply broadcasts, e.g. a gate)."""
        kind = "add" if step.node.kind.name == "add" else "product"
        if len(step.inputs) != 2 or (kind == "add" and "alpha" in step.node.fx.kwargs):
            raise self._unsupported(
                step,
                f"combines {len(step.inputs)} tensor(s) with constants; the twin supports "
                f"the {kind} of exactly two tensors",
            )
        shapes = [v.shape for v in step.inputs]
        if kind == "add" and shapes[0] != shapes[1]:
            raise self._unsupported(step, f"adds tensors of shapes {shapes}; Add needs equal shapes")
        if len({len(s) for s in shapes}) != 1:
            raise self._unsupported(step, f"broadcasts tensors of shapes {shapes} across ranks")
        values = self._common_layout(step, step.inputs)
        cls = tf.keras.layers.Add if kind == "add" else tf.keras.layers.Multiply
        self._emit(
            step,
            cls,
            {},
            values,
            layout=values[0].layout,
            perm=values[0].perm,
            nonnegative=all(v.nonnegative for v in values),
        )

    def _common_layout(self, step: _Step, values: list[_Value]) -> list[_Value]:
        """The values in one Keras layout: theirs if they agree, else channels-last."""
        if all(v.layout == values[0].layout for v in values) and all(
            _same_perm(v.perm, values[0].perm) for v in values
        ):
            return values
        if any(v.perm is not None for v in values):
            raise self._unsupported(step, "combines flattened tensors whose Keras feature orders differ")
        return [self._relayout(v, _channels_last(v.rank), step.node) for v in values]

    def _cat(self, step: _Step) -> None:
        """torch.cat as Concatenate along the Keras axis holding the PyTorch dim."""
        dim = _arg(step.node.fx, 1, "dim", 0)
        rank = len(step.out_shape) + 1
        dim = _dims(dim, rank)[0]  # not 0: the output is a batch (checked)
        if len(step.inputs) == 1:
            self._alias(step, step.inputs[0])
            return
        values = self._common_layout(step, step.inputs)
        perm = None
        if any(v.perm is not None for v in values):
            offsets = np.cumsum([0] + [v.shape[0] for v in values[:-1]])
            perm = np.concatenate(
                [
                    offset + (np.arange(v.shape[0]) if v.perm is None else v.perm)
                    for v, offset in zip(values, offsets, strict=True)
                ]
            )
        layout = values[0].layout
        axis = layout.index(dim - 1) - len(layout)  # negative, as keras.applications writes it
        self._emit(
            step,
            tf.keras.layers.Concatenate,
            {"axis": axis},
            values,
            layout=layout,
            perm=perm,
            nonnegative=all(v.nonnegative for v in values),
        )

    def _conv(self, step: _Step) -> None:
        """Conv1d/Conv2d as Conv1D/2D, DepthwiseConv1D/2D or grouped Conv1D/2D (plus
        ZeroPadding where Keras' padding modes cannot reproduce PyTorch's); the library's
        Conv1dSame/Conv2dSame with ``padding='same'``."""
        conv = step.module
        rank = self._kernel_rank(step)
        value = self._spatial_input(step, rank)
        if conv.padding_mode != "zeros":
            raise self._unsupported(step, f"has padding_mode={conv.padding_mode!r}; only zero padding is supported")
        strides, dilations = _ntuple(conv.stride, rank), _ntuple(conv.dilation, rank)
        if max(strides) > 1 and max(dilations) > 1:
            raise self._unsupported(
                step, "combines stride > 1 with dilation > 1, which Keras convolutions cannot build"
            )
        kernels = _ntuple(conv.kernel_size, rank)
        if isinstance(conv, SAME_CONVS):
            padding, explicit = "same", None
        elif isinstance(conv.padding, str):
            padding, explicit = conv.padding, None
        else:
            effective = tuple(d * (k - 1) + 1 for k, d in zip(kernels, dilations, strict=True))
            padding, explicit = keras_padding(value.shape[1:], effective, strides, _ntuple(conv.padding, rank))
        if explicit is not None:
            value = self._zero_pad(step, value, tuple((p, p) for p in explicit))
        weight = _numpy(conv.weight)  # (out, in / groups, *kernel)
        config = {
            "kernel_size": kernels,
            "strides": strides,
            "padding": padding,
            "dilation_rate": dilations,
            "use_bias": conv.bias is not None,
            "activation": None,
        }
        if conv.groups > 1 and conv.groups == conv.in_channels:
            multiplier = conv.out_channels // conv.in_channels
            cls = (tf.keras.layers.DepthwiseConv1D, tf.keras.layers.DepthwiseConv2D)[rank - 1]
            # Output channel c * multiplier + m reads input channel c in both frameworks.
            kernel = weight.reshape(conv.in_channels, multiplier, *kernels)
            initial = {"depthwise_initializer": np.transpose(kernel, (*range(2, rank + 2), 0, 1))}
            config["depth_multiplier"] = multiplier
        else:
            cls = (tf.keras.layers.Conv1D, tf.keras.layers.Conv2D)[rank - 1]
            initial = {"kernel_initializer": np.transpose(weight, (*range(2, rank + 2), 1, 0))}
            config.update(filters=conv.out_channels, groups=conv.groups)
        if conv.bias is not None:
            initial["bias_initializer"] = _numpy(conv.bias)
        self._emit(step, cls, config, [value], initial=initial)

    def _kernel_rank(self, step: _Step) -> int:
        """The number of spatial axes of a convolution, checked to be 1 or 2."""
        rank = step.module.weight.ndim - 2
        if rank not in (1, 2):
            raise self._unsupported(step, f"has {rank} spatial axes; the twin supports 1 and 2")
        return rank

    def _conv_transpose(self, step: _Step) -> None:
        """ConvTranspose1d/2d as Conv1DTranspose/2DTranspose ('valid', PyTorch's
        output_padding), then a Cropping layer for PyTorch's padding."""
        conv = step.module
        rank = self._kernel_rank(step)
        value = self._spatial_input(step, rank)
        if conv.groups != 1 or max(_ntuple(conv.dilation, rank)) > 1:
            raise self._unsupported(step, "has groups > 1 or dilation > 1, which the twin's Conv2DTranspose lacks")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise self._unsupported(step, "does not use numeric zero padding")
        kernels, strides = _ntuple(conv.kernel_size, rank), _ntuple(conv.stride, rank)
        pads = _ntuple(conv.padding, rank)
        # weight (in, out, *kernel) -> Keras (*kernel, out, in)
        initial = {"kernel_initializer": np.transpose(_numpy(conv.weight), (*range(2, rank + 2), 1, 0))}
        if conv.bias is not None:
            initial["bias_initializer"] = _numpy(conv.bias)
        config = {
            "filters": conv.out_channels,
            "kernel_size": kernels,
            "strides": strides,
            "padding": "valid",
            "output_padding": _ntuple(conv.output_padding, rank),
            "use_bias": conv.bias is not None,
            "activation": None,
        }
        cls = (tf.keras.layers.Conv1DTranspose, tf.keras.layers.Conv2DTranspose)[rank - 1]
        if not any(pads):
            self._emit(step, cls, config, [value], initial=initial)
            return
        full = tuple(
            (s - 1) * st + k + op
            for s, st, k, op in zip(value.shape[1:], strides, kernels, config["output_padding"], strict=True)
        )
        name = self._keras_name(f"{self._base_name(step.node)}_full")
        self._add_spec(_LayerSpec(cls, {**config, "name": name}, (value.name,), initial))
        full_value = _Value(name, (conv.out_channels, *full), value.layout)
        crop_cls = (tf.keras.layers.Cropping1D, tf.keras.layers.Cropping2D)[rank - 1]
        cropping = (pads[0], pads[0]) if rank == 1 else tuple((p, p) for p in pads)
        self._emit(step, crop_cls, {"cropping": cropping}, [full_value])

    def _linear(self, step: _Step) -> None:
        """Linear as Dense, its input weights permuted to Keras' feature order."""
        linear, value = step.module, step.inputs[0]
        if value.rank != 1:
            raise self._unsupported(step, f"gets an input of shape {value.shape}; the twin needs flat features")
        kernel = _numpy(linear.weight).T
        if value.perm is not None:
            kernel = kernel[value.perm]
        initial = {"kernel_initializer": np.ascontiguousarray(kernel)}
        if linear.bias is not None:
            initial["bias_initializer"] = _numpy(linear.bias)
        config = {
            "units": linear.out_features,
            "use_bias": linear.bias is not None,
            "activation": None,
        }
        self._emit(step, tf.keras.layers.Dense, config, [value], initial=initial)

    def _batchnorm(self, step: _Step) -> None:
        """BatchNorm1d/2d as Keras BatchNormalization (training=False; Keras' default kernel
        unless it would change the epsilon)."""
        bn, value = step.module, step.inputs[0]
        if bn.running_mean is None:
            raise self._unsupported(step, "has no running statistics (track_running_stats=False)")
        if isinstance(bn, nn.BatchNorm3d):
            raise self._unsupported(step, "normalises 3-d maps; the twin supports 1-d and 2-d")
        if isinstance(bn, nn.BatchNorm2d) or value.rank > 1:
            value = self._spatial_input(step, value.rank - 1 if value.rank > 1 else 2)
        names = ["moving_mean_initializer", "moving_variance_initializer"]
        params = [bn.running_mean, bn.running_var]
        if bn.affine:
            names, params = ["gamma_initializer", "beta_initializer", *names], [bn.weight, bn.bias, *params]
        arrays = [_numpy(p) for p in params]
        if value.perm is not None:
            arrays = [a[value.perm] for a in arrays]
        config = {
            "axis": -1,
            "epsilon": float(bn.eps),
            "center": bn.affine,
            "scale": bn.affine,
            "fused": None if bn.eps >= _FUSED_MIN_EPSILON else False,
        }
        self._emit(
            step,
            tf.keras.layers.BatchNormalization,
            config,
            [value],
            initial=dict(zip(names, arrays, strict=True)),
            call_kwargs={"training": False},
            layout=value.layout,
            perm=value.perm,
        )

    def _pool_geometry(self, step: _Step, value: _Value, rank: int) -> tuple:
        """Pool sizes, strides and PyTorch padding of a pooling step, with the Keras padding
        mode that reproduces it and the explicit zero padding needed (or None)."""
        pool = step.module
        kernels, strides = _ntuple(pool.kernel_size, rank), _ntuple(pool.stride, rank)
        pads = _ntuple(pool.padding, rank)
        if isinstance(pool, SAME_POOLS):  # the library's TF-'same' poolings
            return kernels, strides, pads, "same", None
        padding, explicit = keras_padding(value.shape[1:], kernels, strides, pads)
        pairs = None if explicit is None else tuple((pad, pad) for pad in explicit)
        return kernels, strides, pads, padding, pairs

    def _emit_pool(
        self,
        step: _Step,
        value: _Value,
        classes: tuple,
        rank: int,
        kernels: tuple[int, ...],
        strides: tuple[int, ...],
        padding: str,
        explicit: tuple[tuple[int, int], ...] | None,
    ) -> None:
        """Emit the explicit zero padding (pairs before/after each axis, if any), then the Keras
        pooling layer of ``rank``."""
        if explicit is not None:
            value = self._zero_pad(step, value, explicit)
        config = {"pool_size": kernels, "strides": strides, "padding": padding}
        self._emit(step, classes[rank - 1], config, [value], nonnegative=value.nonnegative)

    def _pool_rank(self, step: _Step) -> int:
        """1 for the 1-d pooling modules, else 2."""
        one_d = (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d)
        return 1 if isinstance(step.module, one_d) else 2

    def _maxpool(self, step: _Step) -> None:
        """MaxPool1d/2d as Keras MaxPooling1D/2D.

        ``ceil_mode`` adds windows that overhang the end; on a non-negative input, zero
        padding at the end reproduces them.
        """
        if not isinstance(step.module, (nn.MaxPool1d, nn.MaxPool2d)):
            raise self._unsupported(
                step,
                "is a max pooling other than nn.MaxPool1d/2d (functional, adaptive or "
                "3-d), which the twin does not reproduce",
            )
        pool, rank = step.module, self._pool_rank(step)
        value = self._spatial_input(step, rank)
        if pool.return_indices or max(_ntuple(pool.dilation, rank)) > 1:
            raise self._unsupported(step, "uses return_indices or dilation")
        kernels, strides, pads, padding, explicit = self._pool_geometry(step, value, rank)
        overhang = tuple(
            (out - 1) * stride + kernel - (size + 2 * pad)
            for out, stride, kernel, size, pad in zip(
                step.out_shape[1:], strides, kernels, value.shape[1:], pads, strict=True
            )
        )
        if pool.ceil_mode and max(overhang) > 0:
            padding = "valid"
            explicit = tuple((pad, pad + max(extra, 0)) for pad, extra in zip(pads, overhang, strict=True))
        if explicit is not None and not value.nonnegative:
            raise self._unsupported(
                step,
                f"pads by {explicit}, which Keras 'same' cannot reproduce here, and its input may "
                "be negative (zero padding would change the maximum)",
            )
        classes = (tf.keras.layers.MaxPooling1D, tf.keras.layers.MaxPooling2D)
        self._emit_pool(step, value, classes, rank, kernels, strides, padding, explicit)

    def _avgpool(self, step: _Step) -> None:
        """AvgPool1d/2d as Keras AveragePooling1D/2D.

        TF 'same' averages over real elements only (``count_include_pad=False``);
        zero padding plus 'valid' divides by the window size
        (``count_include_pad=True``).
        """
        if isinstance(step.module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)) or (
            step.node.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d)
        ):
            self._adaptive_avgpool(step)
            return
        if not isinstance(step.module, (nn.AvgPool1d, nn.AvgPool2d)):
            raise self._unsupported(
                step,
                "is an average pooling other than nn.AvgPool1d/2d and adaptive pooling "
                "(functional or 3-d), which the twin does not reproduce",
            )
        pool, rank = step.module, self._pool_rank(step)
        value = self._spatial_input(step, rank)
        if pool.ceil_mode or getattr(pool, "divisor_override", None) is not None:
            raise self._unsupported(step, "uses ceil_mode or divisor_override")
        kernels, strides, pads, padding, explicit = self._pool_geometry(step, value, rank)
        if pool.count_include_pad and padding == "same":
            padding, explicit = "valid", tuple((pad, pad) for pad in pads)
        if explicit is not None and not pool.count_include_pad:
            raise self._unsupported(
                step,
                f"pads by {pads} with count_include_pad=False, which Keras 'same' cannot reproduce here",
            )
        classes = (tf.keras.layers.AveragePooling1D, tf.keras.layers.AveragePooling2D)
        self._emit_pool(step, value, classes, rank, kernels, strides, padding, explicit)

    def _adaptive_avgpool(self, step: _Step) -> None:
        """AdaptiveAvgPool1d/2d (module or functional): identity, global average or
        uniform average pooling."""
        if step.module is not None:
            rank, requested = self._pool_rank(step), step.module.output_size
        else:
            rank = 1 if step.node.target is F.adaptive_avg_pool1d else 2
            requested = _arg(step.node.fx, 1, "output_size", None)
        value = self._spatial_input(step, rank)
        sizes = value.shape[1:]
        requested = _ntuple(requested, rank)
        targets = tuple(size if out is None else out for size, out in zip(sizes, requested, strict=True))
        if targets == sizes:
            self._alias(step, value)
        elif all(t == 1 for t in targets):
            self._global_average(step, value, keepdims=True)
        elif all(size % t == 0 for size, t in zip(sizes, targets, strict=True)):
            windows = tuple(size // t for size, t in zip(sizes, targets, strict=True))
            cls = (tf.keras.layers.AveragePooling1D, tf.keras.layers.AveragePooling2D)[rank - 1]
            self._emit(
                step,
                cls,
                {"pool_size": windows, "strides": windows, "padding": "valid"},
                [value],
                nonnegative=value.nonnegative,
            )
        else:
            raise self._unsupported(
                step,
                f"pools {sizes} to {targets}, which is neither 1 nor a divisor of the input size",
            )

    def _global_average(self, step: _Step, value: _Value, keepdims: bool) -> None:
        """GlobalAveragePooling1D/2D over a channels-last ``value``."""
        cls = (tf.keras.layers.GlobalAveragePooling1D, tf.keras.layers.GlobalAveragePooling2D)[value.rank - 2]
        self._emit(step, cls, {"keepdims": keepdims}, [value], nonnegative=value.nonnegative)

    def _mean(self, step: _Step) -> None:
        """``x.mean(dims)`` over every spatial axis as GlobalAveragePooling."""
        value = step.inputs[0]
        rank = value.rank + 1
        dims = _arg(step.node.fx, 1, "dim", None)
        keepdim = bool(_arg(step.node.fx, 2, "keepdim", False))
        if dims is None or set(_dims(dims, rank)) != set(range(2, rank)) or rank not in (3, 4):
            raise self._unsupported(
                step,
                f"averages over dims {dims}; the twin supports the mean over all spatial "
                "axes of a 1-d or 2-d feature map",
            )
        self._global_average(step, self._spatial_input(step, rank - 2), keepdims=keepdim)

    def _upsample(self, step: _Step) -> None:
        """Nearest upsampling by integer factors as UpSampling1D/2D."""
        if step.module is not None:
            mode = step.module.mode
        else:
            mode = _arg(step.node.fx, 3, "mode", "nearest")
        value = step.inputs[0]
        value = self._spatial_input(step, value.rank - 1)
        sizes, targets = value.shape[1:], step.out_shape[1:]
        if mode != "nearest" or any(t % s for s, t in zip(sizes, targets, strict=True)) or len(sizes) > 2:
            raise self._unsupported(
                step,
                f"upsamples {sizes} to {targets} in mode {mode!r}; the twin supports "
                "nearest upsampling of 1-d or 2-d maps by integer factors",
            )
        factors = tuple(t // s for s, t in zip(sizes, targets, strict=True))
        if len(factors) == 1:
            self._emit(step, tf.keras.layers.UpSampling1D, {"size": factors[0]}, [value], nonnegative=value.nonnegative)
        else:
            self._emit(
                step,
                tf.keras.layers.UpSampling2D,
                {"size": factors, "interpolation": "nearest"},
                [value],
                nonnegative=value.nonnegative,
            )

    def _pad(self, step: _Step) -> None:
        """Constant zero padding of the spatial axes as ZeroPadding1D/2D."""
        if step.module is not None:
            pad, fill, mode = step.module.padding, getattr(step.module, "value", 0.0), "constant"
        else:
            pad = _arg(step.node.fx, 1, "pad", ())
            mode = _arg(step.node.fx, 2, "mode", "constant")
            fill = _arg(step.node.fx, 3, "value", None) or 0.0
        value = step.inputs[0]
        spatial = value.rank - 1
        pairs = [tuple(pad[i : i + 2]) for i in range(0, len(pad), 2)][::-1]  # first axis first
        pairs = [(0, 0)] * (spatial - len(pairs)) + pairs
        if (
            mode != "constant"
            or fill != 0
            or len(pairs) != spatial
            or spatial not in (1, 2)
            or min(min(p) for p in pairs) < 0
        ):
            raise self._unsupported(
                step,
                f"pads {pad} in mode {mode!r} with value {fill}; the twin supports "
                "non-negative zero padding of the spatial axes of 1-d or 2-d maps",
            )
        value = self._spatial_input(step, spatial)
        cls = (tf.keras.layers.ZeroPadding1D, tf.keras.layers.ZeroPadding2D)[spatial - 1]
        padding = pairs[0] if spatial == 1 else tuple(pairs)
        self._emit(step, cls, {"padding": padding}, [value], nonnegative=value.nonnegative)


def _same_perm(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two feature orders (None: PyTorch's) are equal."""
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A parameter or buffer as a numpy array (same dtype)."""
    return tensor.detach().cpu().numpy().copy()


def _is_kernel_layer(spec: _LayerSpec) -> bool:
    """Whether iNNvestigate treats the layer as a kernel layer (input-layer rules apply)."""
    return any(key in spec.initial for key in ("kernel_initializer", "depthwise_initializer"))


def _hidden_reason(specs: list[_LayerSpec], padding_note: bool = True) -> str | None:
    """Why iNNvestigate would not see every first conv/dense layer as an input layer.

    A first kernel layer has no kernel layer upstream. iNNvestigate counts it as
    an input layer only when every path back to the input passes Flatten,
    Permute or Reshape layers alone. ``padding_note`` adds, for a ZeroPadding
    layer, that the twin needed it for PyTorch's padding (not so for a Keras
    model's own padding layer).
    """
    by_name = {spec.config["name"]: spec for spec in specs}
    kernel_upstream: dict[str, bool] = {_INPUT: False}
    for spec in specs:  # in graph order
        kernel_upstream[spec.config["name"]] = any(
            kernel_upstream[name] or (name != _INPUT and _is_kernel_layer(by_name[name])) for name in spec.inputs
        )

    def blocker(spec: _LayerSpec) -> _LayerSpec | None:
        """The first layer other than Flatten/Permute/Reshape on a path back to the input."""
        for name in spec.inputs:
            if name == _INPUT:
                continue
            source = by_name[name]
            if not issubclass(source.cls, _RESHAPE_LAYERS):
                return source
            found = blocker(source)
            if found is not None:
                return found
        return None

    for spec in specs:
        if not _is_kernel_layer(spec) or kernel_upstream[spec.config["name"]]:
            continue
        found = blocker(spec)
        if found is None:
            continue
        detail = ""
        if padding_note and issubclass(found.cls, (tf.keras.layers.ZeroPadding1D, tf.keras.layers.ZeroPadding2D)):
            detail = (
                f" (padding {found.config['padding']}: Keras 'same' cannot reproduce PyTorch's "
                "symmetric padding at this stride and input size)"
            )
        return (
            f"{found.cls.__name__} '{found.config['name']}'{detail} sits between the input and "
            f"the first conv/dense layer '{spec.config['name']}', so iNNvestigate does not treat "
            "that layer as an input layer and silently drops input_layer_rule there"
        )
    return None


# ----------------------------------------------------------------------------
# Keras side


def _build(specs: list[_LayerSpec], input_shape: tuple[int, ...], dtype: str, output: str) -> tf.keras.Model:
    """Build a new functional Keras model from layer specs.

    Weights enter through ``Constant`` initializers, and in graph mode one
    gradient through every grouped convolution is built before the variables
    are initialised in a session (TensorFlow 2.14 cannot differentiate one
    built otherwise).
    """
    keras_shape = (*input_shape[1:], input_shape[0]) if len(input_shape) > 1 else input_shape
    inputs = tf.keras.Input(shape=keras_shape, dtype=dtype, name=_INPUT)
    tensors = {_INPUT: inputs}
    grouped = []
    for spec in specs:
        initializers = {key: tf.keras.initializers.Constant(array) for key, array in spec.initial.items()}
        layer = spec.cls(**spec.config, **initializers, dtype=dtype)
        args = [tensors[name] for name in spec.inputs]
        result = layer(args if len(args) > 1 else args[0], **spec.call_kwargs)
        tensors[spec.config["name"]] = result
        if spec.config.get("groups", 1) > 1:
            grouped.append((args[0], result))
    model = tf.keras.Model(inputs, tensors[output], name="twin")
    if not tf.executing_eagerly():
        for x, y in grouped:
            tf.gradients(y, x)
        # Initialise the variables now (Keras does so when it gets its session): iNNvestigate's
        # BatchNormalization mappings read them in sessions that do not initialise them.
        tf.compat.v1.keras.backend.get_session()
    return model


def _layer_output(model: tf.keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """Output of the named layer of ``model`` on ``x``.

    One layer per prediction: in graph mode TF 2.14's grappler remapper fuses
    e.g. Conv2D + BiasAdd + LeakyRelu and then cannot fetch the BiasAdd output
    together with later tensors ("not found in the Graph").
    """
    return tf.keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0)


def _keras_to_torch_layout(x: np.ndarray, layout: tuple[int, ...], perm: np.ndarray | None) -> np.ndarray:
    """Bring a Keras activation (batch axis first) into PyTorch's layout."""
    if len(layout) > 1:
        return np.transpose(x, (0, *(1 + layout.index(axis) for axis in range(len(layout)))))
    if perm is None:
        return x
    out = np.empty_like(x)
    out[:, perm] = x
    return out


def _checkpoint_error(checkpoint: _Checkpoint, keras_act: np.ndarray, torch_acts: dict[str, Any]) -> float:
    """Relative error of a Keras activation against the PyTorch node it stands for."""
    expected = torch_acts[checkpoint.node].numpy()
    actual = _keras_to_torch_layout(keras_act, checkpoint.layout, checkpoint.perm)
    return relative_error(actual, expected) if actual.shape == expected.shape else math.inf
