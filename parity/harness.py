"""Run both frameworks on one fixture: our library on the PyTorch model, iNNvestigate on a fresh
Keras twin for every analyzer. Needs TensorFlow in graph mode (see :func:`graph_mode`)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from signxai.torch_signxai.methods.grammar import MethodSpec
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

from .cache import ReferenceCache, twin_digest
from .cases import Case, cases

if TYPE_CHECKING:
    from .twin import Twin

__all__ = [
    "graph_mode",
    "ModelRun",
    "run_model",
    "run_fixture",
    "merge_runs",
    "model_kind",
    "base_key",
    "IDENTITY_TOLERANCE",
]

#: the trap-10 identities (lrp_z == gradient_x_input, lrpsign_z == gradient_x_sign on ReLU nets)
#: must hold on the reference side to this relative error, or input-layer rules were dropped
IDENTITY_TOLERANCE = 1e-5


def graph_mode() -> None:
    """Prepare this process for the harness, before any Keras model is built: deterministic
    numerics in both frameworks (:func:`parity.determinism.apply`), then TensorFlow's graph mode,
    which iNNvestigate needs."""
    from .determinism import apply

    apply()
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    _keep_graph_constants()


def _keep_graph_constants() -> None:
    """Stop Keras evaluating every constant of a raw TensorFlow op applied to Keras tensors.

    In graph mode Keras wraps such an op (iNNvestigate builds every rule from them) in a
    ``TensorFlowOpLayer`` and, only so that the layer's ``get_config`` can serialise it, runs a
    session call per constant input to store its value. Each call extends the session by the
    graph built since the last one and prunes a callable out of it, which grows with the model:
    in a profile of two analyses of resnet18 at 65x65 they took 130 of 165 s. Keras' own switch
    ``_UNSAFE_GRAPH_OP_LAYER_CREATION`` keeps the constant tensor instead. The op in the graph,
    and so every map, is the same either way (bitwise, measured on resnet18 and on a fixture's 446
    reference maps); nothing in the harness serialises those layers. A Keras without the switch
    is left as it is.
    """
    from keras.src.engine import base_layer_utils

    if hasattr(base_layer_utils, "_UNSAFE_GRAPH_OP_LAYER_CREATION"):
        base_layer_utils._UNSAFE_GRAPH_OP_LAYER_CREATION = True


@dataclass
class ModelRun:
    """Maps of both frameworks for every applicable method of one model, in one dtype."""

    label: str
    dtype: str
    inputs: np.ndarray
    targets: np.ndarray
    ours: dict[str, np.ndarray] = field(default_factory=dict)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    identities: dict[str, float] = field(default_factory=dict)
    input_layer_hidden: str | None = None
    has_batchnorm: bool = False
    cached: int = 0
    computed: int = 0

    def dropped_input_rules(self) -> dict[str, float]:
        """The trap-10 identities that fail on the reference side (input-layer rule dropped).
        With BatchNorm only ``lrp_z == lrpsign_z * x * s(x)`` holds (trap 11)."""
        return {
            name: error
            for name, error in self.identities.items()
            if error > IDENTITY_TOLERANCE and (not self.has_batchnorm or name == "lrp_z_vs_lrpsign_z_x_abs")
        }


def model_kind(model: torch.nn.Module) -> tuple[str, str | None]:
    """('cnn' | 'cnn1d' | 'mlp', path of the last conv module or None) of a model."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    if not convs:
        return "mlp", None
    name, last = convs[-1]
    return ("cnn1d" if isinstance(last, torch.nn.Conv1d) else "cnn"), name


def run_fixture(
    fixture: str,
    dtype: str = "float32",
    names: list[str] | None = None,
    ours: bool = True,
    identities: bool = True,
    cache: Path | None = None,
) -> ModelRun:
    """:func:`run_model` on a fixture model (:data:`fixtures.models.FIXTURES`) and its stored inputs
    (the ``fixtures`` folder of the repository must be importable), with references cached in the
    folder ``cache`` (None: computed live)."""
    from fixtures.models import FIXTURES, load_inputs, load_model

    return run_model(
        fixture,
        load_model(fixture),
        load_inputs(fixture),
        FIXTURES[fixture].input_shape,
        dtype,
        names,
        ours=ours,
        identities=identities,
        cache=ReferenceCache(cache),
    )


