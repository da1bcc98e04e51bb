"""Reference maps: what iNNvestigate 2.1.2 computes for a method spec on a Keras twin.

:func:`reference_map` turns a :class:`~signxai.torch_signxai.methods.grammar.MethodSpec` into the
iNNvestigate analyzer (and parameters) that defines it, runs it on a fresh Keras twin and returns
the map in the PyTorch layout. Where iNNvestigate 2.1.2 has no analyzer or rule for a method, the
reference is written here from the method's formula (the grammar's rule table), against iNNvestigate's own rule
interface (SIGN, std_x epsilon, gamma) or in plain TensorFlow (DeepLIFT, Grad-CAM), and never with
code from the PyTorch implementation.

Mapping (spec -> reference)
---------------------------
==========================  ===============================================================
``input``                   ``Input`` (the input itself; with ``stddev > 0``, iNNvestigate's
                            ``Random``, noise: nothing to compare)
``gradient``                ``Gradient`` (seeds the backward pass with 1, postprocess None)
``guided_backprop``         ``GuidedBackprop`` (starts from the selected logit's value)
``deconvnet``               ``Deconvnet`` (starts from the selected logit's value)
``integrated_gradients``    ``IntegratedGradients(steps=steps, reference_inputs=ref)``; path
                            ``ref + k/steps * (x - ref)``, k = 0..steps-1, mean times (x - ref)
``smoothgrad`` / ``vargrad``  ``Gradient`` at every ``x + noise[k]`` (the harness's noise), then
                            mean / population variance over k
``deeplift``                own TF: rescale rule at every activation, gradient elsewhere
``grad_cam``                own TF: ReLU(sum_k w_k A_k), / max, bilinear/linear half-pixel resize;
                            default layer: the conv with the most convs on a path from the input
``guided_grad_cam``         ``GuidedBackprop`` times the Grad-CAM map
``lrp`` rule ``z``          ``LRPZ`` (``bias=False``: ``LRP`` with ``ZRule(bias=False)``)
``epsilon``                 ``LRPEpsilon(epsilon=E, bias=B)``
``epsilon_std_x``           ``LRP`` with :class:`StdxEpsilonRule` (hidden layers and BN, ``bias=B``)
``alpha_beta``              ``LRPAlphaBeta(alpha, beta, bias=B)``
``z_plus``                  ``LRPZPlus`` (alpha 1, beta 0, bias ignored)
``z_plus_fast``             ``LRPZPlusFast``
``gamma``                   ``LRP`` with :class:`GammaRule` (hidden layers and BN)
``flat`` / ``w_square``     ``LRPFlat`` / ``LRPWSquare``
``sequential_composite_a``  ``LRPSequentialPresetA(epsilon=E)`` (E = 0.1 unless given)
``sequential_composite_b``  ``LRPSequentialPresetB(epsilon=E)``
``deep_taylor``             ``DeepTaylor`` (``BoundedDeepTaylor`` for the zbox input rule, another
                            input rule the same way)
input rule ``z``            ``input_layer_rule='Z'``
input rule ``sign``         ``input_layer_rule=`` :class:`SignRule` (with ``mu``)
input rule ``w_square``     ``input_layer_rule='WSquare'``
input rule ``flat``         ``input_layer_rule='Flat'``
input rule ``zbox``         ``input_layer_rule=(low, high)`` (iNNvestigate's ``BoundedRule``)
``until_layer_idx=k``       ``until_layer_idx=j, until_layer_rule=`` the rule's class, j the
                            ``model.layers`` index of the twin's conv/dense layer number k
==========================  ===============================================================

Post-multipliers (``x_input``, ``x_sign`` with ``post_mu``) are applied here, in numpy.

TensorFlow must run in graph mode (``tf.compat.v1.disable_eager_execution()`` before any Keras
model is built); everything runs in Keras' ``floatx`` (float32 or float64).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import innvestigate.analyzer.relevance_based.relevance_rule as rrule
import innvestigate.backend as ibackend
import innvestigate.backend.checks as ichecks
import innvestigate.backend.graph as igraph
import numpy as np
import tensorflow as tf
from innvestigate.analyzer.base import NotAnalyzeableModelException
from innvestigate.analyzer.deeptaylor import BoundedDeepTaylor, DeepTaylor
from innvestigate.analyzer.gradient_based import (
    Deconvnet,
    Gradient,
    GuidedBackprop,
    IntegratedGradients,
)
from innvestigate.analyzer.misc import Input
from innvestigate.analyzer.relevance_based.relevance_analyzer import (
    LRP,
    LRPZ,
    LRPAlphaBeta,
    LRPEpsilon,
    LRPFlat,
    LRPSequentialPresetA,
    LRPSequentialPresetB,
    LRPWSquare,
    LRPZPlus,
    LRPZPlusFast,
)
from tensorflow import keras

from signxai.torch_signxai.methods.grammar import parse
from signxai.torch_signxai.methods.lrp.table import INPUT_RULES

from .compare import relative_error
from .twin import to_channels_first, to_channels_last

if TYPE_CHECKING:
    from signxai.torch_signxai.methods.grammar import MethodSpec

__all__ = [
    "ReferenceUnavailable",
    "reference_map",
    "check_identities",
    "apply_post",
    "SignRule",
    "StdxEpsilonRule",
    "GammaRule",
    "bilinear_resize_matrix",
]

klayers = keras.layers


class ReferenceUnavailable(Exception):
    """iNNvestigate cannot give a trustworthy reference map for this spec on this twin."""


# --------------------------------------------------------------------------------------------
# Rules that iNNvestigate 2.1.2 lacks, written against its rule interface
# --------------------------------------------------------------------------------------------


def _floatx_sign(mu: float) -> keras.layers.Layer:
    """A layer computing s_mu(v) = +1 if v >= mu else -1, in floatx."""
    return klayers.Lambda(lambda v: tf.cast(tf.greater_equal(v, tf.cast(mu, v.dtype)), v.dtype) * 2 - 1)


class SignRule(igraph.ReverseMappingBase):
    """SIGN input-layer rule: R_i = s_mu(x_i) * sum_j w_ij R_j / z_j.

    z_j is the layer's pre-activation *with* its bias and no epsilon; the division is
    iNNvestigate's ``safe_divide`` (only exact zeros are replaced, by 1e-7), as in its Z rule.
    s_mu(v) = +1 if v >= mu else -1 (so s(0) = +1 for mu = 0).
    """

    def __init__(self, layer: keras.layers.Layer, _state: Any, mu: float = 0.0) -> None:
        self._mu = float(mu)
        self._layer_wo_act = igraph.copy_layer_wo_activation(
            layer, keep_bias=True, name_template="reversed_kernel_sign_%s"
        )

    def apply(self, Xs: list[tf.Tensor], _Ys: list[tf.Tensor], Rs: list[tf.Tensor], _reverse_state: dict) -> list:
        """The relevance at the layer's inputs ``Xs`` from the relevance ``Rs`` at its outputs."""
        Zs = ibackend.apply(self._layer_wo_act, Xs)
        tmp = [ibackend.safe_divide(r, z) for r, z in zip(Rs, Zs, strict=True)]
        grads = ibackend.gradients(Xs, Zs, tmp)
        sign = _floatx_sign(self._mu)
        return [klayers.Multiply()([sign(x), g]) for x, g in zip(Xs, grads, strict=True)]


