"""The analyzer classes of the seed API, each a method spec run by the one engine.

Every class is a thin view: its constructor parses a method name with its parameters (through
:func:`.grammar.parse`), and :meth:`Analyzer.analyze` runs :func:`.engine.explain`. Inputs may be
one sample or a batch (decided from the input's rank); results are numpy arrays of the input's
shape. BatchNorm layers under LRP use their true affine map, as in the PyTorch-native API.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from .engine import explain
from .grammar import MethodSpec, format_number, parse
from .lrp.table import HIDDEN_RULES, INPUT_RULES

__all__ = [
    "Analyzer",
    "GradientAnalyzer",
    "IntegratedGradientsAnalyzer",
    "SmoothGradAnalyzer",
    "GuidedBackpropAnalyzer",
    "GradientXInputAnalyzer",
    "GradientXSignAnalyzer",
    "VarGradAnalyzer",
    "DeepTaylorAnalyzer",
    "GradCAMAnalyzer",
    "LRPAnalyzer",
    "AdvancedLRPAnalyzer",
    "LRPSequential",
]

#: rule names of the analyzer classes -> hidden-rule part of a method name (from the rule table)
_RULES = {spelling: part for entry in HIDDEN_RULES.values() for spelling, part in entry.spellings.items()}
#: first-layer rules of LRPSequential -> method-name prefix
_FIRST_LAYER_PREFIXES = {
    spelling: prefix for entry in INPUT_RULES.values() for spelling, prefix in entry.spellings.items()
}
#: iNNvestigate's default bounds of the Z-box rule
_ZBOX_DEFAULTS = dict(INPUT_RULES["zbox"].analyzer_defaults)


def _rule_part(rule: str, what: str) -> str:
    try:
        return _RULES[rule]
    except KeyError:
        raise ValueError(f"unknown {what} {rule!r}; known: {', '.join(sorted(_RULES))}") from None


class Analyzer:
    """An explanation method bound to a model.

    Parameters
    ----------
    model : torch.nn.Module
        PyTorch model returning logits.
    method : str
        Method name (see :mod:`.grammar`).
    **params
        The method's parameters.
    """

    def __init__(self, model: nn.Module, method: str, **params: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.spec: MethodSpec = parse(method, **params)

    def analyze(self, input_tensor: Any, target_class: Any = None) -> np.ndarray:
        """Compute the attribution.

        Parameters
        ----------
        input_tensor : torch.Tensor or numpy.ndarray
            One input or a batch, channels-first.
        target_class : int or sequence of int, optional
            Class to explain (None: the largest logit of each input).

        Returns
        -------
        numpy.ndarray
            Attribution of the input's shape.
        """
        return explain(self.spec, self.model, input_tensor, target_class, single=None)


class GradientAnalyzer(Analyzer):
    """Vanilla gradient of the selected logit."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "gradient")


class IntegratedGradientsAnalyzer(Analyzer):
    """Integrated gradients along the straight path from ``baseline`` (zeros) to the input,
    on iNNvestigate's points ``k / steps``, ``k = 0 .. steps-1``."""

    def __init__(self, model: nn.Module, steps: int = 50, baseline: Any = None) -> None:
        super().__init__(model, "integrated_gradients", steps=steps, reference=baseline)


class SmoothGradAnalyzer(Analyzer):
    """SmoothGrad: mean gradient over ``num_samples`` inputs with Gaussian noise of standard
    deviation ``noise_level`` (input units)."""

    def __init__(self, model: nn.Module, noise_level: float = 0.2, num_samples: int = 50) -> None:
        super().__init__(model, "smoothgrad", noise_level=noise_level, num_samples=num_samples)


class GuidedBackpropAnalyzer(Analyzer):
    """Guided backpropagation (ReLUs pass only positive gradients at positive inputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "guided_backprop")


class GradientXInputAnalyzer(Analyzer):
    """Gradient times input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "gradient_x_input")


class GradientXSignAnalyzer(Analyzer):
    """Gradient times the thresholded sign of the input (+1 where ``x >= mu``, else -1)."""

    def __init__(self, model: nn.Module, mu: float = 0.0) -> None:
        super().__init__(model, "gradient_x_sign_mu", mu=mu)


class VarGradAnalyzer(Analyzer):
    """VarGrad: population variance of the gradient over noisy copies of the input."""

    def __init__(self, model: nn.Module, num_samples: int = 50, noise_level: float = 0.2) -> None:
        super().__init__(model, "vargrad", noise_level=noise_level, num_samples=num_samples)


class DeepTaylorAnalyzer(Analyzer):
    """Deep Taylor decomposition as iNNvestigate computes it (Z+ on layers followed by a ReLU,
    W-square on the others, starting from ReLU of the logit).

    ``epsilon`` is accepted for compatibility with the seed signature; the Deep Taylor rules
    have no epsilon, so it must stay at its default.
    """

    def __init__(self, model: nn.Module, epsilon: float = 1e-6) -> None:
        if epsilon != 1e-6:
            raise ValueError(
                "DeepTaylorAnalyzer has no epsilon parameter: iNNvestigate's Deep Taylor "
                "rules (Z+, W-square) use none; use LRPAnalyzer(rule='epsilon') instead"
            )
        super().__init__(model, "lrp_deep_taylor")


