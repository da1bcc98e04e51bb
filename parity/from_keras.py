"""PyTorch twins of Keras models: a TensorFlow user's model in, a readable PyTorch module out.

:func:`from_keras` turns a tf.keras (Keras 2) Sequential or functional model into a
:class:`FromKeras` module: ordinary channels-first torch layers in an ``nn.ModuleDict`` and a
``forward`` that walks the Keras graph step by step. The module can be saved with
``torch.save``, traced by ``torch.fx`` (the library's LRP reads that graph) and explained by
signxai. Every conversion checks itself on seeded random inputs and names the first Keras layer
whose output the torch module does not reproduce.

:func:`keras_twin` gives the other half of a parity check: the user's own Keras model, rebuilt
layer for layer from its configs and weights (in float32 or float64, its final softmax removed),
as a :class:`parity.twin.Twin`, so iNNvestigate runs on the original architecture and not on a
second conversion. :func:`compare_keras` runs the parity gate of :func:`parity.cli.compare_model`
on that pair; :func:`export` writes the torch module as a state dict plus a small Python file
that rebuilds it without this package.

Keras layers and their torch counterparts
-----------------------------------------
1-D and 2-D versions alike (``Conv1D`` becomes ``Conv1d``, ...):

=======================================  =======================================================
Conv (``groups``, dilation, 'causal')    Conv (``groups``), activation as its own module
DepthwiseConv (``depth_multiplier``)     Conv(``groups=C``), output ``c * m + k`` from channel c
Conv, DepthwiseConv: asymmetric 'same'   the library's Conv1dSame/Conv2dSame
ConvTranspose                            ConvTranspose (``output_padding`` where Keras adds)
Dense                                    Linear (input weights permuted after a Flatten of NHWC)
BatchNormalization                       BatchNorm1d/2d with Keras's epsilon
Activation, ReLU, LeakyReLU, ELU         ReLU, ReLU6 / Hardtanh(0, m), LeakyReLU, ELU, SiLU, ...
ZeroPadding                              ZeroPad
MaxPooling, AveragePooling               MaxPool, AvgPool(``count_include_pad=False``)
the same with asymmetric 'same'          the library's MaxPool1d/2dSame, AvgPool1d/2dSame
GlobalAverage/MaxPooling                 AdaptiveAvg/MaxPool(1) (+ Flatten without keepdims)
UpSampling (nearest)                     Upsample(nearest)
Flatten                                  Flatten
Add, Multiply, Concatenate (channels)    ``+``, ``*``, ``torch.cat(dim=1)`` in ``forward``
Dropout, SpatialDropout, GaussianNoise   nothing (inference)
a final softmax                          removed (both in the torch module and in the twin)
=======================================  =======================================================

A model nested in another (a pretrained base inside a ``Sequential``, as in transfer learning) is
flattened: its layers join the outer graph on the tensor it is called on, in the torch module
and in the reference rebuild alike (iNNvestigate 2.1.2 refuses the nested original: its convnet
check fires on the nested model as a layer). Layer names must then be unique across the nesting.

Not converted (an :class:`~parity.twin.UnsupportedLayerError` names the layer and its class):
SeparableConv, Lambda and TF-operator layers, Reshape/Permute, shared layers, and any other layer.

Keras 2.14 facts the conversion relies on
-----------------------------------------
* TF's ``'same'`` padding pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total, the odd
  element at the end; where that is asymmetric (often at stride 2) the torch convolution is the
  library's ``Conv1dSame``/``Conv2dSame`` (:mod:`signxai.torch_signxai.layers`), which pads so
  inside the layer, so that LRP rules see the layer's unpadded input as iNNvestigate's do on the
  Keras layer (a ``ZeroPad2d`` in front would make the padded tensor the rules' input);
  ``'causal'`` pads ``k - 1`` entries in front.
* TF's ``'same'`` average pooling divides by the number of real (unpadded) entries; where its
  padding is asymmetric the torch module uses the library's ``MaxPool2dSame``/``AvgPool2dSame``
  (and 1-d), which take TF's windows.
* Keras ``Flatten`` flattens NHWC; the torch module flattens NCHW and the next Dense layer's
  input weights are permuted to match, so the module stays channels-first.
* ``Conv2DTranspose`` with ``'valid'`` padding and no ``output_padding`` outputs
  ``n * s + max(k - s, 0)`` rows, PyTorch ``(n - 1) * s + k + output_padding``.
"""

from __future__ import annotations

import copy
import inspect
import keyword
import math
import operator
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial, reduce
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
import torch
from keras.src.utils.generic_utils import to_snake_case
from torch import nn

from signxai.torch_signxai import layers as same_layers

from .compare import relative_error
from .fanout import Backend
from .twin import (
    Twin,
    TwinMismatchError,
    UnsupportedLayerError,
    _build,
    _hidden_reason,
    _layer_output,
    _LayerSpec,
    keras_floatx,
    to_channels_first,
    to_channels_last,
)

if TYPE_CHECKING:
    from .pipeline import Outcome

__all__ = [
    "FromKeras",
    "Step",
    "from_keras",
    "keras_twin",
    "compare_keras",
    "torch_input_shape",
    "load_keras",
    "verify",
    "export",
    "export_source",
]

layers = tf.keras.layers

#: PyTorch's layer classes by spatial rank (1-D, 2-D); called with tuples of the layer's rank,
#: which torch's stubs spell per class
_RankedLayer = Callable[..., nn.Module]
_CONV: tuple[_RankedLayer, ...] = (nn.Conv1d, nn.Conv2d)
_SAME_CONV: tuple[_RankedLayer, ...] = (same_layers.Conv1dSame, same_layers.Conv2dSame)
_SAME_MAX_POOL: tuple[_RankedLayer, ...] = (same_layers.MaxPool1dSame, same_layers.MaxPool2dSame)
_SAME_AVG_POOL: tuple[_RankedLayer, ...] = (same_layers.AvgPool1dSame, same_layers.AvgPool2dSame)
_CONV_TRANSPOSE: tuple[_RankedLayer, ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d)
_ZERO_PAD: tuple[_RankedLayer, ...] = (nn.ZeroPad1d, nn.ZeroPad2d)
_MAX_POOL: tuple[_RankedLayer, ...] = (nn.MaxPool1d, nn.MaxPool2d)
_AVG_POOL: tuple[_RankedLayer, ...] = (nn.AvgPool1d, nn.AvgPool2d)
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the name of the model input among the step values (as in :mod:`parity.twin`)
_INPUT = "input"
#: layers that are identities at inference
_IDENTITIES = (
    layers.Dropout,
    layers.SpatialDropout1D,
    layers.SpatialDropout2D,
    layers.GaussianNoise,
    layers.GaussianDropout,
    layers.AlphaDropout,
    layers.ActivityRegularization,
)
#: max pooling layers (global ones included)
_MAX_POOLS = (layers.MaxPooling1D, layers.MaxPooling2D, layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D)
#: layers that combine several inputs
_MERGES = (layers.Add, layers.Multiply, layers.Concatenate)


