"""Keras twins of PyTorch models, for comparing maps with iNNvestigate.

:func:`to_keras` turns a PyTorch model that is a plain chain of layers into a
tf.keras (Keras 2) functional model that is channels-last, built only from
standard Keras layers (iNNvestigate rejects ``Lambda`` and ``TFOpLambda``
layers) and carries the same weights. The execution order comes from
:func:`torch.fx.symbolic_trace`, so ``nn.Sequential`` models, nested
Sequentials and modules whose ``forward`` is a plain chain of submodules and
simple functional calls (``torch.flatten``, ``x.view(x.size(0), -1)``,
``F.relu``, ...) are accepted. Every conversion checks itself by running both
models on seeded random inputs.

The twin reproduces the model's eval-mode semantics (Dropout removed,
BatchNorm with running statistics) whatever mode the model is in, and leaves
the model itself untouched.

Supported PyTorch layers
------------------------
Conv1d, Conv2d (``groups=1``, zero padding, not stride > 1 together with
dilation > 1), Linear, ReLU, LeakyReLU, Tanh, Sigmoid, ELU, MaxPool1d/2d,
AvgPool1d/2d, AdaptiveAvgPool1d/2d (output size 1, the input size, or a
divisor of it), Flatten (and ``torch.flatten``, ``view``/``reshape`` to
``(N, -1)``), Dropout/Dropout1d/Dropout2d/AlphaDropout, BatchNorm1d/2d,
Identity, and a final Softmax.

Keras 2 and TensorFlow 2.14 facts the twin relies on
----------------------------------------------------
* TF's ``'same'`` padding puts the extra padding at the end, so at stride 2 it
  is often not PyTorch's symmetric padding; the twin then uses an explicit
  ``ZeroPadding`` layer and ``'valid'``.
* iNNvestigate finds the input layer by graph position, skipping only
  Flatten/Permute/Reshape layers: any other layer in front of the first
  conv/dense layer makes it silently drop ``input_layer_rule``. Such twins
  report ``input_layer_hidden=True``.
* Keras ``Flatten`` flattens NHWC; the first Dense layer after it gets its
  input weights permuted so that it sees PyTorch's NCHW feature order.
* ``BatchNormalization`` is built with ``fused=False`` (the fused kernel raises
  epsilon to at least 1.001e-5) and called with ``training=False``.
* Keras cannot build a convolution with both strides > 1 and
  dilation_rate > 1.
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Twin",
    "TwinMismatchError",
    "UnsupportedLayerError",
    "to_channels_first",
    "to_channels_last",
    "to_keras",
]

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_SHAPE_BATCH = 2
_KERNEL_LAYERS = (tf.keras.layers.Conv1D, tf.keras.layers.Conv2D, tf.keras.layers.Dense)
_RESHAPE_LAYERS = (tf.keras.layers.Flatten,)


class UnsupportedLayerError(TypeError):
    """A PyTorch layer or operation that the Keras twin cannot reproduce.

    The message names the module type (or the operation and the module whose
    ``forward`` calls it) and its path in the model.
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


