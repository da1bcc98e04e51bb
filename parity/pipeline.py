"""The parity pipeline: the one orchestrator behind ``python -m parity``, ``signxai-parity`` and
:func:`parity.testing.assert_parity`.

:func:`check` takes models with their inputs (:class:`parity.fanout.Subject`), checks that they
can be compared (:func:`validate`), splits the work into tasks of a few methods
(:func:`plan`), runs them where the :class:`parity.fanout.Backend` says (this process, local
processes or a Ray cluster), merges the tasks' runs (no row lost, none twice), judges every row
by the gate of :mod:`parity.compare` and returns an :class:`Outcome`; :func:`publish` writes its
report, JSON record and figure. References come from the reference cache of :mod:`parity.cache`
where their inputs did not change.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cases import cases
from .fanout import Backend, Subject, Task, execute
from .progress import ProgressBar

if TYPE_CHECKING:
    from .harness import ModelRun
    from .report import Row

__all__ = [
    "UNANALYSABLE",
    "UsageError",
    "PARITY_EXTRA",
    "require_parity_extra",
    "Subject",
    "Backend",
    "Outcome",
    "fixture_subjects",
    "plan",
    "run_jobs",
    "validate",
    "check",
    "publish",
    "GROUP_ROWS",
]

PARITY_EXTRA = "TensorFlow and iNNvestigate are needed: install the parity extra: pip install 'signxai[parity]'"

#: methods per task (a few minutes of work at most, so the workers stay busy to the end and the
#: progress bar moves)
GROUP_ROWS = 12

#: longest error text quoted in a one-line message
_QUOTE_CHARS = 300


class UsageError(Exception):
    """A mistake the user can fix (a model, input, method or layer that cannot be compared); the
    command-line tools print its message as one line and exit with 2."""


def require_parity_extra() -> None:
    """Raise :class:`UsageError` unless TensorFlow and iNNvestigate can be imported (the
    determinism environment is set first: TensorFlow reads it at import)."""
    from .determinism import set_environment

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    set_environment()
    try:
        import innvestigate  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise UsageError(f"{PARITY_EXTRA} ({error})") from error


def flat(error: BaseException) -> str:
    """An exception's message on one line, shortened to a few hundred characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def one_line(error: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return f"{type(error).__name__}: {flat(error)}"


#: where the fixtures are, for the message when they cannot be imported
FIXTURES_HELP = (
    "the bundled fixture models live in the fixtures/ folder of the signxai repository and are "
    "not installed with the package: run from a clone of the repository (the folder that holds "
    "fixtures/), or check your own model with signxai-parity --model MODULE:FUNCTION"
)


def fixture_subjects(names: list[str] | None = None) -> list[Subject]:
    """The bundled fixture models (:data:`fixtures.models.FIXTURES`) with their stored inputs.

    Raises
    ------
    UsageError
        When the repository's ``fixtures`` package cannot be imported, or a name is not a fixture.
    """
    try:
        from fixtures.models import FIXTURES, load_inputs, load_model
    except ImportError as error:
        raise UsageError(f"cannot import the fixtures ({error}): {FIXTURES_HELP}") from error
    unknown = [name for name in names or () if name not in FIXTURES]
    if unknown:
        raise UsageError(f"no fixture named {', '.join(map(repr, unknown))}; the fixtures are {', '.join(FIXTURES)}")
    return [Subject(name, load_model(name), load_inputs(name)) for name in (names or list(FIXTURES))]


def plan(
    subjects: list[Subject], dtypes: list[str], names: list[str] | None = None
) -> tuple[list[Task], dict[str, dict[str, str]]]:
    """Split the work into tasks of about :data:`GROUP_ROWS` methods.

    Names that share a map before post-multipliers (``lrp_z``, ``lrp_z_x_input``) share a task,
    so that map is computed once; the first task of each (subject, dtype) also checks the
    reference identities.

    Returns
    -------
    tasks : list of parity.fanout.Task
        Every (subject, dtype, group) in order.
    skipped : dict
        For each subject's label, the names that do not apply to it with the reason.
    """
    from .harness import base_key, model_kind

    tasks, skipped = [], {}
    for index, subject in enumerate(subjects):
        chosen, skipped[subject.label] = cases(subject.label, *model_kind(subject.model), subject.inputs, names)
        by_base: dict[tuple, list[str]] = {}
        for case in chosen:
            by_base.setdefault(base_key(dataclasses.replace(case.spec, post=())), []).append(case.method)
        groups: list[list[str]] = [[]]
        for methods in by_base.values():
            if len(groups[-1]) >= GROUP_ROWS:
                groups.append([])
            groups[-1] += methods
        tasks += [
            Task(index, dtype, tuple(group), position == 0)
            for dtype in dtypes
            for position, group in enumerate(groups)
            if group
        ]
    return tasks, skipped


