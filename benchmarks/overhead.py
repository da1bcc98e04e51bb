"""Overhead of the TF-compatible API over the direct Zennit / autograd call, per method family.

For each family (gradient, smoothgrad, integrated_gradients, lrp_epsilon_0_1,
lrpsign_epsilon_0_1, lrp_alpha_1_beta_0, grad_cam), each model (the small CNN, torchvision
VGG16 with random weights) and each batch size, in this one process:

* ours: ``signxai.torch_signxai.methods.wrappers.calculate_relevancemaps(name, x, model, ...)``
  (input checks, the model guard, numpy output included);
* direct: what a user writes with autograd or Zennit for the same numbers: a plain input
  gradient; SmoothGrad / integrated gradients as one batched autograd pass over the same noisy
  copies / path points; for LRP ``zennit.attribution.Gradient(model, composite)`` with
  ``composite = LRPComposite(plan_for(parse(name)), 'innvestigate')`` (our rules, Zennit's
  attributor, built once) seeded with the logit; Grad-CAM with a forward hook on the layer's
  activation and ``torch.autograd.grad``;
* stock Zennit (LRP epsilon and alpha-beta only, for reference): Zennit's own ``Epsilon(0.1)`` /
  ``AlphaBeta(1, 0)`` rules in a ``LayerMapComposite`` with ``Pass`` on activations (its
  stabiliser differs from iNNvestigate's, so its maps are close to ours but not equal).

Every pair is first checked to give the same maps. The calls take turns in every round; the
median is reported. VGG16 at batch 32 on 2 cores is slow, so it runs at 64x64 input (VGG16's
adaptive pooling takes any size >= 32), with fewer rounds and fewer SmoothGrad samples /
integration steps (the ``--samples`` of each configuration; the ratio is what matters).

Run: ``.venv/bin/python benchmarks/overhead.py`` (``--configs``, ``--families``, ``--quick``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite
from zennit.rules import AlphaBeta, Epsilon, Pass
from zennit.types import Activation, Convolution

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

from signxai.torch_signxai.methods.grammar import parse  # noqa: E402
from signxai.torch_signxai.methods.lrp.composite import LRPComposite  # noqa: E402
from signxai.torch_signxai.methods.lrp.plan import plan_for  # noqa: E402
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps  # noqa: E402

FAMILIES = [
    "gradient",
    "smoothgrad",
    "integrated_gradients",
    "lrp_epsilon_0_1",
    "lrpsign_epsilon_0_1",
    "lrp_alpha_1_beta_0",
    "grad_cam",
]

#: (label, model, input shape, batch, warm-ups, rounds, samples/steps, time budget per family in s)
CONFIGS = {
    "small_cnn-b1": ("small_cnn", (3, 32, 32), 1, 3, 15, 50, 20),
    "small_cnn-b32": ("small_cnn", (3, 32, 32), 32, 2, 9, 50, 30),
    "vgg16-b1": ("vgg16", (3, 224, 224), 1, 1, 3, 4, 40),
    "vgg16-b32": ("vgg16", (3, 64, 64), 32, 1, 2, 2, 40),
}

#: the module whose output Grad-CAM takes (the activation after the named conv)
GRADCAM = {"small_cnn": ("3", "4"), "vgg16": ("features.28", "features.29")}

STOCK_RULES = {"lrp_epsilon_0_1": lambda: Epsilon(epsilon=0.1), "lrp_alpha_1_beta_0": lambda: AlphaBeta(1.0, 0.0)}


def direct_smoothgrad(model, x, noise):
    points = (x.unsqueeze(0) + noise).reshape(-1, *x.shape[1:])
    grads = B.plain_gradient_at(model, points, B.targets_of(model, x).repeat(noise.shape[0]))
    return grads.reshape(noise.shape).mean(dim=0)


def direct_integrated_gradients(model, x, steps):
    alphas = torch.arange(steps, dtype=x.dtype) / steps
    points = (alphas.view(-1, *[1] * x.ndim) * x.unsqueeze(0)).reshape(-1, *x.shape[1:])
    grads = B.plain_gradient_at(model, points, B.targets_of(model, x).repeat(steps))
    return grads.reshape(steps, *x.shape).mean(dim=0) * x


def direct_grad_cam(model, x, activation):
    kept = {}
    handle = activation.register_forward_hook(lambda module, inputs, output: kept.__setitem__("a", output))
    try:
        output = model(x.clone())
    finally:
        handle.remove()
    features = kept["a"]
    (grads,) = torch.autograd.grad(output, features, grad_outputs=B.one_hot_seed(output))
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1))
    peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    cam = cam / torch.where(peak > 0, peak, torch.ones_like(peak))
    cam = F.interpolate(cam.unsqueeze(1), size=x.shape[2:], mode="bilinear", align_corners=False)
    return cam.expand_as(x)


def calls(family: str, model_name: str, model, x: torch.Tensor, samples: int) -> dict:
    """The functions to time for one family: ours, direct and (LRP only) stock Zennit."""
    if family == "gradient":
        return {
            "ours": lambda: calculate_relevancemaps("gradient", x, model),
            "direct": lambda: B.plain_gradient(model, x),
        }
    if family == "smoothgrad":
        noise = torch.randn(samples, *x.shape, generator=torch.Generator().manual_seed(0)) * 0.2
        return {
            "ours": lambda: calculate_relevancemaps("smoothgrad", x, model, num_samples=samples, noise=noise),
            "direct": lambda: direct_smoothgrad(model, x, noise),
        }
    if family == "integrated_gradients":
        return {
            "ours": lambda: calculate_relevancemaps("integrated_gradients", x, model, steps=samples),
            "direct": lambda: direct_integrated_gradients(model, x, samples),
        }
    if family == "grad_cam":
        layer, activation = GRADCAM[model_name]
        module = dict(model.named_modules())[activation]
        return {
            "ours": lambda: calculate_relevancemaps("grad_cam", x, model, layer_name=layer),
            "direct": lambda: direct_grad_cam(model, x, module),
        }
    attributor = Gradient(model, LRPComposite(plan_for(parse(family)), "innvestigate"), attr_output=B.logit_seed)
    fns = {
        "ours": lambda: calculate_relevancemaps(family, x, model),
        "direct": lambda: attributor(x.detach().clone())[1],
    }
    if family in STOCK_RULES:
        stock = LayerMapComposite(
            layer_map=[
                (Activation, Pass()),
                (Convolution, STOCK_RULES[family]()),
                (torch.nn.Linear, STOCK_RULES[family]()),
            ]
        )
        stock_attributor = Gradient(model, stock, attr_output=B.logit_seed)
        fns["stock zennit"] = lambda: stock_attributor(x.detach().clone())[1]
    return fns


def _array(value) -> np.ndarray:
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def check(family: str, fns: dict) -> float:
    """Max |ours - direct| relative to max |direct|; raises when above 1e-4."""
    ours, direct = _array(fns["ours"]()), _array(fns["direct"]())
    error = float(np.abs(ours - direct).max() / max(np.abs(direct).max(), 1e-30))
    if error > 1e-4:
        raise SystemExit(f"{family}: ours and the direct call disagree (relative error {error:.3g})")
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--quick", action="store_true", help="one round after one warm-up")
    args = parser.parse_args()

    torch.set_num_threads(B.THREADS)
    print(B.header("overhead"))
    rows = []
    for label in args.configs:
        model_name, shape, batch, warmup, runs, samples, budget = CONFIGS[label]
        if args.quick:
            warmup, runs = 1, 1
        model = B.MODELS[model_name][0]()
        x = B.inputs(batch, shape)
        for family in args.families:
            fns = calls(family, model_name, model, x, samples)
            error = check(family, fns)
            started = time.perf_counter()
            medians = B.median_seconds(fns, warmup, runs, budget_s=budget)
            stock = medians.get("stock zennit")
            rows.append(
                {
                    "model": model_name,
                    "input": "x".join(map(str, shape)),
                    "batch": batch,
                    "family": family,
                    "n": samples if family in ("smoothgrad", "integrated_gradients") else "",
                    "ours": medians["ours"] * 1e3,
                    "direct": medians["direct"] * 1e3,
                    "ratio": medians["ours"] / medians["direct"],
                    "stock": stock * 1e3 if stock else "",
                    "stock_ratio": stock / medians["ours"] if stock else "",
                    "error": f"{error:.1e}",
                }
            )
            row = rows[-1]
            print(
                f"{label:14s} {family:22s} ours {row['ours']:9.1f} ms  direct {row['direct']:9.1f} ms  "
                f"ours/direct {row['ratio']:.3f}  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    print()
    print(
        B.table(
            rows,
            [
                ("model", "model"),
                ("input", "input"),
                ("batch", "batch"),
                ("family", "family"),
                ("n", "samples/steps"),
                ("ours", "ours ms"),
                ("direct", "direct ms"),
                ("ratio", "ours/direct"),
                ("stock", "stock Zennit ms"),
                ("stock_ratio", "stock/ours"),
                ("error", "max rel. diff"),
            ],
        )
    )
    worst = max(row["ratio"] for row in rows)
    print(f"\nworst ours/direct = {worst:.3f}")


if __name__ == "__main__":
    main()
