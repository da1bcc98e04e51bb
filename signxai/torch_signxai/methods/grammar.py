"""The method-name grammar: the one place where method names are understood.

A name such as ``lrpsign_epsilon_0_25_std_x_mu_0_5`` or ``smoothgrad_x_sign_mu_neg_0_5`` is
parsed into a :class:`MethodSpec`; every public entry point runs through :func:`parse`.

Grammar::

    name      := base [ "_x_input" ] [ "_x_sign" [ "_mu" [ "_" number ] ] ]
    base      := gradient-family | grad-cam | lrp
    lrp       := prefix "_" rule [ "_ib" ] [ "_mu_" number ] [ "_VGG16ILSVRC" ]
    prefix    := "lrp" | "lrpz" | "lrpsign" | "w2lrp" | "flatlrp" | "zblrp"
    rule      := "z" | "z_plus" | "z_plus_fast" | "epsilon" [ "_" number [ "_std_x" ] ]
               | "alpha_" number "_beta_" number | "gamma" [ "_" number ] | "flat" | "w_square"
               | "sequential_composite_" ("a" | "b") | "deep_taylor"
    number    := [ "neg_" ] digits [ "_" digits ]        (``_`` between digits is a decimal point)

``_ib`` ("ignore bias") names the bias-free variant of a rule that has a bias term (``z``,
``epsilon``, ``epsilon_std_x``, ``alpha_beta``): its conv/dense layers (and BatchNorm) are taken
as ``z = W x``, as iNNvestigate's ``IgnoreBias`` analyzers and its rules' ``bias=False`` do
(``lrp_alpha_2_beta_1_ib`` is ``LRPAlpha2Beta1IgnoreBias``); the keyword ``bias=False`` is the same.

Whole-name aliases (:data:`.aliases.ALIASES`) are other spellings of a name: the seed API's short
forms and every ``innvestigate.create_analyzer`` name (``lrp.epsilon``, ``lrp.alpha_2_beta_1_IB``,
``deep_taylor.bounded``, ``random``, ...), each meaning what its iNNvestigate analyzer computes;
the few iNNvestigate names without a meaning for a PyTorch model are refused with the reason
(:data:`.aliases.REFUSED`). Explicit keyword arguments (``epsilon=``, ``mu=``, ``stdfactor=``, ``low=``, ``high=``,
``bias=``, and iNNvestigate's ``augment_by_n=``, ``noise_scale=``, ``reference_inputs=``, ...) fill
or override the parameters a name carries. Every LRP name also takes ``last_rule=`` and
``until_layer_idx=`` with ``until_layer_rule=`` (rules for the last conv/dense layer and for the
conv/dense layers numbered 0 to ``until_layer_idx`` in execution order).
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .aliases import ALIASES, REFUSED
from .lrp.table import HIDDEN_RULES, INPUT_RULES, PREFIXES

__all__ = [
    "MethodSpec",
    "parse",
    "format_number",
    "known_names",
    "LRP_PREFIXES",
    "LRP_RULES",
    "FAMILY_PARAMS",
    "SIMPLE_BASES",
    "GRADCAM_PRESETS",
]

_NUMBER = r"(?:neg_)?\d+(?:_\d+)?"

#: input-layer rule of each LRP name prefix (None: the hidden-layer rule also at the input)
LRP_PREFIXES: Mapping[str, str | None] = PREFIXES

#: hidden-layer LRP rules and the parameters each one takes
LRP_RULES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {name: tuple(entry.params) for name, entry in HIDDEN_RULES.items()}
)

#: ImageNet (BGR, mean-subtracted) input range of the VGG16 presets
_ZBOX_PRESETS = MappingProxyType({"VGG16ILSVRC": (-123.68, 151.061)})
#: Grad-CAM presets: default layer of each known architecture (None: the conv farthest from the input)
GRADCAM_PRESETS = MappingProxyType(
    {
        "VGG16ILSVRC": "features.28",
        "VGG16MITPL365": "features.28",
        "MNISTCNN": None,
    }
)

#: parameters of each family, with defaults (None: no default, resolved by the engine)
FAMILY_PARAMS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "gradient": {},
        "guided_backprop": {},
        "deconvnet": {},
        "smoothgrad": {"noise_level": 0.2, "num_samples": 50, "seed": None, "noise": None, "batch_size": 64},
        "vargrad": {"noise_level": 0.2, "num_samples": 50, "seed": None, "noise": None, "batch_size": 64},
        "integrated_gradients": {"steps": 50, "reference": None, "batch_size": 64},
        "deeplift": {"reference": None},
        "random_uniform": {"seed": None},
        "input": {"stddev": 0.0, "seed": None},
        "grad_cam": {"layer_name": None},
        "guided_grad_cam": {"layer_name": None},
        "lrp": {},
    }
)
#: parameters every LRP method takes (None: not used): the rule of the last conv/dense layer (a
#: hidden-rule name such as ``'epsilon_0_1'``), and a rule for the conv/dense layers numbered 0 to
#: ``until_layer_idx`` in execution order (iNNvestigate's ``until_layer_rule`` and
#: ``until_layer_idx``, which number Keras' ``model.layers`` instead; see the method reference)
_LRP_COMMON = ("last_rule", "until_layer_idx", "until_layer_rule")
#: the LRP parameters that name a single hidden-layer rule, and the rules that are not one
_RULE_PARAMS = ("last_rule", "until_layer_rule")
_ANALYZER_PRESETS = ("sequential_composite_a", "sequential_composite_b", "deep_taylor")

#: keyword aliases accepted for a parameter
_KWARG_ALIASES = MappingProxyType(
    {
        "baseline": "reference",
        "reference_inputs": "reference",
        "augment_by_n": "num_samples",
        "noise_scale": "noise_level",
        "target_layer": "layer_name",
        "last_conv_layer_name": "layer_name",
    }
)

#: names of the methods without a syntax of their own -> their family
SIMPLE_BASES = MappingProxyType(
    {
        "gradient": "gradient",
        "guided_backprop": "guided_backprop",
        "deconvnet": "deconvnet",
        "smoothgrad": "smoothgrad",
        "vargrad": "vargrad",
        "integrated_gradients": "integrated_gradients",
        "deeplift_method": "deeplift",
        "deeplift": "deeplift",
        "random_uniform": "random_uniform",
        "input": "input",
    }
)

_POST_RE = re.compile(rf"^(?P<base>.+?)(?P<x_input>_x_input)?(?P<x_sign>_x_sign(?:_mu(?P<post_mu>_{_NUMBER})?)?)?$")
_GRADCAM_RE = re.compile(r"^(?P<guided>guided_)?grad_cam(?P<timeseries>_timeseries)?(?:_(?P<preset>[A-Za-z0-9]+))?$")
_LRP_RE = re.compile(
    rf"^(?P<prefix>{'|'.join(LRP_PREFIXES)})_(?P<rule>"
    rf"z_plus_fast|z_plus|z|epsilon(?:_(?P<eps>{_NUMBER})(?P<std_x>_std_x)?)?"
    rf"|alpha_beta|alpha_(?P<alpha>{_NUMBER})_beta_(?P<beta>{_NUMBER})"
    rf"|gamma(?:_(?P<gamma>{_NUMBER}))?|flat|w_square|sequential_composite_[ab]|deep_taylor)"
    rf"(?P<ib>_ib)?(?:_mu_(?P<mu>{_NUMBER}))?(?:_(?P<preset>VGG16ILSVRC))?$"
)


def _number(text: str) -> float:
    """Decode a grammar number: ``0_25`` is 0.25, ``neg_0_5`` is -0.5."""
    negative = text.startswith("neg_")
    digits = text[4:] if negative else text
    value = float(digits.replace("_", "."))
    return -value if negative else value


def format_number(value: float) -> str:
    """Write a number in the grammar's notation: 0.25 is ``0_25``, -0.5 is ``neg_0_5``."""
    text = np.format_float_positional(float(value), trim="-")
    return ("neg_" + text[1:] if text.startswith("-") else text).replace(".", "_")


