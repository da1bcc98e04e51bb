"""Per-call cost at batch 1 on the small CNN, and throughput of 4 threads sharing one model.

In this one process, on ``benchlib.THREADS`` intra-op threads (1 unless ``BENCH_THREADS`` says
otherwise):

* per call, batch 1: ``calculate_relevancemap('gradient', x, model)`` and
  ``calculate_relevancemap('lrp_epsilon_0_1', x, model)`` (the TF-compatible API: input checks,
  the private view of the model, numpy output included) against a plain autograd input gradient
  of the largest logit (one forward, one ``torch.autograd.grad``), taking turns in every round;
  the median is reported with the ratios (issue 13's targets: gradient <= 1.15x, LRP-epsilon
  <= 1.5x the plain gradient);
* throughput: ``--calls`` calls alternating gradient and LRP-epsilon on one shared model, made by
  one thread, then split over 4 threads started together; calls per second and the ratio
  4 threads / 1 thread (each of the best of ``--repeats``). Every map of the threaded run is
  checked to equal the one-thread map of the same call.

Run: ``.venv/bin/python benchmarks/threads.py`` (``--rounds``, ``--calls``, ``--repeats``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

from signxai.torch_signxai.methods.wrappers import calculate_relevancemap  # noqa: E402

METHODS = ("gradient", "lrp_epsilon_0_1")
TARGETS = {"gradient": 1.15, "lrp_epsilon_0_1": 1.5}
THREADS = 4


def per_call(model, x: torch.Tensor, rounds: int) -> dict:
    single = x[0]
    fns = {"plain gradient": lambda: B.plain_gradient(model, x)}
    fns.update({method: (lambda m=method: calculate_relevancemap(m, single, model)) for method in METHODS})
    return B.median_seconds(fns, warmup=20, runs=rounds)


def run_calls(model, xs: list, jobs: list, threads: int) -> tuple[float, dict]:
    """Wall time of ``jobs`` (index, method) split over ``threads`` threads, and their maps."""
    maps: dict = {}
    barrier = threading.Barrier(threads + 1)

    def work(part):
        barrier.wait()
        for index, method in part:
            maps[index, method] = calculate_relevancemap(method, xs[index], model)

    workers = [threading.Thread(target=work, args=(jobs[k::threads],)) for k in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started, maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(B.THREADS)
    build, shape = B.MODELS["small_cnn"]
    model = build()
    print(B.header("threads") + f"; small CNN, batch 1, median of {args.rounds} rounds")
    medians = per_call(model, B.inputs(1, shape), args.rounds)
    plain = medians["plain gradient"]
    rows = [
        {
            "call": name,
            "ms": seconds * 1e3,
            "ratio": seconds / plain,
            "target": f"<= {TARGETS[name]}x" if name in TARGETS else "",
            "met": ("yes" if seconds / plain <= TARGETS[name] else "**no**") if name in TARGETS else "",
        }
        for name, seconds in medians.items()
    ]
    print(
        B.table(
            rows, [("call", "call"), ("ms", "ms"), ("ratio", "x plain gradient"), ("target", "target"), ("met", "met")]
        )
    )

    xs = [x.numpy() for x in B.inputs(args.calls // len(METHODS), shape)]
    jobs = [(index, method) for index in range(len(xs)) for method in METHODS]
    best: dict = {}
    reference = None
    for _ in range(args.repeats):
        for threads in (1, THREADS):
            seconds, maps = run_calls(model, xs, jobs, threads)
            best[threads] = min(best.get(threads, float("inf")), seconds)
            if threads == 1:
                reference = reference or maps
            elif any(not np.array_equal(maps[key], reference[key]) for key in reference):
                raise SystemExit("a threaded map differs from the one-thread map of the same call")
    rows = [
        {"threads": threads, "calls": len(jobs), "s": best[threads], "rate": len(jobs) / best[threads]}
        for threads in (1, THREADS)
    ]
    print()
    print(B.table(rows, [("threads", "threads"), ("calls", "calls"), ("s", "best s"), ("rate", "calls/s")]))
    print(
        f"\n{THREADS} threads / 1 thread throughput: {best[1] / best[THREADS]:.2f}x "
        f"(every threaded map equal to the one-thread map)"
    )


if __name__ == "__main__":
    main()
