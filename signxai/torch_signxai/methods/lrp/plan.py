"""The plan: which rule each kind of layer gets under one LRP method, following the iNNvestigate
analyzer the method names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..grammar import MethodSpec, parse
from .rules import AlphaBetaRule, AlphaBetaX2m100Rule, EpsilonRule, Rule, ZRule
from .table import HIDDEN_RULES, INPUT_RULES, build

__all__ = ["Plan", "plan_for"]


@dataclass(frozen=True)
class Plan:
    """Which rule each kind of layer gets, for one method.

    Attributes
    ----------
    dense, conv : Rule
        Rules of hidden dense and conv layers.
    batchnorm : Rule or None
        Rule applied to BatchNorm's affine map (iNNvestigate's BN rule of the analyzer), or None
        for its plain gradient.
    input : Rule or None
        Rule of the input layer (the first conv/dense layer executed), or None for the hidden rule.
    last : Rule or None
        Rule of the last conv/dense layer executed, or None for the hidden rule.
    until : Rule or None
        Rule of the conv/dense layers numbered 0 to ``until_index`` in execution order (the input
        rule still wins at an input layer), or None.
    until_index : int or None
        The number of the last conv/dense layer that gets ``until``.
    average_pool : Rule or None
        Rule of average pooling (and of a spatial mean: global average pooling), or None for
        its plain gradient.
    add : Rule or None
        Rule of a tensor sum (iNNvestigate's ``AddReverseLayer``: the Z rule whatever the
        analyzer), or None for its plain gradient.
    gate : bool
        Whether a product of two tensors has a mapping (its gradient); iNNvestigate's Deep Taylor
        has none.
    deep_taylor : bool
        iNNvestigate's Deep Taylor: relevance starts at ReLU(logit); a ReLU fused into the
        conv/dense layer it directly follows (as in the Keras twin) passes relevance, any other
        ReLU takes its gradient. (Its kernel rule is Z+ on every conv/dense layer: ``dense``/``conv``.)
    """

    dense: Rule
    conv: Rule
    batchnorm: Rule | None
    input: Rule | None = None
    last: Rule | None = None
    until: Rule | None = None
    until_index: int | None = None
    average_pool: Rule | None = field(default_factory=ZRule)
    add: Rule | None = field(default_factory=ZRule)
    gate: bool = True
    deep_taylor: bool = False


def _hidden_rule(spec: MethodSpec) -> Rule:
    assert spec.rule is not None  # every LRP method names its rule
    return build(HIDDEN_RULES[spec.rule], spec.params)


def _input_rule(spec: MethodSpec) -> Rule | None:
    return None if spec.input_rule is None else build(INPUT_RULES[spec.input_rule], spec.params)


def _named_rule(name: str | None) -> Rule | None:
    """The rule a hidden-rule name such as ``'epsilon_0_1'`` stands for (None for None)."""
    return None if name is None else _hidden_rule(parse(f"lrp_{name}"))


def plan_for(spec: MethodSpec) -> Plan:
    """The layer rules of an LRP method spec, following the iNNvestigate analyzer it names."""
    params = spec.params
    index = params.get("until_layer_idx")
    common: dict[str, Any] = {
        "input": _input_rule(spec),
        "last": _named_rule(params.get("last_rule")),
        "until": None if index is None else _named_rule(params["until_layer_rule"]),
        "until_index": index,
    }
    if spec.rule in ("sequential_composite_a", "sequential_composite_b"):
        conv = AlphaBetaRule(1.0, 0.0) if spec.rule.endswith("a") else AlphaBetaRule(2.0, 1.0)
        return Plan(dense=EpsilonRule(spec.params["epsilon"]), conv=conv, batchnorm=AlphaBetaX2m100Rule(), **common)
    if spec.rule == "deep_taylor":
        # iNNvestigate 2.1.2 chooses Z+ for a kernel layer that "contains an activation" and
        # W-square otherwise, but its test is hasattr(layer, "activation"), true for every Keras
        # Dense/Conv (linear ones too): so every conv/dense layer gets Z+ (bias ignored)
        # Its BatchNorm mapping (W-square on the fused layer) is never reached either: the ReLU
        # condition before it, "no kernel and only ReLU activations", holds for a BatchNormalization
        # layer (it has no activation at all), so BN gets its plain gradient (its true scale)
        z_plus = AlphaBetaRule(1.0, 0.0, bias=False)
        return Plan(
            dense=z_plus,
            conv=z_plus,
            batchnorm=None,
            average_pool=None,
            add=None,
            gate=False,
            deep_taylor=True,
            **common,
        )
    hidden = _hidden_rule(spec)
    return Plan(dense=hidden, conv=hidden, batchnorm=hidden, **common)