@dataclass(frozen=True)
class MethodSpec:
    """What a method name means, independent of any model.

    Attributes
    ----------
    name : str
        The name as the caller gave it.
    family : str
        Which engine computes the map: ``'gradient'``, ``'guided_backprop'``, ``'deconvnet'``,
        ``'smoothgrad'``, ``'vargrad'``, ``'integrated_gradients'``, ``'deeplift'``,
        ``'random_uniform'``, ``'input'``, ``'grad_cam'``, ``'guided_grad_cam'`` or ``'lrp'``.
    rule : str or None
        The hidden-layer LRP rule (a key of :data:`LRP_RULES`), for the LRP family.
    input_rule : str or None
        The LRP rule of the input layer (``'z'``, ``'sign'``, ``'w_square'``, ``'flat'``,
        ``'zbox'``), or None for the hidden-layer rule.
    params : Mapping
        The method's parameters, defaults filled in.
    post : tuple of str
        Post-multipliers applied to the map, in order: ``'x_input'`` and/or ``'x_sign'``.
    batchnorm : str
        How LRP treats BatchNorm: ``'exact'`` (its true affine map, the PyTorch-native API) or
        ``'innvestigate'`` (iNNvestigate 2.1.2's linearisation, the TF-compatible API; trap 11).
    """

    name: str
    family: str
    rule: str | None = None
    input_rule: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    post: tuple[str, ...] = ()
    batchnorm: str = "exact"

    def __getitem__(self, key: str) -> Any:
        """The parameter ``key`` (``spec[key]`` is ``spec.params[key]``)."""
        return self.params[key]