def run_jobs(
    subjects: list[Subject],
    dtypes: list[str],
    names: list[str] | None = None,
    *,
    backend: Backend = Backend(),
    ours: bool = True,
    cache: Path | None = None,
    progress: bool = False,
) -> dict[tuple[str, str], ModelRun]:
    """Run every subject in every dtype; one merged run per ``(label, dtype)``.

    Parameters
    ----------
    subjects : list of Subject
        The models and inputs (labels must differ).
    dtypes : list of {'float32', 'float64'}
        The dtypes both frameworks compute in.
    names : list of str, optional
        Method names (default: every applicable name of :func:`parity.cases.session_names`).
    backend : parity.fanout.Backend
        Where the tasks run (default: two local processes).
    ours : bool
        Also compute the library's maps (False: iNNvestigate's references only).
    cache : pathlib.Path, optional
        Folder of the reference cache (None: every reference computed live).
    progress : bool
        Draw a bar over the rows on stderr.

    Raises
    ------
    RuntimeError
        When the tasks' runs do not hold every planned row exactly once.
    """
    from .harness import merge_runs

    if len({s.label for s in subjects}) != len(subjects):
        raise ValueError(f"subject labels must differ, got {[s.label for s in subjects]}")
    tasks, skipped = plan(subjects, dtypes, names)
    bar = ProgressBar(sum(len(t.methods) for t in tasks)) if progress else None

    def done(task: Task) -> None:
        if bar is not None:
            bar.step(f"{subjects[task.subject].label} {task.dtype}", len(task.methods))

    runs = execute(subjects, tasks, backend, ours=ours, cache=cache, done=done)
    if bar is not None:
        bar.close()
    merged = {}
    for index, subject in enumerate(subjects):
        for dtype in dtypes:
            mine = [(t, r) for t, r in zip(tasks, runs, strict=True) if (t.subject, t.dtype) == (index, dtype)]
            if not mine:
                continue
            run = merge_runs([r for _, r in mine])
            planned = {m for t, _ in mine for m in t.methods}
            held = set(run.ours) | set(run.references) | set(run.errors) | set(run.unavailable)
            if held != planned:
                raise RuntimeError(
                    f"{subject.label} {dtype}: the tasks returned rows "
                    f"{sorted(held ^ planned)} that differ from the planned ones"
                )
            run.skipped = dict(skipped[subject.label])
            merged[(subject.label, dtype)] = run
    return merged


def validate(subject: Subject, names: list[str] | None) -> None:
    """Raise :class:`UsageError` unless ``subject`` can be compared with ``names``: the model maps
    its inputs to logits of shape (N, classes), every name parses, one applies, and, when an LRP
    name is asked for, the library's LRP accepts every layer."""
    from signxai.torch_signxai.methods.grammar import parse
    from signxai.torch_signxai.methods.lrp import UnsupportedLayerError
    from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

    from .harness import model_kind

    model, x = subject.model, subject.inputs
    try:
        with torch.no_grad():
            output = model(torch.from_numpy(x))
    except Exception as error:
        raise UsageError(
            f"the model fails on inputs of shape {tuple(x.shape)} (batch first): "
            f"{one_line(error)}; give the shape it expects with --input-shape, channels "
            f"first, without the batch axis"
        ) from error
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UsageError(
            f"the model returns {shape} for inputs of shape {tuple(x.shape)}; "
            f"parity needs logits of shape (batch, classes)"
        )
    for name in names or ():
        try:
            parse(name)
        except ValueError as error:
            raise UsageError(f"unknown method {name!r}: {flat(error)}") from error
    chosen, skipped = cases(subject.label, *model_kind(model), x, names)
    if not chosen:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise UsageError(f"no method applies to this model ({reasons}): choose others with --methods")
    if any(case.spec.family == "lrp" for case in chosen):
        try:
            calculate_relevancemaps("lrp_z", x[:1], model)
        except UnsupportedLayerError as error:
            raise UsageError(
                f"unsupported layer for LRP: {flat(error)}; leave the LRP methods out with --methods"
            ) from error


