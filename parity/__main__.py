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
import time
from pathlib import Path

from .cache import CACHE_ENV, default_folder
from .compare import FORMULA_TOLERANCE, relative_error
from .harness import ModelRun, graph_mode, run_all


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="fixture names (default: all)")
    parser.add_argument("--methods", nargs="*", help="method names (default: every applicable name)")
    parser.add_argument("--no-float64", action="store_true",
                        help="float32 only: compare the float32 maps directly (quicker, not the gate)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the report files")
    parser.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    parser.add_argument("--cache", type=Path, default=default_folder(), metavar="DIR",
                        help=f"folder of the reference cache (default: ${CACHE_ENV}, else "
                             f"~/.cache/signxai/parity; see parity/cache.py)")
    parser.add_argument("--no-cache", action="store_true", help="compute every reference live")
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
    worst = max(errors, key=errors.get, default=None)
    if worst is None or errors[worst] == 0:
        return f"{run.dtype}: bitwise equal"
    if run.dtype == "float64" and errors[worst] > FORMULA_TOLERANCE:
        bad = [m for m, e in errors.items() if e > FORMULA_TOLERANCE]
        return f"{run.dtype}: DIFFER beyond {FORMULA_TOLERANCE:.0e}: {', '.join(bad[:8])}"
    return f"{run.dtype}: equal to rounding (largest {errors[worst]:.1e}, {worst})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    graph_mode()
    from fixtures.models import FIXTURES

    from .report import (rows_from, run_context, terminal_summary, write_figure, write_json,
                         write_markdown)

    started = time.time()
    names = args.models or list(FIXTURES)
    dtypes = ["float32"] if args.no_float64 else ["float32", "float64"]
    print(f"[parity] {len(names)} models x {len(dtypes)} dtypes in {args.workers} processes", flush=True)
    cache = None if args.no_cache else args.cache
    results = run_all([(f, d) for f in names for d in dtypes], args.methods, args.workers, progress=True,
                      cache=cache)
    by_job = {(r.label, r.dtype): r for r in results}
    rows, runs, stored = [], [], {}
    for fixture in names:
        run = by_job[(fixture, "float32")]
        runs.append(run)
        rows += rows_from(run, by_job.get((fixture, "float64")))
        stored[fixture] = "; ".join(_stored_note(by_job[(fixture, d)]) for d in dtypes)
    hits, computed = sum(r.cached for r in results), sum(r.computed for r in results)
    context = {**run_context(started),
               "reference cache": f"{cache} ({hits} maps from the cache, {computed} computed)" if cache
               else "off (every reference computed live)",
               "stored fixture references vs live": " / ".join(f"{k}: {v}" for k, v in stored.items())}
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "parity-report.md"
    write_markdown(report, rows, context)
    write_json(args.out / "parity-report.json", rows, context)
    write_figure(args.out / "parity-figure.png", runs, rows)
    for fixture, note in stored.items():
        if "DIFFER" in note:
            print(f"[parity] {fixture}: stored references {note}", flush=True)
    print(f"[parity] references: {hits} from the cache, {computed} computed; {context['runtime']}", flush=True)
    print(terminal_summary(rows, report.resolve()), flush=True)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
