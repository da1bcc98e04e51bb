"""The method-name grammar: every listed name, numbers, prefixes, presets, post-multipliers,
keyword parameters, short forms and errors.

Expected values come from this module's own decoder (exact rationals), written from METHODS.md,
not from the library's regular expressions.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signxai.torch_signxai.methods.grammar import MethodSpec, known_names, parse

NAMES_FILE = Path(__file__).resolve().parents[2] / "shared" / "method_names.txt"


def read_sections() -> dict[str, list[str]]:
    """The names of method_names.txt by section ('core', 'extended'), comments and blanks dropped."""
    sections: dict[str, list[str]] = {}
    current = None
    for raw in NAMES_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections[current] = []
            continue
        assert current is not None, f"name {line!r} before the first section header"
        sections[current].append(line)
    return sections


SECTIONS = read_sections()
NAMES = [name for names in SECTIONS.values() for name in names]

# --------------------------------------------------------------------------- independent decoder

NUMBER = re.compile(r"(neg_)?(\d+)(?:_(\d+))?")
PREFIX_INPUT_RULE = {
    "lrp": None,
    "lrpz": "z",
    "lrpsign": "sign",
    "w2lrp": "w_square",
    "flatlrp": "flat",
    "zblrp": "zbox",
}
SIMPLE = {
    "gradient": "gradient",
    "guided_backprop": "guided_backprop",
    "deconvnet": "deconvnet",
    "smoothgrad": "smoothgrad",
    "vargrad": "vargrad",
    "integrated_gradients": "integrated_gradients",
    "deeplift_method": "deeplift",
    "deeplift": "deeplift",
    "random_uniform": "random_uniform",
}
PLAIN_RULES = {
    "z",
    "z_plus",
    "flat",
    "w_square",
    "gamma",
    "deep_taylor",
    "sequential_composite_a",
    "sequential_composite_b",
}
VGG_BOUNDS = (-123.68, 151.061)


def decode(text: str) -> Fraction:
    """``0_25`` -> 1/4, ``neg_0_5`` -> -1/2, ``100`` -> 100 (exact)."""
    match = NUMBER.fullmatch(text)
    assert match, f"not a grammar number: {text!r}"
    value = Fraction(int(match[2]))
    if match[3]:
        value += Fraction(int(match[3]), 10 ** len(match[3]))
    return -value if match[1] else value


def split_post(name: str) -> tuple[str, tuple[str, ...], Fraction | None]:
    """Strip the post-multiplier suffixes: (base, post, post_mu)."""
    post: list[str] = []
    post_mu = None
    at = name.rfind("_x_sign")
    if at >= 0:
        tail = name[at + len("_x_sign") :]
        if tail in ("", "_mu"):
            post_mu = Fraction(0)
        elif tail.startswith("_mu_") and NUMBER.fullmatch(tail[4:]):
            post_mu = decode(tail[4:])
        if post_mu is not None:
            post.insert(0, "x_sign")
            name = name[:at]
    if name.endswith("_x_input"):
        post.insert(0, "x_input")
        name = name[: -len("_x_input")]
    return name, tuple(post), post_mu


def expected_spec(name: str) -> dict:
    """family, rule, input_rule, post and the parameters a listed name carries, decoded by hand."""
    if name == "input_t_gradient":
        return {"family": "gradient", "rule": None, "input_rule": None, "post": ("x_input",), "params": {}}
    base, post, post_mu = split_post(name)
    params: dict = {} if post_mu is None else {"post_mu": post_mu}
    out = {"post": post, "params": params, "rule": None, "input_rule": None}
    if base in SIMPLE:
        out["family"] = SIMPLE[base]
        return out
    if base.startswith("guided_grad_cam") or base.startswith("grad_cam"):
        out["family"] = "guided_grad_cam" if base.startswith("guided_") else "grad_cam"
        preset = base.split("grad_cam", 1)[1].lstrip("_")
        if preset == "timeseries":
            params["timeseries"] = True
        elif preset in ("VGG16ILSVRC", "VGG16MITPL365"):
            params["layer_name"] = "features.28"  # torchvision VGG16's last conv
        elif preset == "MNISTCNN":
            params["layer_name"] = None
        else:
            assert preset == "", preset
        return out
    prefix, rest = base.split("_", 1)
    assert prefix in PREFIX_INPUT_RULE, name
    out["family"] = "lrp"
    out["input_rule"] = PREFIX_INPUT_RULE[prefix]
    if rest.endswith("_VGG16ILSVRC"):
        rest = rest[: -len("_VGG16ILSVRC")]
        params["low"], params["high"] = VGG_BOUNDS
    if "_mu_" in rest:
        rest, mu_text = rest.split("_mu_")
        params["mu"] = decode(mu_text)
    if rest in PLAIN_RULES:
        out["rule"] = rest
        if rest == "gamma":
            params["gamma"] = Fraction(1, 2)  # METHODS.md: default gamma 0.5
    elif rest.startswith("epsilon_") and rest.endswith("_std_x"):
        out["rule"] = "epsilon_std_x"
        params["stdfactor"] = decode(rest[len("epsilon_") : -len("_std_x")])
    elif rest.startswith("epsilon_"):
        out["rule"] = "epsilon"
        params["epsilon"] = decode(rest[len("epsilon_") :])
    else:
        match = re.fullmatch(r"alpha_(.+)_beta_(.+)", rest)
        assert match, name
        out["rule"] = "alpha_beta"
        params["alpha"], params["beta"] = decode(match[1]), decode(match[2])
    return out


def assert_params(spec: MethodSpec, expected: dict) -> None:
    for key, value in expected.items():
        assert key in spec.params, f"{spec.name}: parameter {key!r} missing"
        if isinstance(value, Fraction):
            assert spec.params[key] == float(value), (spec.name, key, spec.params[key], value)
        else:
            assert spec.params[key] == value, (spec.name, key, spec.params[key], value)


# --------------------------------------------------------------------------- the listed names


def test_names_file_has_both_sections_and_no_duplicates():
    assert list(SECTIONS) == ["core", "extended"]
    assert len(SECTIONS["core"]) == 152
    assert len(SECTIONS["extended"]) == 45
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_listed_name_parses_to_what_it_says(name):
    spec = parse(name)
    expected = expected_spec(name)
    assert isinstance(spec, MethodSpec)
    assert spec.name == name
    assert spec.family == expected["family"]
    assert spec.rule == expected["rule"]
    assert spec.input_rule == expected["input_rule"]
    assert spec.post == expected["post"]
    assert_params(spec, expected["params"])
    if "x_sign" not in spec.post:
        assert "post_mu" not in spec.params


def test_spec_is_frozen():
    spec = parse("gradient")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.family = "lrp"
    with pytest.raises(TypeError):
        spec.params["x"] = 1


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("lrp_epsilon_0_25", "epsilon", 0.25),
        ("lrp_epsilon_0_001", "epsilon", 0.001),
        ("lrp_epsilon_100", "epsilon", 100.0),
        ("lrp_epsilon_0", "epsilon", 0.0),
        ("lrp_epsilon_7_5", "epsilon", 7.5),
        ("lrp_epsilon_0_25_std_x", "stdfactor", 0.25),
        ("lrpsign_epsilon_100_mu_neg_0_5", "mu", -0.5),
        ("lrpsign_z_mu_0_5", "mu", 0.5),
        ("gradient_x_sign_mu_neg_0_5", "post_mu", -0.5),
        ("gradient_x_sign_mu_0_5", "post_mu", 0.5),
        ("gradient_x_sign_mu_0", "post_mu", 0.0),
        ("gradient_x_sign_mu", "post_mu", 0.0),
        ("gradient_x_sign", "post_mu", 0.0),
        ("lrp_gamma_0_25", "gamma", 0.25),
        ("lrp_alpha_2_beta_1", "alpha", 2.0),
        ("lrp_alpha_2_beta_1", "beta", 1.0),
        ("lrp_alpha_1_5_beta_0_5", "alpha", 1.5),
        ("lrp_alpha_2_3_beta_1_3", "beta", 1.3),
    ],
)
def test_numbers_decode(name, key, value):
    assert parse(name).params[key] == value


def test_std_x_is_its_own_rule_with_a_stdfactor():
    spec = parse("lrp_epsilon_0_25_std_x")
    assert spec.rule == "epsilon_std_x"
    assert spec.params["stdfactor"] == 0.25
    assert "epsilon" not in spec.params
    plain = parse("lrp_epsilon_0_25")
    assert plain.rule == "epsilon" and plain.params["epsilon"] == 0.25
    assert "stdfactor" not in plain.params


# --------------------------------------------------------------------------- prefixes and presets


@pytest.mark.parametrize("prefix, rule", sorted(PREFIX_INPUT_RULE.items()))
def test_prefixes_select_the_input_layer_rule(prefix, rule):
    suffix = "_VGG16ILSVRC" if prefix == "zblrp" else ""
    for body in ("z", "epsilon_0_1", "alpha_1_beta_0", "sequential_composite_a"):
        spec = parse(f"{prefix}_{body}{suffix}")
        assert spec.family == "lrp"
        assert spec.input_rule == rule


def test_sign_input_rule_takes_mu_with_default_zero():
    assert parse("lrpsign_z").params["mu"] == 0.0
    assert parse("lrpsign_z", mu=0.3).params["mu"] == 0.3
    assert "mu" not in parse("lrp_z").params


def test_zbox_preset_gives_the_imagenet_bounds():
    spec = parse("zblrp_epsilon_0_1_VGG16ILSVRC")
    assert spec.input_rule == "zbox"
    assert spec.params["low"] == -123.68
    assert spec.params["high"] == 151.061
    assert spec.params["epsilon"] == 0.1
    spec = parse("zblrp_epsilon_0_25_std_x_VGG16ILSVRC")
    assert (spec.params["low"], spec.params["high"], spec.params["stdfactor"]) == (-123.68, 151.061, 0.25)


def test_zbox_bounds_from_keywords_and_override_of_the_preset():
    spec = parse("zblrp_z", low=-1.0, high=2.0)
    assert (spec.params["low"], spec.params["high"]) == (-1.0, 2.0)
    spec = parse("zblrp_z_VGG16ILSVRC", low=-3.0)
    assert (spec.params["low"], spec.params["high"]) == (-3.0, 151.061)


def test_zbox_without_bounds_is_an_error():
    with pytest.raises(ValueError, match=r"low=.*high="):
        parse("zblrp_z")


@pytest.mark.parametrize("name", ["lrp_z_VGG16ILSVRC", "lrpsign_epsilon_0_1_VGG16ILSVRC"])
def test_zbox_preset_only_with_the_zblrp_prefix(name):
    with pytest.raises(ValueError, match="zblrp"):
        parse(name)


@pytest.mark.parametrize("name", ["lrp_z_mu_0_5", "zblrp_z_mu_0_5_VGG16ILSVRC", "lrpz_epsilon_1_mu_0"])
def test_input_mu_only_with_the_lrpsign_prefix(name):
    with pytest.raises(ValueError, match="lrpsign"):
        parse(name)


@pytest.mark.parametrize("prefix", sorted(set(PREFIX_INPUT_RULE) - {"lrp"}))
def test_deep_taylor_takes_an_input_layer_rule(prefix):
    """iNNvestigate's BoundedDeepTaylor is DeepTaylor with the Z-box rule at the input layer; the
    other prefixes put their rule there the same way."""
    assert parse("lrp_deep_taylor").input_rule is None
    spec = parse(f"{prefix}_deep_taylor" + ("_VGG16ILSVRC" if prefix == "zblrp" else ""))
    assert (spec.rule, spec.input_rule) == ("deep_taylor", PREFIX_INPUT_RULE[prefix])


def test_grad_cam_presets_and_layer_name():
    assert parse("grad_cam_VGG16ILSVRC").params["layer_name"] == "features.28"
    assert parse("guided_grad_cam_VGG16MITPL365").params["layer_name"] == "features.28"
    assert parse("grad_cam").params["layer_name"] is None
    assert parse("grad_cam", layer_name="features.3").params["layer_name"] == "features.3"
    assert parse("grad_cam_VGG16ILSVRC", layer_name="features.26").params["layer_name"] == "features.26"
    assert parse("grad_cam_timeseries").params["timeseries"] is True
    with pytest.raises(ValueError, match="VGG16ILSVRC"):
        parse("grad_cam_RESNET50")


# --------------------------------------------------------------------------- post-multipliers


@pytest.mark.parametrize(
    "name, post, mu",
    [
        ("gradient", (), None),
        ("gradient_x_input", ("x_input",), None),
        ("gradient_x_sign", ("x_sign",), 0.0),
        ("gradient_x_input_x_sign", ("x_input", "x_sign"), 0.0),
        ("smoothgrad_x_sign_mu_0_5", ("x_sign",), 0.5),
        ("deeplift_x_input_x_sign", ("x_input", "x_sign"), 0.0),
        ("lrp_epsilon_0_1_x_input_x_sign", ("x_input", "x_sign"), 0.0),
        ("lrpsign_epsilon_0_1_mu_0_5_x_sign_mu_neg_0_5", ("x_sign",), -0.5),
        ("grad_cam_x_input", ("x_input",), None),
    ],
)
def test_post_multipliers(name, post, mu):
    spec = parse(name)
    assert spec.post == post
    assert spec.params.get("post_mu") == mu


def test_post_mu_and_input_mu_are_separate():
    spec = parse("lrpsign_epsilon_0_1_mu_0_5_x_sign_mu_neg_0_5")
    assert spec.params["mu"] == 0.5
    assert spec.params["post_mu"] == -0.5


def test_mu_keyword_fills_the_post_threshold():
    assert parse("gradient_x_sign_mu", mu=0.25).params["post_mu"] == 0.25
    assert parse("guided_backprop_x_sign_mu_0_5", mu=-1.0).params["post_mu"] == -1.0
    # with the SIGN input rule, mu= is the input rule's threshold
    spec = parse("lrpsign_z_x_sign_mu_0_5", mu=0.1)
    assert spec.params["mu"] == 0.1 and spec.params["post_mu"] == 0.5


def test_post_multipliers_in_the_wrong_order_are_rejected():
    with pytest.raises(ValueError):
        parse("gradient_x_sign_x_input")


# --------------------------------------------------------------------------- keyword parameters


def test_family_defaults():
    assert parse("smoothgrad").params["num_samples"] == 50
    assert parse("smoothgrad").params["noise_level"] == 0.2
    assert parse("vargrad").params["num_samples"] == 50
    assert parse("vargrad").params["noise_level"] == 0.2
    assert parse("integrated_gradients").params["steps"] == 50
    assert parse("integrated_gradients").params["reference"] is None
    assert parse("deeplift_method").params["reference"] is None
    assert parse("lrp_gamma").params["gamma"] == 0.5


def test_keywords_fill_and_override():
    assert parse("lrp_epsilon_0_1", epsilon=0.5).params["epsilon"] == 0.5
    assert parse("lrp_epsilon_0_1_std_x", stdfactor=3.0).params["stdfactor"] == 3.0
    assert parse("lrp_gamma", gamma=0.25).params["gamma"] == 0.25
    spec = parse("smoothgrad", noise_level=0.3, num_samples=7, seed=11)
    assert (spec.params["noise_level"], spec.params["num_samples"], spec.params["seed"]) == (0.3, 7, 11)
    assert parse("integrated_gradients", steps=9).params["steps"] == 9
    assert parse("lrp_alpha_2_beta_1", alpha=3.0, beta=2.0).params["alpha"] == 3.0


@pytest.mark.parametrize(
    "alias, key, value",
    [
        ("baseline", "reference", 0.5),
        ("reference_inputs", "reference", 0.5),
        ("augment_by_n", "num_samples", 4),
        ("noise_scale", "noise_level", 0.4),
    ],
)
def test_keyword_aliases(alias, key, value):
    name = "integrated_gradients" if key == "reference" else "smoothgrad"
    assert parse(name, **{alias: value}).params[key] == value


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("gradient", {"epsilon": 0.1}, "epsilon"),
        ("gradient", {"mu": 0.5}, "mu"),
        ("lrp_z", {"steps": 3}, "steps"),
        ("smoothgrad", {"nosie_level": 0.1}, "nosie_level"),
        ("lrp_epsilon_0_1", {"alpha": 1.0}, "alpha"),
        ("integrated_gradients", {"num_samples": 5}, "num_samples"),
    ],
)
def test_unknown_keywords_raise_naming_the_keyword(name, kwargs, word):
    with pytest.raises(ValueError, match=word) as info:
        parse(name, **kwargs)
    assert "does not take" in str(info.value)


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("smoothgrad", {"num_samples": 0}, "num_samples"),
        ("smoothgrad", {"num_samples": 2.5}, "num_samples"),
        ("integrated_gradients", {"steps": -1}, "steps"),
        ("vargrad", {"noise_level": -0.1}, "noise_level"),
        ("lrp_epsilon_neg_1", {}, "epsilon"),
        ("lrp_epsilon_0_1", {"epsilon": -0.5}, "epsilon"),
        ("lrp_alpha_2_beta_0", {}, "alpha - beta"),
        ("lrp_epsilon", {}, "epsilon="),
        ("lrp_epsilon_0_1_std_x", {"stdfactor": None}, "stdfactor="),
    ],
)
def test_out_of_range_parameters_raise(name, kwargs, word):
    with pytest.raises(ValueError, match=re.escape(word)):
        parse(name, **kwargs)


# --------------------------------------------------------------------------- short forms


def test_short_forms():
    assert parse("gradients").family == "gradient"
    assert parse("gradients").post == ()
    assert parse("vanilla_gradient").family == "gradient"
    assert parse("input_x_gradient").post == ("x_input",)
    spec = parse("lrp_epsilon", epsilon=0.3)
    assert (spec.family, spec.rule, spec.input_rule, spec.params["epsilon"]) == ("lrp", "epsilon", None, 0.3)
    spec = parse("lrp_alphabeta", alpha=2, beta=1)
    assert (spec.rule, spec.params["alpha"], spec.params["beta"]) == ("alpha_beta", 2, 1)
    spec = parse("lrp_alphabeta")
    assert (spec.params["alpha"], spec.params["beta"]) == (1.0, 0.0)
    assert parse("lrp_zplus").rule == "z_plus"
    assert parse("lrp_wsquare").rule == "w_square"
    spec = parse("lrp_zbox", low=-1, high=1)
    assert (spec.input_rule, spec.rule) == ("zbox", "z")
    assert parse("deep_taylor").rule == "deep_taylor"
    assert parse("deeplift").family == parse("deeplift_method").family == "deeplift"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, close",
    [
        ("gradient_x_inptu", "gradient_x_input"),
        ("lrp_epsilonn_0_1", "lrp_epsilon_0_1"),
        ("smoothgrd", "smoothgrad"),
        ("guided_backprob", "guided_backprop"),
        ("lrpsing_z", "lrpsign_z"),
        ("integrated_gradient", "integrated_gradients"),
        ("deconvnet_x_sing", "deconvnet_x_sign"),
        ("GRADIENT", "gradient"),
        ("lrp_epsilon_0_1_2", "lrp_epsilon_0_1"),
        ("lrp_epsilon_0__1", "lrp_epsilon_0_1"),
        ("zblrp_z_vgg16ilsvrc", "zblrp_z_VGG16ILSVRC"),
    ],
)
def test_unknown_names_raise_with_close_valid_names(name, close):
    with pytest.raises(ValueError) as info:
        parse(name)
    message = str(info.value)
    assert repr(name) in message
    assert "Closest valid names:" in message
    suggestions = message.split("Closest valid names:")[1].strip().rstrip(".").split(", ")
    assert close in suggestions
    for suggestion in suggestions:
        parse(suggestion)  # every suggestion resolves on its own


@pytest.mark.parametrize(
    "name",
    [
        "",
        "_",
        "x_sign",
        "gradient_",
        "lrp",
        "lrp_",
        "lrp_epsilon_-1",
        "lrp_epsilon_0_1_",
        "foo_z",
        " gradient",
        "gradient_x_sign_mu_",
    ],
)
def test_malformed_names_raise_value_error(name):
    with pytest.raises(ValueError, match="method"):
        parse(name)


def test_non_string_name_is_a_type_error():
    with pytest.raises(TypeError, match="str"):
        parse(3)


def test_every_known_name_resolves():
    names = known_names()
    assert len(names) > 100
    for name in names:
        assert parse(name).name == name


# --------------------------------------------------------------------------- Hypothesis


@st.composite
def numbers(draw, negative: bool = False) -> tuple[str, Fraction]:
    whole = draw(st.integers(0, 999))
    frac = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=4)))
    text = str(whole) + (f"_{frac}" if frac else "")
    value = Fraction(whole) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
    if negative and draw(st.booleans()):
        return "neg_" + text, -value
    return text, value


@st.composite
def post_suffixes(draw) -> tuple[str, tuple[str, ...], Fraction | None]:
    text, post, mu = "", [], None
    if draw(st.booleans()):
        text, post = "_x_input", ["x_input"]
    kind = draw(st.sampled_from(["none", "plain", "mu", "mu_number"]))
    if kind != "none":
        post.append("x_sign")
        text += "_x_sign"
        mu = Fraction(0)
        if kind == "mu":
            text += "_mu"
        elif kind == "mu_number":
            number, mu = draw(numbers(negative=True))
            text += f"_mu_{number}"
    return text, tuple(post), mu


@st.composite
def lrp_names(draw) -> tuple[str, dict, dict]:
    """A well-formed LRP name, the keywords it needs, and the parameters it should decode to."""
    prefix = draw(st.sampled_from(sorted(PREFIX_INPUT_RULE)))
    kind = draw(st.sampled_from(["plain", "epsilon", "std_x", "alpha_beta", "gamma"]))
    expected: dict = {}
    if kind == "plain":
        plain = PLAIN_RULES - {"gamma"} - ({"deep_taylor"} if PREFIX_INPUT_RULE[prefix] else set())
        rule = draw(st.sampled_from(sorted(plain)))
    elif kind == "epsilon":
        text, expected["epsilon"] = draw(numbers())
        rule = f"epsilon_{text}"
    elif kind == "std_x":
        text, expected["stdfactor"] = draw(numbers())
        rule = f"epsilon_{text}_std_x"
    elif kind == "gamma":
        if draw(st.booleans()):
            text, expected["gamma"] = draw(numbers())
            rule = f"gamma_{text}"
        else:
            rule, expected["gamma"] = "gamma", Fraction(1, 2)
    else:
        beta_whole = draw(st.integers(0, 99))
        frac = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=3)))
        tail = f"_{frac}" if frac else ""
        rule = f"alpha_{beta_whole + 1}{tail}_beta_{beta_whole}{tail}"
        beta = Fraction(beta_whole) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        expected["alpha"], expected["beta"] = beta + 1, beta
    name = f"{prefix}_{rule}"
    kwargs: dict = {}
    if prefix == "lrpsign" and draw(st.booleans()):
        text, expected["mu"] = draw(numbers(negative=True))
        name += f"_mu_{text}"
    if prefix == "zblrp":
        if draw(st.booleans()):
            name += "_VGG16ILSVRC"
            expected["low"], expected["high"] = VGG_BOUNDS
        else:
            kwargs = {"low": -2.5, "high": 3.5}
            expected["low"], expected["high"] = -2.5, 3.5
    return name, kwargs, expected


@given(base=st.sampled_from(sorted(SIMPLE)), suffix=post_suffixes())
def test_random_gradient_family_names_parse(base, suffix):
    text, post, mu = suffix
    spec = parse(base + text)
    assert spec.family == SIMPLE[base]
    assert spec.post == post
    if mu is None:
        assert "post_mu" not in spec.params
    else:
        assert spec.params["post_mu"] == float(mu)


@given(lrp=lrp_names(), suffix=post_suffixes())
def test_random_lrp_names_parse_and_numbers_round_trip(lrp, suffix):
    name, kwargs, expected = lrp
    text, post, mu = suffix
    spec = parse(name + text, **kwargs)
    assert spec.family == "lrp"
    assert spec.input_rule == PREFIX_INPUT_RULE[name.split("_", 1)[0]]
    assert spec.post == post
    assert_params(spec, expected)
    if mu is not None:
        assert spec.params["post_mu"] == float(mu)


@given(number=numbers())
def test_epsilon_number_round_trip(number):
    text, value = number
    assert parse(f"lrp_epsilon_{text}").params["epsilon"] == float(value)
    assert parse(f"lrpz_epsilon_{text}_std_x").params["stdfactor"] == float(value)


@given(name=st.text(alphabet="abcdeglnprstuxz_0123456789", max_size=30))
def test_arbitrary_strings_parse_or_raise_value_error(name):
    try:
        spec = parse(name)
    except ValueError as error:
        assert "method" in str(error).lower()
    else:
        assert spec.name == name


@given(name=st.sampled_from(NAMES), data=st.data())
def test_typos_of_listed_names_suggest_only_valid_names(name, data):
    position = data.draw(st.integers(0, len(name) - 1))
    typo = name[:position] + name[position + 1 :]  # drop one character
    try:
        parse(typo)
    except ValueError as error:
        message = str(error)
        if "Closest valid names:" in message:
            for suggestion in message.split("Closest valid names:")[1].strip().rstrip(".").split(", "):
                parse(suggestion)


@pytest.mark.parametrize(
    "name, rule, params",
    [
        ("lrp_z_ib", "z", {"bias": False}),
        ("lrp_epsilon_0_1_ib", "epsilon", {"epsilon": 0.1, "bias": False}),
        ("lrp_epsilon_0_25_std_x_ib", "epsilon_std_x", {"stdfactor": 0.25, "bias": False}),
        ("lrp_alpha_2_beta_1_ib", "alpha_beta", {"alpha": 2.0, "beta": 1.0, "bias": False}),
        ("lrpsign_z_ib_mu_0_5", "z", {"bias": False, "mu": 0.5}),
        ("zblrp_epsilon_0_1_ib_VGG16ILSVRC", "epsilon", {"epsilon": 0.1, "bias": False, "low": VGG_BOUNDS[0]}),
        ("lrp_z", "z", {"bias": True}),
    ],
)
def test_ib_suffix_names_the_bias_free_rule(name, rule, params):
    spec = parse(name)
    assert spec.rule == rule
    assert {key: spec.params[key] for key in params} == params


@pytest.mark.parametrize(
    "name",
    [
        "lrp_z_plus_ib",
        "lrp_gamma_ib",
        "lrp_flat_ib",
        "lrp_w_square_ib",
        "lrp_deep_taylor_ib",
        "lrp_sequential_composite_a_ib",
    ],
)
def test_ib_suffix_only_on_rules_with_a_bias(name):
    with pytest.raises(ValueError, match="ignore bias"):
        parse(name)


@pytest.mark.parametrize("name", ["lrpsign_z_mu_0_5_ib", "lrp_z_ib_ib", "lrp_ib_z", "lrp_z_IB"])
def test_ib_suffix_in_the_wrong_place_is_unknown(name):
    with pytest.raises(ValueError, match="Unknown method name"):
        parse(name)
