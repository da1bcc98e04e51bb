"""The parity report: rows judged by the gate, the run's context, the markdown report, the JSON
record, the terminal summary and the heatmap figure."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from .compare import CRITERION, FLAG_ABOVE, FLOAT32_FLOOR, compare, judge
from .harness import ModelRun

__all__ = [
    "Row",
    "rows_from",
    "run_context",
    "write_markdown",
    "write_json",
    "write_figure",
    "summary",
    "model_summaries",
    "terminal_summary",
    "format_table",
]

#: rows per model drawn in the figure (the ones closest to failing)
FIGURE_ROWS = 2


@dataclass(frozen=True)
class Row:
    """One compared (model, method) pair.

    Attributes
    ----------
    rel_error : float
        Our float32 map against iNNvestigate's float32 map (the direct comparison).
    max_abs_error, correlation : float
        Of the same two maps.
    tolerance : float
        The largest float32 error that passes: against iNNvestigate's float64 map when both
        dtypes ran (:func:`parity.compare.judge`), else against its float32 map.
    passed : bool
    rel_error_f64 : float or None
        Ours against iNNvestigate, both float64 (None: float64 not run).
    ours_f32_error, reference_f32_error : float or None
        Our and iNNvestigate's float32 maps against iNNvestigate's float64 map.
    note : str
        Why the row fails, or what is worth knowing about a passing one.
    """

    model: str
    method: str
    rel_error: float
    max_abs_error: float
    correlation: float
    tolerance: float
    passed: bool
    rel_error_f64: float | None = None
    ours_f32_error: float | None = None
    reference_f32_error: float | None = None
    note: str = ""

    @property
    def flagged(self) -> bool:
        """Passed, but with a relative error above ``FLAG_ABOVE``: worth a look."""
        return self.passed and self.rel_error > FLAG_ABOVE


def _failed(model: str, method: str, note: str, tolerance: float) -> Row:
    nan = float("nan")
    return Row(model, method, nan, nan, nan, tolerance, False, note=note)


def rows_from(run: ModelRun, run64: ModelRun | None = None, floor: float | None = None) -> list[Row]:
    """Rows of one model, judged by :func:`parity.compare.judge` when ``run64`` (the same model in
    float64) is given, else by the direct float32 error against ``floor``.

    Parameters
    ----------
    run, run64 : ModelRun
        The float32 run and, optionally, the float64 run of the same model and inputs.
    floor : float, optional
        The float32 floor (default :data:`parity.compare.FLOAT32_FLOOR`).
    """
    floor = FLOAT32_FLOOR if floor is None else floor
    rows = []
    dropped = run.dropped_input_rules()
    for method in sorted(set(run.ours) | set(run.references) | set(run.errors) | set(run.unavailable)):
        if method in run.errors:
            rows.append(_failed(run.label, method, run.errors[method], floor))
            continue
        if method in run.unavailable:
            rows.append(_failed(run.label, method, f"no reference: {run.unavailable[method]}", floor))
            continue
        metrics = compare(run.ours[method], run.references[method])
        row = Row(
            run.label,
            method,
            metrics.rel_error,
            metrics.max_abs_error,
            metrics.correlation,
            floor,
            bool(metrics.rel_error <= floor),
        )
        if run64 is not None:
            row = _judged(row, run, run64, floor)
        if dropped and _has_input_rule(method):
            row = Row(
                **{
                    **asdict(row),
                    "passed": False,
                    "note": f"reference identities failed {dropped}: input-layer rule dropped",
                }
            )
        rows.append(row)
    return rows


def _judged(row: Row, run: ModelRun, run64: ModelRun, floor: float) -> Row:
    """``row`` judged by the two-dtype gate."""
    method, fields = row.method, asdict(row)
    if method in run64.errors or method not in run64.references or method not in run64.ours:
        why = run64.errors.get(method) or run64.unavailable.get(method, "no float64 map")
        return Row(**{**fields, "passed": False, "note": f"float64: {why}"})
    if not np.array_equal(run.targets, run64.targets):
        return Row(**{**fields, "passed": False, "note": "the float32 and float64 models predict different targets"})
    verdict = judge(run.ours[method], run.references[method], run64.ours[method], run64.references[method], floor)
    note = verdict.reason
    if verdict.passed and row.rel_error > FLAG_ABOVE:
        note = (
            f"float32 rounding: ours {verdict.ours_float32_error:.1e}, iNNvestigate "
            f"{verdict.reference_float32_error:.1e} from the float64 map"
        )
    return Row(
        **{
            **fields,
            "tolerance": verdict.allowed,
            "passed": verdict.passed,
            "rel_error_f64": verdict.float64_error,
            "ours_f32_error": verdict.ours_float32_error,
            "reference_f32_error": verdict.reference_float32_error,
            "note": note,
        }
    )


def _has_input_rule(method: str) -> bool:
    return method.startswith(("lrpz_", "lrpsign_", "zblrp_", "w2lrp_", "flatlrp_"))


def summary(rows: list[Row]) -> str:
    """The summary line ``parity: P/N passed``."""
    return f"parity: {sum(r.passed for r in rows)}/{len(rows)} passed"


def model_summaries(rows: list[Row]) -> list[tuple[str, int, int]]:
    """``(model, passed, total)`` for each model, in the order of ``rows``."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        count = counts.setdefault(row.model, [0, 0])
        count[0] += row.passed
        count[1] += 1
    return [(model, passed, total) for model, (passed, total) in counts.items()]