def run_model(
    label: str,
    model: torch.nn.Module,
    x: np.ndarray,
    input_shape: tuple[int, ...],
    dtype: str = "float32",
    names: list[str] | None = None,
    *,
    ours: bool = True,
    identities: bool = True,
    cache: ReferenceCache | None = None,
    reference: Callable[[str], Twin] | None = None,
) -> ModelRun:
    """Compute our maps and iNNvestigate's reference maps for one model.

    Parameters
    ----------
    label : str
        The model's name in the report.
    model : torch.nn.Module
        The PyTorch model (returning logits); it is not modified.
    x : numpy.ndarray
        Inputs with batch axis, channels-first.
    input_shape : tuple of int
        One input's shape (channels-first, no batch axis).
    dtype : {'float32', 'float64'}
        Both frameworks compute in this dtype (Keras ``floatx`` and ``model.double()``).
    names : list of str, optional
        Method names (default: every name of :func:`parity.cases.session_names`).
    ours : bool
        Also compute our library's maps (False: references only).
    identities : bool
        Check the trap-10 identities on the reference side (:attr:`ModelRun.identities`). They
        need iNNvestigate's input-layer rules, so a twin whose input layer iNNvestigate does not
        see (a ZeroPadding2D in front of the first conv) is not checked; its rows say why.
    cache : parity.cache.ReferenceCache, optional
        Where reference maps are looked up and stored (default: none, every map computed live).
    reference : callable, optional
        The Keras side: a function of the dtype returning the twin iNNvestigate runs on (default:
        ``model`` converted by :func:`parity.twin.to_keras`).
    """
    import tensorflow as tf

    from .reference import ReferenceUnavailable, apply_post, check_identities, reference_map
    from .twin import to_keras

    kind, last_conv = model_kind(model)
    model = copy.deepcopy(model).to(torch.float64 if dtype == "float64" else torch.float32).eval()
    x = np.asarray(x, dtype=dtype)
    with torch.no_grad():
        targets = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    previous = tf.keras.backend.floatx()
    tf.keras.backend.set_floatx(dtype)
    cache = ReferenceCache(None) if cache is None else cache
    try:
        twin = to_keras(model, tuple(input_shape), dtype=dtype) if reference is None else reference(dtype)
        run = ModelRun(
            label,
            dtype,
            x,
            targets,
            input_layer_hidden=twin.hidden_reason,
            has_batchnorm=any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        )
        chosen, run.skipped = cases(label, kind, last_conv, x, names)
        # the digest of a model built as every reference builds its own (twin.fresh)
        digest = twin_digest(twin.fresh()) if cache.folder is not None else ""
        twin_options: dict[str, Any] = {"input_layer_hidden": twin.input_layer_hidden, "layer_names": twin.layer_names}

        def cached(what: Any, compute: Callable[[], Any]) -> Any:
            tf.keras.backend.clear_session()
            return cache.get_or_compute(cache.key(digest, [what, twin_options], x, targets), compute)

        if identities and not twin.input_layer_hidden:
            try:
                run.identities = cached("identities", lambda: check_identities(twin.fresh, x, targets))
            except ReferenceUnavailable:  # the guard does not apply to this model; each row still compares
                run.identities = {}
        bases: dict = {}  # maps without post-multipliers, shared by e.g. lrp_z, lrp_z_x_input
        for case in chosen:
            if ours:
                try:
                    run.ours[case.method] = _ours(case, model, x, targets)
                except Exception as error:  # our failure is a failing row of the report
                    run.errors[case.method] = f"signxai: {type(error).__name__}: {error}"
            base = dataclasses.replace(case.spec, post=())
            key = base_key(base)
            try:
                if key not in bases:
                    bases[key] = cached(
                        _spec_fields(base),
                        functools.partial(reference_map, base, twin.fresh, x, targets, **twin_options),
                    )
                run.references[case.method] = apply_post(case.spec, bases[key], x)
            except ReferenceUnavailable as error:
                run.unavailable[case.method] = str(error)
            except Exception as error:  # a reference that crashes is a failing row, not a crash
                run.errors[case.method] = f"{type(error).__name__}: {error}"
    finally:
        tf.keras.backend.set_floatx(previous)
    run.cached, run.computed = cache.hits, cache.misses
    return run


def _spec_fields(spec: MethodSpec) -> dict[str, Any]:
    """What a reference of ``spec`` depends on: every field but the name (noise arrays included)."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "name"}


def base_key(spec: MethodSpec) -> tuple:
    """What identifies a map before post-multipliers. The noise is left out: the harness draws it
    from a fixed seed, so it is the same for every name with the same sample count and level."""
    params = tuple(sorted((k, repr(v)) for k, v in spec.params.items() if k not in ("noise", "post_mu")))
    return spec.family, spec.rule, spec.input_rule, params


def merge_runs(parts: list[ModelRun]) -> ModelRun:
    """One :class:`ModelRun` from runs of the same model and dtype on disjoint method groups."""
    first = parts[0]
    merged = dataclasses.replace(
        first, ours={}, references={}, unavailable={}, errors={}, skipped={}, identities={}, cached=0, computed=0
    )
    for part in parts:
        if (part.label, part.dtype) != (first.label, first.dtype) or not np.array_equal(part.targets, first.targets):
            raise ValueError(f"cannot merge a run of {part.label} {part.dtype} into {first.label} {first.dtype}")
        rows = set(part.ours) | set(part.references) | set(part.errors) | set(part.unavailable)
        seen = set(merged.ours) | set(merged.references) | set(merged.errors) | set(merged.unavailable)
        if rows & seen:
            raise ValueError(f"rows {sorted(rows & seen)} of {part.label} {part.dtype} are in two runs")
        for name in ("ours", "references", "unavailable", "errors", "skipped", "identities"):
            getattr(merged, name).update(getattr(part, name))
        merged.cached += part.cached
        merged.computed += part.computed
    return merged


def _ours(case: Case, model: torch.nn.Module, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return calculate_relevancemaps(case.method, x, model, neuron_selection=targets, **case.kwargs)
