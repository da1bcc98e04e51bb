"""The speed and memory targets of the library, each a ratio measured in one run.

Speed (in this process, the calls taking turns in every round, medians):

* LRP vs the plain gradient on torchvision VGG16 (random init): ``lrp_epsilon_0_1`` and
  ``lrp_z`` at most 1.3x, ``lrp_alpha_1_beta_0`` at most 2.5x a plain autograd input gradient
  (one forward, one ``torch.autograd.grad``) and our own ``gradient`` (which, like our LRP,
  pools large inputs with the channels-last kernel, see ``methods/pooling.py``), at batch 1 (224x224) and batch 8
  (112x112); a target counts as met when both ratios are within it;
* ``calculate_relevancemaps`` on 64 inputs at least 3x faster than a loop of 64
  ``calculate_relevancemap`` calls (small CNN; lrp_epsilon_0_1 and gradient);
* ``smoothgrad`` with 50 samples at least 3x faster than 50 single gradient passes on the same
  noisy copies (small CNN, one input).

Memory (each method in a fresh child process, VGG16 at batch 8, 224x224): peak RSS growth of one
call over the RSS just before it (after a warm-up call; glibc set to hand large blocks back at
once, see ``benchlib.MEMORY_ENV``), and the RSS left behind after the call returned. Target: LRP
(epsilon, z) at most 1.5x the plain gradient's peak growth. Nothing may stay referenced after a
call: weak references to every layer's inputs and outputs must be dead.

Run: ``.venv/bin/python benchmarks/targets.py`` (``--skip-memory``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import weakref
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

from signxai.torch_signxai.methods.wrappers import calculate_relevancemap, calculate_relevancemaps  # noqa: E402

LRP_TARGETS = {"lrp_epsilon_0_1": 1.3, "lrp_z": 1.3, "lrp_alpha_1_beta_0": 2.5}
#: reported without a target
LRP_OTHERS = ["lrpsign_epsilon_0_1", "lrp_epsilon_0_25_std_x"]
MEMORY_METHODS = [
    "gradient (autograd)",
    "gradient",
    "lrp_epsilon_0_1",
    "lrp_z",
    "lrpsign_epsilon_0_1",
    "lrp_alpha_1_beta_0",
]
MEMORY_TARGET = {"lrp_epsilon_0_1": 1.5, "lrp_z": 1.5}
VGG_CONFIGS = [(1, 224), (8, 112)]


def memory_child(method: str, batch: int) -> None:
    torch.set_num_threads(B.THREADS)
    model = B.vgg16()
    x = B.inputs(batch, (3, 224, 224))
    if method == "gradient (autograd)":

        def fn():
            return B.plain_gradient(model, x)
    else:

        def fn():
            return calculate_relevancemaps(method, x, model)

    print(json.dumps(B.measure_peak(fn)))


def lrp_vs_gradient(rounds: int) -> list[dict]:
    rows = []
    model = B.vgg16()
    for batch, size in VGG_CONFIGS:
        x = B.inputs(batch, (3, size, size))
        fns = {
            "gradient (autograd)": partial(B.plain_gradient, model, x),
            "gradient": partial(calculate_relevancemaps, "gradient", x, model),
        }
        for name in [*LRP_TARGETS, *LRP_OTHERS]:
            fns[name] = partial(calculate_relevancemaps, name, x, model)
        medians = B.median_seconds(fns, warmup=1, runs=rounds)
        base = medians["gradient (autograd)"]
        rows += B.ratio_rows(f"VGG16 b{batch} {size}px", medians, "gradient (autograd)", "gradient", LRP_TARGETS)
        print(
            f"VGG16 batch {batch} at {size}px: " + ", ".join(f"{n} {s / base:.2f}x" for n, s in medians.items()),
            flush=True,
        )
    return rows


def _loop(method: str, singles: list, model: torch.nn.Module) -> list:
    """One call per input: what a caller without the batched API does."""
    return [calculate_relevancemap(method, s, model) for s in singles]


def batched_vs_loop(rounds: int) -> list[dict]:
    from fixtures.models import load_model

    rows = []
    model = B.small_cnn()
    # the small CNN, and (for comparison, no target) the 1x8x8 digits fixture, whose compute is
    # tiny next to a call's fixed cost
    cases = [
        ("small CNN", model, B.inputs(64, (3, 32, 32)), ">= 3"),
        ("digits_cnn fixture", load_model("digits_cnn").eval(), B.inputs(64, (1, 8, 8)), ""),
    ]
    for label, net, X, target in cases:
        singles = [X[i].numpy() for i in range(64)]
        for name in ["lrp_epsilon_0_1", "gradient"]:
            medians = B.median_seconds(
                {
                    "batched": partial(calculate_relevancemaps, name, X, net),
                    "loop": partial(_loop, name, singles, net),
                },
                warmup=2,
                runs=rounds,
            )
            ratio = medians["loop"] / medians["batched"]
            rows.append(
                {
                    "what": f"{label}, {name}: 64 inputs, batched vs loop",
                    "fast_ms": medians["batched"] * 1e3,
                    "slow_ms": medians["loop"] * 1e3,
                    "speedup": ratio,
                    "target": target,
                    "verdict": ("met" if ratio >= 3 else "MISSED") if target else "",
                }
            )
    x = B.inputs(1, (3, 32, 32))
    noise = torch.randn(50, *x.shape, generator=torch.Generator().manual_seed(1)) * 0.2
    target = int(B.targets_of(model, x)[0])
    noisy = [(x + noise[k])[0].numpy() for k in range(50)]
    medians = B.median_seconds(
        {
            "smoothgrad": lambda: calculate_relevancemap(
                "smoothgrad", x, model, num_samples=50, noise=noise, neuron_selection=target
            ),
            "singles": lambda: [calculate_relevancemap("gradient", p, model, neuron_selection=target) for p in noisy],
        },
        warmup=2,
        runs=rounds,
    )
    ratio = medians["singles"] / medians["smoothgrad"]
    rows.append(
        {
            "what": "small CNN, smoothgrad (50 samples) vs 50 single gradient passes",
            "fast_ms": medians["smoothgrad"] * 1e3,
            "slow_ms": medians["singles"] * 1e3,
            "speedup": ratio,
            "target": ">= 3",
            "verdict": "met" if ratio >= 3 else "MISSED",
        }
    )
    # the same with a channels-last input tensor (opt-in: faster kernels, larger float32 rounding)
    X_cl = cases[0][2].contiguous(memory_format=torch.channels_last)
    medians = B.median_seconds(
        {
            "batched": lambda: calculate_relevancemaps("gradient", X_cl, model),
            "loop": lambda: [calculate_relevancemap("gradient", X_cl[i : i + 1], model) for i in range(64)],
        },
        warmup=2,
        runs=rounds,
    )
    rows.append(
        {
            "what": "small CNN, gradient, channels-last input tensor: 64 inputs, batched vs loop",
            "fast_ms": medians["batched"] * 1e3,
            "slow_ms": medians["loop"] * 1e3,
            "speedup": medians["loop"] / medians["batched"],
            "target": "",
            "verdict": "",
        }
    )
    x_cl = x.contiguous(memory_format=torch.channels_last)
    noisy_cl = [(x_cl + noise[k]).contiguous(memory_format=torch.channels_last) for k in range(50)]
    medians = B.median_seconds(
        {
            "smoothgrad": lambda: calculate_relevancemap(
                "smoothgrad", x_cl, model, num_samples=50, noise=noise, neuron_selection=target
            ),
            "singles": lambda: [
                calculate_relevancemap("gradient", p, model, neuron_selection=target) for p in noisy_cl
            ],
        },
        warmup=2,
        runs=rounds,
    )
    rows.append(
        {
            "what": "small CNN, smoothgrad (50 samples) vs 50 single passes, channels-last input tensor",
            "fast_ms": medians["smoothgrad"] * 1e3,
            "slow_ms": medians["singles"] * 1e3,
            "speedup": medians["singles"] / medians["smoothgrad"],
            "target": "",
            "verdict": "",
        }
    )
    # the ceiling of batching on this CPU: direct autograd, one batched pass vs 64 single passes
    X = cases[0][2]
    medians = B.median_seconds(
        {
            "batched": lambda: B.plain_gradient(model, X),
            "loop": lambda: [B.plain_gradient(model, X[i : i + 1]) for i in range(64)],
        },
        warmup=2,
        runs=rounds,
    )
    rows.append(
        {
            "what": "small CNN, plain autograd gradient (no API): 64 inputs, batched vs loop",
            "fast_ms": medians["batched"] * 1e3,
            "slow_ms": medians["loop"] * 1e3,
            "speedup": medians["loop"] / medians["batched"],
            "target": "",
            "verdict": "",
        }
    )
    for row in rows:
        print(f"{row['what']}: {row['speedup']:.1f}x", flush=True)
    return rows


def held_after_call() -> list[dict]:
    """Weak references to every leaf's inputs and outputs during one call; count those alive after."""
    model = B.vgg16()
    x = B.inputs(1, (3, 224, 224))
    refs: list = []

    def keep(module, inputs, output):
        refs.extend(weakref.ref(t) for t in (*inputs, output) if isinstance(t, torch.Tensor))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    rows = []
    for name in ["gradient", *LRP_TARGETS, *LRP_OTHERS]:
        handles = [leaf.register_forward_hook(keep) for leaf in leaves]
        refs.clear()
        calculate_relevancemaps(name, x, model)
        for handle in handles:
            handle.remove()
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
        rows.append(
            {
                "method": name,
                "tracked": len(refs),
                "alive": alive,
                "hooks": hooks,
                "verdict": "met" if alive == 0 and hooks == 0 else "MISSED",
            }
        )
    return rows