# ----------------------------------------------------------------------------
# The torch module


@dataclass(frozen=True)
class Step:
    """One step of :meth:`FromKeras.forward`.

    Attributes
    ----------
    name : str
        The value it computes; for ``op='layer'`` also the key of its module in
        :attr:`FromKeras.layers`.
    op : {'layer', 'add', 'multiply', 'concat'}
        Apply the module, or combine the inputs by ``+``, ``*`` or ``torch.cat`` along channels.
    inputs : tuple of str
        The values it reads (``'input'`` is the model input).
    """

    name: str
    op: str
    inputs: tuple[str, ...]


#: how a combining step computes its value from its inputs
_COMBINE: dict[str, Callable[[list[torch.Tensor]], torch.Tensor]] = {
    "add": lambda xs: reduce(operator.add, xs),
    "multiply": lambda xs: reduce(operator.mul, xs),
    "concat": lambda xs: torch.cat(xs, dim=1),
}


class FromKeras(nn.Module):
    """A Keras model as a channels-first PyTorch module.

    Parameters
    ----------
    layers : dict of str to torch.nn.Module
        The torch layers, by step name (kept in :attr:`layers`, an ``nn.ModuleDict``).
    steps : sequence of Step
        The graph in execution order.
    output : str
        The step whose value the model returns.
    source : str
        The Keras model's name.
    layer_names : dict of str to str, optional
        Module path (``'layers.conv1'``) to the Keras layer it comes from; an activation split
        out of a conv/dense layer maps to that layer, whose Keras output it gives.
    keras_outputs : dict, optional
        Keras layer name to ``(step name, order)``: the step whose value is that layer's output,
        and for features flattened from NHWC the Keras feature held by each torch feature.
    dropped : tuple of str, optional
        Keras layers with no step (inference identities, a final softmax).
    """

    def __init__(
        self,
        layers: dict[str, nn.Module],
        steps: list[Step],
        output: str,
        source: str = "",
        layer_names: dict[str, str] | None = None,
        keras_outputs: dict[str, tuple[str, np.ndarray | None]] | None = None,
        dropped: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.steps = tuple(steps)
        self.output = output
        self.source = source
        self.layer_names = dict(layer_names or {})
        self.keras_outputs = dict(keras_outputs or {})
        self.dropped = tuple(dropped)

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every step's value on ``x`` (channels-first), by step name; ``'input'`` is ``x``."""
        values = {_INPUT: x}
        for step in self.steps:
            args = [values[name] for name in step.inputs]
            if step.op == "layer":
                values[step.name] = self.layers[step.name](*args)
            else:
                values[step.name] = _COMBINE[step.op](args)
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The Keras model's output (logits where it ended in a softmax) on ``x``, channels-first."""
        return self.activations(x)[self.output]


# ----------------------------------------------------------------------------
# Reading the Keras graph


def _inbound(layer: tf.keras.layers.Layer, model: tf.keras.Model) -> list[str]:
    """Names of the layers whose outputs ``layer`` takes in ``model``, checked to be one call (a
    nested model's layers have their node inside it; a model used elsewhere too, one per use)."""
    nodes = [node for k, node in enumerate(layer.inbound_nodes) if f"{layer.name}_ib-{k}" in model._network_nodes]
    if len(nodes) != 1:
        raise UnsupportedLayerError(
            f"{type(layer).__name__} '{layer.name}' is called {len(nodes)} times in '{model.name}'; the "
            "converter needs every layer called once (no shared layers)"
        )
    inbound = nodes[0].inbound_layers
    return [layer.name for layer in (inbound if isinstance(inbound, list) else [inbound])]


def _check_model(model: tf.keras.Model) -> None:
    """Raise UnsupportedLayerError unless ``model`` is a built single-input, single-output graph."""
    if not isinstance(model, tf.keras.Model) or not model.built or not hasattr(model, "inputs") or model.inputs is None:
        raise UnsupportedLayerError(
            f"{type(model).__name__} '{getattr(model, 'name', '?')}' is not a built Keras functional or "
            "Sequential model; build it with an input shape (e.g. tf.keras.Input) first"
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedLayerError(
            f"Keras model '{model.name}' has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "the converter needs exactly one of each"
        )


def _graph_layers(model: tf.keras.Model) -> Iterator[tuple[tf.keras.layers.Layer, list[str]]]:
    """Every layer but the inputs with the names of its inputs (the input layer named
    ``'input'``), in an order where inputs come first. A nested model is flattened: its layers
    (on the outer tensor it is called on), then the model itself with one input, its output
    layer, for which it stands. Layer names must be unique across the nesting."""
    _check_model(model)
    seen: set[str] = set()
    for layer, inputs in _walk(model, {model.input_names[0]: _INPUT}):
        if layer.name in seen or layer.name == _INPUT:
            raise UnsupportedLayerError(
                f"{type(layer).__name__} '{layer.name}': "
                + (
                    f"the name '{_INPUT}' is reserved for the input"
                    if layer.name == _INPUT
                    else "another layer of this name is in the model or a model nested in it; rename one"
                )
            )
        seen.add(layer.name)
        yield layer, inputs


def _walk(
    model: tf.keras.Model, rename: dict[str, str]
) -> Generator[tuple[tf.keras.layers.Layer, list[str]], None, str]:
    """:func:`_graph_layers` of one (possibly nested) model whose inputs ``rename`` names;
    returns the name of the layer whose output is the model's."""
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        inputs = [rename.get(name, name) for name in _inbound(layer, model)]
        if isinstance(layer, tf.keras.Model):
            _check_model(layer)
            output = yield from _walk(layer, {layer.input_names[0]: inputs[0]})
            yield layer, [output]
            continue
        yield layer, inputs
    name = model.output_names[0]
    return rename.get(name, name)


def _weights_of(model: tf.keras.Model) -> dict[str, dict[str, np.ndarray]]:
    """Every layer's weights by layer name and short weight name (``kernel``, ``bias``,
    ``gamma``, ``moving_mean``, ...), read in one go (in graph mode one session run)."""
    _check_model(model)
    values = tf.keras.backend.batch_get_value(model.weights)
    by_id = {id(weight): value for weight, value in zip(model.weights, values, strict=True)}
    return {
        layer.name: {weight.name.split("/")[-1].split(":")[0]: by_id[id(weight)] for weight in layer.weights}
        for layer, _ in _graph_layers(model)
        if not isinstance(layer, tf.keras.Model)
    }


def _output_layer(model: tf.keras.Model) -> tf.keras.layers.Layer:
    """The layer that computes the model's output (inside a nested model where one ends it)."""
    layer = model.get_layer(model.output_names[0])
    while isinstance(layer, tf.keras.Model):
        layer = layer.get_layer(layer.output_names[0])
    return layer


def _activation_name(layer: tf.keras.layers.Layer) -> str:
    """The name of a layer's (fused) activation function, ``'linear'`` for none."""
    activation = getattr(layer, "activation", None)
    return "linear" if activation is None else tf.keras.activations.serialize(activation)


def _is_softmax(layer: tf.keras.layers.Layer) -> bool:
    """Whether the layer is or ends in a softmax over the features."""
    return isinstance(layer, layers.Softmax) or _activation_name(layer) == "softmax"


def torch_input_shape(model: tf.keras.Model) -> tuple[int, ...]:
    """One input's shape as the torch twin takes it: channels first, no batch axis."""
    _check_model(model)
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise UnsupportedLayerError(
            f"Keras model '{model.name}' takes inputs of shape {shape}; the converter needs every "
            "non-batch axis fixed (give tf.keras.Input a full shape)"
        )
    return (shape[-1], *shape[:-1]) if len(shape) > 1 else shape


# ----------------------------------------------------------------------------
# Converting layers


@dataclass(frozen=True)
class _Value:
    """A torch value standing for a Keras layer's output.

    ``order`` is set for features flattened from NHWC: torch feature ``t`` is Keras feature
    ``order[t]``; None where the orders agree.
    """

    name: str
    order: np.ndarray | None = None


#: Keras activation name -> torch module factory
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "gelu": nn.GELU,
}


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


class _Converter:
    """Walks a Keras model's graph and collects torch layers, steps and the value of each layer."""

    def __init__(self, model: tf.keras.Model, dtype: torch.dtype) -> None:
        self.model = model
        self.dtype = dtype
        self.weights = _weights_of(model)
        self.modules: dict[str, nn.Module] = {}
        self.steps: list[Step] = []
        self.values: dict[str, _Value] = {_INPUT: _Value(_INPUT)}
        self.layer_names: dict[str, str] = {}  # torch module path -> Keras layer name
        self.dropped: list[str] = []
        self._names: set[str] = {_INPUT}
        self._handlers: list[tuple[tuple[type, ...], Callable]] = [
            ((tf.keras.Model,), self._nested),
            ((layers.InputLayer,), self._identity),
            (_IDENTITIES, self._identity),
            ((layers.DepthwiseConv1D, layers.DepthwiseConv2D), self._depthwise),
            ((layers.Conv1DTranspose, layers.Conv2DTranspose), self._conv_transpose),
            ((layers.SeparableConv1D, layers.SeparableConv2D), self._unsupported_layer),
            ((layers.Conv1D, layers.Conv2D), self._conv),  # after its subclasses above
            ((layers.Dense,), self._dense),
            ((layers.BatchNormalization,), self._batchnorm),
            ((layers.Activation, layers.Softmax), self._activation_layer),
            ((layers.ReLU,), self._relu),
            ((layers.LeakyReLU,), self._leaky_relu),
            ((layers.ELU,), self._elu),
            ((layers.ZeroPadding1D, layers.ZeroPadding2D), self._zero_padding),
            (
                (layers.MaxPooling1D, layers.MaxPooling2D, layers.AveragePooling1D, layers.AveragePooling2D),
                self._pooling,
            ),
            (
                (
                    layers.GlobalAveragePooling1D,
                    layers.GlobalAveragePooling2D,
                    layers.GlobalMaxPooling1D,
                    layers.GlobalMaxPooling2D,
                ),
                self._global_pooling,
            ),
            ((layers.UpSampling1D, layers.UpSampling2D), self._upsampling),
            ((layers.Flatten,), self._flatten),
            ((layers.Add,), partial(self._combine, "add")),
            ((layers.Multiply,), partial(self._combine, "multiply")),
            ((layers.Concatenate,), self._concat),
        ]

    def convert(self) -> str:
        """Convert every layer; return the name of the output value."""
        output = _output_layer(self.model)
        for layer, inputs in _graph_layers(self.model):
            self.layer = layer
            self.is_output = layer is output
            self.inputs = [self.values[name] for name in inputs]
            handler = next((h for classes, h in self._handlers if isinstance(layer, classes)), self._unsupported_layer)
            if len(self.inputs) != 1 and not isinstance(layer, _MERGES):
                raise self._error(f"takes {len(self.inputs)} tensors; the converter expects one")
            self.values[layer.name] = handler()
        value = self.values[output.name]
        if value.order is not None:
            raise self._error(
                "outputs features flattened from a spatial map, whose order differs "
                "between NHWC and NCHW; end the model with a Dense layer or pooling"
            )
        return value.name

    # -- bookkeeping ------------------------------------------------------

    def _error(self, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{type(self.layer).__name__} '{self.layer.name}' {why}")

    def _unsupported_layer(self) -> _Value:
        raise self._error("has no PyTorch counterpart in the converter (see parity.from_keras)")

    def _step_name(self, suffix: str = "") -> str:
        """A unique step name from the Keras layer's name."""
        base = re.sub(r"\W", "_", self.layer.name + suffix)
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def _layer(self, module: nn.Module, source: _Value, suffix: str = "", order: np.ndarray | None = None) -> _Value:
        """Add a module step on ``source``; the step's module path maps to the Keras layer."""
        name = self._step_name(suffix)
        self.modules[name] = module.to(self.dtype)
        self.steps.append(Step(name, "layer", (source.name,)))
        self.layer_names[f"layers.{name}"] = self.layer.name
        return _Value(name, order)

    def _spatial(self) -> int:
        """The number of spatial axes of the layer's input map, checked to be 1 or 2."""
        rank = len(self.layer.input_shape) - 2
        if rank not in (1, 2) or self.inputs[0].order is not None:
            raise self._error(
                f"gets an input of shape {self.layer.input_shape}; the converter supports 1-D and 2-D feature maps here"
            )
        if getattr(self.layer, "data_format", "channels_last") != "channels_last":
            raise self._error("uses data_format='channels_first'; the converter reads channels-last models")
        return rank

    def _weights(self) -> dict[str, np.ndarray]:
        """The layer's weights by their short names (``kernel``, ``bias``, ``gamma``, ...)."""
        return self.weights[self.layer.name]

    def _load(self, module: nn.Module, **params: np.ndarray) -> nn.Module:
        """Copy numpy arrays into the module's parameters and buffers of the same names."""
        with torch.no_grad():
            for name, array in params.items():
                getattr(module, name).copy_(_tensor(array, getattr(module, name).dtype))
        return module

    def _activation(self, value: _Value, name: str, suffix: str = "_act") -> _Value:
        """The activation ``name`` as its own module after ``value`` (nothing for linear)."""
        if name == "linear":
            return value
        if name == "softmax":
            if not self.is_output:
                raise self._error("applies a softmax before the last layer; the converter only removes a final softmax")
            self.dropped.append(f"{self.layer.name} (softmax)")
            return value
        if name not in _ACTIVATIONS:
            raise self._error(
                f"uses the activation {name!r}, which has no PyTorch module here "
                f"(supported: {', '.join(sorted(_ACTIVATIONS))}, softmax at the end)"
            )
        return self._layer(_ACTIVATIONS[name](), value, suffix, value.order)

    def _pad_module(self, value: _Value, pads: list[tuple[int, int]], suffix: str = "_pad") -> _Value:
        """Zero padding of (before, after) per spatial axis as ZeroPad1d/2d."""
        cls = _ZERO_PAD[len(pads) - 1]
        flat = tuple(p for pair in reversed(pads) for p in pair)  # torch: last axis first
        return self._layer(cls(flat), value, suffix)

    def _conv_module(self, rank: int, in_channels: int, out_channels: int, groups: int) -> tuple[_Value, nn.Module]:
        """The convolution of the Keras conv layer being converted (weights still to load) and
        its input: ``'valid'``, symmetric ``'same'`` as PyTorch's padding, asymmetric ``'same'``
        as the library's Conv1dSame/Conv2dSame, ``'causal'`` with a zero padding step in front."""
        conv, value = self.layer, self.inputs[0]
        kernels, strides, dilations = conv.kernel_size, conv.strides, conv.dilation_rate
        mode, cls, padding = conv.padding, _CONV[rank - 1], (0,) * rank
        if mode == "causal":
            value = self._pad_module(value, [(dilations[0] * (kernels[0] - 1), 0)])
        elif mode == "same":
            sizes = conv.input_shape[1:-1]
            pads = [same_layers.tf_same_padding(*axis) for axis in zip(sizes, kernels, strides, dilations, strict=True)]
            if all(before == after for before, after in pads):
                padding = tuple(before for before, _ in pads)
            else:
                cls = _SAME_CONV[rank - 1]
        elif mode != "valid":
            raise self._error(f"uses padding={mode!r}; the converter supports 'valid', 'same' and 'causal'")
        options = {} if cls is _SAME_CONV[rank - 1] else {"padding": padding}
        module = cls(
            in_channels,
            out_channels,
            kernels,
            stride=strides,
            dilation=dilations,
            groups=groups,
            bias=conv.use_bias,
            **options,
        )
        return value, module

    # -- handlers ---------------------------------------------------------

    def _identity(self) -> _Value:
        self.dropped.append(self.layer.name)
        return self.inputs[0]

    def _nested(self) -> _Value:
        """A nested model, after its layers: its output layer's value."""
        return self.inputs[0]

    def _conv(self) -> _Value:
        """Conv1D/Conv2D (grouped, dilated) as Conv1d/Conv2d; its activation as a module."""
        conv, rank = self.layer, self._spatial()
        weights = self._weights()
        kernel = weights["kernel"]  # (*k, in / groups, out)
        value, module = self._conv_module(rank, kernel.shape[-2] * conv.groups, conv.filters, conv.groups)
        self._load(module, weight=kernel.transpose(rank + 1, rank, *range(rank)), **self._bias(weights))
        return self._activation(self._layer(module, value), _activation_name(conv))

    def _bias(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"bias": weights["bias"]} if "bias" in weights else {}

    def _depthwise(self) -> _Value:
        """DepthwiseConv1D/2D as Conv1d/Conv2d(groups=C): output channel c * m + k reads
        channel c with the Keras kernel's ``[..., c, k]``."""
        conv, rank = self.layer, self._spatial()
        weights = self._weights()
        kernel = weights["depthwise_kernel"]  # (*k, C, m)
        channels, multiplier = kernel.shape[-2:]
        value, module = self._conv_module(rank, channels, channels * multiplier, channels)
        weight = kernel.transpose(rank, rank + 1, *range(rank)).reshape(channels * multiplier, 1, *conv.kernel_size)
        self._load(module, weight=weight, **self._bias(weights))
        return self._activation(self._layer(module, value), _activation_name(conv))

    def _conv_transpose(self) -> _Value:
        """Conv1DTranspose/Conv2DTranspose as ConvTranspose1d/2d: 'valid' needs PyTorch's
        output_padding where the stride exceeds the kernel; 'same' crops ``k - s`` rows, which
        PyTorch does only when they split evenly."""
        conv, rank = self.layer, self._spatial()
        if conv.output_padding is not None or max(conv.dilation_rate) > 1:
            raise self._error("sets output_padding or dilation, which the converter does not reproduce")
        kernels, strides = conv.kernel_size, conv.strides
        if conv.padding == "valid":
            padding, extra = (0,) * rank, tuple(max(s - k, 0) for k, s in zip(kernels, strides, strict=True))
        elif all(k >= s and (k - s) % 2 == 0 for k, s in zip(kernels, strides, strict=True)):
            padding, extra = tuple((k - s) // 2 for k, s in zip(kernels, strides, strict=True)), (0,) * rank
        else:
            raise self._error(
                f"uses 'same' padding with kernel {kernels} and strides {strides}, which "
                "crops asymmetrically; PyTorch's transposed convolution crops symmetrically"
            )
        weights = self._weights()
        kernel = weights["kernel"]  # (*k, out, in)
        module = _CONV_TRANSPOSE[rank - 1](
            kernel.shape[-1],
            conv.filters,
            kernels,
            stride=strides,
            padding=padding,
            output_padding=extra,
            bias=conv.use_bias,
        )
        self._load(module, weight=kernel.transpose(rank + 1, rank, *range(rank)), **self._bias(weights))
        return self._activation(self._layer(module, self.inputs[0]), _activation_name(conv))

    def _dense(self) -> _Value:
        """Dense as Linear; after a Flatten of NHWC its input weights follow the torch order."""
        dense, value = self.layer, self.inputs[0]
        if len(dense.input_shape) != 2:
            raise self._error(
                f"gets an input of shape {dense.input_shape}; the converter needs flat features (add a Flatten)"
            )
        weights = self._weights()
        kernel = weights["kernel"]  # (in, out)
        if value.order is not None:
            kernel = kernel[value.order]
        module = nn.Linear(kernel.shape[0], dense.units, bias=dense.use_bias)
        self._load(module, weight=kernel.T, **self._bias(weights))
        return self._activation(self._layer(module, value), _activation_name(dense))

    def _batchnorm(self) -> _Value:
        """BatchNormalization over the channel axis as BatchNorm1d/2d with Keras's epsilon."""
        bn, value = self.layer, self.inputs[0]
        rank = len(bn.input_shape)
        if rank not in (2, 3, 4) or list(bn.axis) != [rank - 1]:
            raise self._error(
                f"normalises axis {bn.axis} of a rank-{rank} input; the converter "
                "supports the channel (last) axis of flat features and 1-D or 2-D maps"
            )
        weights = self._weights()
        mean, var = weights["moving_mean"], weights["moving_variance"]
        gamma, beta = weights.get("gamma", np.ones_like(mean)), weights.get("beta", np.zeros_like(mean))
        params = {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var}
        if value.order is not None:
            params = {key: array[value.order] for key, array in params.items()}
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        module = cls(mean.shape[0], eps=float(bn.epsilon), momentum=round(1.0 - float(bn.momentum), 12))
        self._load(module, **params)
        return self._layer(module.eval(), value, order=value.order)

    def _activation_layer(self) -> _Value:
        """An Activation or Softmax layer."""
        if isinstance(self.layer, layers.Softmax):
            return self._activation(self.inputs[0], "softmax", "")
        return self._activation(self.inputs[0], _activation_name(self.layer), "")

    def _relu(self) -> _Value:
        """ReLU(max_value, negative_slope, threshold): ReLU, ReLU6 or Hardtanh(0, max_value)."""
        relu = self.layer
        if float(relu.negative_slope) != 0.0 or float(relu.threshold) != 0.0:
            raise self._error("has a negative_slope or threshold; use LeakyReLU or none")
        top = None if relu.max_value is None else float(relu.max_value)
        module = nn.ReLU() if top is None else nn.ReLU6() if top == 6.0 else nn.Hardtanh(0.0, top)
        return self._layer(module, self.inputs[0], order=self.inputs[0].order)

    def _leaky_relu(self) -> _Value:
        return self._layer(nn.LeakyReLU(float(self.layer.alpha)), self.inputs[0], order=self.inputs[0].order)

    def _elu(self) -> _Value:
        return self._layer(nn.ELU(float(self.layer.alpha)), self.inputs[0], order=self.inputs[0].order)

    def _zero_padding(self) -> _Value:
        rank = self._spatial()
        pads = [tuple(self.layer.padding)] if rank == 1 else [tuple(p) for p in self.layer.padding]
        return self._pad_module(self.inputs[0], pads, "")

    def _pooling(self) -> _Value:
        """Max/average pooling; TF's 'same' average divides by the real entries."""
        pool, rank = self.layer, self._spatial()
        is_max = isinstance(pool, _MAX_POOLS)
        padding = (0,) * rank
        if pool.padding == "same":
            sizes = pool.input_shape[1:-1]
            pads = [
                same_layers.tf_same_padding(n, k, s)
                for n, k, s in zip(sizes, pool.pool_size, pool.strides, strict=True)
            ]
            if any(before != after for before, after in pads):  # the library's TF-'same' pooling
                same = (_SAME_MAX_POOL if is_max else _SAME_AVG_POOL)[rank - 1]
                return self._layer(same(pool.pool_size, pool.strides), self.inputs[0])
            padding = tuple(before for before, _ in pads)
        if is_max:
            module = _MAX_POOL[rank - 1](pool.pool_size, pool.strides, padding)
        else:
            module = _AVG_POOL[rank - 1](pool.pool_size, pool.strides, padding, count_include_pad=False)
        return self._layer(module, self.inputs[0])

    def _global_pooling(self) -> _Value:
        """Global average/max pooling: adaptive pooling to size 1, flattened unless keepdims."""
        rank = self._spatial()
        classes = (
            (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
            if isinstance(self.layer, _MAX_POOLS)
            else (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
        )
        value = self._layer(classes[rank - 1](1), self.inputs[0])
        return value if self.layer.keepdims else self._layer(nn.Flatten(), value, "_flatten")

    def _upsampling(self) -> _Value:
        """Nearest upsampling by integer factors."""
        rank = self._spatial()
        if getattr(self.layer, "interpolation", "nearest") != "nearest":
            raise self._error(f"uses interpolation={self.layer.interpolation!r}; the converter supports 'nearest'")
        sizes = (self.layer.size,) if rank == 1 else self.layer.size
        factors = tuple(float(f) for f in sizes)
        return self._layer(nn.Upsample(scale_factor=factors, mode="nearest"), self.inputs[0])

    def _flatten(self) -> _Value:
        """Flatten; a channels-last map's Keras feature order is remembered for the next layers."""
        value, shape = self.inputs[0], tuple(self.layer.input_shape[1:])
        if len(shape) == 1:
            return self._identity()
        rank = self._spatial()
        keras_index = np.arange(math.prod(shape)).reshape(shape)
        order = np.transpose(keras_index, (rank, *range(rank))).ravel()
        natural = np.array_equal(order, np.arange(order.size))
        return self._layer(nn.Flatten(), value, order=None if natural else order)

    def _combine(self, op: str) -> _Value:
        """A step combining the inputs by ``op``; flattened inputs must share one order."""
        orders = [v.order for v in self.inputs]
        first = orders[0]
        if any(o is not None for o in orders) and not (
            first is not None and all(o is not None and np.array_equal(o, first) for o in orders)
        ):
            raise self._error("combines features flattened in different orders")
        name = self._step_name()
        self.steps.append(Step(name, op, tuple(v.name for v in self.inputs)))
        return _Value(name, orders[0])

    def _concat(self) -> _Value:
        """Concatenate along the channel axis (the last Keras axis, dim 1 in torch)."""
        rank = len(self.layer.output_shape)
        if self.layer.axis % rank != rank - 1 or any(v.order is not None for v in self.inputs):
            raise self._error(
                f"concatenates along axis {self.layer.axis} of rank-{rank} tensors; "
                "the converter supports the channel (last) axis of unflattened values"
            )
        return self._combine("concat")


# ----------------------------------------------------------------------------
# The converter's entry point and its forward check


def from_keras(
    model: tf.keras.Model, *, dtype: str = "float32", check: bool = True, rtol: float = 1e-5, seed: int = 0
) -> FromKeras:
    """Convert a Keras model into a PyTorch :class:`FromKeras` module with identical weights.

    Parameters
    ----------
    model : tf.keras.Model
        A built Sequential or functional Keras 2 model, channels-last, with one input and one
        output, of the layers in the module docstring. It is not modified.
    dtype : {'float32', 'float64'}
        dtype of the torch parameters.
    check : bool
        Compare both models' forward passes on seeded inputs (:func:`verify`) before returning.
    rtol : float
        Tolerance of the check, relative to the largest absolute output.
    seed : int
        Seed of the check's standard-normal inputs.

    Returns
    -------
    FromKeras
        The torch module, in eval mode, channels-first; a final softmax is removed (it returns
        logits).

    Raises
    ------
    UnsupportedLayerError
        For a layer (named with its class) or a topology the converter cannot reproduce.
    TwinMismatchError
        When ``check`` is set and the outputs disagree; the message names the first Keras layer
        whose output differs.
    """
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    converter = _Converter(model, _TORCH_DTYPES[dtype])
    output = converter.convert()
    if output == _INPUT:
        raise UnsupportedLayerError(f"Keras model '{model.name}' has no layer with a PyTorch counterpart")
    keras_outputs = {name: (v.name, v.order) for name, v in converter.values.items() if name != _INPUT}
    module = FromKeras(
        converter.modules,
        converter.steps,
        output,
        model.name,
        converter.layer_names,
        keras_outputs,
        tuple(converter.dropped),
    ).eval()
    if check:
        verify(model, module, rtol=rtol, seed=seed)
    return module


def verify(
    keras_model: tf.keras.Model, module: FromKeras, *, rtol: float = 1e-5, seed: int = 0, batch: int = 4
) -> float:
    """Check a :class:`FromKeras` module against a Keras model on seeded standard-normal inputs.

    Parameters
    ----------
    keras_model : tf.keras.Model
        The model it was converted from, or a :func:`keras_twin` of it (same layer names); the
        inputs are drawn in its dtype and the module is run in that dtype.
    module : FromKeras
        The module :func:`from_keras` returned.
    rtol : float
        Largest accepted error of the output, relative to its largest absolute value.
    seed, batch : int
        Seed and number of the random inputs.

    Returns
    -------
    float
        The relative error of the output (of the softmax of the module's logits where the Keras
        model ends in a softmax).

    Raises
    ------
    TwinMismatchError
        When it exceeds ``rtol``; the message names the first Keras layer whose output differs
        by more than ``rtol``.
    """
    dtype = tf.as_dtype(keras_model.inputs[0].dtype).name
    shape = torch_input_shape(keras_model)
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(dtype)
    torch_model = copy.deepcopy(module).to(_TORCH_DTYPES[dtype])
    with torch.no_grad():
        values = torch_model.activations(torch.from_numpy(x))
    x_keras = to_channels_last(x)
    final = _output_layer(keras_model)

    def step(layer: tf.keras.layers.Layer) -> tuple[str, np.ndarray | None]:
        """The step and feature order of a Keras layer's output (``'input'``: no step)."""
        name = layer.name
        if name not in module.keras_outputs and name.startswith("user_"):  # a keras_twin's name
            name = name[len("user_") :]
        return module.keras_outputs.get(name, (_INPUT, None))

    def torch_value(layer: tf.keras.layers.Layer) -> np.ndarray:
        """The torch value of a Keras layer's output, in its Keras layout."""
        name, order = step(layer)
        value = values[name]
        if layer is final and _is_softmax(layer):  # the module returns the logits
            value = torch.softmax(value, dim=1)
        return _keras_layout(value.numpy(), order)

    with keras_floatx(dtype):  # predict casts its inputs to floatx
        error = relative_error(torch_value(final), keras_model.predict(x_keras, verbose=0))
        if error <= rtol:
            return error
        for layer in keras_model.layers[1:]:
            if step(layer)[0] == _INPUT:
                continue  # no step of its own: an identity of the input
            layer_error = relative_error(torch_value(layer), _layer_output(keras_model, layer.name, x_keras))
            if layer_error > rtol:
                raise TwinMismatchError(
                    f"the PyTorch module's output differs from Keras by {error:.3g} (relative to the "
                    f"largest |output|, rtol {rtol:g}); activations first diverge at Keras layer "
                    f"'{layer.name}' ({type(layer).__name__}, torch step '{step(layer)[0]}') with "
                    f"relative error {layer_error:.3g}"
                )
    raise TwinMismatchError(f"the PyTorch module's output differs from Keras by {error:.3g} (rtol {rtol:g})")


def _keras_layout(value: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """A torch value (batch first) in the layout of its Keras layer's output."""
    if value.ndim > 2:
        return to_channels_last(value)
    if order is None:
        return value
    out = np.empty_like(value)
    out[:, order] = value
    return out


# ----------------------------------------------------------------------------
# The reference side: the user's own Keras model, rebuilt for iNNvestigate


def _initializer_key(layer: tf.keras.layers.Layer, weight: str) -> str:
    """The constructor argument that initialises the layer's weight ``weight``."""
    key = {"depthwise_kernel": "depthwise_initializer"}.get(weight, f"{weight}_initializer")
    if key not in layer.get_config():
        raise UnsupportedLayerError(
            f"{type(layer).__name__} '{layer.name}' has a weight {weight!r} without a "
            f"'{key}' argument, so it cannot be rebuilt with its weights"
        )
    return key


#: stems of Keras's default layer names (``add``, ``conv2d_3``: the class name in snake case)
_DEFAULT_STEMS = frozenset(to_snake_case(name) for name in dir(layers) if isinstance(getattr(layers, name), type))


def _reference_name(name: str) -> str:
    """The name of a Keras layer in the rebuilt model: a default name such as ``add`` gets the
    prefix ``user_``, since the layers iNNvestigate adds to a model take default names of their
    own, and Keras rejects a model with two layers of one name."""
    return f"user_{name}" if re.sub(r"_\d+$", "", name) in _DEFAULT_STEMS else name


def _ref_input(name: str) -> str:
    return name if name == _INPUT else _reference_name(name)


def _specs(model: tf.keras.Model, dtype: str) -> tuple[list[_LayerSpec], str, list[str]]:
    """Layer specs that rebuild ``model`` (:func:`parity.twin._build`) in ``dtype``: each layer's
    class and config, its weights as initializers, BatchNormalization called in inference mode;
    inference identities (Dropout, ...) and a final softmax removed. Returns the specs, the
    output layer and the removed layers."""
    output = _output_layer(model)
    specs: dict[str, _LayerSpec] = {}
    removed = []
    weights = _weights_of(model)
    rename: dict[str, str] = {}  # an inference identity's output is its input
    for layer, inputs in _graph_layers(model):
        inputs = [rename.get(name, name) for name in inputs]
        if isinstance(layer, (*_IDENTITIES, tf.keras.Model)):  # a nested model: its layers are in specs
            rename[layer.name] = inputs[0]
            if not isinstance(layer, tf.keras.Model):
                removed.append(layer.name)
            continue
        config = {key: value for key, value in layer.get_config().items() if key != "dtype"}
        config["name"] = _reference_name(layer.name)
        initial = {}
        for weight, value in weights[layer.name].items():
            key = _initializer_key(layer, weight)
            config.pop(key)
            initial[key] = value.astype(dtype)
        call_kwargs = {"training": False} if isinstance(layer, layers.BatchNormalization) else {}
        specs[layer.name] = _LayerSpec(type(layer), config, tuple(map(_ref_input, inputs)), initial, call_kwargs)
    name = rename.get(output.name, output.name)  # a final Dropout: the layer before it
    if name == _INPUT:
        raise UnsupportedLayerError(f"Keras model '{model.name}' has no layer with a PyTorch counterpart")
    if _is_softmax(output):
        removed.append(output.name)
        if "activation" in specs[name].config:  # fused: the layer without its softmax
            specs[name].config["activation"] = "linear"
        else:
            (source,) = specs.pop(name).inputs
            if source == _INPUT:
                raise UnsupportedLayerError(f"Keras model '{model.name}' is a softmax of its input")
            return list(specs.values()), source, removed
    return list(specs.values()), specs[name].config["name"], removed


def keras_twin(model: tf.keras.Model, dtype: str = "float32", torch_model: FromKeras | None = None) -> Twin:
    """The user's Keras model as the reference side of a parity check.

    The model is rebuilt layer for layer (same classes, configs, names and weights, weights as
    ``Constant`` initializers, BatchNormalization in inference mode) in ``dtype``, without a
    final softmax, so iNNvestigate analyses the original architecture; :meth:`Twin.fresh` gives
    new copies for each analyzer.

    Parameters
    ----------
    model : tf.keras.Model
        The user's model (see :func:`from_keras`).
    dtype : {'float32', 'float64'}
        dtype of every layer; analyse a float64 twin inside :meth:`Twin.floatx`.
    torch_model : FromKeras, optional
        Its torch twin, whose module paths :attr:`Twin.layer_names` maps to Keras layers
        (default: converted here, unchecked).

    Returns
    -------
    parity.twin.Twin
        With ``keras_model``, ``layer_names``, ``input_layer_hidden`` and ``hidden_reason`` (a
        layer other than Flatten/Reshape in front of a first conv/dense layer, e.g. ResNet's
        ``ZeroPadding2D``, hides it from iNNvestigate's input-layer rules), ``dropped`` (the
        removed layers) and ``input_shape`` (channels-first). It has no torch graph:
        :meth:`Twin.verify` does not apply; check with :func:`verify`.
    """
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if torch_model is None:
        torch_model = from_keras(model, check=False)
    specs, output, removed = _specs(model, dtype)
    shape = torch_input_shape(model)
    hidden = _hidden_reason(specs, padding_note=False)
    layer_names = {path: _reference_name(name) for path, name in torch_model.layer_names.items()}
    return Twin(
        keras_model=_build(specs, shape, dtype, output),
        layer_names=layer_names,
        input_layer_hidden=hidden is not None,
        hidden_reason=hidden,
        dropped=tuple(removed),
        input_shape=shape,
        dtype=dtype,
        _specs=specs,
        _output=output,
    )


# ----------------------------------------------------------------------------
# The parity check on a Keras model


def compare_keras(
    keras_model: tf.keras.Model,
    x: np.ndarray,
    names: list[str] | None = None,
    *,
    label: str | None = None,
    tolerance: float | None = None,
    float64: bool = True,
    progress: bool = False,
    cache: Path | None = None,
    torch_model: FromKeras | None = None,
) -> tuple[Outcome, FromKeras]:
    """Compare signxai's maps of the torch twin of ``keras_model`` with iNNvestigate's on
    ``keras_model`` itself (rebuilt by :func:`keras_twin`, no second conversion), through the
    parity pipeline (:func:`parity.pipeline.check`), in this process.

    TensorFlow must be in graph mode (:func:`parity.harness.graph_mode`) and the model built
    or loaded there. The harness clears the Keras session between maps, so ``keras_model``
    cannot run after the check.

    Parameters
    ----------
    keras_model : tf.keras.Model
        The user's model (see :func:`from_keras`); a final softmax is left out on both sides.
    x : numpy.ndarray
        Inputs with batch axis in the Keras model's layout (channels last).
    names, tolerance, float64, progress, cache
        As for :func:`parity.pipeline.check`.
    label : str, optional
        The model's name in the report (default: the Keras model's name).
    torch_model : FromKeras, optional
        Its torch twin, if already converted (default: :func:`from_keras`, checked).

    Returns
    -------
    outcome : parity.pipeline.Outcome
        The judged rows and the float32 maps of both frameworks (channels first).
    torch_model : FromKeras
        The torch twin the maps were computed on.

    Raises
    ------
    parity.pipeline.UsageError
        When a layer cannot be converted, the converted module does not reproduce the model, the
        inputs do not fit, or for any reason :func:`parity.pipeline.check` gives.
    """
    from .pipeline import Subject, UsageError, check, flat

    try:
        torch_model = from_keras(keras_model) if torch_model is None else torch_model
    except UnsupportedLayerError as error:
        raise UsageError(f"unsupported layer for the PyTorch twin: {flat(error)}") from error
    except TwinMismatchError as error:
        raise UsageError(
            f"the PyTorch twin does not reproduce the Keras model's outputs, so no map can be compared: {flat(error)}"
        ) from error
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] != tuple(keras_model.inputs[0].shape[1:]):
        raise UsageError(
            f"the inputs have shape {x.shape}; the Keras model takes "
            f"(batch, {', '.join(map(str, keras_model.inputs[0].shape[1:]))}), channels last"
        )
    # read now: the harness clears the Keras session (and with it the user's model) between maps
    dtypes = ("float32", "float64") if float64 else ("float32",)
    twins = {dtype: keras_twin(keras_model, dtype, torch_model) for dtype in dtypes}
    subject = Subject(label or keras_model.name, torch_model, to_channels_first(x), reference=twins.__getitem__)
    outcome = check(
        [subject],
        names,
        float64=float64,
        tolerance=tolerance,
        backend=Backend(workers=1),
        cache=cache,
        progress=progress,
    )
    return outcome, torch_model


# ----------------------------------------------------------------------------
# Loading a Keras model


#: a child process that re-saves a ``.keras`` file as HDF5 (argv: source, target)
_KERAS_TO_H5 = "import sys, tensorflow as tf; tf.keras.models.load_model(sys.argv[1], compile=False).save(sys.argv[2])"


def _load_file(path: Path) -> tf.keras.Model:
    """``tf.keras.models.load_model(path, compile=False)``; in graph mode a ``.keras`` file goes
    through HDF5 first, re-saved by an eager child process: Keras 2.14 loads a ``.keras`` file's
    weights with assignments that graph mode never runs, so the model would keep its random
    initial weights."""
    if path.suffix != ".keras" or tf.executing_eagerly():
        return tf.keras.models.load_model(path, compile=False)
    with tempfile.TemporaryDirectory(prefix="signxai-keras-") as folder:
        target = Path(folder) / f"{path.stem}.h5"
        child = subprocess.run(
            [sys.executable, "-c", _KERAS_TO_H5, str(path), str(target)],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if child.returncode != 0:
            raise RuntimeError(
                child.stderr.strip().splitlines()[-1]
                if child.stderr.strip()
                else f"re-saving as HDF5 failed with exit status {child.returncode}"
            )
        return tf.keras.models.load_model(target, compile=False)


def load_keras(source: str) -> tf.keras.Model:
    """Load the Keras model ``source`` names.

    Parameters
    ----------
    source : str
        A ``.h5`` or ``.keras`` file or a SavedModel folder (loaded with
        ``tf.keras.models.load_model(source, compile=False)``; in graph mode a ``.keras`` file is
        first re-saved as HDF5 by an eager child process, since graph mode would not load its
        weights), or ``module:function``, a factory
        returning the model, imported with the current folder on ``sys.path``.

    Returns
    -------
    tf.keras.Model

    Raises
    ------
    parity.cli.UsageError
        When nothing can be loaded from ``source`` or the factory returns no Keras model.
    """
    from .cli import load_factory
    from .pipeline import UsageError, one_line

    path = Path(source)
    tf.random.set_seed(0)  # TF's op determinism (the harness's) refuses Dropout layers without a seed
    if not path.exists() and ":" in source and not source.endswith((".h5", ".keras")):
        factory = load_factory(source)
        try:
            model = factory()
        except Exception as error:
            raise UsageError(f"{source}() raised {one_line(error)}") from error
    elif not path.exists():
        raise UsageError(
            f"no such file or folder: {source} (give a .h5 or .keras file, a SavedModel "
            f"folder, or MODULE:FUNCTION returning a Keras model)"
        )
    else:
        try:
            model = _load_file(path)
        except Exception as error:
            raise UsageError(f"cannot load a Keras model from {source}: {one_line(error)}") from error
    if not isinstance(model, tf.keras.Model):
        raise UsageError(
            f"{source} gives an object of type {type(model).__name__}, not a tf.keras.Model "
            f"(a SavedModel folder must have been written by Keras' model.save)"
        )
    return model


# ----------------------------------------------------------------------------
# Exporting the torch module without this package

#: constructor arguments of the torch layers the converter makes, read back from their attributes
_CONSTRUCTOR_ARGS: dict[type, tuple[str, ...]] = {
    **dict.fromkeys(
        (nn.Conv1d, nn.Conv2d),
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    ),
    **dict.fromkeys(
        same_layers.SAME_CONVS, ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups")
    ),
    **dict.fromkeys(same_layers.SAME_POOLS, ("kernel_size", "stride")),
    **dict.fromkeys(
        (nn.ConvTranspose1d, nn.ConvTranspose2d),
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding"),
    ),
    nn.Linear: ("in_features", "out_features"),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d), ("num_features", "eps", "momentum")),
    nn.ReLU: (),
    nn.ReLU6: (),
    nn.Sigmoid: (),
    nn.Tanh: (),
    nn.SiLU: (),
    nn.SELU: (),
    nn.Softsign: (),
    nn.ELU: ("alpha",),
    nn.LeakyReLU: ("negative_slope",),
    nn.Hardtanh: ("min_val", "max_val"),
    nn.Softplus: ("beta", "threshold"),
    nn.GELU: ("approximate",),
    **dict.fromkeys((nn.ZeroPad1d, nn.ZeroPad2d), ("padding",)),
    **dict.fromkeys((nn.MaxPool1d, nn.MaxPool2d), ("kernel_size", "stride", "padding")),
    **dict.fromkeys((nn.AvgPool1d, nn.AvgPool2d), ("kernel_size", "stride", "padding", "count_include_pad")),
    **dict.fromkeys(
        (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d), ("output_size",)
    ),
    nn.Upsample: ("scale_factor", "mode"),
    nn.Flatten: ("start_dim", "end_dim"),
}
#: how a combining step is written in the exported forward
_COMBINE_SOURCE = {"add": " + ", "multiply": " * "}


def _constructor(module: nn.Module) -> str:
    """Python source that builds ``module`` (its weights come from the state dict)."""
    cls = type(module)
    if cls not in _CONSTRUCTOR_ARGS:
        raise UnsupportedLayerError(f"{cls.__name__} has no constructor in the export table")
    args = {name: getattr(module, name) for name in _CONSTRUCTOR_ARGS[cls]}
    if hasattr(module, "bias") and cls not in (nn.BatchNorm1d, nn.BatchNorm2d):
        args["bias"] = module.bias is not None
    prefix = "" if cls in same_layers.SAME_LAYERS else "nn."  # the library's own layers: defined in the file
    return f"{prefix}{cls.__name__}({', '.join(f'{key}={value!r}' for key, value in args.items())})"


def _library_layers_source(module: FromKeras) -> str:
    """The source of the library's TF-'same' layers (:mod:`signxai.torch_signxai.layers`, torch
    alone) that ``module`` uses, with their helpers and bases, for the exported file; '' if none."""
    used = [cls for cls in same_layers.SAME_LAYERS if any(type(layer) is cls for layer in module.layers.values())]
    if not used:
        return ""
    # each class after its bases from that module (the mixins)
    classes = dict.fromkeys(c for cls in used for c in reversed(cls.__mro__) if c.__module__ == same_layers.__name__)
    parts: list[Callable[..., object]] = [
        same_layers.tf_same_padding,
        same_layers.tf_same_pad,
        same_layers._per_axis,
        *classes,
    ]
    return "import torch.nn.functional as F\n\n\n" + "\n\n".join(inspect.getsource(part) for part in parts)


def _variable(name: str, taken: set[str]) -> str:
    """A Python identifier for a step value, not a keyword or one of the file's own names."""
    variable = re.sub(r"\W", "_", name)
    if not variable.isidentifier() or keyword.iskeyword(variable) or variable in taken:
        variable = f"v_{variable}"
    return variable


def export_source(module: FromKeras, class_name: str = "Model") -> str:
    """The source of a Python module defining ``class_name``, which rebuilds ``module``'s
    architecture with torch alone (same state-dict keys); see :func:`export`."""
    reserved = {"self", "x", "torch", "nn", "layers", class_name}
    names = {_INPUT: "x", **{step.name: _variable(step.name, reserved) for step in module.steps}}
    constructors = "\n".join(f"            {name!r}: {_constructor(layer)}," for name, layer in module.layers.items())
    lines = []
    for step in module.steps:
        args = [names[name] for name in step.inputs]
        if step.op == "layer":
            expression = f"layers[{step.name!r}]({args[0]})"
        elif step.op == "concat":
            expression = f"torch.cat([{', '.join(args)}], dim=1)"
        else:
            expression = _COMBINE_SOURCE[step.op].join(args)
        lines.append(f"        {names[step.name]} = {expression}")
    body = "\n".join(lines)
    return f'''"""PyTorch model converted from the Keras model {module.source!r} (channels first; a final
softmax removed, so it returns logits). Load it with::

    model = {class_name}()
    model.load_state_dict(torch.load("state_dict.pt", weights_only=True))
    model.eval()
"""
import torch
from torch import nn
{_library_layers_source(module)}

class {class_name}(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleDict({{
{constructors}
        }})

    def forward(self, x):
        layers = self.layers
{body}
        return {names[module.output]}
'''


def export(module: FromKeras, folder: str | Path, class_name: str = "Model") -> tuple[Path, Path]:
    """Write ``module`` so that torch alone can load it: ``model.py`` (:func:`export_source`) and
    ``state_dict.pt`` (``torch.save(module.state_dict())``) in ``folder`` (created if needed).

    Returns
    -------
    tuple of pathlib.Path
        The paths of ``model.py`` and ``state_dict.pt``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source, weights = folder / "model.py", folder / "state_dict.pt"
    source.write_text(export_source(module, class_name))
    torch.save(module.state_dict(), weights)
    return source, weights
