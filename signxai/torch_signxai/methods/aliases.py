"""Whole-name aliases: other spellings of a method, each with the signxai name it means.

One table for all of them: the seed API's short forms (``gradients``, ``lrp_zplus``, ...) and
every analyzer name of iNNvestigate's ``create_analyzer`` (2.1.2, and the bias-free names of
1.x), so that ``parse('lrp.epsilon', epsilon=0.01)`` computes what
``innvestigate.create_analyzer('lrp.epsilon', model, epsilon=0.01)`` does. An alias carries the
defaults in which its analyzer differs from the signxai name (``lrp.epsilon``'s epsilon of
1e-7); keyword parameters still override them. Names iNNvestigate knows that have no meaning
here are refused with the reason (:data:`REFUSED`).

Two iNNvestigate names are spelled like signxai names and keep signxai's defaults:
``integrated_gradients`` (signxai: 50 steps; iNNvestigate: ``steps=64``) and ``smoothgrad``
(signxai: 50 samples, noise standard deviation 0.2; iNNvestigate: ``augment_by_n=64``,
``noise_scale=1``). Pass iNNvestigate's values as keywords (both of its keyword names are
accepted) to compute its defaults. iNNvestigate 2.1.2's SmoothGrad ignores its ``noise_scale``
(its ``GaussianSmoother`` builds ``AddGaussianNoise()`` with the default standard deviation 1), so
its noise is always N(0, 1); here ``noise_scale`` / ``noise_level`` is the standard deviation used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Alias", "ALIASES", "REFUSED", "SAME_NAME_DEFAULTS"]


@dataclass(frozen=True)
class Alias:
    """One alias.

    Attributes
    ----------
    means : str
        The signxai method name it stands for.
    defaults : Mapping
        Parameter defaults of the alias that differ from those of ``means``.
    source : str
        Where the spelling comes from: ``'signxai'`` (the seed API's short forms),
        ``'innvestigate'`` (``create_analyzer`` of iNNvestigate 2.1.2) or ``'innvestigate 1.x'``.
    analyzer : str
        The iNNvestigate analyzer class it equals ('' for the seed's short forms).
    """

    means: str
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "innvestigate"
    analyzer: str = ""


def _seed(means: str) -> Alias:
    return Alias(means, source="signxai")


#: every alias -> what it means
ALIASES: Mapping[str, Alias] = MappingProxyType(
    {
        # the seed API's short forms
        "gradients": _seed("gradient"),
        "vanilla_gradient": _seed("gradient"),
        "input_x_gradient": _seed("gradient_x_input"),
        "lrp_zplus": _seed("lrp_z_plus"),
        "lrp_wsquare": _seed("lrp_w_square"),
        "lrp_alphabeta": _seed("lrp_alpha_beta"),
        "lrp_zbox": _seed("zblrp_z"),
        # iNNvestigate 2.1.2's create_analyzer names (those spelled like a signxai name, input,
        # gradient, deconvnet, guided_backprop, integrated_gradients and smoothgrad, are that name)
        "random": Alias("input", MappingProxyType({"stddev": 1.0}), analyzer="Random"),
        "gradient.baseline": Alias("gradient", analyzer="BaselineGradient"),
        "input_t_gradient": Alias("gradient_x_input", analyzer="InputTimesGradient"),
        "lrp.z": Alias("lrp_z", analyzer="LRPZ"),
        "lrp.epsilon": Alias("lrp_epsilon", MappingProxyType({"epsilon": 1e-7}), analyzer="LRPEpsilon"),
        "lrp.w_square": Alias("lrp_w_square", analyzer="LRPWSquare"),
        "lrp.flat": Alias("lrp_flat", analyzer="LRPFlat"),
        "lrp.alpha_beta": Alias("lrp_alpha_beta", analyzer="LRPAlphaBeta"),
        "lrp.alpha_2_beta_1": Alias("lrp_alpha_2_beta_1", analyzer="LRPAlpha2Beta1"),
        "lrp.alpha_2_beta_1_IB": Alias("lrp_alpha_2_beta_1_ib", analyzer="LRPAlpha2Beta1IgnoreBias"),
        "lrp.alpha_1_beta_0": Alias("lrp_alpha_1_beta_0", analyzer="LRPAlpha1Beta0"),
        "lrp.alpha_1_beta_0_IB": Alias("lrp_alpha_1_beta_0_ib", analyzer="LRPAlpha1Beta0IgnoreBias"),
        "lrp.z_plus": Alias("lrp_z_plus", analyzer="LRPZPlus"),
        "lrp.z_plus_fast": Alias("lrp_z_plus_fast", analyzer="LRPZPlusFast"),
        "lrp.sequential_preset_a": Alias("lrp_sequential_composite_a", analyzer="LRPSequentialPresetA"),
        "lrp.sequential_preset_b": Alias("lrp_sequential_composite_b", analyzer="LRPSequentialPresetB"),
        "lrp.sequential_preset_a_flat": Alias("flatlrp_sequential_composite_a", analyzer="LRPSequentialPresetAFlat"),
        "lrp.sequential_preset_b_flat": Alias("flatlrp_sequential_composite_b", analyzer="LRPSequentialPresetBFlat"),
        # until_layer_idx numbers the conv/dense layers here (iNNvestigate: model.layers)
        "lrp.sequential_preset_b_flat_until_idx": Alias(
            "flatlrp_sequential_composite_b",
            MappingProxyType({"until_layer_rule": "flat"}),
            analyzer="LRPSequentialPresetBFlatUntilIdx",
        ),
        "deep_taylor": Alias("lrp_deep_taylor", analyzer="DeepTaylor"),
        "deep_taylor.bounded": Alias("zblrp_deep_taylor", analyzer="BoundedDeepTaylor"),
        # iNNvestigate 1.x's bias-free names (2.x builds them with bias=False)
        "lrp.z_IB": Alias("lrp_z_ib", source="innvestigate 1.x", analyzer="LRPZIgnoreBias"),
        "lrp.epsilon_IB": Alias(
            "lrp_epsilon_ib",
            MappingProxyType({"epsilon": 1e-7}),
            source="innvestigate 1.x",
            analyzer="LRPEpsilonIgnoreBias",
        ),
    }
)

#: iNNvestigate names spelled like a signxai name whose defaults differ: name -> iNNvestigate's
#: defaults (the signxai name keeps its own; pass these as keywords to compute iNNvestigate's)
SAME_NAME_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "integrated_gradients": MappingProxyType({"steps": 64}),
        "smoothgrad": MappingProxyType({"num_samples": 64, "noise_level": 1.0}),
    }
)

#: iNNvestigate names that have no meaning here -> why, and what to use instead
REFUSED: Mapping[str, str] = MappingProxyType(
    {
        "lrp": "iNNvestigate's base LRP analyzer has no rule of its own (it needs rule=); name the "
        "rule instead, e.g. lrp.z, lrp.epsilon or lrp_epsilon_0_1",
        "pattern.net": "PatternNet needs patterns trained on a data set, and iNNvestigate 2.1.2 no "
        "longer has it (create_analyzer does not know the name)",
        "pattern.attribution": "PatternAttribution needs patterns trained on a data set, and "
        "iNNvestigate 2.1.2 no longer has it (create_analyzer does not know the name)",
    }
)