class StdxEpsilonRule(igraph.ReverseMappingBase):
    """Epsilon rule whose epsilon is ``stdfactor`` times the population std of the layer's input.

    The std (ddof 0) is taken per sample over all non-batch entries of the layer's input X.
    Apart from that tensor epsilon it is iNNvestigate's ``EpsilonRule``: bias kept, denominator
    z + eps * (z >= 0 ? 1 : -1), plain division.
    """

    def __init__(self, layer: keras.layers.Layer, _state: Any, stdfactor: float = 0.25, bias: bool = True) -> None:
        self._stdfactor = float(stdfactor)
        self._layer_wo_act = igraph.copy_layer_wo_activation(
            layer, keep_bias=bias, name_template="reversed_kernel_stdx_%s"
        )

    def apply(self, Xs: list[tf.Tensor], _Ys: list[tf.Tensor], Rs: list[tf.Tensor], _reverse_state: dict) -> list:
        """The relevance at the layer's inputs ``Xs`` from the relevance ``Rs`` at its outputs."""
        if len(Xs) != 1:
            raise ValueError(f"StdxEpsilonRule expects one input, got {len(Xs)}")
        X = Xs[0]
        Zs = ibackend.apply(self._layer_wo_act, Xs)
        factor = self._stdfactor

        def stabilise(args: list[tf.Tensor]) -> tf.Tensor:
            x, z = args
            axes = list(range(1, len(x.shape)))
            eps = factor * tf.math.reduce_std(x, axis=axes)
            eps = tf.reshape(eps, [-1] + [1] * (len(z.shape) - 1))
            return z + (tf.cast(tf.greater_equal(z, 0), z.dtype) * 2 - 1) * eps

        prepare_div = klayers.Lambda(stabilise)
        tmp = [r / prepare_div([X, z]) for r, z in zip(Rs, Zs, strict=True)]
        grads = ibackend.gradients(Xs, Zs, tmp)
        return [klayers.Multiply()([x, g]) for x, g in zip(Xs, grads, strict=True)]


class GammaRule(igraph.ReverseMappingBase):
    """LRP-gamma: z_j = sum_i x_i (w_ij + gamma * max(w_ij, 0)) (+ b_j + gamma * max(b_j, 0)).

    Bias choice: the parameter modifier is applied to *every* parameter of the layer, bias
    included, which is how iNNvestigate's nearest rule treats it: ``AlphaBetaRule`` applies its
    weight masks (``x * (x > 0)``) to ``layer.weights`` including the bias. With gamma = 0 this is
    exactly iNNvestigate's ``ZRule``. The rest is the Z rule: safe divide (exact zeros -> 1e-7),
    gradient, times the layer's input.
    """

    def __init__(self, layer: keras.layers.Layer, _state: Any, gamma: float = 0.5) -> None:
        g = float(gamma)
        weights = [w + g * w * ibackend.cast_to_floatx(w > 0) for w in layer.weights]
        self._layer_wo_act = igraph.copy_layer_wo_activation(
            layer, keep_bias=True, weights=weights, name_template="reversed_kernel_gamma_%s"
        )

    def apply(self, Xs: list[tf.Tensor], _Ys: list[tf.Tensor], Rs: list[tf.Tensor], _reverse_state: dict) -> list:
        """The relevance at the layer's inputs ``Xs`` from the relevance ``Rs`` at its outputs."""
        Zs = ibackend.apply(self._layer_wo_act, Xs)
        tmp = [ibackend.safe_divide(r, z) for r, z in zip(Rs, Zs, strict=True)]
        grads = ibackend.gradients(Xs, Zs, tmp)
        return [klayers.Multiply()([x, g]) for x, g in zip(Xs, grads, strict=True)]


