"""The parity pipeline's plan and bookkeeping, without TensorFlow: every applicable name lands in
exactly one task, names sharing a map share a task, each (model, dtype) checks the reference
identities once, and rows lost or doubled between the tasks are refused."""

import dataclasses

import numpy as np
import pytest

from parity import pipeline
from parity.cases import cases, method_names
from parity.fanout import Backend, Task
from parity.harness import ModelRun, base_key, model_kind
from parity.pipeline import GROUP_ROWS, fixture_subjects, plan, run_jobs


@pytest.fixture(scope="module")
def subjects():
    return fixture_subjects(["digits_mlp", "digits_cnn"])


def test_plan_covers_every_applicable_name_once_per_dtype(subjects):
    tasks, skipped = plan(subjects, ["float32", "float64"])
    for index, subject in enumerate(subjects):
        chosen, expected_skips = cases(subject.label, *model_kind(subject.model), subject.inputs)
        assert skipped[subject.label] == expected_skips
        for dtype in ("float32", "float64"):
            mine = [t for t in tasks if (t.subject, t.dtype) == (index, dtype)]
            names = [m for t in mine for m in t.methods]
            assert sorted(names) == sorted(c.method for c in chosen)
            assert [t.identities for t in mine] == [True] + [False] * (len(mine) - 1)
            # a task holds at most GROUP_ROWS names plus the names sharing its last map
            assert all(len(t.methods) < 2 * GROUP_ROWS for t in mine)
            group_of = {m: i for i, t in enumerate(mine) for m in t.methods}
            bases: dict = {}
            for case in chosen:
                bases.setdefault(base_key(dataclasses.replace(case.spec, post=())), set()).add(group_of[case.method])
            assert all(len(groups) == 1 for groups in bases.values())
    assert len(method_names()) > GROUP_ROWS  # the plan above really had several tasks


def _fake_execute(drop: str | None = None, double: str | None = None):
    """An executor that returns a run holding each task's names (one dropped or doubled)."""

    def execute(subjects, tasks, backend, *, ours, cache, done):
        runs = []
        for task in tasks:
            subject = subjects[task.subject]
            run = ModelRun(subject.label, task.dtype, subject.inputs, np.zeros(len(subject.inputs), int))
            names = [m for m in task.methods if m != drop] + ([double] if double in task.methods else [])
            run.references = {m: np.zeros(1) for m in names}
            runs.append(run)
            done(task)
        if double is not None:  # the doubled name also comes back from the next task
            runs[1].references[double] = np.zeros(1)
        return runs

    return execute


def test_run_jobs_merges_tasks_and_refuses_lost_or_doubled_rows(subjects, monkeypatch):
    names = method_names()[: 2 * GROUP_ROWS + 3]
    monkeypatch.setattr(pipeline, "execute", _fake_execute())
    runs = run_jobs(subjects, ["float32"], names, backend=Backend(workers=1))
    for subject in subjects:
        chosen, skipped = cases(subject.label, *model_kind(subject.model), subject.inputs, names)
        run = runs[(subject.label, "float32")]
        assert sorted(run.references) == sorted(c.method for c in chosen) and run.skipped == skipped
    first = next(t for t in plan(subjects, ["float32"], names)[0])
    monkeypatch.setattr(pipeline, "execute", _fake_execute(drop=first.methods[0]))
    with pytest.raises(RuntimeError, match=first.methods[0]):
        run_jobs(subjects, ["float32"], names)
    monkeypatch.setattr(pipeline, "execute", _fake_execute(double=first.methods[0]))
    with pytest.raises(ValueError, match="in two runs"):
        run_jobs(subjects, ["float32"], names)


def test_ray_option_without_ray_is_a_usage_error(monkeypatch):
    import argparse
    import importlib.util

    from parity import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(pipeline.UsageError, match=r"pip install 'signxai\[ray\]'"):
        cli.backend_of(argparse.Namespace(ray="local", workers=2))
    assert cli.backend_of(argparse.Namespace(ray=None, workers=2)) == Backend(workers=2)


def test_backend_says_where_it_runs():
    assert Backend(workers=1).describe() == "this process"
    assert Backend(workers=2).describe() == "2 local processes"
    assert Backend(workers=3, ray="local").describe() == "Ray cluster 'local' (3 CPUs)"
    assert Task(0, "float32", ("a",), True).methods == ("a",)


def test_list_methods_needs_no_model(capsys):
    from parity.cli import main

    assert main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.lstrip().startswith("<prefix>_epsilon[_<number>][_ib]") and "LRPEpsilon" in line for line in lines)
    assert any(line.lstrip().startswith("lrp.epsilon ") for line in lines)


def test_missing_or_unknown_fixtures_say_where_they_are(monkeypatch):
    import sys

    with pytest.raises(pipeline.UsageError, match="no fixture named 'resnet'; the fixtures are digits_mlp"):
        fixture_subjects(["resnet"])
    monkeypatch.setitem(sys.modules, "fixtures.models", None)  # as where only the package is installed
    with pytest.raises(pipeline.UsageError, match="run from a clone of the repository"):
        fixture_subjects()


def _run_with(dtype, **held):
    run = ModelRun("m", dtype, np.zeros((1, 2)), np.zeros(1, int))
    for name, value in held.items():
        setattr(run, name, value)
    return run


def test_a_row_without_a_reference_in_either_dtype_becomes_a_skipped_name_of_its_model():
    ones = np.ones(2)
    by_job = {
        ("m", "float32"): _run_with(
            "float32", ours={"a": ones, "d": ones}, references={"a": ones}, unavailable={"d": "cannot"}
        ),
        # float64 has the reference that float32 lacks: still dropped in both, so no row is half-judged
        ("m", "float64"): _run_with("float64", ours={"a": ones, "d": ones}, references={"a": ones, "d": ones}),
        # our map failed where no reference exists: the failure stays a row
        ("n", "float32"): _run_with("float32", errors={"e": "ours raised"}, unavailable={"e": "cannot"}),
    }
    found = pipeline._drop_unanalysable(by_job)
    assert found == {"m": {"d": "cannot"}, "n": {"e": "cannot"}}
    for dtype in ("float32", "float64"):
        run = by_job[("m", dtype)]
        assert set(run.ours) == set(run.references) == {"a"} and not run.unavailable
        assert run.skipped == {"d": "iNNvestigate cannot analyse it on this model: cannot"}
    assert by_job[("n", "float32")].errors == {"e": "ours raised"} and not by_job[("n", "float32")].skipped
    assert pipeline._unanalysable_text(found) == "m: d (cannot); n: e (cannot)"
