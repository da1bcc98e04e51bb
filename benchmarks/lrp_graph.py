"""LRP on graph models (residual adds, concatenations) against the plain gradient.

torchvision's ResNet-50 and DenseNet-121 (random init, ``weights=None``, eval mode, float32,
224x224 standard-normal inputs) at batch 1 and batch 8. In one process, the calls taking turns
in every round (median after a warm-up), each explaining the same targets (every input's largest
logit, computed once):

* ``gradient (autograd)``: one forward and one ``torch.autograd.grad`` (the plain gradient);
* ``gradient``: ``calculate_relevancemaps('gradient', ...)``, our own gradient;
* ``lrp_epsilon_0_1``, ``lrp_z``, ``lrp_alpha_1_beta_0`` through ``calculate_relevancemaps``.

Targets, as for VGG16 in ``targets.py``: epsilon and Z at most 1.3x, alpha-beta at most 2.5x the
plain gradient and our gradient (a target counts as met when both ratios are within it). Memory:
each method in a fresh child process at batch 8 (``benchlib.measure_peak``: peak RSS growth of one
call over the RSS before it), LRP epsilon and Z at most 1.5x the plain gradient's growth.

Run: ``.venv/bin/python benchmarks/lrp_graph.py`` (``--rounds``, ``--models``, ``--batches``,
``--skip-memory``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps  # noqa: E402

MODELS = ("resnet50", "densenet121")
SHAPE = (3, 224, 224)
SPEED_TARGETS = {"lrp_epsilon_0_1": 1.3, "lrp_z": 1.3, "lrp_alpha_1_beta_0": 2.5}
MEMORY_TARGETS = {"lrp_epsilon_0_1": 1.5, "lrp_z": 1.5}
PLAIN = "gradient (autograd)"


def explain(method: str, model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor):
    """One call of ``method`` on ``x`` for ``targets`` (the plain gradient for :data:`PLAIN`)."""
    if method == PLAIN:
        return B.plain_gradient_at(model, x, targets)
    return calculate_relevancemaps(method, x, model, neuron_selection=targets.numpy())


def speed(name: str, batch: int, rounds: int) -> list[dict]:
    model = B.torchvision_model(name)
    x = B.inputs(batch, SHAPE)
    targets = B.targets_of(model, x)
    methods = [PLAIN, "gradient", *SPEED_TARGETS]
    medians = B.median_seconds({m: (lambda m=m: explain(m, model, x, targets)) for m in methods}, warmup=1, runs=rounds)
    plain = medians[PLAIN]
    print(f"{name} batch {batch}: " + ", ".join(f"{m} {s / plain:.2f}x" for m, s in medians.items()), flush=True)
    return B.ratio_rows(f"{name} b{batch}", medians, PLAIN, "gradient", SPEED_TARGETS)


def memory_child(name: str, method: str, batch: int) -> None:
    torch.set_num_threads(B.THREADS)
    model = B.torchvision_model(name)
    x = B.inputs(batch, SHAPE)
    targets = B.targets_of(model, x)
    print(json.dumps(B.measure_peak(lambda: explain(method, model, x, targets))))


def memory(name: str, batch: int) -> list[dict]:
    results = {}
    for method in [PLAIN, "gradient", *SPEED_TARGETS]:
        results[method] = B.run_child(Path(__file__), ["--memory-child", name, method, "--batch", str(batch)])
        print(f"memory {name} {method}: {results[method]}", flush=True)
    base = results[PLAIN]["peak_growth_mib"]
    rows = []
    for method, result in results.items():
        target = MEMORY_TARGETS.get(method)
        ratio = result["peak_growth_mib"] / base
        rows.append(
            {
                "config": f"{name} b{batch}",
                "method": method,
                "growth": result["peak_growth_mib"],
                "ratio": ratio,
                "left": result["left_mib"],
                "target": f"<= {target}" if target else "",
                "verdict": ("met" if ratio <= target else "MISSED") if target else "",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.batch)
        return

    torch.set_num_threads(B.THREADS)
    print(B.header("lrp_graph") + f"; median of {args.rounds} rounds after a warm-up")
    rows = [row for name in args.models for batch in args.batches for row in speed(name, batch, args.rounds)]
    print("\n### LRP vs plain gradient (graph models, 224x224)\n")
    print(
        B.table(
            rows,
            [
                ("config", "config"),
                ("method", "method"),
                ("ms", "median ms"),
                ("ratio", "x plain autograd gradient"),
                ("ratio_ours", "x our gradient"),
                ("target", "target"),
                ("verdict", ""),
            ],
        )
    )
    if not args.skip_memory:
        mem = [row for name in args.models for row in memory(name, args.memory_batch)]
        print(f"\n### Peak memory (batch {args.memory_batch}, 224x224, one process each)\n")
        print(
            B.table(
                mem,
                [
                    ("config", "config"),
                    ("method", "method"),
                    ("growth", "peak growth MiB"),
                    ("ratio", "x plain gradient"),
                    ("left", "left after return MiB"),
                    ("target", "target"),
                    ("verdict", ""),
                ],
            )
        )


if __name__ == "__main__":
    main()
