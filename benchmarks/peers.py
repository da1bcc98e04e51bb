"""LRP-epsilon (epsilon 0.1) against other implementations: iNNvestigate 2.1.2 (the reference),
Captum's LRP and Zennit's stock rules, each in its own process.

Every implementation runs in a fresh child process (one per implementation, model and batch),
so that its peak memory is its own and TensorFlow never shares a process with the others:

* ours: ``calculate_relevancemaps('lrp_epsilon_0_1', x, model)`` (PyTorch); also with the input
  tensor in ``torch.channels_last`` memory format (the library keeps a tensor's memory format,
  and PyTorch's CPU convolutions are faster in that layout), and ("kept_memory", timing only)
  in a process whose glibc keeps freed memory for reuse (``benchlib.KEEP_MEMORY_ENV``): by
  default every new activation-sized tensor is fresh memory the kernel must fault in;
* iNNvestigate: ``LRPEpsilon(model, epsilon=0.1, bias=True, neuron_selection_mode='index')`` on the
  Keras twin (``parity.twin.to_keras``, identical weights), TensorFlow in graph mode
  (``parity.harness.graph_mode``), a TF session with one intra-op and one inter-op thread;
  the analyzer's build time (constructing it and the first ``analyze`` call, which builds the
  graph) is reported apart from the per-call time;
* Captum (if installed): ``captum.attr.LRP`` with ``EpsilonRule(epsilon=0.1)`` on conv and dense
  layers (the small CNN's ``nn.Flatten`` becomes ``torch.flatten`` in ``forward``, same weights:
  Captum rejects the module); its max pooling keeps Captum's default epsilon rule (iNNvestigate
  routes relevance through max pooling by the gradient), so its maps differ;
* Zennit stock rules: ``zennit.rules.Epsilon(0.1)`` on conv and dense layers, ``Pass`` on
  activations, ``zennit.attribution.Gradient`` seeded with the logit.

Each implementation runs twice, in two children: one times ``--runs`` calls after two warm-up
calls (median), one measures a call's peak RSS growth after a warm-up call (with glibc's fixed
mmap threshold, ``benchlib.MEMORY_ENV``, which would slow the timing down). All use one thread. The maps of every
implementation are compared with ours (max absolute difference relative to the largest |value|).

Run: ``.venv/bin/python benchmarks/peers.py`` (``--configs``, ``--runs``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

METHOD = "lrp_epsilon_0_1"
EPSILON = 0.1
IMPLEMENTATIONS = ["ours", "ours channels_last", "ours kept_memory", "innvestigate", "captum", "zennit"]
#: (model, batch)
CONFIGS = {
    "small_cnn-b1": ("small_cnn", 1),
    "small_cnn-b32": ("small_cnn", 32),
    "small_cnn-b64": ("small_cnn", 64),
    "vgg16-b1": ("vgg16", 1),
}


def _timed(fn, runs: int) -> tuple[float, object]:
    fn()
    result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def _functional_flatten(model):
    """The same layers (and weights) with ``torch.flatten`` in ``forward`` instead of an
    ``nn.Flatten`` module, which Captum's LRP rejects (its hooks change the relevance's size)."""
    import torch

    if not any(isinstance(m, torch.nn.Flatten) for m in model.modules()):
        return model
    index = next(i for i, m in enumerate(model) if isinstance(m, torch.nn.Flatten))

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(*list(model)[:index])
            self.classifier = torch.nn.Sequential(*list(model)[index + 1 :])

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return Split().eval()


def child(implementation: str, model_name: str, batch: int, runs: int, out: str, memory: bool) -> None:
    import torch

    torch.set_num_threads(1)
    factory, shape = B.MODELS[model_name]
    model = factory()
    x = B.inputs(batch, shape)
    targets = B.targets_of(model, x)
    build_s = 0.0
    if implementation.startswith("ours"):
        from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

        if implementation.endswith("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)

        def fn():
            return calculate_relevancemaps(METHOD, x, model, neuron_selection=targets.tolist())
    elif implementation == "zennit":
        from zennit.attribution import Gradient
        from zennit.composites import LayerMapComposite
        from zennit.rules import Epsilon, Pass
        from zennit.types import Activation, Convolution

        composite = LayerMapComposite(
            layer_map=[(Activation, Pass()), (Convolution, Epsilon(EPSILON)), (torch.nn.Linear, Epsilon(EPSILON))]
        )
        attributor = Gradient(model, composite)

        def seed(output):
            s = torch.zeros_like(output)
            rows = torch.arange(output.shape[0])
            s[rows, targets] = output.detach()[rows, targets]
            return s

        def fn():
            return attributor(x.clone(), attr_output=seed)[1].numpy()
    elif implementation == "captum":
        from captum.attr import LRP
        from captum.attr._utils.lrp_rules import EpsilonRule

        model = _functional_flatten(model)
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.rule = EpsilonRule(epsilon=EPSILON)
        lrp = LRP(model)

        def fn():
            return lrp.attribute(x.clone(), target=targets).detach().numpy()
    elif implementation == "innvestigate":
        import tensorflow as tf

        from parity.harness import graph_mode

        graph_mode()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))
        from innvestigate.analyzer import LRPEpsilon

        from parity.twin import to_channels_first, to_channels_last, to_keras

        twin = to_keras(model, shape)
        x_cl = to_channels_last(x.numpy())
        index = targets.numpy()
        start = time.perf_counter()
        analyzer = LRPEpsilon(twin.fresh(), epsilon=EPSILON, bias=True, neuron_selection_mode="index")
        analyzer.analyze(x_cl, neuron_selection=index)
        build_s = time.perf_counter() - start

        def fn():
            return to_channels_first(np.asarray(analyzer.analyze(x_cl, neuron_selection=index)))
    else:
        raise SystemExit(f"unknown implementation {implementation}")
    if memory:
        print(json.dumps(B.measure_peak(fn)))
        return
    seconds, result = _timed(fn, runs)
    np.save(out, np.asarray(result))
    print(json.dumps({"median_s": seconds, "build_s": build_s}))


def captum_available() -> bool:
    try:
        import captum  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--implementations", nargs="+", default=IMPLEMENTATIONS, choices=IMPLEMENTATIONS)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        implementation, model_name, batch = args.child
        child(implementation, model_name, int(batch), args.runs, args.out, args.memory)
        return

    import torch

    torch.set_num_threads(1)
    print(B.header("peers") + f"; {METHOD}; every implementation in its own process, 1 thread")
    implementations = [i for i in args.implementations if i != "captum" or captum_available()]
    if "captum" in args.implementations and "captum" not in implementations:
        print("captum is not installed (.venv/bin/pip install captum): its rows are left out")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label in args.configs:
            model_name, batch = CONFIGS[label]
            maps = {}
            for implementation in implementations:
                out = os.path.join(folder, f"{label}-{implementation}.npy")
                runs = args.runs if model_name != "vgg16" else max(3, args.runs // 2)
                command = ["--child", implementation, model_name, str(batch), "--runs", str(runs), "--out", out]
                try:
                    keep = B.KEEP_MEMORY_ENV if implementation.endswith("kept_memory") else None
                    result = B.run_child(Path(__file__), command, timeout=1800, memory=False, extra_env=keep)
                    result.update(B.run_child(Path(__file__), command + ["--memory"], timeout=1800))
                except RuntimeError as error:
                    print(f"{label} {implementation}: failed: {str(error).splitlines()[-1]}")
                    continue
                maps[implementation] = np.load(out)
                rows.append(
                    {
                        "config": label,
                        "implementation": implementation,
                        "ms": result["median_s"] * 1e3,
                        "build": f"{result['build_s']:.2f}" if implementation == "innvestigate" else "",
                        "growth": result["peak_growth_mib"],
                        "peak": result["peak_mib"],
                        "base": result["before_mib"],
                    }
                )
                print(f"{label} {implementation}: {result}", flush=True)
            ours = maps.get("ours")
            for row in rows:
                if row["config"] == label:
                    theirs = maps.get(row["implementation"])
                    ours_ms = next(r["ms"] for r in rows if r["config"] == label and r["implementation"] == "ours")
                    row["ratio"] = row["ms"] / ours_ms
                    if ours is not None and theirs is not None:
                        row["diff"] = f"{np.abs(theirs - ours).max() / np.abs(ours).max():.1e}"
    print()
    print(
        B.table(
            rows,
            [
                ("config", "model / batch"),
                ("implementation", "implementation"),
                ("ms", "median ms per call"),
                ("ratio", "x ours"),
                ("build", "build s"),
                ("growth", "peak growth MiB"),
                ("peak", "peak RSS MiB"),
                ("base", "RSS before call MiB"),
                ("diff", "max diff vs ours"),
            ],
        )
    )


if __name__ == "__main__":
    main()
