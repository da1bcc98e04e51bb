"""The rule table: every LRP rule's identity in one place.

Each entry says the rule's name in method names, its parameters with their defaults, how to
build its :class:`~.rules.Rule`, what it matches in iNNvestigate 2.1.2, and how the seed API's
analyzer classes spell it. The grammar's vocabulary (:mod:`..grammar`), the plan (:mod:`.plan`),
the analyzer classes (:mod:`..zennit_impl`) and the parity harness's reference runner read it;
adding a rule is adding an entry here (and, where its name has a syntax of its own, e.g.
``epsilon_0_1``, a branch in the grammar's regular expression).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .rules import (
    AlphaBetaRule,
    EpsilonRule,
    FlatRule,
    GammaRule,
    Rule,
    SignRule,
    StdxEpsilonRule,
    WSquareRule,
    ZBoxRule,
    ZRule,
)

__all__ = ["RuleEntry", "HIDDEN_RULES", "INPUT_RULES", "PREFIXES", "build"]


@dataclass(frozen=True)
class RuleEntry:
    """One rule.

    Attributes
    ----------
    name : str
        Its name in method names (``'epsilon'``, ``'z_plus'``, ...).
    params : Mapping
        Parameter -> default; None: the method name or a keyword must give it.
    make : callable or None
        ``make(**params) -> Rule``; None for the analyzer presets whose plan is one of their own
        (the sequential presets, Deep Taylor).
    innvestigate : str
        What it is in iNNvestigate 2.1.2: an analyzer class (hidden rules), a name in its
        ``LRP_RULES`` (input rules), or a rule the parity harness writes against its rule
        interface where it has none (``'harness:...'``).
    spellings : Mapping
        The seed API's analyzer-class spellings of it -> the method-name part they stand for.
    analyzer_defaults : Mapping
        Defaults the analyzer classes apply where method names have none.
    syntax : str
        How method names spell it, ``<number>`` standing for a grammar number ('': its name).
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    make: Callable[..., Rule] | None = None
    innvestigate: str = ""
    spellings: Mapping[str, str] = field(default_factory=dict)
    analyzer_defaults: Mapping[str, Any] = field(default_factory=dict)
    syntax: str = ""


def _table(*entries: RuleEntry) -> Mapping[str, RuleEntry]:
    return MappingProxyType({entry.name: entry for entry in entries})


#: rules of the hidden conv/dense layers (and BatchNorm, where the analyzer has a BN rule); a rule
#: with a ``bias`` parameter has a bias-free variant (method names: the ``_ib`` suffix)
HIDDEN_RULES: Mapping[str, RuleEntry] = _table(
    RuleEntry("z", {"bias": True}, lambda bias: ZRule(bias=bias), "LRPZ", {"z": "z"}),
    RuleEntry(
        "epsilon",
        {"epsilon": None, "bias": True},
        lambda epsilon, bias: EpsilonRule(epsilon, bias),
        "LRPEpsilon",
        {"epsilon": "epsilon"},
        syntax="epsilon[_<number>]",
    ),
    RuleEntry(
        "epsilon_std_x",
        {"stdfactor": None, "bias": True},
        lambda stdfactor, bias: StdxEpsilonRule(stdfactor=stdfactor, bias=bias),
        "harness:StdxEpsilonRule",
        syntax="epsilon_<number>_std_x",
    ),
    RuleEntry(
        "alpha_beta",
        {"alpha": None, "beta": None, "bias": True},
        lambda alpha, beta, bias: AlphaBetaRule(alpha, beta, bias),
        "LRPAlphaBeta",
        {
            "alphabeta": "alpha_beta",
            "alpha_beta": "alpha_beta",
            "alpha1beta0": "alpha_1_beta_0",
            "alpha2beta1": "alpha_2_beta_1",
        },
        syntax="alpha_<number>_beta_<number>",
    ),
    RuleEntry(
        "z_plus", {}, lambda: AlphaBetaRule(1.0, 0.0, bias=False), "LRPZPlus", {"zplus": "z_plus", "z_plus": "z_plus"}
    ),
    RuleEntry("z_plus_fast", {}, lambda: ZRule(bias=False, positive=True), "LRPZPlusFast"),
    RuleEntry(
        "gamma",
        {"gamma": 0.5},
        lambda gamma: GammaRule(gamma),
        "harness:GammaRule",
        {"gamma": "gamma"},
        syntax="gamma[_<number>]",
    ),
    RuleEntry("flat", {}, FlatRule, "LRPFlat", {"flat": "flat"}),
    RuleEntry("w_square", {}, WSquareRule, "LRPWSquare", {"wsquare": "w_square", "w_square": "w_square"}),
    RuleEntry("sequential_composite_a", {"epsilon": 0.1}, innvestigate="LRPSequentialPresetA"),
    RuleEntry("sequential_composite_b", {"epsilon": 0.1}, innvestigate="LRPSequentialPresetB"),
    RuleEntry("deep_taylor", innvestigate="DeepTaylor"),
)

#: rules of the input layer(s), named by their method-name prefix in :data:`PREFIXES`
INPUT_RULES: Mapping[str, RuleEntry] = _table(
    RuleEntry("z", {}, ZRule, "Z", {"z": "lrpz"}),
    RuleEntry("sign", {"mu": 0.0}, lambda mu: SignRule(mu), "harness:SignRule", {"sign": "lrpsign"}),
    RuleEntry("w_square", {}, WSquareRule, "WSquare", {"wsquare": "w2lrp", "w_square": "w2lrp"}),
    RuleEntry("flat", {}, FlatRule, "Flat", {"flat": "flatlrp"}),
    RuleEntry(
        "zbox",
        {"low": None, "high": None},
        lambda low, high: ZBoxRule(low, high),
        "Bounded",
        {"zbox": "zblrp"},
        MappingProxyType({"low": -1.0, "high": 1.0}),
    ),
)

#: method-name prefix -> its input rule (a key of :data:`INPUT_RULES`; None: the hidden rule)
PREFIXES: Mapping[str, str | None] = MappingProxyType(
    {
        "lrp": None,
        "lrpz": "z",
        "lrpsign": "sign",
        "w2lrp": "w_square",
        "flatlrp": "flat",
        "zblrp": "zbox",
    }
)


def build(entry: RuleEntry, params: Mapping[str, Any]) -> Rule:
    """The rule of ``entry`` with its parameters taken from ``params`` (a method's)."""
    if entry.make is None:
        raise ValueError(f"{entry.name!r} is an analyzer preset, not a single rule: it has a plan of its own")
    return entry.make(**{key: params[key] for key in entry.params})