class GradCAMAnalyzer(Analyzer):
    """Grad-CAM of ``target_layer`` (a module path such as ``'features.28'``, or the module
    itself; None: the default layer of :func:`.gradcam.deepest_conv`, the conv farthest from the input)."""

    def __init__(self, model: nn.Module, target_layer: Any = None) -> None:
        if isinstance(target_layer, nn.Module):
            names = [name for name, module in model.named_modules() if module is target_layer]
            if not names:
                raise ValueError("target_layer is not a module of the model")
            target_layer = names[0]
        super().__init__(model, "grad_cam", layer_name=target_layer)


class LRPAnalyzer(Analyzer):
    """Layer-wise relevance propagation with one rule for every layer.

    Parameters
    ----------
    model : torch.nn.Module
    rule : str, optional
        ``'epsilon'``, ``'zplus'``, ``'alphabeta'`` (alpha 1, beta 0), ``'z'``, ``'gamma'``,
        ``'flat'`` or ``'wsquare'``.
    epsilon : float, optional
        Stabiliser of the epsilon rule.
    """

    def __init__(self, model: nn.Module, rule: str = "epsilon", epsilon: float = 1e-6) -> None:
        part = _rule_part(rule, "LRP rule")
        params = {"epsilon": epsilon} if part == "epsilon" else {}
        super().__init__(model, f"lrp_{part}", **params)


class AdvancedLRPAnalyzer(Analyzer):
    """LRP with one of eight rule types: ``'alpha1beta0'``, ``'alpha2beta1'``, ``'epsilon'``
    (``epsilon=``, default 1e-6), ``'gamma'`` (``gamma=``, default 0.5), ``'flat'``,
    ``'wsquare'``, ``'zbox'`` (Z-box input layer with ``low=``/``high=``, default -1/1, and the
    Z rule elsewhere) and ``'sequential'`` (iNNvestigate's preset, ``variant='a'`` or ``'b'``)."""

    def __init__(self, model: nn.Module, rule_type: str, **kwargs: Any) -> None:
        if rule_type == "sequential":
            variant = kwargs.pop("variant", "a")
            super().__init__(model, f"lrp_sequential_composite_{variant}", **kwargs)
        elif rule_type == "zbox":
            super().__init__(model, "zblrp_z", **{**_ZBOX_DEFAULTS, **kwargs})
        elif rule_type == "epsilon":
            super().__init__(model, "lrp_epsilon", **{"epsilon": 1e-6, **kwargs})
        else:
            super().__init__(model, f"lrp_{_rule_part(rule_type, 'rule_type')}", **kwargs)


class LRPSequential(Analyzer):
    """LRP with one rule for the first conv/dense layer run, one for the last, and one for the
    layers between.

    Parameters
    ----------
    model : torch.nn.Module
    first_layer_rule : str, optional
        ``'zbox'`` (``low=``/``high=``, default -1/1), ``'z'``, ``'sign'``, ``'wsquare'``,
        ``'flat'``, or any middle-layer rule.
    middle_layer_rule, last_layer_rule : str, optional
        Rules as for :class:`LRPAnalyzer` (plus ``'alpha1beta0'``, ``'alpha2beta1'``).
    **kwargs
        Rule parameters (``epsilon``, ``alpha``, ``beta``, ``gamma``, ``low``, ``high``, ``mu``).
    """

    def __init__(
        self,
        model: nn.Module,
        first_layer_rule: str = "zbox",
        middle_layer_rule: str = "alphabeta",
        last_layer_rule: str = "epsilon",
        **kwargs: Any,
    ) -> None:
        middle = _rule_part(middle_layer_rule, "middle_layer_rule")
        last = _rule_part(last_layer_rule, "last_layer_rule")
        epsilon = kwargs.pop("epsilon", 1e-6)
        if last == "epsilon":
            last = f"epsilon_{format_number(epsilon)}"
        if middle == "epsilon":
            kwargs["epsilon"] = epsilon
        prefix = _FIRST_LAYER_PREFIXES.get(first_layer_rule)
        if prefix is None:
            if first_layer_rule != middle_layer_rule:
                raise ValueError(
                    f"unknown first_layer_rule {first_layer_rule!r}; known: "
                    f"{', '.join(sorted(_FIRST_LAYER_PREFIXES))} or the middle rule"
                )
            prefix = "lrp"
        if prefix == "zblrp":
            kwargs = {**_ZBOX_DEFAULTS, **kwargs}
        super().__init__(model, f"{prefix}_{middle}", last_rule=last, **kwargs)
