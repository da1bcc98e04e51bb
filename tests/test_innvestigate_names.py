"""iNNvestigate's analyzer names: each one parses to the signxai spec it equals and gives the same map.

The expected meaning of every name is written here from iNNvestigate 2.1.2's sources
(``innvestigate/analyzer/__init__.py``'s ``analyzers`` and each analyzer's constructor defaults),
not read from the library's alias table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from signxai.torch_signxai.methods.grammar import parse
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

#: create_analyzer's names in iNNvestigate 2.1.2 -> (the signxai name, keywords) it equals;
#: None: refused (no meaning for a PyTorch model)
INNVESTIGATE_2_1_2 = {
    "input": ("input", {}),
    "random": ("input", {"stddev": 1.0}),  # Random(stddev=1)
    "gradient": ("gradient", {}),
    "gradient.baseline": ("gradient", {}),
    "input_t_gradient": ("gradient_x_input", {}),
    "deconvnet": ("deconvnet", {}),
    "guided_backprop": ("guided_backprop", {}),
    "integrated_gradients": ("integrated_gradients", {}),  # signxai's defaults (see test below)
    "smoothgrad": ("smoothgrad", {}),
    "lrp": None,
    "lrp.z": ("lrp_z", {}),
    "lrp.epsilon": ("lrp_epsilon", {"epsilon": 1e-7}),  # LRPEpsilon(epsilon=1e-7, bias=True)
    "lrp.w_square": ("lrp_w_square", {}),
    "lrp.flat": ("lrp_flat", {}),
    "lrp.alpha_beta": ("lrp_alpha_beta", {}),
    "lrp.alpha_2_beta_1": ("lrp_alpha_2_beta_1", {}),
    "lrp.alpha_2_beta_1_IB": ("lrp_alpha_2_beta_1", {"bias": False}),
    "lrp.alpha_1_beta_0": ("lrp_alpha_1_beta_0", {}),
    "lrp.alpha_1_beta_0_IB": ("lrp_alpha_1_beta_0", {"bias": False}),
    "lrp.z_plus": ("lrp_z_plus", {}),
    "lrp.z_plus_fast": ("lrp_z_plus_fast", {}),
    "lrp.sequential_preset_a": ("lrp_sequential_composite_a", {"epsilon": 0.1}),
    "lrp.sequential_preset_b": ("lrp_sequential_composite_b", {"epsilon": 0.1}),
    "lrp.sequential_preset_a_flat": ("flatlrp_sequential_composite_a", {}),
    "lrp.sequential_preset_b_flat": ("flatlrp_sequential_composite_b", {}),
    # LRPSequentialPresetBFlatUntilIdx(until_layer_idx=None): until_layer_rule=FlatRule, applied
    # to no layer until an index is given (its index numbers model.layers; here conv/dense layers)
    "lrp.sequential_preset_b_flat_until_idx": ("flatlrp_sequential_composite_b", {"until_layer_rule": "flat"}),
    "deep_taylor": ("lrp_deep_taylor", {}),
    "deep_taylor.bounded": ("zblrp_deep_taylor", {}),  # needs low= and high=
}
#: iNNvestigate 1.x's bias-free names
INNVESTIGATE_1 = {
    "lrp.z_IB": ("lrp_z", {"bias": False}),
    "lrp.epsilon_IB": ("lrp_epsilon", {"epsilon": 1e-7, "bias": False}),
}
ACCEPTED = {name: meaning for name, meaning in {**INNVESTIGATE_2_1_2, **INNVESTIGATE_1}.items() if meaning}
#: the keywords a name needs (iNNvestigate requires them too)
NEEDS = {"deep_taylor.bounded": {"low": -1.0, "high": 2.0}}


def _same_spec(a, b):
    return (a.family, a.rule, a.input_rule, dict(a.params), a.post) == (
        b.family,
        b.rule,
        b.input_rule,
        dict(b.params),
        b.post,
    )


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_innvestigate_name_parses_to_the_spec_it_equals(name):
    means, kwargs = ACCEPTED[name]
    extra = NEEDS.get(name, {})
    assert _same_spec(parse(name, **extra), parse(means, **kwargs, **extra))


@pytest.mark.parametrize(
    "name, words",
    [
        ("lrp", "rule="),
        ("pattern.net", "trained"),
        ("pattern.attribution", "trained"),
    ],
)
def test_names_without_a_meaning_here_are_refused_with_the_reason(name, words):
    with pytest.raises(ValueError, match=words):
        parse(name)


def test_ib_suffix_equals_the_bias_keyword():
    for name in ("lrp_z", "lrp_epsilon_0_1", "lrp_epsilon_0_25_std_x", "lrp_alpha_2_beta_1", "lrpsign_z"):
        assert _same_spec(parse(name + "_ib"), parse(name, bias=False))
    assert parse("lrp_z").params["bias"] is True


def test_innvestigate_keywords():
    assert parse("lrp.epsilon", epsilon=0.01).params["epsilon"] == 0.01
    assert dict(parse("deep_taylor.bounded", low=-128, high=128).params) == {
        "low": -128,
        "high": 128,
        "last_rule": None,
        "until_layer_idx": None,
        "until_layer_rule": None,
    }
    assert parse("lrp.epsilon", bias=False).params["bias"] is False
    assert parse("lrp.sequential_preset_b", epsilon=0.5).params["epsilon"] == 0.5
    smooth = parse("smoothgrad", augment_by_n=64, noise_scale=1.0)
    assert (smooth.params["num_samples"], smooth.params["noise_level"]) == (64, 1.0)
    assert parse("integrated_gradients", steps=64, reference_inputs=0.5).params["reference"] == 0.5
    assert parse("random", stddev=0.5).params["stddev"] == 0.5
    with pytest.raises(ValueError, match="low= and high="):
        parse("deep_taylor.bounded")


def test_alpha_beta_infers_the_missing_one_as_innvestigate_does():
    """alpha - beta = 1: one of them is enough (iNNvestigate's assert_infer_lrp_alpha_beta_param)."""
    assert (parse("lrp.alpha_beta", alpha=3).params["alpha"], parse("lrp.alpha_beta", alpha=3).params["beta"]) == (3, 2)
    assert parse("lrp_alpha_beta", beta=1).params["alpha"] == 2
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        parse("lrp.alpha_beta", alpha=3, beta=1)


def test_shared_names_keep_signxai_defaults():
    """integrated_gradients and smoothgrad are signxai names too: signxai's defaults stay."""
    assert parse("integrated_gradients").params["steps"] == 50
    assert (parse("smoothgrad").params["num_samples"], parse("smoothgrad").params["noise_level"]) == (50, 0.2)


def _model():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 5 * 4, 6),
            nn.ReLU(),
            nn.Linear(6, 4),
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
    return model