def known_names() -> list[str]:
    """Representative valid names (the fixed part of the vocabulary), used for suggestions.

    Every name here resolves on its own, without keyword parameters: candidates are built from
    the vocabulary (Z-box names with the ``_VGG16ILSVRC`` bounds, whole-name aliases only as
    themselves) and kept only if :func:`parse` accepts them, so a rule added to the grammar's
    checks can never turn a suggestion into an error.
    """
    return list(_vocabulary())


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    bases = list(SIMPLE_BASES) + ["grad_cam", "grad_cam_timeseries", "guided_grad_cam"]
    bases += [f"grad_cam_{p}" for p in GRADCAM_PRESETS] + [f"guided_grad_cam_{p}" for p in GRADCAM_PRESETS]
    rule_examples = [
        "z",
        "z_ib",
        "z_plus",
        "z_plus_fast",
        "epsilon_0_1",
        "epsilon_0_1_ib",
        "epsilon_0_1_std_x",
        "alpha_1_beta_0",
        "alpha_2_beta_1",
        "alpha_2_beta_1_ib",
        "gamma",
        "flat",
        "w_square",
        "sequential_composite_a",
        "sequential_composite_b",
        "deep_taylor",
    ]
    bases += [
        f"{prefix}_{rule}" + ("_VGG16ILSVRC" if LRP_PREFIXES[prefix] == "zbox" else "")
        for prefix in LRP_PREFIXES
        for rule in rule_examples
    ]
    names = bases + [f"{n}{post}" for n in bases for post in ("_x_input", "_x_sign", "_x_input_x_sign")]
    names += list(ALIASES)
    _BUILDING.vocabulary = True
    try:
        return tuple(name for name in names if _resolves(name))
    finally:
        _BUILDING.vocabulary = False


#: per thread: whether this thread is building the vocabulary (other threads still get suggestions)
_BUILDING = threading.local()


def _resolves(name: str) -> bool:
    try:
        parse(name)
    except ValueError:
        return False
    return True


def _unknown(name: str, why: str = "") -> ValueError:
    close: list[str] = []
    if not getattr(_BUILDING, "vocabulary", False):  # no suggestions while the vocabulary itself is being checked
        vocabulary: dict[str, str] = {}
        for known in _vocabulary():
            vocabulary.setdefault(known.lower(), known)
        close = [vocabulary[c] for c in difflib.get_close_matches(name.lower(), list(vocabulary), n=5, cutoff=0.5)]
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    return ValueError(f"Unknown method name {name!r}{': ' + why if why else ''}.{hint}")


