"""The library against iNNvestigate's stored reference maps of the fixture models (no TensorFlow).

The references were computed by iNNvestigate 2.1.2 on Keras twins of the fixture models
(``fixtures/make_references.py``); the tolerances are the parity gate's (``parity/compare.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.models import FIXTURES, load_inputs, load_model
from fixtures.references import TARGETS_KEY, load_manifest, load_references
from parity.cases import METHOD_NAMES_FILE, method_kwargs, method_names
from parity.compare import compare, tolerance_for
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
            cache[fixture] = (load_model(fixture), load_inputs(fixture), load_references(fixture))
        return cache[fixture]
    return get


@pytest.mark.parametrize("fixture, method", list(_cases()))
def test_matches_stored_innvestigate_reference(loaded, fixture, method):
    model, x, stored = loaded(fixture)
    kwargs = method_kwargs(parse(method), x)
    ours = calculate_relevancemaps(method, x, model, neuron_selection=stored[TARGETS_KEY], **kwargs)
    metrics = compare(ours, stored[method])
    assert metrics.rel_error <= tolerance_for(method), (
        f"{fixture} {method}: relative error {metrics.rel_error:.2e} "
        f"(max abs {metrics.max_abs_error:.2e}, correlation {metrics.correlation:.6f})")


def test_every_fixture_has_stored_references_for_its_applicable_names():
    manifest = load_manifest()
    assert set(manifest["fixtures"]) == set(FIXTURES)
    names = set(method_names())
    for fixture, entry in manifest["fixtures"].items():
        covered = set(entry["methods"]) | set(entry["skipped"]) | set(entry["unavailable"])
        assert covered == names, f"{fixture}: names without a stored reference or a reason"
        assert len(entry["methods"]) >= 100
        for key in ("tensorflow", "innvestigate", "numpy", "keras"):
            assert manifest["versions"][key]


def test_targets_are_the_models_predictions(loaded):
    for fixture in FIXTURES:
        model, x, stored = loaded(fixture)
        import torch
        with torch.no_grad():
            predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
        np.testing.assert_array_equal(predicted, stored[TARGETS_KEY])


def test_method_name_copy_matches_shared_list():
    if not SHARED_NAMES.exists():
        pytest.fail(f"{SHARED_NAMES} is missing: the method-name list cannot be checked")
    assert method_names(METHOD_NAMES_FILE) == method_names(SHARED_NAMES)
