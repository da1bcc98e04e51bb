"""``python -m parity``: compare every applicable method on every fixture model with iNNvestigate.

Builds the Keras twins, runs iNNvestigate live (a fresh twin for every analyzer), compares with
our library in float32 (the gate) and float64 (to separate formula differences from rounding),
checks that the stored fixture references still match the live ones, writes ``parity-report.md``,
``parity-report.json`` and ``parity-figure.png``, prints the table and ``parity: P/N passed``,
and exits non-zero if any row fails.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .harness import graph_mode, run_all

STORED_TOLERANCE = 1e-5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="fixture names (default: all)")
    parser.add_argument("--methods", nargs="*", help="method names (default: every applicable name)")
    parser.add_argument("--no-float64", action="store_true", help="skip the float64 comparison")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the report files")
    parser.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    return parser


def _stored_mismatches(run) -> list[str]:
    """Methods whose stored fixture reference differs from the live one (or is missing)."""
    from fixtures.references import load_references

    stored = load_references(run.label)
    if stored is None:
        return ["<no stored references>"]
    bad = []
    for method, live in run.references.items():
        if method not in stored:
            bad.append(f"{method} (missing)")
            continue
        scale = float(np.max(np.abs(live))) or 1.0
        error = float(np.max(np.abs(stored[method] - live))) / scale
        if error > STORED_TOLERANCE:
            bad.append(f"{method} ({error:.1e})")
    return bad


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    graph_mode()
    import tensorflow as tf
    import torch

    from fixtures.models import FIXTURES
    from .report import rows_from, summary, write_figure, write_json, write_markdown

    started = time.time()
    names = args.models or list(FIXTURES)
    dtypes = ["float32"] if args.no_float64 else ["float32", "float64"]
    print(f"[parity] {len(names)} models x {len(dtypes)} dtypes in {args.workers} processes", flush=True)
    results = run_all([(f, d) for f in names for d in dtypes], args.methods, args.workers)
    by_job = {(r.label, r.dtype): r for r in results}
    rows, runs, stored_notes = [], [], {}
    for fixture in names:
        run = by_job[(fixture, "float32")]
        runs.append(run)
        rows += rows_from(run, by_job.get((fixture, "float64")))
        mismatches = _stored_mismatches(run)
        stored_notes[fixture] = "match" if not mismatches else f"DIFFER: {', '.join(mismatches[:8])}"
        print(f"[parity] {fixture}: stored references {stored_notes[fixture]}", flush=True)
    context = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": f"torch {torch.__version__}, tensorflow {tf.__version__}, innvestigate "
                    f"{version('innvestigate')}, numpy {np.__version__}, "
                    f"python {platform.python_version()}",
        "stored fixture references vs live": "; ".join(f"{k}: {v}" for k, v in stored_notes.items()),
        "runtime": f"{time.time() - started:.0f} s",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out / "parity-report.md", rows, context)
    write_json(args.out / "parity-report.json", rows, context)
    write_figure(args.out / "parity-figure.png", runs)
    print((args.out / "parity-report.md").read_text())
    line = summary(rows)
    print(line)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