def _proxy(rule_class: type, **params: Any) -> type:
    """A subclass of ``rule_class`` whose constructor fixes ``params`` (iNNvestigate's pattern)."""

    class Proxy(rule_class):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **params, **kwargs)

    Proxy.__name__ = f"{rule_class.__name__}Proxy"
    return Proxy


class _LRPRule(LRP):
    """iNNvestigate's ``LRP`` with one rule for kernel layers and BatchNorm, checks run."""

    def __init__(self, model: keras.Model, rule: Any, **kwargs: Any) -> None:
        super().__init__(model, rule=rule, bn_layer_rule=rule, **kwargs)
        self._do_model_checks()


class _DeepTaylorInputRule(DeepTaylor):
    """``DeepTaylor`` with a rule for the input layer, added the way ``BoundedDeepTaylor`` adds
    its Z-B rule (a priority-10 conditional mapping for the kernel layer at the input)."""

    def __init__(self, model: keras.Model, input_rule_class: Any, **kwargs: Any) -> None:
        self._input_rule_class = input_rule_class
        super().__init__(model, **kwargs)

    def _create_analysis(self, *args: Any, **kwargs: Any) -> Any:
        self._add_conditional_reverse_mapping(
            lambda layer: ichecks.is_input_layer(layer) and ichecks.contains_kernel(layer),
            self._input_rule_class,
            name="deep_taylor_input_layer_rule",
            priority=10,
        )
        return super()._create_analysis(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------


def _floatx() -> np.dtype:
    return np.dtype(keras.backend.floatx())


def _sign(x: np.ndarray, mu: float) -> np.ndarray:
    return np.where(x >= mu, 1, -1).astype(x.dtype)


def apply_post(spec: MethodSpec, rmap: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the spec's post-multipliers (``x_input``, ``x_sign`` with ``post_mu``) in numpy."""
    for post in spec.post:
        if post == "x_input":
            rmap = rmap * x
        elif post == "x_sign":
            rmap = rmap * _sign(x, float(spec.params.get("post_mu", 0.0)))
        else:
            raise ValueError(f"unknown post-multiplier {post!r}")
    return rmap


def _input_layer_found(model: keras.Model) -> bool:
    """Whether iNNvestigate will find a kernel layer at the input (where input rules apply)."""
    return any(ichecks.contains_kernel(layer) and ichecks.is_input_layer(layer) for layer in model.layers)


def _input_enters_kernels_only(model: keras.Model) -> bool:
    """Whether every path from the input enters a conv/dense layer first (through Flatten,
    Reshape and Permute only)."""
    pending = [layer for layer in model.layers if isinstance(layer, klayers.InputLayer)]
    while pending:
        source = pending.pop()
        for user in (layer for layer in model.layers if source in _inbound_layers(layer)):
            if isinstance(user, (klayers.Flatten, klayers.Reshape, klayers.Permute)):
                pending.append(user)
            elif not ichecks.contains_kernel(user):
                return False
    return True


def _analyze(analyzer: Any, x_cl: np.ndarray, targets: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.asarray(analyzer.analyze(x_cl, neuron_selection=targets))
    except (NotImplementedError, NotAnalyzeableModelException) as err:
        raise ReferenceUnavailable(f"iNNvestigate refuses this model for {what}: {err!r}") from err


def _build(what: str, make: Callable[[], Any]) -> Any:
    """Build an analyzer, turning iNNvestigate's model-check failures into ReferenceUnavailable.

    iNNvestigate 2.1.2 raises a bare NotImplementedError after any *warning*-type model check
    (e.g. LRP on a model with a layer outside its list of convnet layers); see
    :func:`_lrp_check_kwargs` for the layers where the reference decides applicability itself.
    """
    try:
        return make()
    except (NotImplementedError, NotAnalyzeableModelException) as err:
        raise ReferenceUnavailable(
            f"iNNvestigate refuses this model for {what} ({type(err).__name__}: {err}); "
            "note that iNNvestigate 2.1.2 raises NotImplementedError for warning-type checks "
            "too, e.g. for a standalone keras ReLU layer in an LRP/deconvnet model"
        ) from err


#: Layers outside iNNvestigate 2.1.2's list of convnet layers whose treatment under its LRP
#: analyzers is known and measured: a depthwise kernel gets the analyzer's rule (like every layer
#: with a kernel), a ``ReLU`` layer (the twin's ``ReLU(6.)``) is not an ``Activation`` layer and
#: takes its gradient. Its "only tested for convolutional neural networks" check is a warning that
#: raises NotImplementedError anyway.
_KNOWN_UNLISTED_LAYERS = (klayers.DepthwiseConv1D, klayers.DepthwiseConv2D, klayers.ReLU)


def _lrp_check_kwargs(model: keras.Model) -> dict[str, Any]:
    """``disable_model_checks=True`` where only known layers fail iNNvestigate's convnet list.

    Models with other unlisted layers keep the checks (iNNvestigate then refuses them). With the
    checks off, :func:`_run_exception_checks` still applies the exception-type ones.
    """
    unlisted = [layer for layer in model.layers if not ichecks.is_convnet_layer(layer)]
    if unlisted and all(isinstance(layer, _KNOWN_UNLISTED_LAYERS) for layer in unlisted):
        return {"disable_model_checks": True}
    return {}


def _run_exception_checks(analyzer: Any, model: keras.Model, what: str) -> None:
    """Apply the analyzer's exception-type model checks (e.g. no softmax), which
    ``disable_model_checks=True`` skips along with the warnings."""
    for check in analyzer._model_checks:
        if check["check_type"] != "exception":
            continue
        hits = [layer.name for layer in model.layers if check["check"](layer)]
        if hits:
            raise ReferenceUnavailable(
                f"iNNvestigate refuses this model for {what}: {check['message']} (layers {hits})"
            )


# --------------------------------------------------------------------------------------------
# Gradient family
# --------------------------------------------------------------------------------------------

_SIMPLE_ANALYZERS = {"gradient": Gradient, "guided_backprop": GuidedBackprop, "deconvnet": Deconvnet, "input": Input}


def _refuse_standalone_relu(model: keras.Model, what: str) -> None:
    """iNNvestigate 2.1.2's Deconvnet crashes copying a standalone ``keras.layers.ReLU`` such
    as the twin's ``ReLU(6.)`` (``ReLU.from_config`` rejects ``activation=None``)."""
    relus = [layer.name for layer in model.layers if isinstance(layer, klayers.ReLU)]
    if relus:
        raise ReferenceUnavailable(
            f"{what}: iNNvestigate 2.1.2 cannot analyse standalone keras ReLU layers {relus} with this method"
        )


def _simple(kind: str, factory: Callable[[], keras.Model], x_cl: np.ndarray, targets: np.ndarray) -> np.ndarray:
    cls = _SIMPLE_ANALYZERS[kind]
    model = factory()
    if kind == "deconvnet":
        _refuse_standalone_relu(model, kind)
    analyzer = _build(kind, lambda: cls(model, neuron_selection_mode="index"))
    return _analyze(analyzer, x_cl, targets, kind)


def _reference_input(spec: MethodSpec, x: np.ndarray) -> np.ndarray | None:
    """The spec's reference input (channels-first, one sample's shape) or None for zeros."""
    ref = spec.params.get("reference")
    if ref is None:
        return None
    ref = np.asarray(ref, dtype=x.dtype)
    try:
        return np.broadcast_to(ref, x.shape[1:]).copy()
    except ValueError as err:
        raise ReferenceUnavailable(
            f"{spec.name}: the reference must broadcast to one input's shape {x.shape[1:]} "
            f"(iNNvestigate takes one reference for the whole batch), got {ref.shape}"
        ) from err


def _integrated_gradients(
    spec: MethodSpec, factory: Callable[[], keras.Model], x: np.ndarray, x_cl: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    ref = _reference_input(spec, x)
    ref_cl = 0 if ref is None else to_channels_last(ref[None])[0]
    steps = int(spec.params["steps"])
    analyzer = _build(
        spec.name,
        lambda: IntegratedGradients(factory(), steps=steps, reference_inputs=ref_cl, neuron_selection_mode="index"),
    )
    return _analyze(analyzer, x_cl, targets, spec.name)


def _noise_gradients(
    spec: MethodSpec, factory: Callable[[], keras.Model], x: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """iNNvestigate's gradient at x + noise[k] for every k: shape (S, N, ...) channels-last."""
    noise = spec.params.get("noise")
    if noise is None:
        raise ReferenceUnavailable(
            f"{spec.name}: the reference needs the exact noise draws (params['noise'], shape "
            "(num_samples, N, ...)); without them the maps can only be compared statistically"
        )
    if hasattr(noise, "detach"):  # a torch tensor
        noise = noise.detach().cpu().numpy()
    noise = np.asarray(noise, dtype=x.dtype)
    if noise.ndim != x.ndim + 1 or noise.shape[1:] != x.shape:
        raise ValueError(f"{spec.name}: noise must have shape (num_samples,) + {x.shape}, got {noise.shape}")
    samples = noise.shape[0]
    noisy = (x[None] + noise).reshape((samples * x.shape[0],) + x.shape[1:])
    grads = _simple("gradient", factory, to_channels_last(noisy), np.tile(targets, samples))
    return grads.reshape((samples,) + x.shape[:1] + grads.shape[1:])


# --------------------------------------------------------------------------------------------
# DeepLIFT (rescale rule), own TensorFlow code
# --------------------------------------------------------------------------------------------


def _rescale(activation: Callable, n: int) -> Callable:
    """``activation`` with DeepLIFT's rescale multiplier as its gradient.

    The tensor it is applied to holds the inputs (first ``n`` rows) and the reference inputs
    (the other ``n`` rows) as one batch. Backward, the first half gets
    dy * (f(z) - f(z_ref)) / (z - z_ref), or dy * f'(z) where z == z_ref exactly; the reference
    half gets zero (the reference is a constant of the explanation).
    """

    @tf.custom_gradient
    def rescaled(z: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        y = activation(z)

        def grad(dy: tf.Tensor) -> tf.Tensor:
            zx, zr = z[:n], z[n:]
            dz = zx - zr
            dyz = y[:n] - y[n:]
            zx_const = tf.stop_gradient(zx)
            slope = tf.gradients(activation(zx_const), zx_const)[0]
            nonzero = tf.not_equal(dz, 0)
            ratio = dyz / tf.where(nonzero, dz, tf.ones_like(dz))
            multiplier = tf.where(nonzero, ratio, slope)
            return tf.concat([dy[:n] * multiplier, tf.zeros_like(dy[n:])], axis=0)

        return y, grad

    return rescaled


def _install_rescale(model: keras.Model, n: int) -> None:
    """Give every activation of ``model`` (fused or a layer of its own) the rescale gradient."""
    linear = keras.activations.get("linear")
    for layer in model.layers:
        if isinstance(layer, ichecks.ACTIVATION_LAYERS):
            layer.call = _rescale(layer.call, n)
        elif getattr(layer, "activation", None) is not None and layer.activation is not linear:
            if ichecks.contains_activation(layer, "softmax"):
                raise ReferenceUnavailable("DeepLIFT reference: the model ends in a softmax")
            layer.activation = _rescale(layer.activation, n)


def _deeplift(
    spec: MethodSpec, factory: Callable[[], keras.Model], x: np.ndarray, x_cl: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    ref = _reference_input(spec, x)
    ref_cl = (
        np.zeros_like(x_cl)
        if ref is None
        else np.broadcast_to(to_channels_last(ref[None]), x_cl.shape).astype(x_cl.dtype)
    )
    n = x_cl.shape[0]
    model = factory()
    _install_rescale(model, n)
    dtype = keras.backend.floatx()
    inputs = tf.compat.v1.placeholder(dtype, (None,) + x_cl.shape[1:], name="deeplift_x")
    reference = tf.compat.v1.placeholder(dtype, (None,) + x_cl.shape[1:], name="deeplift_ref")
    index = tf.compat.v1.placeholder(tf.int32, (None,), name="deeplift_target")
    out = model(tf.concat([inputs, reference], axis=0))
    out = tf.reshape(out, [tf.shape(out)[0], -1])[:n]
    selected = tf.gather_nd(out, tf.stack([tf.range(n), index], axis=1))
    grads = tf.gradients(tf.reduce_sum(selected), inputs)[0]
    result = grads * (inputs - reference)
    fn = keras.backend.function([inputs, reference, index], [result])
    return np.asarray(fn([x_cl, ref_cl, targets.astype(np.int32)])[0])


# --------------------------------------------------------------------------------------------
# Grad-CAM, own TensorFlow code
# --------------------------------------------------------------------------------------------


def bilinear_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) matrix of 1-D linear interpolation with half-pixel centres.

    Output i samples the input at (i + 0.5) * size_in / size_out - 0.5, clamped to the input's
    ends: TensorFlow's ``tf.image.resize(..., 'bilinear', antialias=False)`` per axis, and
    PyTorch's ``interpolate(..., align_corners=False)``. Bilinear resizing is this matrix applied
    along both spatial axes. Built in float64: ``tf.image.resize`` returns float32 whatever its
    input, so it cannot serve a float64 reference.
    """
    matrix = np.zeros((size_out, size_in))
    scale = size_in / size_out
    for i in range(size_out):
        centre = (i + 0.5) * scale - 0.5
        low = np.floor(centre)
        frac = centre - low
        lo = int(min(max(low, 0), size_in - 1))
        hi = int(min(max(low + 1, 0), size_in - 1))
        matrix[i, lo] += 1.0 - frac
        matrix[i, hi] += frac
    return matrix


def _is_gradcam_conv(layer: keras.layers.Layer) -> bool:
    """A convolution Grad-CAM may default to: Conv1D/2D/3D, grouped or depthwise, not transposed
    (the library's kinds table: ``conv``, not ``conv_transpose``)."""
    return bool(ichecks.is_conv_layer(layer)) and not isinstance(
        layer, (klayers.Conv1DTranspose, klayers.Conv2DTranspose, klayers.Conv3DTranspose)
    )


def _conv_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if _is_gradcam_conv(layer)]


def _inbound_layers(layer: keras.layers.Layer) -> list:
    inbound = layer._inbound_nodes[0].inbound_layers if layer._inbound_nodes else []
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _deepest_conv(spec: MethodSpec, model: keras.Model, layer_names: Mapping[str, str] | None) -> keras.layers.Layer:
    """The default Grad-CAM layer by graph position: the conv layer with the most conv layers on
    a path from the input to it (itself included). Among equals, the one built last: the twin
    builds its layers in the PyTorch graph's execution order, which ``layer_names`` (torch path
    -> Keras name, in the order built) keeps; without it a tie has no answer."""
    depth: dict[str, int] = {}

    def depth_of(layer: keras.layers.Layer) -> int:
        if layer.name not in depth:
            inbound = max((depth_of(i) for i in _inbound_layers(layer)), default=0)
            depth[layer.name] = inbound + int(_is_gradcam_conv(layer))
        return depth[layer.name]

    convs = _conv_layers(model)
    if not convs:
        raise ReferenceUnavailable(f"{spec.name}: the model has no conv layer for Grad-CAM")
    deepest = max(depth_of(layer) for layer in convs)
    tied = [layer for layer in convs if depth_of(layer) == deepest]
    if len(tied) == 1:
        return tied[0]
    order = {name: k for k, name in enumerate((layer_names or {}).values())}
    if not all(layer.name in order for layer in tied):
        raise ReferenceUnavailable(
            f"{spec.name}: conv layers {[layer.name for layer in tied]} are equally far from the input "
            "and no build order (layer_names) says which ran last; name one with layer_name="
        )
    return max(tied, key=lambda layer: order[layer.name])


def _gradcam_layer(spec: MethodSpec, model: keras.Model, layer_names: Mapping[str, str] | None) -> keras.layers.Layer:
    name = spec.params.get("layer_name")
    if name is None:
        return _deepest_conv(spec, model, layer_names)
    keras_name = (layer_names or {}).get(name, name)
    try:
        return model.get_layer(keras_name)
    except ValueError as err:
        raise ReferenceUnavailable(
            f"{spec.name}: no Keras layer for the torch module {name!r} (layer_names maps {dict(layer_names or {})})"
        ) from err


def _grad_cam(
    spec: MethodSpec,
    factory: Callable[[], keras.Model],
    x_cl: np.ndarray,
    targets: np.ndarray,
    layer_names: Mapping[str, str] | None,
) -> np.ndarray:
    """Grad-CAM map, channels-last, broadcast to the input's channels."""
    model = factory()
    layer = _gradcam_layer(spec, model, layer_names)
    feats = layer.output  # after a fused activation, as a Keras conv gives it
    spatial_rank = len(feats.shape) - 2
    if spatial_rank not in (1, 2) or len(x_cl.shape) - 2 != spatial_rank:
        raise ReferenceUnavailable(
            f"{spec.name}: Grad-CAM needs 1-D or 2-D conv features matching the input, got "
            f"features {tuple(feats.shape)} for input {x_cl.shape}"
        )
    index = tf.compat.v1.placeholder(tf.int32, (None,), name="gradcam_target")
    out = model.output
    out = tf.reshape(out, [tf.shape(out)[0], -1])
    selected = tf.gather_nd(out, tf.stack([tf.range(tf.shape(out)[0]), index], axis=1))
    grads = tf.gradients(tf.reduce_sum(selected), feats)[0]
    spatial = list(range(1, 1 + spatial_rank))
    weights = tf.reduce_mean(grads, axis=spatial, keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feats, axis=-1))
    peak = tf.reduce_max(cam, axis=spatial, keepdims=True)
    cam = tf.where(peak > 0, cam / tf.where(peak > 0, peak, tf.ones_like(peak)), cam)
    dtype = cam.dtype.as_numpy_dtype
    resize_h = tf.constant(bilinear_resize_matrix(int(feats.shape[1]), x_cl.shape[1]), dtype)
    if spatial_rank == 2:
        resize_w = tf.constant(bilinear_resize_matrix(int(feats.shape[2]), x_cl.shape[2]), dtype)
        cam = tf.einsum("ih,nhw,jw->nij", resize_h, cam, resize_w)
    else:
        cam = tf.einsum("il,nl->ni", resize_h, cam)
    fn = keras.backend.function([model.input, index], [cam])
    cam = np.asarray(fn([x_cl, targets.astype(np.int32)])[0])
    return np.broadcast_to(cam[..., None], x_cl.shape).copy()


# --------------------------------------------------------------------------------------------
# LRP family
# --------------------------------------------------------------------------------------------


def _input_rule(spec: MethodSpec) -> Any:
    """iNNvestigate's ``input_layer_rule`` argument for the spec's input rule: its name in
    iNNvestigate's ``LRP_RULES`` from the library's rule table, or the harness's own rule."""
    rule = spec.input_rule
    if rule is None:
        return None
    if rule == "sign":
        return _proxy(SignRule, mu=float(spec.params.get("mu", 0.0)))
    if rule == "zbox":
        return (float(spec.params["low"]), float(spec.params["high"]))
    return INPUT_RULES[rule].innvestigate


_RULE_CLASSES = {"Z": rrule.ZRule, "WSquare": rrule.WSquareRule, "Flat": rrule.FlatRule}


def _rule_class(name: str) -> Any:
    """iNNvestigate's rule class for a hidden-rule name such as ``'epsilon_0_1'`` (or ``'flat'``)."""
    spec = parse(f"lrp_{name}")
    params, bias = spec.params, bool(spec.params.get("bias", True))
    classes: dict[str, Callable[[], Any]] = {
        "z": lambda: _proxy(rrule.ZRule, bias=bias),
        "epsilon": lambda: _proxy(rrule.EpsilonRule, epsilon=float(params["epsilon"]), bias=bias),
        "epsilon_std_x": lambda: _proxy(StdxEpsilonRule, stdfactor=float(params["stdfactor"]), bias=bias),
        "alpha_beta": lambda: _proxy(rrule.AlphaBetaRule, alpha=params["alpha"], beta=params["beta"], bias=bias),
        "z_plus": lambda: rrule.ZPlusRule,
        "z_plus_fast": lambda: rrule.ZPlusFastRule,
        "gamma": lambda: _proxy(GammaRule, gamma=float(params["gamma"])),
        "flat": lambda: rrule.FlatRule,
        "w_square": lambda: rrule.WSquareRule,
    }
    assert spec.rule in classes, spec.rule  # the grammar allows single rules only here
    return classes[spec.rule]()


def _until_kwargs(spec: MethodSpec, model: keras.Model, layer_names: Mapping[str, str] | None) -> dict[str, Any]:
    """iNNvestigate's ``until_layer_idx`` and ``until_layer_rule`` for the spec's: the library
    numbers the conv/dense layers in the PyTorch graph's execution order (``layer_names``, the
    twin's build order), iNNvestigate numbers ``model.layers``; the index given to iNNvestigate is
    that of the same conv/dense layer, and the conv/dense layers up to it must be the same ones."""
    index = spec.params.get("until_layer_idx")
    if index is None:
        return {}
    # a fused activation maps to its conv/dense layer's name too: each name once, where it first appears
    built = dict.fromkeys((layer_names or {}).values())
    names = [name for name in built if ichecks.contains_kernel(model.get_layer(name))]
    if not names:
        raise ReferenceUnavailable(f"{spec.name}: no build order (layer_names) numbers the twin's conv/dense layers")
    chosen = names[: index + 1]
    position = model.layers.index(model.get_layer(chosen[-1]))
    keras_chosen = [layer.name for layer in model.layers[: position + 1] if ichecks.contains_kernel(layer)]
    if sorted(keras_chosen) != sorted(chosen):
        raise ReferenceUnavailable(
            f"{spec.name}: the Keras model lists its conv/dense layers in another order than the PyTorch "
            f"graph runs them ({keras_chosen} up to model.layers[{position}], against {chosen}), so no "
            "until_layer_idx gives iNNvestigate the same layers"
        )
    return {"until_layer_idx": position, "until_layer_rule": _rule_class(spec.params["until_layer_rule"])}


def _lrp_analyzer(spec: MethodSpec, model: keras.Model, layer_names: Mapping[str, str] | None) -> Any:
    rule, params = spec.rule, spec.params
    input_rule = _input_rule(spec)
    kwargs: dict[str, Any] = {
        "neuron_selection_mode": "index",
        **_lrp_check_kwargs(model),
        **_until_kwargs(spec, model, layer_names),
    }
    if rule == "deep_taylor":
        if input_rule is None:
            return DeepTaylor(model, **kwargs)
        if isinstance(input_rule, tuple):
            return BoundedDeepTaylor(model, low=input_rule[0], high=input_rule[1], **kwargs)
        return _DeepTaylorInputRule(model, _RULE_CLASSES.get(input_rule, input_rule), **kwargs)
    if input_rule is not None:
        kwargs["input_layer_rule"] = input_rule
    bias = bool(params.get("bias", True))
    if rule == "z":
        return LRPZ(model, **kwargs) if bias else _LRPRule(model, _proxy(rrule.ZRule, bias=False), **kwargs)
    if rule == "epsilon":
        epsilon = float(params["epsilon"])
        if not epsilon > 0:
            raise ReferenceUnavailable(f"{spec.name}: iNNvestigate's epsilon rule needs epsilon > 0, got {epsilon}")
        return LRPEpsilon(model, epsilon=epsilon, bias=bias, **kwargs)
    if rule == "epsilon_std_x":
        return _LRPRule(model, _proxy(StdxEpsilonRule, stdfactor=float(params["stdfactor"]), bias=bias), **kwargs)
    if rule == "alpha_beta":
        try:
            return LRPAlphaBeta(model, alpha=params["alpha"], beta=params["beta"], bias=bias, **kwargs)
        except ValueError as err:  # iNNvestigate checks alpha - beta == 1 exactly
            raise ReferenceUnavailable(f"{spec.name}: {err}") from err
    if rule == "z_plus":
        return LRPZPlus(model, **kwargs)
    if rule == "z_plus_fast":
        return LRPZPlusFast(model, **kwargs)
    if rule == "gamma":
        return _LRPRule(model, _proxy(GammaRule, gamma=float(params["gamma"])), **kwargs)
    if rule == "flat":
        return LRPFlat(model, **kwargs)
    if rule == "w_square":
        return LRPWSquare(model, **kwargs)
    if rule == "sequential_composite_a":
        return LRPSequentialPresetA(model, epsilon=float(params["epsilon"]), **kwargs)
    if rule == "sequential_composite_b":
        return LRPSequentialPresetB(model, epsilon=float(params["epsilon"]), **kwargs)
    raise ValueError(f"{spec.name}: unknown LRP rule {rule!r}")


def _lrp(
    spec: MethodSpec,
    factory: Callable[[], keras.Model],
    x_cl: np.ndarray,
    targets: np.ndarray,
    layer_names: Mapping[str, str] | None,
) -> np.ndarray:
    if spec.params.get("last_rule") is not None:
        raise ReferenceUnavailable(f"{spec.name}: iNNvestigate's analyzers have no rule of the last layer (last_rule=)")
    model = factory()
    if spec.input_rule is not None and not _input_layer_found(model):
        raise ReferenceUnavailable(
            f"{spec.name}: iNNvestigate finds no conv/dense layer at the model input (a layer "
            "other than Flatten/Permute/Reshape in front of it, or layers already called on "
            "other tensors), so it would silently drop the input-layer rule (METHODS traps "
            "10 and 12)"
        )
    analyzer = _build(spec.name, lambda: _lrp_analyzer(spec, model, layer_names))
    _run_exception_checks(analyzer, model, spec.name)
    return _analyze(analyzer, x_cl, targets, spec.name)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _inputs(x: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """x in Keras' floatx, one int target per input (a single target is repeated)."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=_floatx())
    targets = np.asarray(targets).reshape(-1).astype(np.int64)
    if x.ndim >= 2 and targets.shape[0] == 1:
        targets = np.repeat(targets, x.shape[0])
    if x.ndim < 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(f"need x of shape (N, ...) and one target per input; got x {x.shape}, targets {targets.shape}")
    return x, targets


def reference_map(
    spec: MethodSpec,
    keras_model_factory: Callable[[], keras.Model],
    x: np.ndarray,
    targets: np.ndarray,
    *,
    input_layer_hidden: bool = False,
    layer_names: Mapping[str, str] | None = None,
) -> np.ndarray:
    """The reference relevance map of ``spec`` for inputs ``x`` and target logits ``targets``.

    Parameters
    ----------
    spec : MethodSpec
        The parsed method.
    keras_model_factory : callable
        Returns a *fresh* channels-last Keras model (new layer objects, identical weights) on
        every call; one is built per analyzer (METHODS trap 10).
    x : ndarray
        Inputs, channels-first (N, C, ...) as the PyTorch model takes them.
    targets : ndarray of int
        One output index per input, shape (N,).
    input_layer_hidden : bool
        The twin has a layer in front of its first conv/dense layer that iNNvestigate does not
        skip, so input-layer rules cannot be applied (METHODS trap 12).
    layer_names : mapping, optional
        Torch module path -> Keras layer name, in the twin's build order, for Grad-CAM's
        ``layer_name`` and LRP's ``until_layer_idx``.

    Returns
    -------
    ndarray
        The map, channels-first, the shape of ``x``, in Keras' floatx.

    Raises
    ------
    ReferenceUnavailable
        For ``random_uniform`` and ``random`` (``input`` with ``stddev > 0``), for an input-layer
        rule that iNNvestigate would drop, for smoothgrad/vargrad without explicit noise, or where
        iNNvestigate refuses the model.
    """
    family = spec.family
    if family == "random_uniform" or (family == "input" and spec.params["stddev"]):
        raise ReferenceUnavailable(f"{spec.name}: a random map has no reference to compare")
    if spec.input_rule is not None and input_layer_hidden:
        raise ReferenceUnavailable(
            f"{spec.name}: the twin hides its input layer from iNNvestigate (e.g. explicit "
            "padding in front of the first conv), which would silently drop the "
            f"{spec.input_rule!r} input-layer rule (METHODS trap 12)"
        )
    x, targets = _inputs(x, targets)
    dtype = x.dtype
    x_cl = to_channels_last(x)

    if family in _SIMPLE_ANALYZERS:
        rmap = _simple(family, keras_model_factory, x_cl, targets)
    elif family == "integrated_gradients":
        rmap = _integrated_gradients(spec, keras_model_factory, x, x_cl, targets)
    elif family in ("smoothgrad", "vargrad"):
        grads = _noise_gradients(spec, keras_model_factory, x, targets)
        rmap = grads.mean(axis=0) if family == "smoothgrad" else grads.var(axis=0)
    elif family == "deeplift":
        rmap = _deeplift(spec, keras_model_factory, x, x_cl, targets)
    elif family == "grad_cam":
        rmap = _grad_cam(spec, keras_model_factory, x_cl, targets, layer_names)
    elif family == "guided_grad_cam":
        cam = _grad_cam(spec, keras_model_factory, x_cl, targets, layer_names)
        rmap = _simple("guided_backprop", keras_model_factory, x_cl, targets) * cam
    elif family == "lrp":
        rmap = _lrp(spec, keras_model_factory, x_cl, targets, layer_names)
    else:
        raise ValueError(f"{spec.name}: unknown method family {family!r}")

    rmap = to_channels_first(np.asarray(rmap, dtype=dtype))
    if rmap.shape != x.shape:
        raise AssertionError(f"{spec.name}: reference map has shape {rmap.shape}, input {x.shape}")
    return apply_post(spec, rmap, x)


def check_identities(
    keras_model_factory: Callable[[], keras.Model], x: np.ndarray, targets: np.ndarray
) -> dict[str, float]:
    """METHODS trap-10 guards, on the reference side.

    For a ReLU network without BatchNorm, LRP-Z equals gradient x input and LRP-Z with the SIGN
    input rule equals gradient x sign(x); with iNNvestigate's BatchNorm stand-in only
    ``lrp_z == lrpsign_z * x * s(x)`` still holds. If iNNvestigate dropped the input rule,
    ``lrpsign_z`` equals ``lrp_z`` and the last two identities break.

    Returns
    -------
    dict
        max |a - b| / max(max |a|, max |b|) for ``'lrp_z_vs_gradient_x_input'``,
        ``'lrpsign_z_vs_gradient_x_sign'`` and ``'lrp_z_vs_lrpsign_z_x_abs'``.

    Raises
    ------
    ReferenceUnavailable
        Where the identities do not apply: iNNvestigate finds no input layer, or the input also
        reaches a layer without a kernel (a skip connection from the input), whose relevance
        reaches the input without the input rule.
    """
    x, targets = _inputs(x, targets)
    x_cl = to_channels_last(x)
    models = {}
    for name in ("lrp_z", "lrpsign_z"):
        models[name] = model = keras_model_factory()
        if not _input_layer_found(model):
            raise ReferenceUnavailable(
                "check_identities: iNNvestigate finds no conv/dense layer at the model input, "
                "so it would drop the SIGN input rule (METHODS traps 10 and 12)"
            )
        if not _input_enters_kernels_only(model):
            raise ReferenceUnavailable(
                "check_identities: the input also reaches a layer other than a conv/dense layer "
                "(e.g. an Add of a skip connection), where relevance passes without the input rule, "
                "so the identities do not hold"
            )
    analyzers = {
        "lrp_z": _build(
            "lrp_z", lambda: LRPZ(models["lrp_z"], neuron_selection_mode="index", **_lrp_check_kwargs(models["lrp_z"]))
        ),
        "lrpsign_z": _build(
            "lrpsign_z",
            lambda: LRPZ(
                models["lrpsign_z"],
                neuron_selection_mode="index",
                input_layer_rule=_proxy(SignRule, mu=0.0),
                **_lrp_check_kwargs(models["lrpsign_z"]),
            ),
        ),
    }
    for name, analyzer in analyzers.items():
        _run_exception_checks(analyzer, models[name], name)
    lrp_z = _analyze(analyzers["lrp_z"], x_cl, targets, "lrp_z")
    lrpsign_z = _analyze(analyzers["lrpsign_z"], x_cl, targets, "lrpsign_z")
    grad = _simple("gradient", keras_model_factory, x_cl, targets)
    sign = _sign(x_cl, 0.0)
    return {
        "lrp_z_vs_gradient_x_input": relative_error(lrp_z, grad * x_cl),
        "lrpsign_z_vs_gradient_x_sign": relative_error(lrpsign_z, grad * sign),
        "lrp_z_vs_lrpsign_z_x_abs": relative_error(lrp_z, lrpsign_z * x_cl * sign),
    }
