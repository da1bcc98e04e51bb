"""The parity gate (``parity/compare.py``), the report rows it judges and the reference cache,
on maps made up for the purpose (no TensorFlow)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from parity import cache as cache_module
from parity.cache import ReferenceCache, twin_digest
from parity.compare import FLOAT32_FLOOR, FORMULA_TOLERANCE, ROUNDING_FACTOR, judge, relative_error
from parity.harness import ModelRun, merge_runs
from parity.report import model_summaries, rows_from, terminal_summary

RNG = np.random.default_rng(0)
#: a float64 "reference" map with max |value| 1
REF64 = RNG.uniform(-1, 1, (2, 3, 4, 4))
REF64[0, 0, 0, 0] = 1.0


def _off_by(error: float, where: tuple = (1, 2, 3, 3)) -> np.ndarray:
    """REF64 with one entry moved by ``error`` (so its relative error is exactly ``error``)."""
    moved = REF64.copy()
    moved[where] += error
    return moved


def test_relative_error_is_max_abs_difference_over_max_abs_reference():
    assert relative_error(_off_by(3e-3), REF64) == pytest.approx(3e-3, rel=1e-12)
    assert relative_error(np.full(3, 2e-3), np.zeros(3)) == 2e-3  # zero reference: absolute error
    assert np.isnan(relative_error(np.array([np.nan, 1.0]), np.ones(2)))
    with pytest.raises(ValueError, match="shape mismatch"):
        relative_error(np.zeros(3), np.zeros(4))


def test_float64_formula_difference_fails_whatever_float32_says():
    ours64 = REF64 * (1 + 1e-9)
    verdict = judge(REF64, REF64, ours64, REF64)
    assert not verdict.passed and "formula difference" in verdict.reason
    assert verdict.float64_error == pytest.approx(1e-9, rel=1e-6)
    assert verdict.float64_error > FORMULA_TOLERANCE


def test_float32_error_may_reach_the_factor_times_innvestigates_own():
    reference_error = 5e-4  # an ill-conditioned map: iNNvestigate's float32 map is 5e-4 off
    reference32 = _off_by(reference_error, (0, 1, 1, 1))
    within = judge(_off_by(0.99 * ROUNDING_FACTOR * reference_error), reference32, REF64, REF64)
    beyond = judge(_off_by(1.01 * ROUNDING_FACTOR * reference_error), reference32, REF64, REF64)
    assert within.passed and within.allowed == pytest.approx(ROUNDING_FACTOR * reference_error)
    assert not beyond.passed and "iNNvestigate's own float32 error 5.00e-04" in beyond.reason


def test_float32_floor_applies_where_innvestigate_is_exact():
    assert judge(_off_by(0.9 * FLOAT32_FLOOR), REF64, REF64, REF64).passed
    failed = judge(_off_by(1.1 * FLOAT32_FLOOR), REF64, REF64, REF64)
    assert not failed.passed and failed.allowed == FLOAT32_FLOOR
    assert judge(_off_by(1e-6), REF64, REF64, REF64, floor=0.0).passed is False


def test_nan_in_our_map_fails():
    ours = REF64.copy()
    ours[0, 0, 1, 1] = np.nan
    assert not judge(ours, REF64, REF64, REF64).passed
    assert not judge(REF64, REF64, ours, REF64).passed


def _run(dtype: str, maps: dict[str, tuple[np.ndarray, np.ndarray]], label: str = "m", targets=(0, 1)) -> ModelRun:
    run = ModelRun(label, dtype, np.zeros((2, 3, 4, 4), dtype), np.asarray(targets))
    for method, (ours, reference) in maps.items():
        run.ours[method], run.references[method] = ours.astype(dtype), reference.astype(dtype)
    return run


def test_rows_from_judges_each_row_by_both_dtypes_and_keeps_both_columns():
    ref32 = _off_by(2e-4, (0, 1, 1, 1))  # iNNvestigate's float32 map 2e-4 from float64
    run32 = _run("float32", {"lrp_z": (_off_by(3e-4), ref32), "gradient": (_off_by(2e-3), REF64)})
    run64 = _run("float64", {"lrp_z": (REF64, REF64), "gradient": (REF64, REF64)})
    rows = {row.method: row for row in rows_from(run32, run64)}
    lrp = rows["lrp_z"]
    assert lrp.passed and lrp.tolerance == pytest.approx(ROUNDING_FACTOR * 2e-4, rel=1e-3)
    assert lrp.ours_f32_error == pytest.approx(3e-4, rel=1e-3)
    assert lrp.reference_f32_error == pytest.approx(2e-4, rel=1e-3)
    assert lrp.rel_error > 1e-5 and lrp.flagged and "iNNvestigate 2.0e-04" in lrp.note
    assert not rows["gradient"].passed and "float32 error 2.00e-03" in rows["gradient"].note


def test_rows_fail_when_the_float64_run_lacks_the_row_or_predicts_other_targets():
    run32 = _run("float32", {"lrp_z": (REF64, REF64)})
    assert "float64: no float64 map" in rows_from(run32, _run("float64", {}))[0].note
    other = _run("float64", {"lrp_z": (REF64, REF64)}, targets=(1, 1))
    assert "different targets" in rows_from(run32, other)[0].note


def test_float32_only_rows_compare_directly_against_the_floor():
    run32 = _run("float32", {"a": (_off_by(5e-5), REF64), "b": (_off_by(2e-4), REF64)})
    rows = rows_from(run32)
    assert [row.passed for row in rows] == [True, False]
    assert rows[0].rel_error_f64 is None and rows[0].tolerance == FLOAT32_FLOOR


def test_terminal_summary_lists_models_failing_rows_and_the_report():
    run32 = _run("float32", {"a": (REF64, REF64), "b": (_off_by(1e-2), REF64)}, label="net")
    run64 = _run("float64", {"a": (REF64, REF64), "b": (REF64, REF64)}, label="net")
    rows = rows_from(run32, run64)
    assert model_summaries(rows) == [("net", 1, 2)]
    text = terminal_summary(rows, report=None)
    assert "  net: 1/2 passed" in text and "  net b: float32 error 1.00e-02" in text
    assert text.splitlines()[-1] == "parity: 1/2 passed"


def test_merge_runs_joins_method_groups_and_refuses_other_models():
    first = _run("float32", {"a": (REF64, REF64)})
    second = _run("float32", {"b": (REF64, REF64)})
    second.cached, second.computed = 1, 2
    merged = merge_runs([first, second])
    assert sorted(merged.references) == ["a", "b"] and (merged.cached, merged.computed) == (1, 2)
    with pytest.raises(ValueError, match="cannot merge"):
        merge_runs([first, _run("float32", {}, label="other")])
    with pytest.raises(ValueError, match=r"rows \['a'\] .* are in two runs"):
        merge_runs([first, second, _run("float32", {"a": (REF64, REF64)})])


class _FakeKeras:
    """What :func:`twin_digest` reads of a Keras model."""

    def __init__(self, weights: list[np.ndarray], config: str = '{"layers": ["dense"]}') -> None:
        self.weights, self.config = weights, config

    def to_json(self) -> str:
        return self.config

    def get_weights(self) -> list[np.ndarray]:
        return self.weights


@pytest.fixture
def environment(monkeypatch):
    """The cache's environment part of the key, without importing TensorFlow's version."""
    values = {"versions": "tensorflow 2.14.1", "cpu": "test"}
    monkeypatch.setattr(cache_module, "_environment", lambda: dict(values))
    return values


def test_cache_key_changes_with_everything_a_reference_depends_on(environment):
    cache = ReferenceCache(None)
    weights = [np.ones((2, 2), np.float32)]
    x, targets = np.zeros((1, 2), np.float32), np.array([0])
    base = cache.key(twin_digest(_FakeKeras(weights)), {"rule": "z"}, x, targets)
    changed_weight = [weights[0].copy()]
    changed_weight[0][0, 0] = np.nextafter(np.float32(1), np.float32(2))
    keys = {
        "weight": cache.key(twin_digest(_FakeKeras(changed_weight)), {"rule": "z"}, x, targets),
        "architecture": cache.key(twin_digest(_FakeKeras(weights, '{"layers": ["conv"]}')), {"rule": "z"}, x, targets),
        "method": cache.key(twin_digest(_FakeKeras(weights)), {"rule": "epsilon"}, x, targets),
        "input": cache.key(twin_digest(_FakeKeras(weights)), {"rule": "z"}, x + 1, targets),
        "dtype": cache.key(twin_digest(_FakeKeras(weights)), {"rule": "z"}, x.astype(np.float64), targets),
        "targets": cache.key(twin_digest(_FakeKeras(weights)), {"rule": "z"}, x, targets + 1),
        "noise": cache.key(twin_digest(_FakeKeras(weights)), {"rule": "z", "noise": np.ones(3)}, x, targets),
    }
    environment["versions"] = "tensorflow 2.14.2"
    keys["version"] = cache.key(twin_digest(_FakeKeras(weights)), {"rule": "z"}, x, targets)
    assert base not in keys.values() and len(set(keys.values())) == len(keys)


def test_cache_hit_is_bitwise_the_stored_value_and_corrupt_entries_are_recomputed(tmp_path, environment):
    calls = []

    def compute():
        calls.append(1)
        return np.linspace(0, 1, 7, dtype=np.float32) / 3

    cache = ReferenceCache(tmp_path)
    key = cache.key("twin", "lrp_z", np.zeros(2), np.zeros(1))
    first = cache.get_or_compute(key, compute)
    again = ReferenceCache(tmp_path).get_or_compute(key, compute)  # another run sharing the folder
    assert len(calls) == 1 and again.dtype == first.dtype and again.tobytes() == first.tobytes()
    (entry,) = tmp_path.rglob("*.npz")
    entry.write_bytes(entry.read_bytes()[:-40])  # a truncated file
    assert ReferenceCache(tmp_path).get_or_compute(key, compute).tobytes() == first.tobytes()
    assert len(calls) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_stores_identity_records_and_never_an_exception(tmp_path, environment):
    cache = ReferenceCache(tmp_path)
    record = {"lrp_z_vs_gradient_x_input": 1.5e-8}
    assert cache.get_or_compute("ab12", lambda: record) == record
    assert ReferenceCache(tmp_path).get_or_compute("ab12", lambda: {}) == record

    def fails():
        raise RuntimeError("iNNvestigate refused")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("cd34", fails)
    assert not (tmp_path / "cd").exists() or not list((tmp_path / "cd").iterdir())


def _fill(folder: str) -> list[bytes]:
    """Read or compute 40 entries of the cache in ``folder`` (run by two processes at once)."""
    cache = ReferenceCache(Path(folder))
    return [cache.get_or_compute(f"{i:064x}", lambda i=i: np.full(4096, i, np.float32)).tobytes() for i in range(40)]


def test_two_runs_sharing_a_cache_folder_see_whole_entries(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.map(_fill, [str(tmp_path)] * 2)
    expected = [np.full(4096, i, np.float32).tobytes() for i in range(40)]
    assert results == [expected, expected]
    assert len(list(tmp_path.rglob("*.npz"))) == 40 and not list(tmp_path.rglob("*.tmp"))