def _parse_base(base: str, full: str) -> tuple[str, str | None, str | None, dict[str, Any]]:
    """Parse the part of a name before its post-multipliers: (family, rule, input_rule, params)."""
    if base in SIMPLE_BASES:
        return SIMPLE_BASES[base], None, None, {}
    match = _GRADCAM_RE.match(base)
    if match:
        params: dict[str, Any] = {}
        preset = match["preset"]
        if preset is not None:
            if preset not in GRADCAM_PRESETS:
                raise _unknown(full, f"unknown Grad-CAM preset {preset!r} (known: {', '.join(GRADCAM_PRESETS)})")
            params["layer_name"] = GRADCAM_PRESETS[preset]
        if match["timeseries"]:
            params["timeseries"] = True
        return ("guided_grad_cam" if match["guided"] else "grad_cam"), None, None, params
    match = _LRP_RE.match(base)
    if not match:
        raise _unknown(full)
    params = {}
    rule = match["rule"]
    if rule.startswith("epsilon"):
        if match["eps"] is not None:
            value = _number(match["eps"])
            if match["std_x"]:
                rule, params["stdfactor"] = "epsilon_std_x", value
            else:
                rule, params["epsilon"] = "epsilon", value
        else:
            rule = "epsilon"
    elif rule.startswith("alpha"):
        alpha, beta = match["alpha"], match["beta"]
        if alpha is not None:
            params["alpha"], params["beta"] = _number(alpha), _number(beta)
        rule = "alpha_beta"
    elif rule.startswith("gamma"):
        if match["gamma"] is not None:
            params["gamma"] = _number(match["gamma"])
        rule = "gamma"
    if match["ib"]:
        if "bias" not in LRP_RULES[rule]:
            biased = ", ".join(name for name, keys in LRP_RULES.items() if "bias" in keys)
            raise _unknown(
                full,
                f"'_ib' (ignore bias) only applies to rules with a bias term ({biased}); {rule} has no bias variant",
            )
        params["bias"] = False
    input_rule = LRP_PREFIXES[match["prefix"]]
    if match["mu"] is not None:
        if input_rule != "sign":
            raise _unknown(full, "'_mu_' after the rule only applies to the lrpsign prefix")
        params["mu"] = _number(match["mu"])
    if match["preset"] is not None:
        if input_rule != "zbox":
            raise _unknown(full, "the VGG16ILSVRC bounds only apply to the zblrp prefix")
        params["low"], params["high"] = _ZBOX_PRESETS[match["preset"]]
    return "lrp", rule, input_rule, params


def parse(name: str, **kwargs: Any) -> MethodSpec:
    """Parse a method name (and keyword parameters) into a :class:`MethodSpec`.

    Parameters
    ----------
    name : str
        A method name, e.g. ``'lrp_epsilon_0_1'``, ``'smoothgrad_x_sign_mu_0_5'``, or an alias
        such as iNNvestigate's ``'lrp.epsilon'`` (see :func:`.catalog.list_methods`).
    **kwargs
        Method parameters that fill or override those the name carries (``epsilon``, ``mu``,
        ``stdfactor``, ``alpha``, ``beta``, ``gamma``, ``bias``, ``low``, ``high``, ``steps``,
        ``noise_level``, ``num_samples``, ``seed``, ``noise``, ``reference``, ``layer_name``,
        ``batch_size``, ``stddev``), or their iNNvestigate spellings (``augment_by_n``,
        ``noise_scale``, ``reference_inputs``). For an alpha-beta rule, one of ``alpha`` and
        ``beta`` is enough: the other follows from ``alpha - beta = 1``.

    Returns
    -------
    MethodSpec

    Raises
    ------
    ValueError
        For an unknown or malformed name (with the closest valid names), a parameter the method
        does not take, or a required parameter that is missing or out of range.
    """
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str, got {type(name).__name__}")
    if name in REFUSED:
        raise ValueError(f"method {name!r} is not supported: {REFUSED[name]}")
    alias = ALIASES.get(name)
    canonical = name if alias is None else alias.means
    match = _POST_RE.match(canonical)
    if not match:
        raise _unknown(name)
    family, rule, input_rule, params = _parse_base(match["base"], name)
    post: list[str] = []
    post_mu = None
    if match["x_input"]:
        post.append("x_input")
    if match["x_sign"]:
        post.append("x_sign")
        post_mu = _number(match["post_mu"][1:]) if match["post_mu"] else 0.0
    if rule == "alpha_beta" and "alpha" not in params:
        params.update(alpha=1.0, beta=0.0)

    merged = dict(FAMILY_PARAMS[family])
    if family == "lrp":
        assert rule is not None  # every LRP method names its rule
        merged.update(HIDDEN_RULES[rule].params)
        merged.update(INPUT_RULES[input_rule].params if input_rule is not None else {})
        merged.update(dict.fromkeys(_LRP_COMMON))
    merged.update(params)
    if alias is not None:
        merged.update(alias.defaults)
    if post_mu is not None:
        merged["post_mu"] = post_mu
    kwargs = {_KWARG_ALIASES.get(key, key): value for key, value in kwargs.items()}
    if rule == "alpha_beta" and ("alpha" in kwargs) != ("beta" in kwargs):
        # one of them given: the other follows from alpha - beta = 1 (iNNvestigate infers it too)
        if "alpha" in kwargs:
            kwargs["beta"] = kwargs["alpha"] - 1
        else:
            kwargs["alpha"] = kwargs["beta"] + 1
    for key, value in kwargs.items():
        if key == "mu" and input_rule != "sign" and post_mu is not None:
            key = "post_mu"
        if key not in merged:
            accepted = sorted(k for k in merged if k != "post_mu")
            raise ValueError(
                f"method {name!r} does not take the parameter {key!r}; "
                f"it takes: {', '.join(accepted) or 'no parameters'}"
            )
        merged[key] = value
    _check_params(name, family, rule, input_rule, merged)
    return MethodSpec(
        name=name, family=family, rule=rule, input_rule=input_rule, params=MappingProxyType(merged), post=tuple(post)
    )


