"""Wall time of ``python -m parity`` with an empty reference cache, then again with the cache it
filled (nothing on the reference side changed), each in a fresh process on a fresh temporary
cache folder; the second run's maps must come from the cache (its report says how many).

Issue 16's target: the re-run under 1 minute here, the first run no slower than without a cache
(``--no-cache``, run third for comparison unless ``--skip-live``).

Run: ``.venv/bin/python benchmarks/parity_cache.py`` (``--models``, ``--skip-live``); needs the
parity extra. It takes as long as two full harness runs (about 25 minutes here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, options: list[str]) -> tuple[float, str]:
    """Seconds of one ``python -m parity`` in a fresh process, and its cache line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "parity", "--out", str(out), *options], cwd=ROOT, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"python -m parity failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    context = json.loads((out / "parity-report.json").read_text())["context"]
    return seconds, context["reference cache"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=[])
    parser.add_argument("--skip-live", action="store_true", help="leave out the --no-cache run")
    args = parser.parse_args()
    models = ["--models", *args.models] if args.models else []
    with tempfile.TemporaryDirectory(prefix="signxai-parity-cache-") as folder:
        folder = Path(folder)
        cache = ["--cache", str(folder / "cache")]
        rows = [
            ("first run (empty cache)", *run(folder / "first", models + cache)),
            ("re-run (cache filled)", *run(folder / "second", models + cache)),
        ]
        if not args.skip_live:
            rows.append(("no cache", *run(folder / "live", models + ["--no-cache"])))
    print(f"python -m parity {' '.join(models)} on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print("| run | wall s | reference cache |\n|---|---|---|")
    for name, seconds, cached in rows:
        print(f"| {name} | {seconds:.0f} | {cached} |")
    print(
        f"re-run / first run: {rows[1][1] / rows[0][1]:.3f}x; re-run under 60 s: "
        f"{'met' if rows[1][1] < 60 else 'MISSED'}"
    )
    if len(rows) == 3:
        print(f"first run / no cache: {rows[0][1] / rows[2][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
