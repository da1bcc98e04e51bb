"""Every method-name family with its parameters and defaults, read from the grammar's own tables.

:func:`list_methods` returns one :class:`MethodFamily` per gradient-family base, Grad-CAM form,
LRP hidden-layer rule, LRP input-rule prefix, post-multiplier, alias and refused iNNvestigate
name; the parameters and defaults come from :data:`.grammar.FAMILY_PARAMS`, the rule table
(:mod:`.lrp.table`) and the alias table (:mod:`.aliases`), so the list cannot drift from what
:func:`.grammar.parse` accepts. :func:`format_methods` renders it as text (``signxai-parity
--list-methods``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import grammar
from .aliases import ALIASES, REFUSED, SAME_NAME_DEFAULTS
from .lrp.table import HIDDEN_RULES, INPUT_RULES, PREFIXES

__all__ = ["MethodFamily", "list_methods", "format_methods", "FAMILY_DESCRIPTIONS", "KINDS"]

#: the kinds of entries, in the order :func:`format_methods` prints them
KINDS = ("method", "lrp rule", "lrp input rule", "post-multiplier", "alias", "refused")

#: what each engine family computes, and the iNNvestigate 2.1.2 analyzer it matches
FAMILY_DESCRIPTIONS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "gradient": ("gradient of the selected logit w.r.t. the input", "Gradient"),
        "guided_backprop": ("gradient with ReLUs passing only positive gradients at positive inputs", "GuidedBackprop"),
        "deconvnet": ("gradient with ReLUs applied to the gradient instead of gated by the input", "Deconvnet"),
        "smoothgrad": ("mean gradient over num_samples inputs x + N(0, noise_level**2)", "SmoothGrad"),
        "vargrad": (
            "population variance of the gradient over num_samples inputs x + N(0, noise_level**2)",
            "(none: written from the formula)",
        ),
        "integrated_gradients": (
            "(x - reference) times the mean gradient at reference + k/steps (x - reference), k = 0..steps-1",
            "IntegratedGradients",
        ),
        "deeplift": ("DeepLIFT rescale rule against reference (zeros by default)", "(none: written from the formula)"),
        "random_uniform": ("U(-1, 1) noise shared across channels (a baseline)", "(none)"),
        "input": ("the input itself, plus N(0, stddev**2) noise when stddev > 0", "Input / Random"),
        "grad_cam": (
            "ReLU(sum_k w_k A_k) of a conv layer, w_k the mean gradient, normalised and resized",
            "(none: written from the formula)",
        ),
        "guided_grad_cam": ("guided backprop times the Grad-CAM map", "(none: written from the formula)"),
        "lrp": ("layer-wise relevance propagation from the selected logit's value (see the LRP rules)", "LRP"),
    }
)

_RULE_DESCRIPTIONS = MappingProxyType(
    {
        "z": "R_i = x_i sum_j w_ij R_j / z_j, z = W x + b",
        "epsilon": "R_i = x_i sum_j w_ij R_j / (z_j + epsilon sign(z_j))",
        "epsilon_std_x": "epsilon rule, epsilon = number * std(layer input) per sample",
        "alpha_beta": "alpha R(W+ x+ + W- x-) - beta R(W- x+ + W+ x-), alpha - beta = 1",
        "z_plus": "alpha 1, beta 0 without the bias",
        "z_plus_fast": "R_i = x_i sum_j w+_ij R_j / sum_i' w+_i'j x_i' (no bias, x as it is)",
        "gamma": "Z rule on W + gamma W+ (bias b + gamma b+)",
        "flat": "R_i = sum_j R_j / (number of inputs of j); no bias",
        "w_square": "R_i = sum_j w_ij^2 R_j / sum_i' w_i'j^2; no bias",
        "sequential_composite_a": "epsilon (dense layers) and alpha 1 beta 0 (conv layers)",
        "sequential_composite_b": "epsilon (dense layers) and alpha 2 beta 1 (conv layers)",
        "deep_taylor": "Z+ on every conv/dense layer, relevance from ReLU(logit)",
    }
)

_PREFIX_DESCRIPTIONS = MappingProxyType(
    {
        "lrp": "the hidden-layer rule at the input layer too",
        "lrpz": "Z rule at the input layer",
        "lrpsign": "SIGN input rule: R_i = s_mu(x_i) sum_j w_ij R_j / z_j, s_mu(v) = +1 if v >= mu else -1",
        "w2lrp": "W-square rule at the input layer",
        "flatlrp": "Flat rule at the input layer",
        "zblrp": "Z-box rule at the input layer (inputs in [low, high]; _VGG16ILSVRC: the ImageNet range)",
    }
)


@dataclass(frozen=True)
class MethodFamily:
    """One family of method names.

    Attributes
    ----------
    pattern : str
        How its names are spelled (``<number>`` is a grammar number, ``[...]`` optional).
    kind : str
        One of :data:`KINDS`.
    params : Mapping
        Its parameters -> defaults (None: the name or a keyword must give it, or the engine
        resolves it).
    innvestigate : str
        The iNNvestigate 2.1.2 analyzer or rule it matches.
    description : str
        What it computes (for an alias: the signxai name it means).
    family : str
        The engine family that computes it (:attr:`.grammar.MethodSpec.family`; '' for
        post-multipliers, aliases and refused names).
    """

    pattern: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    innvestigate: str = ""
    description: str = ""
    family: str = ""


def _frozen(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(params))


def _methods() -> list[MethodFamily]:
    rows = []
    for base, family in grammar.SIMPLE_BASES.items():
        text, analyzer = FAMILY_DESCRIPTIONS[family]
        if base in SAME_NAME_DEFAULTS:
            values = ", ".join(f"{k}={v}" for k, v in SAME_NAME_DEFAULTS[base].items())
            text += f" (iNNvestigate's {base} defaults differ: pass {values})"
        rows.append(MethodFamily(base, "method", _frozen(grammar.FAMILY_PARAMS[family]), analyzer, text, family))
    presets = "|".join(grammar.GRADCAM_PRESETS)
    for family in ("grad_cam", "guided_grad_cam"):
        text, analyzer = FAMILY_DESCRIPTIONS[family]
        pattern = f"{family}[_timeseries][_{presets}]" if family == "grad_cam" else f"{family}[_{presets}]"
        rows.append(MethodFamily(pattern, "method", _frozen(grammar.FAMILY_PARAMS[family]), analyzer, text, family))
    return rows


def _lrp_rules() -> list[MethodFamily]:
    rows = []
    for name, entry in HIDDEN_RULES.items():
        ib = "[_ib]" if "bias" in entry.params else ""
        pattern = f"<prefix>_{entry.syntax or name}{ib}"
        rows.append(
            MethodFamily(
                pattern, "lrp rule", _frozen(entry.params), entry.innvestigate, _RULE_DESCRIPTIONS[name], "lrp"
            )
        )
    return rows


def _lrp_prefixes() -> list[MethodFamily]:
    rows = []
    for prefix, rule in PREFIXES.items():
        entry = INPUT_RULES[rule] if rule is not None else None
        suffix = "[_mu_<number>]" if rule == "sign" else "[_VGG16ILSVRC]" if rule == "zbox" else ""
        rows.append(
            MethodFamily(
                f"{prefix}_<rule>{suffix}",
                "lrp input rule",
                _frozen(entry.params if entry else {}),
                f"input_layer_rule={entry.innvestigate}" if entry else "",
                _PREFIX_DESCRIPTIONS[prefix],
                "lrp",
            )
        )
    return rows


def _post() -> list[MethodFamily]:
    return [
        MethodFamily("<name>_x_input", "post-multiplier", description="the map times the input"),
        MethodFamily(
            "<name>_x_sign[_mu[_<number>]]",
            "post-multiplier",
            _frozen({"mu": 0.0}),
            description="the map times s_mu(x) = +1 if x >= mu else -1 (after _x_input)",
        ),
    ]


def _aliases() -> list[MethodFamily]:
    rows = []
    for name, alias in ALIASES.items():
        means = alias.means + (
            f" with {', '.join(f'{k}={v}' for k, v in alias.defaults.items())}" if alias.defaults else ""
        )
        rows.append(MethodFamily(name, "alias", _frozen(alias.defaults), alias.analyzer, f"= {means} ({alias.source})"))
    rows += [MethodFamily(name, "refused", description=why) for name, why in REFUSED.items()]
    return rows


def list_methods() -> list[MethodFamily]:
    """Every method-name family, with its parameters and their defaults.

    Returns
    -------
    list of MethodFamily
        Gradient-family and Grad-CAM methods, LRP hidden-layer rules (``<prefix>_<rule>``), LRP
        input-rule prefixes, post-multipliers, whole-name aliases (the seed's short forms and
        iNNvestigate's analyzer names) and the iNNvestigate names that are refused, in that order.
    """
    return _methods() + _lrp_rules() + _lrp_prefixes() + _post() + _aliases()


def _format_params(params: Mapping[str, Any], required: bool) -> str:
    """``key=default`` pairs; a None default is ``(required)`` where ``required`` (LRP rule
    parameters: the name or a keyword must give them), else ``None`` (resolved by the engine)."""
    return ", ".join(f"{k}={'(required)' if v is None and required else repr(v)}" for k, v in params.items()) or "-"


def format_methods(markdown: bool = False) -> str:
    """:func:`list_methods` as text, one section per kind, one family a line.

    Parameters
    ----------
    markdown : bool
        A Markdown table per kind (the documentation's method reference) instead of plain text
        (``signxai-parity --list-methods``).
    """
    families = list_methods()
    intro = [
        "Method names: method[_x_input][_x_sign[_mu[_<number>]]]; LRP: <prefix>_<rule>; "
        "<number> is digits with '_' as the decimal point, 'neg_' for minus (0_25 = 0.25).",
        "Keyword parameters fill or override a name's parameters; (required): the name or a "
        "keyword must give it; an alias lists the defaults it changes. Every LRP name also takes "
        "last_rule= (a rule name such as 'epsilon_0_1' for the last conv/dense layer; None: the "
        "hidden rule) and until_layer_idx= with until_layer_rule= (that rule for the conv/dense "
        "layers numbered 0 to until_layer_idx in execution order).",
        "",
    ]
    lines = [] if markdown else intro
    for kind in KINDS:
        rows = [f for f in families if f.kind == kind]
        required = kind in ("lrp rule", "lrp input rule")
        if markdown:
            lines += [f"### {kind}", "", "| name | what it computes | parameters | iNNvestigate |", "|---|---|---|---|"]
            lines += [
                f"| `{f.pattern}` | {_cell(f.description)} | "
                f"{'-' if kind == 'refused' else _cell(_format_params(f.params, required))} | "
                f"{_cell(f.innvestigate) or '-'} |"
                for f in rows
            ]
            lines.append("")
            continue
        width = max(len(f.pattern) for f in rows)
        lines.append(f"[{kind}]")
        for f in rows:
            extra = f"  params: {_format_params(f.params, required)}" if kind != "refused" else ""
            match = f"  iNNvestigate: {f.innvestigate}" if f.innvestigate else ""
            lines.append(f"  {f.pattern:<{width}}  {f.description}{match}{extra}")
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell (pipes and stars escaped)."""
    return text.replace("|", "\\|").replace("*", "\\*")