@dataclass
class _LayerSpec:
    """Everything needed to build one Keras layer of the twin again.

    Attributes
    ----------
    cls : type
        The Keras layer class.
    config : dict
        Constructor keyword arguments, including ``name`` (not ``dtype``).
    weights : tuple of numpy.ndarray
        Weights in Keras order, set right after the layer is built.
    call_kwargs : dict
        Keyword arguments of the layer call (``training=False`` for BN).
    """

    cls: type
    config: dict[str, Any]
    weights: tuple[np.ndarray, ...] = ()
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
    perm : numpy.ndarray or None
        For flat tensors after a Flatten: Keras feature ``k`` holds PyTorch
        feature ``perm[k]``. None when the layouts only differ by the channel
        axis position.
    """

    node: str
    layer: str
    label: str
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
        True when a layer other than Flatten sits between the Keras input and
        the first conv/dense layer (e.g. an explicit ``ZeroPadding2D``), so
        iNNvestigate silently drops ``input_layer_rule`` (METHODS trap 12).
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
    _graph_module: fx.GraphModule | None = field(default=None, repr=False)

    def fresh(self) -> tf.keras.Model:
        """Build a new Keras model with the twin's weights.

        Returns
        -------
        tf.keras.Model
            A model made of new layer objects that were never called before,
            with the same layer names and weights as :attr:`keras_model`.
        """
        return _build(self._specs, self.input_shape, self.dtype)

    @contextlib.contextmanager
    def floatx(self) -> Iterator[None]:
        """Set Keras' floatx to the twin's dtype for the ``with`` block, then restore it.

        iNNvestigate builds its constants in floatx, so a float64 twin must be
        analysed inside this block (building the twin itself needs no floatx).
        """
        previous = tf.keras.backend.floatx()
        tf.keras.backend.set_floatx(self.dtype)
        try:
            yield
        finally:
            tf.keras.backend.set_floatx(previous)

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
            The relative error of the output (of the last Keras layer, which
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
        torch_acts = _record(_eval_copy(self._graph_module, self.dtype), torch.from_numpy(x))
        x = to_channels_last(x)
        output = keras_model.predict(x, verbose=0)
        error = _checkpoint_error(self._checkpoints[-1], output, torch_acts)
        if error > rtol:
            layer_errors = (
                (c, _checkpoint_error(c, _layer_output(keras_model, c.layer, x), torch_acts))
                for c in self._checkpoints
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
        A plain chain of supported layers (see the module docstring). It is
        neither modified nor switched between train and eval mode; the twin
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
    graph_module = _trace(model)
    reference = _eval_copy(graph_module, dtype)
    sample = torch.zeros((_SHAPE_BATCH, *input_shape), dtype=_TORCH_DTYPES[dtype])
    try:
        outputs = _record(reference, sample)
    except Exception as error:
        raise ValueError(
            f"{type(model).__name__} does not accept inputs of shape {input_shape}: {error}"
        ) from error
    converter = _Converter(reference, outputs, keep_softmax)
    converter.convert(_chain(reference))
    if not converter.specs:
        raise UnsupportedLayerError(
            f"{type(model).__name__} (the model itself) has no layer with a Keras counterpart"
        )
    hidden_reason = _hidden_reason(converter.specs)
    twin = Twin(
        keras_model=_build(converter.specs, input_shape, dtype),
        layer_names=converter.layer_names,
        input_layer_hidden=hidden_reason is not None,
        hidden_reason=hidden_reason,
        dropped=tuple(converter.dropped),
        input_shape=input_shape,
        dtype=dtype,
        _specs=converter.specs,
        _checkpoints=converter.checkpoints,
        _graph_module=graph_module,
    )
    if check:
        twin.verify(rtol=rtol, seed=seed)
    return twin


# ----------------------------------------------------------------------------
# Tracing and running the PyTorch side


def _trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` with torch.fx, turning failures into UnsupportedLayerError."""
    try:
        return fx.symbolic_trace(model)
    except Exception as error:
        raise UnsupportedLayerError(
            f"{type(model).__name__} (the model itself) cannot be traced by torch.fx, "
            f"so its execution order is unknown: {error}"
        ) from error


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


def _is_shape_query(node: fx.Node) -> bool:
    """Whether ``node`` only reads a tensor's shape (``x.size(0)``, ``x.shape[0]``)."""
    if node.op == "call_method" and node.target == "size":
        return True
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] == "shape"
    if node.op == "call_function" and node.target is operator.getitem:
        first = node.args[0]
        return isinstance(first, fx.Node) and _is_shape_query(first)
    return False


def _describe(node: fx.Node, root: nn.Module) -> str:
    """Name a node for error messages: its module type and path in the model."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
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


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The operation outputs ``node`` consumes (shape queries and parameters aside)."""
    return [n for n in node.all_input_nodes if n.op != "get_attr" and not _is_shape_query(n)]


