"""Dataset throughput of ``explain_dataset``: in this process, and on a local Ray cluster with 1
and 2 actors.

``lrp_epsilon_0_1`` (TF-compatible API) on the VGG-style CNN (``benchlib.vgg_style(size)``) over
``--images`` standard-normal 3 x size x size inputs (``--size``, default 64) in batches of
``--batch``, each run into a fresh zarr store. The job is long enough (about a minute
in-process) for throughput to dominate Ray Data's start-up of a job's actors (several seconds:
each imports torch and the library and receives the model). In-process runs on one intra-op
thread, as each Ray actor does (one CPU, one thread), so the rows compare like with like. The
local cluster (127.0.0.1, no dashboard) has one CPU more than the actors, for Ray Data's own
tasks; it is started once and warmed by a first job, so a row holds the job's own cost (actor
start-up included), not the cluster's. Each configuration is run ``--repeats`` times taking
turns; the best wall time of each gives images/s and the ratios (targets of issue 16: 2 actors
>= 1.7x one; Ray with 1 actor within 1.15x of in-process). Every store is checked to equal the
in-process maps bitwise.

Run: ``.venv/bin/python benchmarks/dataset.py`` (``--images``, ``--batch``, ``--repeats``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

from signxai.torch_signxai.cluster import connect  # noqa: E402
from signxai.torch_signxai.dataset import explain_dataset  # noqa: E402

METHOD = "lrp_epsilon_0_1"
CONFIGS = {"in-process": {}, "Ray, 1 actor": {"ray": True, "workers": 1}, "Ray, 2 actors": {"ray": True, "workers": 2}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=64, help="input side, a multiple of 8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = B.vgg_style(args.size)
    x = np.random.default_rng(0).standard_normal((args.images, 3, args.size, args.size)).astype(np.float32)
    connect("local", 3)
    folder = Path(tempfile.mkdtemp(prefix="signxai-bench-"))
    try:
        explain_dataset(
            model,
            x[: args.batch * 2],
            METHOD,
            folder / "warm",
            batch_size=args.batch,
            ray=True,
            workers=2,
            progress=False,
        )
        best: dict[str, float] = {}
        reference = None
        for repeat in range(args.repeats):
            for name, options in CONFIGS.items():
                store = folder / f"{name}-{repeat}"
                started = time.perf_counter()
                result = explain_dataset(model, x, METHOD, store, batch_size=args.batch, progress=False, **options)
                seconds = time.perf_counter() - started
                maps = result.maps[:]
                reference = maps if reference is None else reference
                if not np.array_equal(maps, reference):
                    print(f"{name}: maps differ from the in-process run", file=sys.stderr)
                    return 1
                best[name] = min(best.get(name, float("inf")), seconds)
                shutil.rmtree(store)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base, one, two = best["in-process"], best["Ray, 1 actor"], best["Ray, 2 actors"]
    print(
        B.header(
            f"explain_dataset {METHOD}, VGG-style 3x{args.size}x{args.size}, {args.images} images, batch {args.batch}"
        )
    )
    rows = [
        {"config": name, "seconds": seconds, "rate": args.images / seconds, "ratio": base / seconds}
        for name, seconds in best.items()
    ]
    print(
        B.table(
            [
                {**r, "seconds": f"{r['seconds']:.2f}", "rate": f"{r['rate']:.0f}", "ratio": f"{r['ratio']:.2f}x"}
                for r in rows
            ],
            [("config", "run"), ("seconds", "best wall s"), ("rate", "images/s"), ("ratio", "speed vs in-process")],
        )
    )
    print(
        f"2 actors / 1 actor: {one / two:.2f}x (target >= 1.7x: {'met' if one / two >= 1.7 else 'MISSED'}); "
        f"Ray 1 actor / in-process time: {one / base:.2f}x (target <= 1.15x: "
        f"{'met' if one / base <= 1.15 else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
