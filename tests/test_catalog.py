"""list_methods covers every family of the grammar's tables, with the tables' parameters."""

from __future__ import annotations

import re

import pytest

from signxai.torch_signxai.methods import format_methods, list_methods
from signxai.torch_signxai.methods.aliases import ALIASES, REFUSED
from signxai.torch_signxai.methods.catalog import KINDS
from signxai.torch_signxai.methods.grammar import FAMILY_PARAMS, SIMPLE_BASES, parse
from signxai.torch_signxai.methods.lrp.table import HIDDEN_RULES, INPUT_RULES, PREFIXES

FAMILIES = list_methods()


def _rows(kind):
    return [f for f in FAMILIES if f.kind == kind]


def _example(pattern: str) -> str:
    """A concrete name of a pattern: numbers 2 then 1 (alpha 2 beta 1), optional parts left out."""
    numbers = iter(["2", "1"])
    name = re.sub(r"<number>", lambda _: next(numbers), re.sub(r"\[[^\]]*\]", "", pattern))
    return name.replace("<prefix>", "lrp").replace("<rule>", "z")


def test_every_engine_family_is_listed():
    """Fails when a family is added to the grammar's table but not to the list."""
    assert {f.family for f in _rows("method")} | {"lrp"} == set(FAMILY_PARAMS)
    assert {f.pattern for f in _rows("method")} >= set(SIMPLE_BASES)


def test_every_rule_prefix_alias_and_refusal_is_listed():
    rules = _rows("lrp rule")
    assert len(rules) == len(HIDDEN_RULES)
    for row, (name, entry) in zip(rules, HIDDEN_RULES.items(), strict=True):
        example = _example(row.pattern) + ("_0_1" if name == "epsilon" else "")
        assert parse(example).rule == name, row.pattern
        assert dict(row.params) == dict(entry.params)
        assert ("[_ib]" in row.pattern) == ("bias" in entry.params)
        if "bias" in entry.params:
            assert parse(example + "_ib").params["bias"] is False
    prefixes = _rows("lrp input rule")
    assert [row.pattern.split("_<rule>")[0] for row in prefixes] == list(PREFIXES)
    for row in prefixes:
        rule = PREFIXES[row.pattern.split("_<rule>")[0]]
        assert dict(row.params) == (dict(INPUT_RULES[rule].params) if rule else {})
    assert [row.pattern for row in _rows("alias")] == list(ALIASES)
    assert [row.pattern for row in _rows("refused")] == list(REFUSED)
    assert {f.kind for f in FAMILIES} == set(KINDS)


@pytest.mark.parametrize("row", _rows("method"), ids=lambda r: r.pattern)
def test_method_rows_carry_the_grammar_defaults(row):
    spec = parse(_example(row.pattern))
    assert spec.family == row.family
    assert {k: spec.params[k] for k in row.params} == dict(row.params)


def test_the_text_names_every_family():
    text = format_methods()
    for f in FAMILIES:
        assert f.pattern in text
    assert "deep_taylor.bounded" in text and "zblrp_deep_taylor" in text