MODEL = _model()
X = np.random.default_rng(3).normal(size=(3, 2, 5, 4))


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_innvestigate_name_gives_the_map_of_the_name_it_equals(name):
    means, kwargs = ACCEPTED[name]
    extra = {
        **NEEDS.get(name, {}),
        **({"seed": 7} if means == "input" else {}),
        **({"seed": 7, "num_samples": 4} if means == "smoothgrad" else {}),
        **({"steps": 4} if means == "integrated_gradients" else {}),
    }
    got = calculate_relevancemaps(name, X, MODEL, neuron_selection=[0, 1, 2], **extra)
    want = calculate_relevancemaps(means, X, MODEL, neuron_selection=[0, 1, 2], **kwargs, **extra)
    np.testing.assert_array_equal(got, want)


def test_bias_free_variants_differ_from_the_biased_ones_on_a_model_with_biases():
    for name in ("lrp_z", "lrp_epsilon_0_1", "lrp_alpha_2_beta_1"):
        biased = calculate_relevancemaps(name, X, MODEL, neuron_selection=[0, 1, 2])
        free = calculate_relevancemaps(name + "_ib", X, MODEL, neuron_selection=[0, 1, 2])
        assert np.max(np.abs(biased - free)) > 1e-3 * np.max(np.abs(biased))


def test_input_is_the_input_and_random_adds_seeded_unit_gaussian_noise():
    x = np.random.default_rng(4).normal(size=(2, 2, 5, 4))
    np.testing.assert_array_equal(calculate_relevancemaps("input", x, MODEL), x)
    big = np.zeros((1, 2, 100, 100))
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 100 * 100, 2)).double()
    noise = calculate_relevancemaps("random", big, model, seed=1)
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05  # 20000 draws: SE ~0.007
    np.testing.assert_array_equal(noise, calculate_relevancemaps("random", big, model, seed=1))
    half = calculate_relevancemaps("random", big, model, seed=1, stddev=0.5)
    np.testing.assert_allclose(half, noise * 0.5, rtol=1e-12)


def test_every_innvestigate_name_that_resolves_alone_is_in_the_parity_session():
    """The live harness compares them (parity/innvestigate_names.txt; random is skipped there as
    a random baseline); the session's names are unique and all parse."""
    from parity.cases import session_names

    names = session_names()
    assert len(names) == len(set(names))
    for name in names:
        parse(name)
    missing = [name for name in ACCEPTED if name not in NEEDS and name not in names]
    assert missing == [], missing
