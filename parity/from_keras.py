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
=======================================  =======================================================
Conv2D (``groups``, dilation)            Conv2d (``groups``), activation as its own module
DepthwiseConv2D (``depth_multiplier``)   Conv2d(``groups=C``), output ``c * m + k`` from channel c
Conv2DTranspose                          ConvTranspose2d (``output_padding`` where Keras adds)
Dense                                    Linear (input weights permuted after a Flatten of NHWC)
BatchNormalization                       BatchNorm1d/2d with Keras's epsilon
Activation, ReLU, LeakyReLU, ELU         ReLU, ReLU6 / Hardtanh(0, m), LeakyReLU, ELU, SiLU, ...
ZeroPadding2D                            ZeroPad2d
MaxPooling2D, AveragePooling2D           MaxPool2d, AvgPool2d(``count_include_pad=False``)
GlobalAverage/MaxPooling2D               AdaptiveAvg/MaxPool2d(1) (+ Flatten without keepdims)
UpSampling2D (nearest)                   Upsample(nearest)
Flatten                                  Flatten
Add, Multiply, Concatenate               ``+``, ``*``, ``torch.cat`` in ``forward``
Dropout, SpatialDropout2D, GaussianNoise nothing (inference)
a final softmax                          removed (both in the torch module and in the twin)
=======================================  =======================================================

Keras 2.14 facts the conversion relies on
-----------------------------------------
* TF's ``'same'`` padding pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total, the odd
  element at the end; where that is asymmetric (often at stride 2) the torch module pads
  explicitly with ``ZeroPad2d`` in front of a ``'valid'`` convolution.
* TF's ``'same'`` average pooling divides by the number of real (unpadded) entries.
* Keras ``Flatten`` flattens NHWC; the torch module flattens NCHW and the next Dense layer's
  input weights are permuted to match, so the module stays channels-first.
* ``Conv2DTranspose`` with ``'valid'`` padding and no ``output_padding`` outputs
  ``n * s + max(k - s, 0)`` rows, PyTorch ``(n - 1) * s + k + output_padding``.
"""
from __future__ import annotations

import copy
import keyword
import math
import operator
import re
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial, reduce
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import numpy as np
import tensorflow as tf
import torch
from keras.src.utils.generic_utils import to_snake_case
from torch import nn

from . import twin as twin_module
from .twin import (
    Twin,
    TwinMismatchError,
    UnsupportedLayerError,
    _build,
    _hidden_reason,
    _layer_output,
    _LayerSpec,
    _relative_error,
    keras_floatx,
    to_channels_first,
    to_channels_last,
)

__all__ = [
    "FromKeras",
    "Step",
    "from_keras",
    "keras_twin",
    "compare_keras",
    "torch_input_shape",
    "load_keras",
    "export",
]

layers = tf.keras.layers
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the name of the model input among the step values (as in :mod:`parity.twin`)
_INPUT = "input"
#: layers that are identities at inference
_IDENTITIES = (layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D, layers.GaussianNoise,
               layers.GaussianDropout, layers.AlphaDropout, layers.ActivityRegularization)
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

    def __init__(self, layers: dict[str, nn.Module], steps: list[Step], output: str, source: str = "",
                 layer_names: dict[str, str] | None = None,
                 keras_outputs: dict[str, tuple[str, np.ndarray | None]] | None = None,
                 dropped: tuple[str, ...] = ()) -> None:
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


def _inbound(layer: layers.Layer) -> list[str]:
    """Names of the layers whose outputs ``layer`` takes, checked to be one call."""
    nodes = layer.inbound_nodes
    if len(nodes) != 1:
        raise UnsupportedLayerError(
            f"{type(layer).__name__} '{layer.name}' is called {len(nodes)} times; the converter "
            "needs every layer called once (no shared layers)")
    inbound = nodes[0].inbound_layers
    return [l.name for l in (inbound if isinstance(inbound, list) else [inbound])]


def _check_model(model: tf.keras.Model) -> None:
    """Raise UnsupportedLayerError unless ``model`` is a built single-input, single-output graph."""
    if not isinstance(model, tf.keras.Model) or not model.built or not hasattr(model, "inputs") \
            or model.inputs is None:
        raise UnsupportedLayerError(
            f"{type(model).__name__} '{getattr(model, 'name', '?')}' is not a built Keras functional or "
            "Sequential model; build it with an input shape (e.g. tf.keras.Input) first")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedLayerError(
            f"Keras model '{model.name}' has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "the converter needs exactly one of each")
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            raise UnsupportedLayerError(
                f"{type(layer).__name__} '{layer.name}' is a model nested in '{model.name}'; call its "
                "layers directly in the outer model")
        if layer.name == _INPUT and not isinstance(layer, layers.InputLayer):
            raise UnsupportedLayerError(
                f"{type(layer).__name__} '{layer.name}': the name '{_INPUT}' is reserved for the input")


def _graph_layers(model: tf.keras.Model) -> Iterator[tuple[layers.Layer, list[str]]]:
    """Every layer but the input with the names of its inputs (the input layer named
    ``'input'``), in an order where inputs come first."""
    _check_model(model)
    input_name = model.input_names[0]
    rename = {input_name: _INPUT}
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        yield layer, [rename.get(name, name) for name in _inbound(layer)]


def _output_layer(model: tf.keras.Model) -> layers.Layer:
    """The layer that computes the model's output."""
    return model.get_layer(model.output_names[0])