def terminal_summary(rows: list[Row], report: Path | None = None) -> str:
    """What a run prints when it ends: passed/total per model, every failing row, the report's path
    and the summary line last."""
    lines = [f"  {model}: {passed}/{total} passed" for model, passed, total in model_summaries(rows)]
    failed = [r for r in rows if not r.passed]
    if failed:
        lines.append(f"failing rows ({len(failed)}):")
        lines += [f"  {r.model} {r.method}: {r.note}" for r in failed]
    flagged = sum(r.flagged for r in rows)
    if flagged:
        lines.append(
            f"{flagged} passing rows differ by more than {FLAG_ABOVE:.0e} in float32 (float32 rounding; see the report)"
        )
    if report is not None:
        lines.append(f"report: {report}")
    lines.append(summary(rows))
    return "\n".join(lines)


def _version(distribution: str) -> str:
    """The installed version of ``distribution``, or 'not installed'."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """The git commit of the checkout this package runs from ('+ changes' when it has any), or
    'not a git checkout'."""
    top = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(top), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(top), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{head} + changes" if dirty else head


def run_context(started: float) -> dict[str, str]:
    """Date, versions, commit, platform, CPU, determinism settings and runtime for a report."""
    import tensorflow as tf
    import torch

    from .determinism import describe

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "signxai": f"{_version('signxai')} (commit {_commit()})",
        "versions": f"torch {torch.__version__}, zennit {_version('zennit')}, tensorflow {tf.__version__}, "
        f"keras {_version('keras')}, innvestigate {_version('innvestigate')}, numpy "
        f"{np.__version__}, python {platform.python_version()}",
        "platform": platform.platform(),
        **describe(),
        "runtime": f"{time.time() - started:.0f} s",
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return "nan" if math.isnan(value) else f"{value:.2e}"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in lines
    ]


def write_markdown(path: Path, rows: list[Row], context: dict) -> None:
    """Write the report: the summary per model, the gate, the failures, the rows that differ in
    float32 with both frameworks' float32 errors, the run's context, then every row."""
    failed = [r for r in rows if not r.passed]
    flagged = sorted((r for r in rows if r.flagged), key=lambda r: -r.rel_error)
    lines = [
        "# Parity report: signxai (PyTorch) vs iNNvestigate (TensorFlow)",
        "",
        f"**{summary(rows)}** ({len(failed)} failing, {len(flagged)} passing rows above {FLAG_ABOVE:.0e} in float32)",
        "",
    ]
    lines += _table(
        ["model", "passed", "rows"],
        [[model, str(passed), str(total)] for model, passed, total in model_summaries(rows)],
    )
    lines += ["", f"Gate, the same for every row: {CRITERION}.", "", f"## Failures ({len(failed)})", ""]
    lines += (
        _table(
            ["model", "method", "why", "f64 error", "ours f32 vs f64", "iNNvestigate f32 vs f64", "allowed"],
            [
                [
                    r.model,
                    r.method,
                    r.note,
                    _fmt(r.rel_error_f64),
                    _fmt(r.ours_f32_error),
                    _fmt(r.reference_f32_error),
                    _fmt(r.tolerance),
                ]
                for r in failed
            ],
        )
        if failed
        else ["none"]
    )
    lines += [
        "",
        f"## Passing rows whose float32 maps differ by more than {FLAG_ABOVE:.0e} ({len(flagged)})",
        "",
        "Each framework's float32 map against iNNvestigate's float64 map: when both are of one "
        "size and the float64 maps agree, the difference is float32 rounding.",
        "",
    ]
    lines += (
        _table(
            [
                "model",
                "method",
                "ours f32 vs iNNvestigate f32",
                "ours f32 vs f64",
                "iNNvestigate f32 vs f64",
                "allowed",
                "f64 error",
            ],
            [
                [
                    r.model,
                    r.method,
                    _fmt(r.rel_error),
                    _fmt(r.ours_f32_error),
                    _fmt(r.reference_f32_error),
                    _fmt(r.tolerance),
                    _fmt(r.rel_error_f64),
                ]
                for r in flagged
            ],
        )
        if flagged
        else ["none"]
    )
    lines += ["", "## Run", ""] + [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", "## Every row", ""]
    lines += _table(
        [
            "model",
            "method",
            "f32 error",
            "f64 error",
            "ours f32 vs f64",
            "iNNvestigate f32 vs f64",
            "allowed",
            "max abs error",
            "correlation",
            "pass",
            "note",
        ],
        [
            [
                r.model,
                r.method,
                _fmt(r.rel_error),
                _fmt(r.rel_error_f64),
                _fmt(r.ours_f32_error),
                _fmt(r.reference_f32_error),
                _fmt(r.tolerance),
                _fmt(r.max_abs_error),
                _fmt(r.correlation),
                ("yes" if r.passed else "**NO**") + (" (flag)" if r.flagged else ""),
                r.note,
            ]
            for r in rows
        ],
    )
    path.write_text("\n".join(lines) + "\n")


def write_json(path: Path, rows: list[Row], context: dict) -> None:
    """Write every row's metrics and the run's context, for CI archives."""

    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    records = [{k: clean(v) for k, v in asdict(r).items()} | {"flagged": r.flagged} for r in rows]
    path.write_text(json.dumps({"context": context, "summary": summary(rows), "rows": records}, indent=1))


def _image(a: np.ndarray) -> np.ndarray:
    """One input's map as a 2-D image: channels summed, a 1-D map as one row."""
    a = a.sum(axis=0) if a.ndim == 3 else a
    return a[None] if a.ndim == 1 else a


