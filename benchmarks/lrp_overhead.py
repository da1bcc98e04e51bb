"""Overhead of the TF-compatible LRP entry point over a direct Zennit call with the same rules.

Builds a VGG-style CNN (input 3x64x64; conv blocks of 32, 64 and 128 channels, each two 3x3 convs
with ReLU and a 2x2 max pool; then Linear(8192, 256), ReLU, Linear(256, 10); seeded random
weights, eval mode, float32) and times, for batch 1 and batch 32, in this one process:

* ours: ``signxai.torch_signxai.methods.wrappers.calculate_relevancemaps('lrp_epsilon_0_1', x, model)``
  (target: each input's largest logit; includes input validation, the model guard, building the
  composite and returning numpy);
* direct: ``zennit.attribution.Gradient(model, composite)`` called with ``attr_output`` = one-hot of
  the largest logit times its value, where ``composite`` is
  ``LRPComposite(plan_for(parse('lrp_epsilon_0_1')), 'innvestigate')`` (the same rules; the
  attributor is built once, as a Zennit user would);
* gradient: a plain input gradient of the largest logit (one forward, one ``torch.autograd.grad``).

Each is run twice to warm up, then 7 times, the three taking turns in every round (so that the
load of a shared machine falls on all alike), on ``benchlib.THREADS`` threads (1 unless
``BENCH_THREADS`` says otherwise); the median wall time is reported, with the ratio
ours/direct (target <= 1.15) and each method's ratio to the plain gradient. Both LRP maps are
checked to agree before timing.

Run: ``.venv/bin/python benchmarks/lrp_overhead.py`` (``--runs``, ``--warmup``, ``--batches``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from zennit.attribution import Gradient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

from signxai.torch_signxai.methods.grammar import parse  # noqa: E402
from signxai.torch_signxai.methods.lrp.composite import LRPComposite  # noqa: E402
from signxai.torch_signxai.methods.lrp.plan import plan_for  # noqa: E402
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps  # noqa: E402

METHOD = "lrp_epsilon_0_1"
TARGET_RATIO = 1.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()

    torch.set_num_threads(B.THREADS)
    model = B.vgg_style(64)
    composite = LRPComposite(plan_for(parse(METHOD)), "innvestigate")
    attributor = Gradient(model, composite, attr_output=B.logit_seed)

    print(B.header("lrp_overhead") + f"; {METHOD}; median of {args.runs} runs after {args.warmup} warm-ups")
    header = (
        f"{'batch':>5} | {'ours ms':>9} | {'direct ms':>9} | {'gradient ms':>11} | "
        f"{'ours/direct':>11} | {'ours/grad':>9} | {'direct/grad':>11}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for batch in args.batches:
        generator = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, 64, 64, generator=generator)

        def ours(x: torch.Tensor = x):
            return calculate_relevancemaps(METHOD, x, model)

        def direct(x: torch.Tensor = x):
            return attributor(x.detach().clone())[1]

        def gradient(x: torch.Tensor = x):
            return B.plain_gradient(model, x)

        mine, theirs = torch.from_numpy(ours()), direct()
        scale = theirs.abs().max()
        if not torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5 * float(scale)):
            raise SystemExit(
                f"batch {batch}: ours and the direct Zennit call disagree "
                f"(max diff {float((mine - theirs).abs().max()):.3g})"
            )

        medians = B.median_seconds({"ours": ours, "direct": direct, "gradient": gradient}, args.warmup, args.runs)
        t_ours, t_direct, t_grad = medians["ours"], medians["direct"], medians["gradient"]
        worst = max(worst, t_ours / t_direct)
        print(
            f"{batch:>5} | {t_ours * 1e3:>9.1f} | {t_direct * 1e3:>9.1f} | {t_grad * 1e3:>11.1f} | "
            f"{t_ours / t_direct:>11.3f} | {t_ours / t_grad:>9.2f} | {t_direct / t_grad:>11.2f}"
        )
    verdict = "meets" if worst <= TARGET_RATIO else "MISSES"
    print(f"worst ours/direct = {worst:.3f}: {verdict} the target <= {TARGET_RATIO}")


if __name__ == "__main__":
    main()