def memory(batch: int) -> list[dict]:
    rows = []
    results = {}
    for method in MEMORY_METHODS:
        results[method] = B.run_child(Path(__file__), ["--memory-child", method, "--batch", str(batch)])
        print(f"memory {method}: {results[method]}", flush=True)
    base = results["gradient (autograd)"]["peak_growth_mib"]
    for method, result in results.items():
        target = MEMORY_TARGET.get(method)
        ratio = result["peak_growth_mib"] / base
        rows.append(
            {
                "method": method,
                "growth": result["peak_growth_mib"],
                "ratio": ratio,
                "peak": result["peak_mib"],
                "left": result["left_mib"],
                "target": f"<= {target}" if target else "",
                "verdict": ("met" if ratio <= target else "MISSED") if target else "",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.batch)
        return

    torch.set_num_threads(B.THREADS)
    print(B.header("targets"))
    speed = lrp_vs_gradient(args.rounds)
    batching = batched_vs_loop(max(args.rounds, 7))
    held = held_after_call()
    print("\n### LRP vs plain gradient (VGG16)\n")
    print(
        B.table(
            speed,
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
    print("\n### Batching\n")
    print(
        B.table(
            batching,
            [
                ("what", "what"),
                ("fast_ms", "batched ms"),
                ("slow_ms", "one by one ms"),
                ("speedup", "speed-up"),
                ("target", "target"),
                ("verdict", ""),
            ],
        )
    )
    print("\n### Nothing held after a call (VGG16, batch 1)\n")
    print(
        B.table(
            held,
            [
                ("method", "method"),
                ("tracked", "activations tracked"),
                ("alive", "alive after the call"),
                ("hooks", "hooks left"),
                ("verdict", ""),
            ],
        )
    )
    if not args.skip_memory:
        rows = memory(args.memory_batch)
        print(f"\n### Peak memory (VGG16, batch {args.memory_batch}, 224x224, one process each)\n")
        print(
            B.table(
                rows,
                [
                    ("method", "method"),
                    ("growth", "peak growth MiB"),
                    ("ratio", "x gradient"),
                    ("peak", "peak RSS MiB"),
                    ("left", "left after return MiB"),
                    ("target", "target"),
                    ("verdict", ""),
                ],
            )
        )


if __name__ == "__main__":
    main()