def write_figure(path: Path, runs: list[ModelRun], rows: list[Row]) -> None:
    """Draw, for each model, its :data:`FIGURE_ROWS` compared rows whose float32 maps differ most:
    our map, iNNvestigate's and their difference on the difference's own colour scale, each for
    the input where the two differ most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label = {run.label: run for run in runs}
    shown = []
    for model, _, _ in model_summaries(rows):
        run = by_label.get(model)
        if run is None:
            continue
        compared = [r for r in rows if r.model == model and r.method in run.ours and r.method in run.references]
        shown += [(run, r) for r in sorted(compared, key=lambda r: -r.rel_error)[:FIGURE_ROWS]]
    if not shown:
        raise ValueError("no compared method to draw")
    fig, axes = plt.subplots(len(shown), 3, figsize=(9, 2.4 * len(shown)), squeeze=False)
    for line, (run, row) in zip(axes, shown, strict=True):
        ours, ref = run.ours[row.method], run.references[row.method]
        worst = int(np.argmax(np.abs(ours - ref).reshape(len(ours), -1).max(axis=1)))
        ours, ref = _image(ours[worst]), _image(ref[worst])
        diff = ours - ref
        limit = float(np.max(np.abs(ref))) or 1.0
        spread = float(np.max(np.abs(diff))) or 1.0
        titles = (
            f"{run.label}\n{row.method}\nsignxai, input {worst}",
            "\n\niNNvestigate",
            f"\ndifference: max {np.max(np.abs(diff)):.1e}\nrel. {row.rel_error:.1e}"
            + (f", allowed {row.tolerance:.0e}" if row.ours_f32_error is not None else ""),
        )
        for ax, image, title, scale in zip(line, (ours, ref, diff), titles, (limit, limit, spread), strict=True):
            drawn = ax.imshow(image, cmap="bwr", vmin=-scale, vmax=scale, aspect="auto")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(drawn, ax=ax, fraction=0.046)
    fig.suptitle("Per model, the rows whose float32 maps differ most; each difference on its own scale", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(records: list[dict]) -> str:
    """The per-method table of row records: the float32 error the gate judges (against
    iNNvestigate's float64 map when float64 ran, else against its float32 map), the allowed
    error, the float64 error and whether the row passes (with the reason when it does not).

    Parameters
    ----------
    records : list of dict
        Rows as dicts with the fields of :class:`parity.report.Row` (``parity.report.write_json``'s
        ``rows``, where NaN is None).

    Returns
    -------
    str
        An aligned plain-text table, one line per row after a header.
    """

    def shown(value: float | None) -> str:
        return "-" if value is None else "nan" if math.isnan(value) else f"{value:.2e}"

    width = max([len("method"), *(len(r["method"]) for r in records)])
    lines = [f"{'method':<{width}}  {'f32 error':>9}  {'allowed':>8}  {'f64 error':>9}  pass"]
    for r in records:
        gated = r["ours_f32_error"] if r["ours_f32_error"] is not None else r["rel_error"]
        note = f"  {r['note']}" if r["note"] and not r["passed"] else ""
        lines.append(
            f"{r['method']:<{width}}  {shown(gated):>9}  {r['tolerance']:>8.1e}  "
            f"{shown(r['rel_error_f64']):>9}  {'yes' if r['passed'] else 'NO'}{note}"
        )
    return "\n".join(lines)