def _activation_name(layer: layers.Layer) -> str:
    """The name of a layer's (fused) activation function, ``'linear'`` for none."""
    activation = getattr(layer, "activation", None)
    return "linear" if activation is None else tf.keras.activations.serialize(activation)


def _is_softmax(layer: layers.Layer) -> bool:
    """Whether the layer is or ends in a softmax over the features."""
    return isinstance(layer, layers.Softmax) or _activation_name(layer) == "softmax"


def torch_input_shape(model: tf.keras.Model) -> tuple[int, ...]:
    """One input's shape as the torch twin takes it: channels first, no batch axis."""
    _check_model(model)
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise UnsupportedLayerError(
            f"Keras model '{model.name}' takes inputs of shape {shape}; the converter needs every "
            "non-batch axis fixed (give tf.keras.Input a full shape)")
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


def _tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's ``'same'`` padding of one axis: (before, after), the odd element after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


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
        self.modules: dict[str, nn.Module] = {}
        self.steps: list[Step] = []
        self.values: dict[str, _Value] = {_INPUT: _Value(_INPUT)}
        self.layer_names: dict[str, str] = {}   # torch module path -> Keras layer name
        self.dropped: list[str] = []
        self._names: set[str] = {_INPUT}
        self._handlers: list[tuple[tuple[type, ...], Callable]] = [
            ((layers.InputLayer,), self._identity),
            (_IDENTITIES, self._identity),
            ((layers.DepthwiseConv2D,), self._depthwise),   # before Conv2D: it subclasses it
            ((layers.Conv2DTranspose,), self._conv_transpose),
            ((layers.SeparableConv2D,), self._unsupported_layer),
            ((layers.Conv2D,), self._conv),
            ((layers.Dense,), self._dense),
            ((layers.BatchNormalization,), self._batchnorm),
            ((layers.Activation, layers.Softmax), self._activation_layer),
            ((layers.ReLU,), self._relu),
            ((layers.LeakyReLU,), self._leaky_relu),
            ((layers.ELU,), self._elu),
            ((layers.ZeroPadding2D,), self._zero_padding),
            ((layers.MaxPooling2D, layers.AveragePooling2D), self._pooling),
            ((layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D), self._global_pooling),
            ((layers.UpSampling2D,), self._upsampling),
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
            handler = next((h for classes, h in self._handlers if isinstance(layer, classes)),
                           self._unsupported_layer)
            if len(self.inputs) != 1 and not isinstance(layer, _MERGES):
                raise self._error(f"takes {len(self.inputs)} tensors; the converter expects one")
            self.values[layer.name] = handler()
        value = self.values[output.name]
        if value.order is not None:
            raise self._error("outputs features flattened from a spatial map, whose order differs "
                              "between NHWC and NCHW; end the model with a Dense layer or pooling")
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

    def _layer(self, module: nn.Module, source: _Value, suffix: str = "",
               order: np.ndarray | None = None) -> _Value:
        """Add a module step on ``source``; the step's module path maps to the Keras layer."""
        name = self._step_name(suffix)
        self.modules[name] = module.to(self.dtype)
        self.steps.append(Step(name, "layer", (source.name,)))
        self.layer_names[f"layers.{name}"] = self.layer.name
        return _Value(name, order)

    def _input(self, rank: int) -> _Value:
        """The single input, checked to have ``rank`` axes (batch included) and natural order."""
        value, shape = self.inputs[0], self.layer.input_shape
        if len(shape) != rank:
            raise self._error(f"gets an input of shape {shape}; the converter supports "
                              f"{'2-D feature maps' if rank == 4 else 'flat features'} here")
        return value

    def _weights(self) -> dict[str, np.ndarray]:
        """The layer's weights by their short names (``kernel``, ``bias``, ``gamma``, ...)."""
        return {w.name.split("/")[-1].split(":")[0]: value
                for w, value in zip(self.layer.weights, self.layer.get_weights())}

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
                raise self._error("applies a softmax before the last layer; the converter only "
                                  "removes a final softmax")
            self.dropped.append(f"{self.layer.name} (softmax)")
            return value
        if name not in _ACTIVATIONS:
            raise self._error(f"uses the activation {name!r}, which has no PyTorch module here "
                              f"(supported: {', '.join(sorted(_ACTIVATIONS))}, softmax at the end)")
        return self._layer(_ACTIVATIONS[name](), value, suffix, value.order)

    def _padding(self, value: _Value, kernels: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...] = (1, 1)) -> tuple[_Value, tuple[int, int]]:
        """The symmetric torch padding of a Keras padding mode, with an explicit ZeroPad2d in
        front where TF's 'same' padding is asymmetric."""
        if self.layer.padding == "valid":
            return value, (0, 0)
        if self.layer.padding != "same":
            raise self._error(f"uses padding={self.layer.padding!r}; the converter supports "
                              "'valid' and 'same'")
        sizes = self.layer.input_shape[1:3]
        pads = [_tf_same_padding(n, d * (k - 1) + 1, s)
                for n, k, s, d in zip(sizes, kernels, strides, dilations)]
        if all(before == after for before, after in pads):
            return value, tuple(before for before, _ in pads)
        (top, bottom), (left, right) = pads
        return self._layer(nn.ZeroPad2d((left, right, top, bottom)), value, "_pad"), (0, 0)

    # -- handlers ---------------------------------------------------------

    def _identity(self) -> _Value:
        self.dropped.append(self.layer.name)
        return self.inputs[0]

    def _conv(self) -> _Value:
        """Conv2D (grouped, dilated) as Conv2d; its activation as a module of its own."""
        conv = self.layer
        value = self._input(4)
        if conv.data_format != "channels_last":
            raise self._error("uses data_format='channels_first'; the converter reads channels-last "
                              "models")
        weights = self._weights()
        kernel = weights["kernel"]  # (kh, kw, in / groups, out)
        value, padding = self._padding(value, conv.kernel_size, conv.strides, conv.dilation_rate)
        module = nn.Conv2d(kernel.shape[2] * conv.groups, conv.filters, conv.kernel_size,
                           stride=conv.strides, padding=padding, dilation=conv.dilation_rate,
                           groups=conv.groups, bias=conv.use_bias)
        self._load(module, weight=kernel.transpose(3, 2, 0, 1), **self._bias(weights))
        value = self._layer(module, value)
        return self._activation(value, _activation_name(conv))

    def _bias(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"bias": weights["bias"]} if "bias" in weights else {}

    def _depthwise(self) -> _Value:
        """DepthwiseConv2D as Conv2d(groups=C): output channel c * m + k reads channel c with
        the Keras kernel's ``[:, :, c, k]``."""
        conv = self.layer
        value = self._input(4)
        weights = self._weights()
        kernel = weights["depthwise_kernel"]  # (kh, kw, C, m)
        channels, multiplier = kernel.shape[2:]
        value, padding = self._padding(value, conv.kernel_size, conv.strides, conv.dilation_rate)
        module = nn.Conv2d(channels, channels * multiplier, conv.kernel_size, stride=conv.strides,
                           padding=padding, dilation=conv.dilation_rate, groups=channels,
                           bias=conv.use_bias)
        weight = kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, *conv.kernel_size)
        self._load(module, weight=weight, **self._bias(weights))
        return self._activation(self._layer(module, value), _activation_name(conv))

    def _conv_transpose(self) -> _Value:
        """Conv2DTranspose as ConvTranspose2d: 'valid' needs PyTorch's output_padding where the
        stride exceeds the kernel; 'same' crops ``k - s`` rows, symmetric ones only."""
        conv = self.layer
        value = self._input(4)
        if conv.output_padding is not None or max(conv.dilation_rate) > 1:
            raise self._error("sets output_padding or dilation, which the converter does not reproduce")
        kernels, strides = conv.kernel_size, conv.strides
        if conv.padding == "valid":
            padding, extra = (0, 0), tuple(max(s - k, 0) for k, s in zip(kernels, strides))
        elif all((k - s) >= 0 and (k - s) % 2 == 0 for k, s in zip(kernels, strides)):
            padding, extra = tuple((k - s) // 2 for k, s in zip(kernels, strides)), (0, 0)
        else:
            raise self._error(f"uses 'same' padding with kernel {kernels} and strides {strides}, which "
                              "crops asymmetrically; PyTorch's ConvTranspose2d crops symmetrically")
        weights = self._weights()
        kernel = weights["kernel"]  # (kh, kw, out, in)
        module = nn.ConvTranspose2d(kernel.shape[3], conv.filters, kernels, stride=strides,
                                    padding=padding, output_padding=extra, bias=conv.use_bias)
        self._load(module, weight=kernel.transpose(3, 2, 0, 1), **self._bias(weights))
        return self._activation(self._layer(module, value), _activation_name(conv))

    def _dense(self) -> _Value:
        """Dense as Linear; after a Flatten of NHWC its input weights follow the torch order."""
        dense = self.layer
        value = self._input(2)
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
        if rank not in (2, 4) or list(bn.axis) != [rank - 1]:
            raise self._error(f"normalises axis {bn.axis} of a rank-{rank} input; the converter "
                              "supports the channel axis of flat features or 2-D maps")
        weights = self._weights()
        mean, var = weights["moving_mean"], weights["moving_variance"]
        gamma, beta = weights.get("gamma", np.ones_like(mean)), weights.get("beta", np.zeros_like(mean))
        params = {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var}
        if value.order is not None:
            params = {key: array[value.order] for key, array in params.items()}
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        module = cls(mean.shape[0], eps=float(bn.epsilon), momentum=1.0 - float(bn.momentum))
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
        return self._layer(nn.LeakyReLU(float(self.layer.alpha)), self.inputs[0],
                           order=self.inputs[0].order)

    def _elu(self) -> _Value:
        return self._layer(nn.ELU(float(self.layer.alpha)), self.inputs[0], order=self.inputs[0].order)

    def _zero_padding(self) -> _Value:
        (top, bottom), (left, right) = self.layer.padding
        return self._layer(nn.ZeroPad2d((left, right, top, bottom)), self._input(4))

    def _pooling(self) -> _Value:
        """Max/average pooling; TF's 'same' average divides by the real entries."""
        pool = self.layer
        value = self._input(4)
        if pool.padding == "same":
            sizes = pool.input_shape[1:3]
            pads = [_tf_same_padding(n, k, s) for n, k, s in zip(sizes, pool.pool_size, pool.strides)]
            if any(before != after for before, after in pads):
                raise self._error(f"pads {pads} ('same' at this stride and size), asymmetrically, "
                                  "which PyTorch's pooling padding cannot reproduce")
            padding = tuple(before for before, _ in pads)
        else:
            padding = (0, 0)
        if isinstance(pool, layers.MaxPooling2D):
            module = nn.MaxPool2d(pool.pool_size, pool.strides, padding)
        else:
            module = nn.AvgPool2d(pool.pool_size, pool.strides, padding, count_include_pad=False)
        return self._layer(module, value)

    def _global_pooling(self) -> _Value:
        """Global average/max pooling: adaptive pooling to 1 x 1, flattened unless keepdims."""
        value = self._input(4)
        cls = nn.AdaptiveAvgPool2d if isinstance(self.layer, layers.GlobalAveragePooling2D) \
            else nn.AdaptiveMaxPool2d
        value = self._layer(cls(1), value)
        return value if self.layer.keepdims else self._layer(nn.Flatten(), value, "_flatten")

    def _upsampling(self) -> _Value:
        if self.layer.interpolation != "nearest":
            raise self._error(f"uses interpolation={self.layer.interpolation!r}; the converter "
                              "supports 'nearest'")
        factors = tuple(float(f) for f in self.layer.size)
        return self._layer(nn.Upsample(scale_factor=factors, mode="nearest"), self._input(4))

    def _flatten(self) -> _Value:
        """Flatten; a (H, W, C) map's Keras feature order is remembered for the next layers."""
        value, shape = self.inputs[0], tuple(self.layer.input_shape[1:])
        if value.order is not None or len(shape) not in (1, 3):
            raise self._error(f"flattens an input of shape {shape}; the converter supports "
                              "2-D maps and flat features")
        if len(shape) == 1:
            return self._identity()
        keras_index = np.arange(math.prod(shape)).reshape(shape)
        order = np.transpose(keras_index, (2, 0, 1)).ravel()
        natural = np.array_equal(order, np.arange(order.size))
        return self._layer(nn.Flatten(), value, order=None if natural else order)

    def _combine(self, op: str) -> _Value:
        """A step combining the inputs by ``op``; flattened inputs must share one order."""
        orders = [v.order for v in self.inputs]
        if any(o is not None for o in orders) and not all(
                o is not None and np.array_equal(o, orders[0]) for o in orders):
            raise self._error("combines features flattened in different orders")
        name = self._step_name()
        self.steps.append(Step(name, op, tuple(v.name for v in self.inputs)))
        return _Value(name, orders[0])

    def _concat(self) -> _Value:
        """Concatenate along the channel axis (the last Keras axis, dim 1 in torch)."""
        rank = len(self.layer.output_shape)
        if self.layer.axis % rank != rank - 1 or any(v.order is not None for v in self.inputs):
            raise self._error(f"concatenates along axis {self.layer.axis} of rank-{rank} tensors; "
                              "the converter supports the channel (last) axis of unflattened values")
        return self._combine("concat")


# ----------------------------------------------------------------------------
# The converter's entry point and its forward check


def from_keras(model: tf.keras.Model, *, dtype: str = "float32", check: bool = True,
               rtol: float = 1e-5, seed: int = 0) -> FromKeras:
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
    module = FromKeras(converter.modules, converter.steps, output, model.name, converter.layer_names,
                       keras_outputs, tuple(converter.dropped)).eval()
    if check:
        verify(model, module, rtol=rtol, seed=seed)
    return module


def verify(keras_model: tf.keras.Model, module: FromKeras, *, rtol: float = 1e-5, seed: int = 0,
           batch: int = 4) -> float:
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

    def torch_value(layer: layers.Layer) -> np.ndarray:
        """The torch value of a Keras layer's output, in its Keras layout."""
        name, order = module.keras_outputs[layer.name]
        value = values[name]
        if layer is final and _is_softmax(layer):  # the module returns the logits
            value = torch.softmax(value, dim=1)
        return _keras_layout(value.numpy(), order)

    with keras_floatx(dtype):  # predict casts its inputs to floatx
        error = _relative_error(torch_value(final), keras_model.predict(x_keras, verbose=0))
        if error <= rtol:
            return error
        for layer in keras_model.layers[1:]:
            if module.keras_outputs.get(layer.name, (_INPUT,))[0] == _INPUT:
                continue  # no step of its own: an identity of the input
            layer_error = _relative_error(torch_value(layer), _layer_output(keras_model, layer.name, x_keras))
            if layer_error > rtol:
                raise TwinMismatchError(
                    f"the PyTorch module's output differs from Keras by {error:.3g} (relative to the "
                    f"largest |output|, rtol {rtol:g}); activations first diverge at Keras layer "
                    f"'{layer.name}' ({type(layer).__name__}, torch step "
                    f"'{module.keras_outputs[layer.name][0]}') with relative error {layer_error:.3g}")
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


def _initializer_key(layer: layers.Layer, weight: str) -> str:
    """The constructor argument that initialises the layer's weight ``weight``."""
    key = {"depthwise_kernel": "depthwise_initializer"}.get(weight, f"{weight}_initializer")
    if key not in layer.get_config():
        raise UnsupportedLayerError(
            f"{type(layer).__name__} '{layer.name}' has a weight {weight!r} without a "
            f"'{key}' argument, so it cannot be rebuilt with its weights")
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
    rename: dict[str, str] = {}  # an inference identity's output is its input
    for layer, inputs in _graph_layers(model):
        inputs = [rename.get(name, name) for name in inputs]
        if isinstance(layer, _IDENTITIES):
            rename[layer.name] = inputs[0]
            removed.append(layer.name)
            continue
        config = {key: value for key, value in layer.get_config().items() if key != "dtype"}
        config["name"] = _reference_name(layer.name)
        initial = {}
        for weight, value in zip(layer.weights, layer.get_weights()):
            key = _initializer_key(layer, weight.name.split("/")[-1].split(":")[0])
            config.pop(key)
            initial[key] = value.astype(dtype)
        call_kwargs = {"training": False} if isinstance(layer, layers.BatchNormalization) else {}
        specs[layer.name] = _LayerSpec(type(layer), config, tuple(map(_ref_input, inputs)), initial, call_kwargs)
    if _is_softmax(output):
        removed.append(output.name)
        if "activation" in specs[output.name].config:  # fused: the layer without its softmax
            specs[output.name].config["activation"] = "linear"
        else:
            (source,) = specs.pop(output.name).inputs
            if source == _INPUT:
                raise UnsupportedLayerError(f"Keras model '{model.name}' is a softmax of its input")
            return list(specs.values()), source, removed
    return list(specs.values()), specs[output.name].config["name"], removed


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
    hidden = _hidden_reason(specs)
    layer_names = {path: _reference_name(name) for path, name in torch_model.layer_names.items()}
    return Twin(keras_model=_build(specs, shape, dtype, output), layer_names=layer_names,
                input_layer_hidden=hidden is not None, hidden_reason=hidden, dropped=tuple(removed),
                input_shape=shape, dtype=dtype, _specs=specs, _output=output)


# ----------------------------------------------------------------------------
# The parity check on a Keras model


@contextmanager
def _reference_twins(keras_model: tf.keras.Model, torch_model: FromKeras) -> Iterator[None]:
    """Within the block the harness's twin maker (:func:`parity.twin.to_keras`, looked up by
    :func:`parity.harness.run_model` at each call) returns :func:`keras_twin` of the user's model
    in the requested dtype instead of converting the torch model back."""
    # read now: the harness clears the Keras session (and with it the user's model) between maps
    twins = {dtype: keras_twin(keras_model, dtype, torch_model) for dtype in _TORCH_DTYPES}

    def twin_of_original(_model: nn.Module, _input_shape: tuple[int, ...], *, dtype: str = "float32",
                         **_options: Any) -> Twin:
        return twins[dtype]

    with mock.patch.object(twin_module, "to_keras", twin_of_original):
        yield


def compare_keras(keras_model: tf.keras.Model, x: np.ndarray, names: list[str] | None = None, *,
                  label: str | None = None, tolerance: float | None = None, float64: bool = True,
                  progress: bool = False, torch_model: FromKeras | None = None) -> tuple[list, Any]:
    """Compare signxai's maps of the torch twin of ``keras_model`` with iNNvestigate's on
    ``keras_model`` itself (rebuilt by :func:`keras_twin`, no second conversion).

    TensorFlow must be in graph mode (:func:`parity.harness.graph_mode`) and the model built
    or loaded there. The harness clears the Keras session between maps, so ``keras_model``
    cannot run after the check.

    Parameters
    ----------
    keras_model : tf.keras.Model
        The user's model (see :func:`from_keras`); a final softmax is left out on both sides.
    x : numpy.ndarray
        Inputs with batch axis in the Keras model's layout (channels last).
    names, tolerance, float64, progress
        As for :func:`parity.cli.compare_model`.
    label : str, optional
        The model's name in the report (default: the Keras model's name).
    torch_model : FromKeras, optional
        Its torch twin, if already converted (default: :func:`from_keras`, checked).

    Returns
    -------
    rows : list of parity.report.Row
        One row per compared method, as :func:`parity.cli.compare_model` returns them.
    run : parity.harness.ModelRun
        The float32 maps of both frameworks, channels-first.

    Raises
    ------
    parity.cli.UsageError
        When a layer cannot be converted, the converted module does not reproduce the model, or
        for any reason :func:`parity.cli.compare_model` gives.
    """
    from .cli import UsageError, _flat, compare_model

    try:
        torch_model = from_keras(keras_model) if torch_model is None else torch_model
    except UnsupportedLayerError as error:
        raise UsageError(f"unsupported layer for the PyTorch twin: {_flat(error)}") from error
    except TwinMismatchError as error:
        raise UsageError(f"the PyTorch twin does not reproduce the Keras model's outputs, so no map "
                         f"can be compared: {_flat(error)}") from error
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] != tuple(keras_model.inputs[0].shape[1:]):
        raise UsageError(f"the inputs have shape {x.shape}; the Keras model takes "
                         f"(batch, {', '.join(map(str, keras_model.inputs[0].shape[1:]))}), channels last")
    with _reference_twins(keras_model, torch_model):
        return compare_model(torch_model, to_channels_first(x), names, label=label or keras_model.name,
                             tolerance=tolerance, float64=float64, progress=progress)


