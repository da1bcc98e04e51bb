"""The rule table is the one home of a rule's identity: the grammar, the plan and the analyzer
classes read it."""

from __future__ import annotations

import pytest
from torch import nn

from signxai.torch_signxai.methods import grammar, zennit_impl
from signxai.torch_signxai.methods.grammar import parse
from signxai.torch_signxai.methods.lrp.plan import plan_for
from signxai.torch_signxai.methods.lrp.rules import Rule
from signxai.torch_signxai.methods.lrp.table import HIDDEN_RULES, INPUT_RULES, PREFIXES, build


def test_the_grammar_vocabulary_is_the_tables():
    assert dict(grammar.LRP_RULES) == {name: tuple(entry.params) for name, entry in HIDDEN_RULES.items()}
    assert dict(grammar.LRP_PREFIXES) == dict(PREFIXES)
    assert set(PREFIXES.values()) - {None} == set(INPUT_RULES)


@pytest.mark.parametrize("name", sorted(HIDDEN_RULES))
def test_every_hidden_rule_plans(name):
    entry = HIDDEN_RULES[name]
    params = {"epsilon": 0.1, "stdfactor": 0.25, "alpha": 2.0, "beta": 1.0, "gamma": 0.25, "bias": False}
    method = "lrp_epsilon_0_25_std_x" if name == "epsilon_std_x" else f"lrp_{name}"
    spec = parse(method, **{k: params[k] for k in entry.params if k != "stdfactor"})
    plan = plan_for(spec)
    assert isinstance(plan.conv, Rule) and isinstance(plan.dense, Rule)
    if entry.make is not None:
        assert plan.conv == build(entry, spec.params)
    assert entry.innvestigate


@pytest.mark.parametrize("prefix", sorted(p for p in PREFIXES if PREFIXES[p] is not None))
def test_every_input_rule_plans(prefix):
    entry = INPUT_RULES[PREFIXES[prefix]]
    spec = parse(
        f"{prefix}_z", **{**entry.analyzer_defaults, **{k: v for k, v in entry.params.items() if v is not None}}
    )
    assert plan_for(spec).input == build(entry, spec.params)


def test_every_analyzer_spelling_of_the_table_is_accepted():
    model = nn.Sequential(nn.Linear(3, 2))
    for entry in HIDDEN_RULES.values():
        for spelling in entry.spellings:
            kwargs = {"epsilon": 0.1} if spelling == "epsilon" else {}
            analyzer = (
                zennit_impl.AdvancedLRPAnalyzer(model, spelling, **kwargs)
                if spelling not in ("z", "zplus", "z_plus")
                else zennit_impl.LRPAnalyzer(model, spelling)
            )
            assert analyzer.spec.rule == parse(f"lrp_{entry.spellings[spelling]}", **kwargs).rule
    for entry in INPUT_RULES.values():
        for spelling, prefix in entry.spellings.items():
            analyzer = zennit_impl.LRPSequential(model, first_layer_rule=spelling)
            assert analyzer.spec.input_rule == PREFIXES[prefix] == entry.name