@dataclass
class Outcome:
    """What a parity check found: the judged rows, the float32 runs (for the figure) and the
    run's context (versions, settings, cache use) for the report."""

    rows: list[Row]
    runs: list[ModelRun]
    context: dict[str, Any] = field(default_factory=dict)
    by_job: dict[tuple[str, str], ModelRun] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every row passed."""
        return all(row.passed for row in self.rows)


#: the report's context entry naming the rows iNNvestigate cannot analyse
UNANALYSABLE = "not applicable: iNNvestigate cannot analyse"


def _drop_unanalysable(by_job: dict[tuple[str, str], ModelRun]) -> dict[str, dict[str, str]]:
    """Turn the rows without a reference (in either dtype) into skipped names of their model, in
    every run of that model; return ``{model: {method: why}}``. A row whose own map failed stays."""
    found: dict[str, dict[str, str]] = {}
    for (label, _), run in by_job.items():
        for method, why in run.unavailable.items():
            found.setdefault(label, {}).setdefault(method, why)
    for (label, _), run in by_job.items():
        for method, why in found.get(label, {}).items():
            if method in run.errors:
                continue
            for held in (run.unavailable, run.ours, run.references):
                held.pop(method, None)
            run.skipped[method] = f"iNNvestigate cannot analyse it on this model: {why}"
    return found


def _unanalysable_text(found: dict[str, dict[str, str]]) -> str:
    """``model: method, method (why); ...``, methods with one reason named together."""
    parts = []
    for label, methods in found.items():
        by_reason: dict[str, list[str]] = {}
        for method, why in methods.items():
            by_reason.setdefault(why, []).append(method)
        parts += [f"{label}: {', '.join(group)} ({why})" for why, group in by_reason.items()]
    return "; ".join(parts)


def check(
    subjects: list[Subject],
    names: list[str] | None = None,
    *,
    float64: bool = True,
    tolerance: float | None = None,
    backend: Backend = Backend(),
    cache: Path | None = None,
    progress: bool = False,
    context: dict[str, Any] | None = None,
) -> Outcome:
    """Compare the library's maps of each subject with iNNvestigate's on its Keras twin.

    TensorFlow must be in graph mode (:func:`parity.harness.graph_mode`).

    Parameters
    ----------
    subjects : list of Subject
        The models and their inputs; the models are not modified.
    names : list of str, optional
        Method names (default: every applicable name of :func:`parity.cases.session_names`;
        there, a name iNNvestigate cannot analyse on a model, such as ``deconvnet`` on a twin
        with standalone ``ReLU`` layers, does not apply to it, and the report says why). A
        named method without a reference is a failing row.
    float64 : bool
        Also run float64 and judge rows by the full gate (default); False compares the float32
        maps directly against the floor.
    tolerance : float, optional
        The float32 floor (default :data:`parity.compare.FLOAT32_FLOOR`).
    backend : parity.fanout.Backend
        Where the work runs.
    cache : pathlib.Path, optional
        Folder of the reference cache (None: every reference computed live).
    progress : bool
        Draw a bar over the rows on stderr.
    context : dict, optional
        Entries added to the report's context.

    Raises
    ------
    UsageError
        When a subject cannot be compared (:func:`validate`), or a layer is unsupported by the
        Keras twin, or the twin does not reproduce the model's outputs.
    """
    from .report import rows_from, run_context
    from .twin import TwinMismatchError, UnsupportedLayerError

    started = time.time()
    if any(s.reference is not None for s in subjects) and (backend.ray is not None or backend.workers > 1):
        raise UsageError("a Keras model's own check runs in this process: leave out --workers and --ray")
    for subject in subjects:
        validate(subject, names)
    dtypes = ["float32", "float64"] if float64 else ["float32"]
    try:
        by_job = run_jobs(subjects, dtypes, names, backend=backend, cache=cache, progress=progress)
    except UnsupportedLayerError as error:
        raise UsageError(f"unsupported layer for the Keras twin: {flat(error)}") from error
    except TwinMismatchError as error:
        raise UsageError(
            f"the Keras twin does not reproduce the model's outputs, so no map can be compared: {flat(error)}"
        ) from error
    unanalysable = _drop_unanalysable(by_job) if names is None else {}
    rows, runs = [], []
    for subject in subjects:
        run = by_job[(subject.label, "float32")]
        runs.append(run)
        rows += rows_from(run, by_job.get((subject.label, "float64")), tolerance)
    hits, computed = sum(r.cached for r in by_job.values()), sum(r.computed for r in by_job.values())
    skipped = sorted({name for run in runs for name in run.skipped})
    full = {
        **run_context(started),
        "ran on": backend.describe(),
        "reference cache": f"{cache} ({hits} maps from the cache, {computed} computed)"
        if cache
        else "off (every reference computed live)",
        "skipped (not applicable)": ", ".join(skipped) or "none",
        **({UNANALYSABLE: _unanalysable_text(unanalysable)} if unanalysable else {}),
        **(context or {}),
    }
    return Outcome(rows, runs, full, by_job)


def publish(outcome: Outcome, *, out: Path | None = None, json_path: Path | None = None) -> None:
    """Write parity-report.md and parity-figure.png into ``out`` and the JSON record to ``json_path``.

    The figure shows each model's rows closest to failing (:func:`parity.report.write_figure`);
    with no compared method there is no figure, and stderr says so.
    """
    from .report import write_figure, write_json, write_markdown

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_markdown(out / "parity-report.md", outcome.rows, outcome.context)
        if any(m in run.references for run in outcome.runs for m in run.ours):
            write_figure(out / "parity-figure.png", outcome.runs, outcome.rows)
        else:
            print("no parity-figure.png: no method was compared", file=sys.stderr)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, outcome.rows, outcome.context)
