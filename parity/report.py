"""The parity report: rows, the markdown table, the JSON record and the heatmap figure."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .compare import FLAG_ABOVE, LOOSER_TOLERANCES, compare, tolerance_for
from .harness import ModelRun

__all__ = ["Row", "rows_from", "write_markdown", "write_json", "write_figure", "summary"]

#: a float64 error below this means both sides compute the same formula
FLOAT64_FORMULA_LEVEL = 1e-10
#: methods shown side by side in the figure
FIGURE_METHODS = ("gradient", "lrp_epsilon_0_1", "lrpsign_z", "lrp_alpha_1_beta_0",
                  "lrp_sequential_composite_a", "grad_cam")


@dataclass(frozen=True)
class Row:
    """One compared (model, method) pair."""

    model: str
    method: str
    rel_error: float
    max_abs_error: float
    correlation: float
    tolerance: float
    passed: bool
    rel_error_f64: float | None = None
    note: str = ""

    @property
    def flagged(self) -> bool:
        return self.passed and self.rel_error > FLAG_ABOVE


def _failed(model: str, method: str, note: str, tolerance: float) -> Row:
    nan = float("nan")
    return Row(model, method, nan, nan, nan, tolerance, False, None, note)


def rows_from(run: ModelRun, run64: ModelRun | None = None, tolerance: float | None = None) -> list[Row]:
    """Rows of one fixture: float32 metrics gate each row; float64 errors are reported beside.
    ``tolerance``, when given, replaces every method's :func:`~.compare.tolerance_for`."""
    rows = []
    dropped = run.dropped_input_rules()
    for method in sorted(set(run.ours) | set(run.references) | set(run.errors) | set(run.unavailable)):
        limit = tolerance_for(method) if tolerance is None else tolerance
        if method in run.errors:
            rows.append(_failed(run.label, method, run.errors[method], limit))
            continue
        if method in run.unavailable:
            rows.append(_failed(run.label, method, f"no reference: {run.unavailable[method]}", limit))
            continue
        metrics = compare(run.ours[method], run.references[method])
        f64 = None
        if run64 is not None and method in run64.references and method in run64.ours:
            f64 = compare(run64.ours[method], run64.references[method]).rel_error
        note = LOOSER_TOLERANCES.get(method, (None, ""))[1]
        passed = metrics.passed(limit)
        if passed and metrics.rel_error > FLAG_ABOVE and f64 is not None and f64 < FLOAT64_FORMULA_LEVEL:
            note = note or f"float32 rounding: the formulas agree to {f64:.0e} in float64"
        if dropped and _has_input_rule(method):
            passed, note = False, f"reference identities failed {dropped}: input-layer rule dropped"
        rows.append(Row(run.label, method, metrics.rel_error, metrics.max_abs_error,
                        metrics.correlation, limit, passed, f64, note))
    return rows


def _has_input_rule(method: str) -> bool:
    return method.startswith(("lrpz_", "lrpsign_", "zblrp_", "w2lrp_", "flatlrp_"))


def summary(rows: list[Row]) -> str:
    """The summary line ``parity: P/N passed``."""
    return f"parity: {sum(r.passed for r in rows)}/{len(rows)} passed"


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return "nan" if math.isnan(value) else f"{value:.2e}"


def write_markdown(path: Path, rows: list[Row], context: dict) -> None:
    """Write ``parity-report.md``: context, the summary, then one table row per comparison."""
    flagged = [r for r in rows if r.flagged]
    failed = [r for r in rows if not r.passed]
    lines = ["# Parity report: signxai (PyTorch) vs iNNvestigate (TensorFlow)", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", f"**{summary(rows)}** (gate: relative error <= tolerance in float32; "
              f"{len(flagged)} passing rows above {FLAG_ABOVE:.0e} flagged; {len(failed)} failing)", ""]
    lines += ["| model | method | rel. error (f32) | rel. error (f64) | max abs error | correlation | "
              "tolerance | pass | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "yes" if r.passed else "**NO**"
        mark += " (flag)" if r.flagged else ""
        lines.append(f"| {r.model} | {r.method} | {_fmt(r.rel_error)} | {_fmt(r.rel_error_f64)} | "
                     f"{_fmt(r.max_abs_error)} | {_fmt(r.correlation)} | {r.tolerance:.0e} | {mark} | "
                     f"{r.note.replace('|', '/')} |")
    path.write_text("\n".join(lines) + "\n")


def write_json(path: Path, rows: list[Row], context: dict) -> None:
    """Write every row's metrics and the versions used, for CI archives."""
    def clean(value):
        return None if isinstance(value, float) and math.isnan(value) else value
    records = [{k: clean(v) for k, v in asdict(r).items()} | {"flagged": r.flagged} for r in rows]
    path.write_text(json.dumps({"context": context, "summary": summary(rows), "rows": records}, indent=1))


def write_figure(path: Path, runs: list[ModelRun]) -> None:
    """Side-by-side heatmaps (ours, iNNvestigate, difference) of the first input for a handful of
    methods, on the first 2-D fixture of ``runs``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = next((r for r in runs if r.inputs.ndim == 4), runs[0])
    compared = [m for m in sorted(run.ours) if m in run.references]
    methods = [m for m in FIGURE_METHODS if m in compared] or compared[:len(FIGURE_METHODS)]
    if not methods:
        raise ValueError("no compared method to draw")
    fig, axes = plt.subplots(len(methods), 3, figsize=(7.5, 2.4 * len(methods)), squeeze=False)
    for row, method in zip(axes, methods):
        ours, ref = run.ours[method][0], run.references[method][0]
        ours, ref = (a.sum(axis=0) if a.ndim == 3 else a for a in (ours, ref))
        if ours.ndim == 1:
            ours, ref = ours[None], ref[None]
        limit = float(np.max(np.abs(ref))) or 1.0
        for ax, image, title in zip(row, (ours, ref, ours - ref),
                                    ("signxai (PyTorch)", "iNNvestigate (TF)", "difference")):
            shown = ax.imshow(image, cmap="bwr", vmin=-limit, vmax=limit, aspect="auto")
            ax.set_title(f"{method}\n{title}" if title.startswith("signxai") else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(shown, ax=row[2], fraction=0.046)
    fig.suptitle(f"{run.label}, input 0 ({run.dtype}); difference on the reference's colour scale",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