def _check_params(name: str, family: str, rule: str | None, input_rule: str | None, params: dict[str, Any]) -> None:
    """Reject missing or out-of-range parameters with a message naming them."""
    if family == "lrp":
        for key in _RULE_PARAMS:
            if params[key] is not None and parse(f"lrp_{params[key]}").rule in _ANALYZER_PRESETS:
                raise ValueError(f"method {name!r}: {key} must be a single rule, got {params[key]!r}")
        _check_until(name, rule, params["until_layer_idx"], params["until_layer_rule"])
        assert rule is not None  # every LRP method names its rule
        for key in LRP_RULES[rule]:
            if params.get(key) is None:
                raise ValueError(f"method {name!r} needs the parameter {key}= (e.g. {name}_0_1, or pass {key}=0.1)")
        if rule == "epsilon" and not params["epsilon"] >= 0:
            raise ValueError(f"method {name!r}: epsilon must be >= 0, got {params['epsilon']}")
        if rule == "alpha_beta" and not math.isclose(params["alpha"] - params["beta"], 1.0, rel_tol=0.0, abs_tol=1e-9):
            raise ValueError(
                f"method {name!r}: alpha - beta must be 1 (alpha={params['alpha']}, beta={params['beta']})"
            )
        if input_rule == "zbox" and (params["low"] is None or params["high"] is None):
            raise ValueError(f"method {name!r}: the Z-box input rule needs low= and high= (or the _VGG16ILSVRC preset)")
    for key in ("num_samples", "steps", "batch_size"):
        if key in params and (not isinstance(params[key], int) or params[key] < 1):
            raise ValueError(f"method {name!r}: {key} must be a positive int, got {params[key]!r}")
    if "stddev" in params and not params["stddev"] >= 0:
        raise ValueError(f"method {name!r}: stddev must be >= 0, got {params['stddev']!r}")
    if "noise_level" in params and not params["noise_level"] >= 0:
        raise ValueError(f"method {name!r}: noise_level must be >= 0, got {params['noise_level']!r}")


def _check_until(name: str, rule: str | None, index: Any, until_rule: str | None) -> None:
    """An ``until_layer_idx`` needs an ``until_layer_rule`` (a rule without an index applies to no
    layer, as in iNNvestigate) and an LRP analyzer that has them."""
    if index is None:
        return
    where = f"method {name!r}: until_layer_idx"
    if until_rule is None:
        raise ValueError(f"{where}= needs until_layer_rule= too (e.g. until_layer_rule='flat')")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"{where} must be an int >= 0 (a conv/dense layer's number), got {index!r}")
    if rule == "deep_taylor":
        raise ValueError(f"{where}: Deep Taylor has none (iNNvestigate's DeepTaylor is not an LRP analyzer)")