# ----------------------------------------------------------------------------
# Loading a Keras model


def load_keras(source: str) -> tf.keras.Model:
    """Load the Keras model ``source`` names.

    Parameters
    ----------
    source : str
        A ``.h5`` or ``.keras`` file or a SavedModel folder (loaded with
        ``tf.keras.models.load_model(source, compile=False)``), or ``module:function``, a factory
        returning the model, imported with the current folder on ``sys.path``.

    Returns
    -------
    tf.keras.Model

    Raises
    ------
    parity.cli.UsageError
        When nothing can be loaded from ``source`` or the factory returns no Keras model.
    """
    from .cli import UsageError, _factory, _one_line

    path = Path(source)
    tf.random.set_seed(0)  # TF's op determinism (the harness's) refuses Dropout layers without a seed
    if not path.exists() and ":" in source and not source.endswith((".h5", ".keras")):
        factory = _factory(source)
        try:
            model = factory()
        except Exception as error:
            raise UsageError(f"{source}() raised {_one_line(error)}") from error
    elif not path.exists():
        raise UsageError(f"no such file or folder: {source} (give a .h5 or .keras file, a SavedModel "
                         f"folder, or MODULE:FUNCTION returning a Keras model)")
    else:
        try:
            model = tf.keras.models.load_model(path, compile=False)
        except Exception as error:
            raise UsageError(f"cannot load a Keras model from {source}: {_one_line(error)}") from error
    if not isinstance(model, tf.keras.Model):
        raise UsageError(f"{source} gives an object of type {type(model).__name__}, not a tf.keras.Model "
                         f"(a SavedModel folder must have been written by Keras' model.save)")
    return model