def _chain(graph_module: fx.GraphModule) -> list[fx.Node]:
    """The traced nodes in execution order, checked to form a plain chain.

    Each node must consume exactly one tensor, the previous node's output
    (shape queries aside), and the graph must return the last one.
    """
    nodes = list(graph_module.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(
            f"{type(graph_module).__name__} (the model itself) takes "
            f"{len(placeholders)} inputs; the twin needs exactly one"
        )
    for node in nodes:
        if node.op != "output" and len(_tensor_inputs(node)) > 1:
            raise UnsupportedLayerError(
                f"{_describe(node, graph_module)} combines several tensors (a residual "
                "connection or concatenation); the twin only supports plain chains"
            )
    current = placeholders[0]
    chain = []
    for node in nodes:
        if node.op == "placeholder" or _is_shape_query(node):
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise UnsupportedLayerError(
                    f"the model's output is not the result of its last operation "
                    f"({_describe(current, graph_module)}); the twin needs a single tensor output"
                )
            break
        if node.op == "get_attr":
            raise UnsupportedLayerError(
                f"parameter or buffer '{node.target}' is used directly in a forward; "
                "the twin only supports layers and simple functional calls"
            )
        if _tensor_inputs(node) != [current]:
            raise UnsupportedLayerError(
                f"{_describe(node, graph_module)} does not transform the previous operation's "
                "output (the forward branches); the twin only supports plain chains"
            )
        chain.append(node)
        current = node
    return chain


# ----------------------------------------------------------------------------
# Recognising operations


@dataclass(frozen=True)
class _Activation:
    """An elementwise activation: its kind and parameter (slope or alpha)."""

    kind: str
    param: float | None = None

    def keras_name(self) -> str | None:
        """The Keras activation string reproducing it exactly, if there is one."""
        if self.kind in ("relu", "tanh", "sigmoid"):
            return self.kind
        if self.kind == "elu" and self.param == 1.0:
            return "elu"
        return None

    def nonnegative(self) -> bool:
        """Whether every output is >= 0."""
        return self.kind in ("relu", "sigmoid")


_FUNCTION_ACTIVATIONS = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
}
_METHOD_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_ACTIVATION_DEFAULTS = {"leaky_relu": ("negative_slope", 0.01), "elu": ("alpha", 1.0)}
_FLATTEN_FUNCTIONS = (torch.flatten, torch.reshape)
_FLATTEN_METHODS = ("flatten", "view", "reshape")
_SOFTMAX_FUNCTIONS = (F.softmax, torch.softmax)
_DROPPED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)


def _functional_arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``name`` (positional ``index``) of a functional call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _module_activation(module: nn.Module) -> _Activation | None:
    """The activation a module computes, or None."""
    if isinstance(module, nn.ReLU):
        return _Activation("relu")
    if isinstance(module, nn.Tanh):
        return _Activation("tanh")
    if isinstance(module, nn.Sigmoid):
        return _Activation("sigmoid")
    if isinstance(module, nn.LeakyReLU):
        return _Activation("leaky_relu", float(module.negative_slope))
    if isinstance(module, nn.ELU):
        return _Activation("elu", float(module.alpha))
    return None


def _activation(node: fx.Node, module: nn.Module | None) -> _Activation | None:
    """The activation a node computes (module or functional), or None."""
    if module is not None:
        return _module_activation(module)
    if node.op == "call_method":
        kind = _METHOD_ACTIVATIONS.get(node.target)
    else:
        kind = _FUNCTION_ACTIVATIONS.get(node.target)
    if kind is None:
        return None
    if kind in _ACTIVATION_DEFAULTS:
        name, default = _ACTIVATION_DEFAULTS[kind]
        return _Activation(kind, float(_functional_arg(node, 1, name, default)))
    return _Activation(kind)


