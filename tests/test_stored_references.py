"""The library against iNNvestigate's stored reference maps of the fixture models (no TensorFlow).

The references were computed by iNNvestigate 2.1.2 on Keras twins of the fixture models, in
float32 and float64 (``fixtures/make_references.py``); every row is judged by the parity gate
(:func:`parity.compare.judge`), which does not depend on the CPU that runs it: our float64 map
equals the stored float64 map to the formula tolerance, and our float32 map is as accurate as
iNNvestigate's stored float32 map.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.models import FIXTURES, load_inputs, load_model
from fixtures.references import TARGETS_KEY, load_manifest, load_references
from parity.cases import METHOD_NAMES_FILE, method_kwargs, method_names, session_names
from parity.compare import judge
from signxai.torch_signxai.methods.grammar import parse
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

SHARED_NAMES = Path(__file__).resolve().parents[2] / "shared" / "method_names.txt"


def _cases():
    manifest = load_manifest()
    for fixture, entry in manifest["fixtures"].items():
        for method in entry["methods"]:
            yield pytest.param(fixture, method, id=f"{fixture}-{method}")


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(fixture):
        if fixture not in cache:
            model = load_model(fixture)
            # each dtype's model and inputs cast, as the parity harness casts them
            models = {"float32": model, "float64": copy.deepcopy(model).double()}
            cache[fixture] = (
                models,
                load_inputs(fixture),
                load_references(fixture),
                load_references(fixture, "float64"),
            )
        return cache[fixture]

    return get


def _ours(models, x, method, targets, dtype):
    x = x.astype(dtype)
    return calculate_relevancemaps(
        method, x, models[dtype], neuron_selection=targets, **method_kwargs(parse(method), x)
    )


@pytest.mark.parametrize("fixture, method", list(_cases()))
def test_matches_stored_innvestigate_reference(loaded, fixture, method):
    models, x, stored32, stored64 = loaded(fixture)
    targets = stored32[TARGETS_KEY]
    verdict = judge(
        _ours(models, x, method, targets, "float32"),
        stored32[method],
        _ours(models, x, method, targets, "float64"),
        stored64[method],
    )
    assert verdict.passed, f"{fixture} {method}: {verdict}"


def test_every_fixture_has_stored_references_for_its_applicable_names():
    manifest = load_manifest()
    assert set(manifest["fixtures"]) == set(FIXTURES)
    session = set(session_names())
    for fixture, entry in manifest["fixtures"].items():
        covered = set(entry["methods"]) | set(entry["skipped"]) | set(entry["unavailable"])
        assert covered == session, (
            f"{fixture}: names without a stored reference or a reason: {sorted(session ^ covered)}"
        )
        assert len(entry["methods"]) >= 100
        for key in ("tensorflow", "innvestigate", "numpy", "keras"):
            assert manifest["versions"][key]


def test_targets_are_the_models_predictions(loaded):
    for fixture in FIXTURES:
        models, x, stored32, stored64 = loaded(fixture)
        with torch.no_grad():
            predicted = models["float32"](torch.from_numpy(x)).argmax(dim=1).numpy()
        np.testing.assert_array_equal(predicted, stored32[TARGETS_KEY])
        np.testing.assert_array_equal(predicted, stored64[TARGETS_KEY])


def test_method_name_copy_matches_shared_list():
    if not SHARED_NAMES.exists():
        pytest.fail(f"{SHARED_NAMES} is missing: the method-name list cannot be checked")
    assert method_names(METHOD_NAMES_FILE) == method_names(SHARED_NAMES)
