"""Which methods are compared on which fixture, with which inputs, targets and noise.

Shared by ``python -m parity`` (live iNNvestigate), ``fixtures/make_references.py`` (stored
references) and the fast tests that compare the library with the stored references; it imports
no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from signxai.torch_signxai.methods.grammar import MethodSpec, parse

__all__ = ["Case", "method_names", "session_names", "not_applicable", "method_kwargs", "NOISE_SEED", "SESSION_KWARGS"]

#: the method names that must resolve (a copy of shared/method_names.txt; a test keeps them equal)
METHOD_NAMES_FILE = Path(__file__).with_name("method_names.txt")
#: names added since: iNNvestigate's analyzer names, the bias-free rules, ZPlusFast and Deep Taylor
#: with input rules; the live harness compares them with the names of METHOD_NAMES_FILE
EXTRA_NAMES_FILE = Path(__file__).with_name("innvestigate_names.txt")
#: seed of the smoothgrad / vargrad noise both frameworks receive
NOISE_SEED = 1234
#: keyword parameters the session passes with a name (both frameworks, every fixture)
SESSION_KWARGS: dict[str, dict[str, Any]] = {"lrp.sequential_preset_b_flat_until_idx": {"until_layer_idx": 1}}


def method_names(path: Path = METHOD_NAMES_FILE) -> list[str]:
    """The method names of ``path`` (one a line; ``#`` comments and ``[section]`` lines skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "["))]


def session_names() -> list[str]:
    """Every name the parity session compares: :data:`METHOD_NAMES_FILE`'s, then
    :data:`EXTRA_NAMES_FILE`'s."""
    return method_names() + method_names(EXTRA_NAMES_FILE)


@dataclass(frozen=True)
class Case:
    """One comparison: a method on a fixture model's inputs."""

    fixture: str
    method: str
    spec: MethodSpec
    kwargs: dict


def not_applicable(spec: MethodSpec, kind: str, gradcam_layer: str | None) -> str | None:
    """Why ``spec`` cannot be compared on a fixture of ``kind`` ('mlp', 'cnn', 'cnn1d'), or None."""
    if spec.family == "random_uniform" or (spec.family == "input" and spec.params["stddev"]):
        return "random baseline: nothing to compare"
    if spec.family in ("grad_cam", "guided_grad_cam"):
        if gradcam_layer is None:
            return "Grad-CAM needs a conv layer"
        if spec.params.get("timeseries") and kind != "cnn1d":
            return "grad_cam_timeseries needs a 1-D conv layer"
        preset = spec.params.get("layer_name")
        if preset is not None:
            return f"preset layer {preset!r} is not in this model"
    return None


def method_kwargs(spec: MethodSpec, x: np.ndarray) -> dict[str, Any]:
    """Extra method parameters for a comparison: the name's :data:`SESSION_KWARGS`, and the noise
    draws of smoothgrad / vargrad, so both frameworks see the same noisy inputs (shape
    (num_samples, *x.shape), x with batch axis)."""
    if spec.family not in ("smoothgrad", "vargrad"):
        return dict(SESSION_KWARGS.get(spec.name, {}))
    rng = np.random.default_rng(NOISE_SEED)
    noise = rng.standard_normal((spec.params["num_samples"], *x.shape)) * spec.params["noise_level"]
    return {"noise": noise.astype(x.dtype)}


def cases(
    fixture: str, kind: str, gradcam_layer: str | None, x: np.ndarray, names: list[str] | None = None
) -> tuple[list[Case], dict[str, str]]:
    """The comparisons of one fixture, and the skipped names with their reasons."""
    chosen, skipped = [], {}
    for name in names if names is not None else session_names():
        spec = parse(name)
        reason = not_applicable(spec, kind, gradcam_layer)
        if reason:
            skipped[name] = reason
            continue
        kwargs = method_kwargs(spec, x)
        chosen.append(Case(fixture, name, parse(name, **kwargs) if kwargs else spec, kwargs))
    return chosen, skipped