def _is_flatten(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether a node may be a flatten (the shapes decide whether it is one)."""
    if module is not None:
        return isinstance(module, nn.Flatten)
    if node.op == "call_method":
        return node.target in _FLATTEN_METHODS
    return node.target in _FLATTEN_FUNCTIONS


def _softmax_dim(node: fx.Node, module: nn.Module | None) -> tuple[bool, int | None]:
    """Whether a node is a softmax, and over which dimension."""
    if module is not None:
        return isinstance(module, nn.Softmax), getattr(module, "dim", None)
    if node.op == "call_method":
        is_softmax = node.target == "softmax"
    else:
        is_softmax = node.target in _SOFTMAX_FUNCTIONS
    return is_softmax, _functional_arg(node, 1, "dim", None) if is_softmax else None


# ----------------------------------------------------------------------------
# Padding arithmetic


def _ntuple(value: Any, rank: int) -> tuple:
    """Expand an int (or a tuple) to a tuple of length ``rank``."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,) * rank


def _same_reproduces(size: int, kernel: int, stride: int, pad: int) -> bool:
    """Whether TF 'same' gives PyTorch's windows for symmetric padding ``pad``.

    Both produce windows starting at ``i * stride - before``; they agree when
    the number of windows and the padding in front agree.
    """
    torch_out = (size + 2 * pad - kernel) // stride + 1
    tf_out = -(-size // stride)
    tf_before = max((tf_out - 1) * stride + kernel - size, 0) // 2
    return torch_out == tf_out and tf_before == pad


def _keras_padding(
    sizes: tuple[int, ...],
    kernels: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
) -> tuple[str, tuple[int, ...] | None]:
    """Keras padding mode for symmetric PyTorch padding, and explicit padding if needed.

    Returns ``('valid', None)`` without padding, ``('same', None)`` where TF's
    'same' gives PyTorch's windows, else ``('valid', pads)``: pad explicitly.
    """
    if not any(pads):
        return "valid", None
    if all(map(_same_reproduces, sizes, kernels, strides, pads)):
        return "same", None
    return "valid", tuple(pads)


def _flatten_perm(shape: tuple[int, ...]) -> np.ndarray:
    """Feature order of a Keras Flatten: Keras feature ``k`` is PyTorch feature ``perm[k]``.

    ``shape`` is the PyTorch shape ``(C, *spatial)`` being flattened.
    """
    torch_index = np.arange(math.prod(shape)).reshape(shape)
    return np.moveaxis(torch_index, 0, -1).ravel()


# ----------------------------------------------------------------------------
# Conversion


@dataclass
class _Step:
    """One node of the chain, with its module and tensor shapes (batch axis dropped)."""

    node: fx.Node
    module: nn.Module | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    is_last: bool


class _Converter:
    """Walks the chain and collects Keras layer specs, names and checkpoints.

    Parameters
    ----------
    root : torch.fx.GraphModule
        The eval-mode reference copy, in the twin's dtype (weights are read
        from it).
    outputs : dict
        Every node's output on a sample batch (for the shapes).
    keep_softmax : bool
        Keep a final Softmax.
    """

    def __init__(self, root: fx.GraphModule, outputs: dict[str, Any], keep_softmax: bool):
        self.root = root
        self.outputs = outputs
        self.keep_softmax = keep_softmax
        self.specs: list[_LayerSpec] = []
        self.checkpoints: list[_Checkpoint] = []
        self.layer_names: dict[str, str] = {}
        self.dropped: list[str] = []
        self._used_names = {"input"}
        self._perm: np.ndarray | None = None
        self._nonnegative = False
        self._fusable = False

    # -- walking ----------------------------------------------------------

    def convert(self, chain: list[fx.Node]) -> None:
        """Convert every node of ``chain`` in order."""
        previous = next(n for n in self.root.graph.nodes if n.op == "placeholder")
        for index, node in enumerate(chain):
            step = _Step(
                node=node,
                module=self.root.get_submodule(node.target) if node.op == "call_module" else None,
                in_shape=self._shape(previous),
                out_shape=self._shape(node),
                is_last=index == len(chain) - 1,
            )
            self._convert_step(step)
            previous = node

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        """Shape of a node's output without the batch axis."""
        value = self.outputs[node.name]
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != _SHAPE_BATCH:
            raise UnsupportedLayerError(
                f"{_describe(node, self.root)} does not return a batch of tensors"
            )
        return tuple(value.shape[1:])

    def _convert_step(self, step: _Step) -> None:
        """Dispatch one step to its handler."""
        activation = _activation(step.node, step.module)
        if activation is not None:
            self._activation(step, activation)
            return
        is_softmax, dim = _softmax_dim(step.node, step.module)
        if is_softmax:
            self._softmax(step, dim)
        elif _is_flatten(step.node, step.module):
            self._flatten(step)
        elif isinstance(step.module, (nn.Conv1d, nn.Conv2d)):
            self._conv(step)
        elif isinstance(step.module, nn.Linear):
            self._linear(step)
        elif isinstance(step.module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self._batchnorm(step)
        elif isinstance(step.module, (nn.MaxPool1d, nn.MaxPool2d)):
            self._maxpool(step)
        elif isinstance(step.module, (nn.AvgPool1d, nn.AvgPool2d)):
            self._avgpool(step)
        elif isinstance(step.module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            self._adaptive_avgpool(step)
        elif isinstance(step.module, _DROPPED_MODULES):
            self._drop(step)
        else:
            raise self._unsupported(step, "is not supported by the Keras twin")

    # -- bookkeeping ------------------------------------------------------

    def _unsupported(self, step: _Step, why: str) -> UnsupportedLayerError:
        """An UnsupportedLayerError naming the step's type and path."""
        return UnsupportedLayerError(f"{_describe(step.node, self.root)} {why}")

    def _label(self, step: _Step) -> str:
        """The PyTorch name of a step: module path or fx node name."""
        return step.node.target if step.module is not None else step.node.name

    def _keras_name(self, base: str) -> str:
        """A unique, valid Keras layer name derived from ``base``."""
        name = re.sub(r"\W", "_", base) or "layer"
        candidate, suffix = name, 1
        while candidate in self._used_names:
            suffix += 1
            candidate = f"{name}_{suffix}"
        self._used_names.add(candidate)
        return candidate

    def _emit(
        self,
        step: _Step,
        cls: type,
        config: dict[str, Any],
        weights: tuple[np.ndarray, ...] = (),
        call_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Add the Keras layer that reproduces ``step``, with a checkpoint."""
        name = self._keras_name(self._label(step))
        self.specs.append(_LayerSpec(cls, {**config, "name": name}, weights, call_kwargs or {}))
        if step.module is not None:
            self.layer_names[step.node.target] = name
        perm = self._perm if len(step.out_shape) == 1 else None
        self.checkpoints.append(_Checkpoint(step.node.name, name, self._label(step), perm))
        self._fusable = False

    def _emit_padding(self, step: _Step, pads: tuple[int, ...]) -> None:
        """Add an explicit ZeroPadding layer in front of ``step``'s layer."""
        cls = tf.keras.layers.ZeroPadding1D if len(pads) == 1 else tf.keras.layers.ZeroPadding2D
        padding = pads[0] if len(pads) == 1 else pads
        name = self._keras_name(f"{self._label(step)}_pad")
        self.specs.append(_LayerSpec(cls, {"padding": padding, "name": name}))

    def _drop(self, step: _Step) -> None:
        """Record a step that has no Keras layer (identity in eval mode)."""
        if step.module is not None:
            self.dropped.append(step.node.target)

    def _spatial_rank(self, step: _Step, expected: int) -> int:
        """Check that the step's input is ``(C, *spatial)`` with ``expected`` spatial axes."""
        if len(step.in_shape) != expected + 1:
            raise self._unsupported(
                step, f"gets an input of shape {step.in_shape}, expected {expected} spatial axes"
            )
        return expected

    # -- handlers ---------------------------------------------------------

    def _activation(self, step: _Step, activation: _Activation) -> None:
        """Fuse an activation into the preceding conv/dense layer, or add a layer."""
        keras_name = activation.keras_name()
        if keras_name is not None and self._fusable:
            spec, checkpoint = self.specs[-1], self.checkpoints[-1]
            spec.config["activation"] = keras_name
            checkpoint.node = step.node.name
            checkpoint.label = f"{checkpoint.label} + {self._label(step)}"
            if step.module is not None:
                self.layer_names[step.node.target] = spec.config["name"]
            self._fusable = False
        elif keras_name is not None:
            self._emit(step, tf.keras.layers.Activation, {"activation": keras_name})
        elif activation.kind == "leaky_relu":
            self._emit(step, tf.keras.layers.LeakyReLU, {"alpha": activation.param})
        else:
            self._emit(step, tf.keras.layers.ELU, {"alpha": activation.param})
        self._nonnegative = activation.nonnegative()

    def _softmax(self, step: _Step, dim: int | None) -> None:
        """Remove (or keep) a final softmax over the features."""
        if not step.is_last:
            raise self._unsupported(step, "is a softmax that is not the model's final layer")
        if len(step.in_shape) != 1 or dim not in (None, 1, -1):
            raise self._unsupported(step, f"is a softmax over dim {dim} of a non-flat tensor")
        if self.keep_softmax:
            self._emit(step, tf.keras.layers.Activation, {"activation": "softmax"})
        else:
            self._drop(step)

    def _flatten(self, step: _Step) -> None:
        """Flatten ``(C, *spatial)`` to features; remember Keras' feature order."""
        if step.out_shape != (math.prod(step.in_shape),):
            raise self._unsupported(
                step,
                f"reshapes {step.in_shape} to {step.out_shape}, which is not a flatten from dim 1",
            )
        if len(step.in_shape) == 1:
            self._drop(step)
            return
        perm = _flatten_perm(step.in_shape)
        self._perm = None if np.array_equal(perm, np.arange(perm.size)) else perm
        self._emit(step, tf.keras.layers.Flatten, {})

    def _conv(self, step: _Step) -> None:
        """Conv1d/Conv2d as Keras Conv1D/Conv2D (plus ZeroPadding where needed)."""
        conv = step.module
        rank = self._spatial_rank(step, conv.weight.ndim - 2)
        if conv.groups != 1:
            raise self._unsupported(step, f"has groups={conv.groups}; only groups=1 is supported")
        if conv.padding_mode != "zeros":
            raise self._unsupported(
                step, f"has padding_mode={conv.padding_mode!r}; only zero padding is supported"
            )
        strides, dilations = _ntuple(conv.stride, rank), _ntuple(conv.dilation, rank)
        if max(strides) > 1 and max(dilations) > 1:
            raise self._unsupported(
                step, "combines stride > 1 with dilation > 1, which Keras convolutions cannot build"
            )
        kernels = _ntuple(conv.kernel_size, rank)
        if isinstance(conv.padding, str):
            padding, explicit = conv.padding, None
        else:
            effective = tuple(d * (k - 1) + 1 for k, d in zip(kernels, dilations))
            padding, explicit = _keras_padding(
                step.in_shape[1:], effective, strides, _ntuple(conv.padding, rank)
            )
        if explicit is not None:
            self._emit_padding(step, explicit)
        weights = [np.transpose(_numpy(conv.weight), (*range(2, rank + 2), 1, 0))]
        if conv.bias is not None:
            weights.append(_numpy(conv.bias))
        cls = tf.keras.layers.Conv1D if rank == 1 else tf.keras.layers.Conv2D
        config = {
            "filters": conv.out_channels,
            "kernel_size": kernels,
            "strides": strides,
            "padding": padding,
            "dilation_rate": dilations,
            "use_bias": conv.bias is not None,
            "activation": None,
        }
        self._emit(step, cls, config, tuple(weights))
        self._fusable, self._nonnegative = True, False

    def _linear(self, step: _Step) -> None:
        """Linear as Dense, its input weights permuted to Keras' feature order."""
        linear = step.module
        if len(step.in_shape) != 1:
            raise self._unsupported(
                step, f"gets an input of shape {step.in_shape}; the twin needs flat features"
            )
        kernel = _numpy(linear.weight).T
        if self._perm is not None:
            kernel = kernel[self._perm]
        weights = [np.ascontiguousarray(kernel)]
        if linear.bias is not None:
            weights.append(_numpy(linear.bias))
        config = {
            "units": linear.out_features,
            "use_bias": linear.bias is not None,
            "activation": None,
        }
        self._perm = None
        self._emit(step, tf.keras.layers.Dense, config, tuple(weights))
        self._fusable, self._nonnegative = True, False

    def _batchnorm(self, step: _Step) -> None:
        """BatchNorm1d/2d as Keras BatchNormalization (fused=False, training=False)."""
        bn = step.module
        if bn.running_mean is None:
            raise self._unsupported(step, "has no running statistics (track_running_stats=False)")
        if isinstance(bn, nn.BatchNorm2d):
            self._spatial_rank(step, 2)
        params = [bn.weight, bn.bias] if bn.affine else []
        weights = [_numpy(p) for p in (*params, bn.running_mean, bn.running_var)]
        if len(step.in_shape) == 1 and self._perm is not None:
            weights = [w[self._perm] for w in weights]
        config = {
            "axis": -1,
            "epsilon": float(bn.eps),
            "center": bn.affine,
            "scale": bn.affine,
            "fused": False,
        }
        self._emit(
            step, tf.keras.layers.BatchNormalization, config, tuple(weights), {"training": False}
        )
        self._nonnegative = False

    def _pool_geometry(self, step: _Step, rank: int) -> tuple:
        """Pool sizes, strides and PyTorch padding of a pooling step, with the Keras padding
        mode that reproduces it and the explicit zero padding needed (or None)."""
        pool = step.module
        kernels, strides = _ntuple(pool.kernel_size, rank), _ntuple(pool.stride, rank)
        pads = _ntuple(pool.padding, rank)
        padding, explicit = _keras_padding(step.in_shape[1:], kernels, strides, pads)
        return kernels, strides, pads, padding, explicit

    def _emit_pool(self, step: _Step, classes: tuple, rank: int, kernels, strides, padding: str,
                   explicit) -> None:
        """Emit the explicit zero padding (if any), then the Keras pooling layer of ``rank``."""
        if explicit is not None:
            self._emit_padding(step, explicit)
        config = {"pool_size": kernels, "strides": strides, "padding": padding}
        self._emit(step, classes[rank - 1], config)

    def _maxpool(self, step: _Step) -> None:
        """MaxPool1d/2d as Keras MaxPooling1D/2D."""
        pool = step.module
        rank = self._spatial_rank(step, 1 if isinstance(pool, nn.MaxPool1d) else 2)
        if pool.ceil_mode or pool.return_indices or max(_ntuple(pool.dilation, rank)) > 1:
            raise self._unsupported(step, "uses ceil_mode, return_indices or dilation")
        kernels, strides, pads, padding, explicit = self._pool_geometry(step, rank)
        if explicit is not None and not self._nonnegative:
            raise self._unsupported(
                step,
                f"pads by {pads}, which Keras 'same' cannot reproduce here, and its input may be "
                "negative (zero padding would change the maximum)",
            )
        classes = (tf.keras.layers.MaxPooling1D, tf.keras.layers.MaxPooling2D)
        self._emit_pool(step, classes, rank, kernels, strides, padding, explicit)

    def _avgpool(self, step: _Step) -> None:
        """AvgPool1d/2d as Keras AveragePooling1D/2D.

        TF 'same' averages over real elements only (``count_include_pad=False``);
        zero padding plus 'valid' divides by the window size
        (``count_include_pad=True``).
        """
        pool = step.module
        rank = self._spatial_rank(step, 1 if isinstance(pool, nn.AvgPool1d) else 2)
        if pool.ceil_mode or getattr(pool, "divisor_override", None) is not None:
            raise self._unsupported(step, "uses ceil_mode or divisor_override")
        kernels, strides, pads, padding, explicit = self._pool_geometry(step, rank)
        if pool.count_include_pad and padding == "same":
            padding, explicit = "valid", pads
        if explicit is not None and not pool.count_include_pad:
            raise self._unsupported(
                step,
                f"pads by {pads} with count_include_pad=False, which Keras 'same' cannot "
                "reproduce here",
            )
        classes = (tf.keras.layers.AveragePooling1D, tf.keras.layers.AveragePooling2D)
        self._emit_pool(step, classes, rank, kernels, strides, padding, explicit)

    def _adaptive_avgpool(self, step: _Step) -> None:
        """AdaptiveAvgPool1d/2d: identity, global average or uniform average pooling."""
        pool = step.module
        rank = self._spatial_rank(step, 1 if isinstance(pool, nn.AdaptiveAvgPool1d) else 2)
        sizes = step.in_shape[1:]
        requested = _ntuple(pool.output_size, rank)
        targets = tuple(size if out is None else out for size, out in zip(sizes, requested))
        if targets == sizes:
            self._drop(step)
        elif all(t == 1 for t in targets):
            cls = (
                tf.keras.layers.GlobalAveragePooling1D
                if rank == 1
                else tf.keras.layers.GlobalAveragePooling2D
            )
            self._emit(step, cls, {"keepdims": True})
        elif all(size % t == 0 for size, t in zip(sizes, targets)):
            windows = tuple(size // t for size, t in zip(sizes, targets))
            cls = (
                tf.keras.layers.AveragePooling1D if rank == 1 else tf.keras.layers.AveragePooling2D
            )
            self._emit(step, cls, {"pool_size": windows, "strides": windows, "padding": "valid"})
        else:
            raise self._unsupported(
                step,
                f"pools {sizes} to {targets}, which is neither 1 nor a divisor of the input size",
            )


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A parameter or buffer as a numpy array (same dtype)."""
    return tensor.detach().cpu().numpy().copy()


def _hidden_reason(specs: list[_LayerSpec]) -> str | None:
    """Why iNNvestigate would not see the first conv/dense layer as its input layer."""
    kernel_specs = [s for s in specs if issubclass(s.cls, _KERNEL_LAYERS)]
    if not kernel_specs:
        return None
    first = kernel_specs[0]
    for spec in specs[: specs.index(first)]:
        if issubclass(spec.cls, _RESHAPE_LAYERS):
            continue
        detail = ""
        if issubclass(spec.cls, (tf.keras.layers.ZeroPadding1D, tf.keras.layers.ZeroPadding2D)):
            detail = (
                f" (padding {spec.config['padding']}: Keras 'same' cannot reproduce PyTorch's "
                "symmetric padding at this stride and input size)"
            )
        return (
            f"{spec.cls.__name__} '{spec.config['name']}'{detail} sits between the input and the "
            f"first conv/dense layer '{first.config['name']}', so iNNvestigate does not treat "
            "that layer as its input layer and silently drops input_layer_rule (METHODS trap 12)"
        )
    return None


# ----------------------------------------------------------------------------
# Keras side


def _build(specs: list[_LayerSpec], input_shape: tuple[int, ...], dtype: str) -> tf.keras.Model:
    """Build a new functional Keras model from layer specs."""
    keras_shape = (*input_shape[1:], input_shape[0]) if len(input_shape) > 1 else input_shape
    inputs = tf.keras.Input(shape=keras_shape, dtype=dtype, name="input")
    x = inputs
    for spec in specs:
        layer = spec.cls(**spec.config, dtype=dtype)
        x = layer(x, **spec.call_kwargs)
        if spec.weights:
            layer.set_weights(list(spec.weights))
    return tf.keras.Model(inputs, x, name="twin")


def _layer_output(model: tf.keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """Output of the named layer of ``model`` on ``x``.

    One layer per prediction: in graph mode TF 2.14's grappler remapper fuses
    e.g. Conv2D + BiasAdd + LeakyRelu and then cannot fetch the BiasAdd output
    together with later tensors ("not found in the Graph").
    """
    return tf.keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0)


def _keras_to_torch_layout(x: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    """Bring a Keras activation into PyTorch's layout."""
    if x.ndim > 2:
        return to_channels_first(x)
    if perm is None:
        return x
    out = np.empty_like(x)
    out[:, perm] = x
    return out


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference over the largest absolute expected value."""
    if actual.shape != expected.shape:
        return math.inf
    scale = float(np.max(np.abs(expected), initial=0.0))
    diff = float(np.max(np.abs(actual - expected), initial=0.0))
    return diff / scale if scale > 0 else diff


def _checkpoint_error(
    checkpoint: _Checkpoint, keras_act: np.ndarray, torch_acts: dict[str, Any]
) -> float:
    """Relative error of a Keras activation against the PyTorch node it stands for."""
    expected = torch_acts[checkpoint.node].numpy()
    return _relative_error(_keras_to_torch_layout(keras_act, checkpoint.perm), expected)
