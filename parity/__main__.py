"""``python -m parity``: compare every applicable method on every fixture model with iNNvestigate.

Builds the Keras twins, runs iNNvestigate (a fresh twin for every analyzer, deterministic
settings; maps whose inputs did not change come from the reference cache of :mod:`parity.cache`)
and our library in float32 and float64, judges every row by the gate of
:mod:`parity.compare`, checks the stored fixture references against the live ones, writes
``parity-report.md``, ``parity-report.json`` and ``parity-figure.png``, prints a summary (passed
rows per model, every failing row, the report's path, ``parity: P/N passed``) and exits 1 if any
row fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import add_run_options, backend_of, cache_of
from .compare import FORMULA_TOLERANCE, relative_error
from .harness import ModelRun, graph_mode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m parity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", help="fixture names (default: all)")
    parser.add_argument("--methods", nargs="*", help="method names (default: every applicable name)")
    parser.add_argument(
        "--no-float64",
        action="store_true",
        help="float32 only: compare the float32 maps directly (quicker, not the gate)",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the report files")
    add_run_options(parser, workers=2)
    return parser


def _stored_note(run: ModelRun) -> str:
    """How the stored references of ``run``'s fixture and dtype compare with the live ones: float64
    references must agree to the formula tolerance; float32 ones are reported (their rounding may
    differ with the CPU, which the gate allows for)."""
    from fixtures.references import load_references

    stored = load_references(run.label, run.dtype)
    if stored is None:
        return f"{run.dtype}: none stored"
    missing = sorted(set(run.references) - set(stored))
    if missing:
        return f"{run.dtype}: DIFFER: missing {', '.join(missing[:8])}"
    errors = {method: relative_error(stored[method], live) for method, live in run.references.items()}
    worst = max(errors, key=lambda method: errors[method], default=None)
    if worst is None or errors[worst] == 0:
        return f"{run.dtype}: bitwise equal"
    if run.dtype == "float64" and errors[worst] > FORMULA_TOLERANCE:
        bad = [m for m, e in errors.items() if e > FORMULA_TOLERANCE]
        return f"{run.dtype}: DIFFER beyond {FORMULA_TOLERANCE:.0e}: {', '.join(bad[:8])}"
    return f"{run.dtype}: equal to rounding (largest {errors[worst]:.1e}, {worst})"


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m parity``; 0 when every row passes, 1 when one fails, 2 for a usage error."""
    args = _parser().parse_args(argv)
    from .pipeline import UsageError

    try:
        return _run(args)
    except UsageError as error:
        print(f"python -m parity: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    graph_mode()
    from .pipeline import UNANALYSABLE, check, fixture_subjects, publish
    from .report import terminal_summary

    subjects = fixture_subjects(args.models)
    backend = backend_of(args)
    dtypes = 1 if args.no_float64 else 2
    print(f"[parity] {len(subjects)} models x {dtypes} dtypes on {backend.describe()}", flush=True)
    outcome = check(
        subjects, args.methods, float64=not args.no_float64, backend=backend, cache=cache_of(args), progress=True
    )
    stored = {
        label: "; ".join(_stored_note(run) for (name, _), run in outcome.by_job.items() if name == label)
        for label in (s.label for s in subjects)
    }
    outcome.context["stored fixture references vs live"] = " / ".join(f"{k}: {v}" for k, v in stored.items())
    report = args.out / "parity-report.md"
    publish(outcome, out=args.out, json_path=args.out / "parity-report.json")
    for fixture, note in stored.items():
        if "DIFFER" in note:
            print(f"[parity] {fixture}: stored references {note}", flush=True)
    if UNANALYSABLE in outcome.context:
        print(f"[parity] {UNANALYSABLE}: {outcome.context[UNANALYSABLE]}", flush=True)
    print(f"[parity] references: {outcome.context['reference cache']}; {outcome.context['runtime']}", flush=True)
    print(terminal_summary(outcome.rows, report.resolve()), flush=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
