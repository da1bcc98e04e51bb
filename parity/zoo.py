"""``python -m parity.zoo``: torchvision's architectures against iNNvestigate, on Keras twins.

For every model of :data:`ZOO` (random initialisation, ``weights=None``: nothing is downloaded;
BatchNorm running statistics calibrated on random inputs, see :func:`calibrate_batchnorm`) and
for float32 and float64, each in a fresh process:

* the Keras twin's forward error against the PyTorch model (:meth:`parity.twin.Twin.verify`,
  relative to the largest |logit|; it must be within :data:`TWIN_TOLERANCE`);
* our map and iNNvestigate's map of every method of :data:`METHODS` (every LRP rule, every
  input-layer prefix, Grad-CAM on the last conv, the gradient family) on a batch of
  :data:`BATCH` seeded standard-normal inputs, through :func:`parity.harness.run_model`;
* (float32 only) whether the library's PyTorch-native API explains the model with
  ``lrp_epsilon_0_1``.

Each method row is judged by the parity gate (:func:`parity.compare.judge`): float64 maps within 1e-10 of each
other, and our float32 map no less accurate against iNNvestigate's float64 map than allowed by
iNNvestigate's own float32 error. A model the twin cannot build, or a method iNNvestigate
cannot analyse, is a row saying so with the error; nothing is skipped silently. A small vision
transformer checks that the native API refuses attention models with the library's named
error. Writes a markdown report (default ``docs/zoo.md``) with the run time, prints it, and
exits non-zero when a row fails.

Heavy: 14 models x 2 dtypes x 22 methods, a fresh twin and iNNvestigate graph per method. On a
shared 2-core machine the jobs of resnet18 at 65x65 took 394 s (float32) and 516 s (float64);
before the harness kept the constants of iNNvestigate's TF ops (:func:`parity.harness.graph_mode`)
its float32 job took 1234 s. The alexnet float64 job once reached 24 GB and was killed for
memory there. Run one model while developing (``python -m parity.zoo --models resnet18``).
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import platform
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .compare import FLOAT32_FLOOR, FORMULA_TOLERANCE, ROUNDING_FACTOR, Verdict, judge, relative_error

if TYPE_CHECKING:
    from .twin import Twin

__all__ = [
    "ZooModel",
    "ZOO",
    "METHODS",
    "build",
    "calibrate_batchnorm",
    "zoo_inputs",
    "run_job",
    "method_rows",
    "twin_allowed",
    "own_rounding",
    "main",
]

#: largest relative forward error of a Keras twin (relative to the largest |logit|); a float32
#: twin may also differ by ROUNDING_FACTOR x the PyTorch model's own float32 error (its float32
#: logits against its float64 copy's) where that is larger: deep float32 models (googlenet at
#: 65x65: 1.5e-5) round by more than 1e-5 on their own (see :func:`twin_allowed`)
TWIN_TOLERANCE = 1e-5
#: inputs per model (one batched call per method, so the rows are batched rows)
BATCH = 2
#: seed of the weights, of the calibration inputs and of the explained inputs
SEED = 0
#: the native-API method every zoo model must be explained with
NATIVE_METHOD = "lrp_epsilon_0_1"

#: every LRP rule (on the hidden layers), every input-layer prefix (on epsilon 0.1), Grad-CAM on
#: the last conv, and the gradient family (smoothgrad with the grammar's 50 samples:
#: :func:`parity.harness.run_model` takes no sample count)
METHODS = (
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "deconvnet",
    "smoothgrad",
    "grad_cam",
    "lrp_z",
    "lrp_epsilon_0_1",
    "lrp_epsilon_0_25_std_x",
    "lrp_alpha_1_beta_0",
    "lrp_alpha_2_beta_1",
    "lrp_gamma",
    "lrp_flat",
    "lrp_w_square",
    "lrp_z_plus",
    "lrp_sequential_composite_a",
    "lrp_sequential_composite_b",
    "lrpsign_epsilon_0_1",
    "lrpz_epsilon_0_1",
    "zblrp_epsilon_0_1_VGG16ILSVRC",
    "w2lrp_epsilon_0_1",
    "flatlrp_epsilon_0_1",
)


#: a small odd side: a stride-2 first conv with padding (kernel - 1) / 2 then pads exactly as TF's
#: 'same' does, so the twin needs no ZeroPadding in front of it (which would hide the input layer
#: from iNNvestigate: it would drop every input-layer rule)
_ODD_SIDE = (
    "small odd side: the stride-2 first conv pads as TF's 'same' does, so the input layer "
    "stays visible to iNNvestigate; global average pooling at the end"
)
_FIXED_POOL = (
    "its AdaptiveAvgPool2d feeds a fixed-size classifier; the twin needs that pooling to be "
    "an identity or a uniform average, which first happens near 224x224"
)


@dataclass(frozen=True)
class ZooModel:
    """One torchvision architecture of the zoo.

    Attributes
    ----------
    name : str
        ``torchvision.models.get_model`` name.
    size : int
        Side of the square 3-channel input.
    kwargs : dict
        Extra constructor arguments (besides ``weights=None``).
    why_size : str
        Why the input is this size.
    """

    name: str
    size: int
    kwargs: dict = field(default_factory=dict)
    why_size: str = _ODD_SIDE

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model's input shape without the batch axis (channels first)."""
        return (3, self.size, self.size)


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("vgg16", 224, why_size=_FIXED_POOL),
        ZooModel(
            "alexnet",
            223,
            why_size=_FIXED_POOL + "; 223 = 4 x 55 + 3 makes its first conv "
            "(11x11, stride 4, padding 2) pad as TF's 'same' does",
        ),
        ZooModel("resnet18", 65),
        ZooModel("resnet50", 65),
        ZooModel("resnext50_32x4d", 65),
        ZooModel("densenet121", 65),
        ZooModel("squeezenet1_1", 65),
        ZooModel("googlenet", 65, {"aux_logits": False, "init_weights": True}),
        ZooModel("mobilenet_v2", 65),
        ZooModel("mobilenet_v3_small", 65),
        ZooModel("efficientnet_b0", 65),
        ZooModel("mnasnet0_5", 65),
        ZooModel("regnet_y_400mf", 65),
        ZooModel("shufflenet_v2_x0_5", 65),
    )
}


def calibrate_batchnorm(
    model: nn.Module, input_shape: tuple[int, ...], passes: int = 4, batch: int = 8, seed: int = SEED
) -> nn.Module:
    """Give every BatchNorm layer running statistics of random inputs, then return to eval mode.

    The statistics are reset and accumulated as a plain average over ``passes`` forward passes
    (``momentum=None``) of seeded standard-normal batches in train mode, without gradients; each
    layer's momentum is restored afterwards. Freshly initialised BatchNorm layers hold mean 0 and
    variance 1, which makes every BN an identity and hides what the rules do with its affine map.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place.
    input_shape : tuple of int
        One input's channels-first shape.
    passes, batch : int
        Number and size of the calibration batches.
    seed : int
        Seed of the calibration inputs.

    Returns
    -------
    torch.nn.Module
        ``model``, in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(passes if norms else 0):
            model(torch.randn(batch, *input_shape, generator=generator))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()


def build(entry: ZooModel, seed: int = SEED) -> nn.Module:
    """The zoo model with seeded random weights and calibrated BatchNorm, in eval mode, float32."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(entry.name, weights=None, **entry.kwargs)
    return calibrate_batchnorm(model, entry.input_shape, seed=seed)


def zoo_inputs(input_shape: tuple[int, ...], batch: int = BATCH, seed: int = SEED) -> np.ndarray:
    """Seeded standard-normal inputs, float32, shape ``(batch, *input_shape)``."""
    return np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)


def vision_transformer() -> nn.Module:
    """A small torchvision VisionTransformer (32x32 inputs, patches of 8, one encoder layer)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(SEED)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    ).eval()


# ---------------------------------------------------------------------------------------------
# one (model, dtype) job, in its own process


@dataclass
class JobResult:
    """What one (model, dtype) job computed.

    ``run`` is the harness's :class:`~parity.harness.ModelRun`, or None with ``error`` saying why
    the model could not be compared at all (the twin cannot be built, ...). ``twin_error`` is
    the twin's forward error, or None with ``twin_failure``; ``input_layer_hidden`` the twin's
    reason why iNNvestigate cannot see the input layer ('' when it can).
    """

    model: str
    dtype: str
    seconds: float
    run: Any = None
    error: str = ""
    twin_error: float | None = None
    twin_failure: str = ""
    input_layer_hidden: str = ""
    native: str = ""
    #: (float32) the PyTorch model's float32 logits' error against its float64 copy's
    own_logits_error: float | None = None
    #: (float32) the same for the plain autograd input gradient of each input's largest logit:
    #: a rounding event of PyTorch's own float32 forward (a max-pool near-tie, a ReLU that flips)
    #: shows here, apart from any method
    own_gradient_error: float | None = None


def twin_allowed(result: JobResult) -> float:
    """The twin forward error allowed: :data:`TWIN_TOLERANCE`, or in float32 ROUNDING_FACTOR x
    the PyTorch model's own float32 error where that is larger."""
    own = result.own_logits_error if result.dtype == "float32" and result.own_logits_error is not None else 0.0
    return max(TWIN_TOLERANCE, ROUNDING_FACTOR * own)


def own_rounding(model: nn.Module, x: np.ndarray) -> tuple[float, float]:
    """PyTorch's own float32 error on ``model`` at ``x``: ``max |a32 - a64| / max |a64|`` of the
    logits and of the plain autograd input gradient of each input's largest float32 logit,
    against a float64 copy of the model (the model itself is not changed)."""

    def logits_and_gradient(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None) -> tuple:
        inputs = inputs.clone().requires_grad_(True)
        logits = net(inputs)
        chosen = logits.argmax(1) if targets is None else targets
        (gradient,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), inputs)
        return logits.detach().numpy(), gradient.numpy(), chosen

    y32, g32, targets = logits_and_gradient(model, torch.from_numpy(x), None)
    y64, g64, _ = logits_and_gradient(copy.deepcopy(model).to(torch.float64), torch.from_numpy(x).double(), targets)
    return relative_error(y32, y64), relative_error(g32, g64)


def _same_twin(twin: Twin, dtype: str) -> Twin:
    """``twin`` for ``run_model(reference=...)``: the zoo's own checked twin, in its dtype."""
    return twin


def _describe(error: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line; of a long message (TensorFlow's carry a traceback of the
    graph's construction between them) its first and last lines."""
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} [...] {lines[-1]}"
    return f"{type(error).__name__}: {text[:limit]}"


def native_check(model: nn.Module, x: np.ndarray) -> str:
    """'yes' when the native API explains ``model`` with :data:`NATIVE_METHOD` (a finite map of the
    input's shape), else what went wrong."""
    from signxai.torch_signxai import calculate_relevancemaps

    try:
        relevance = calculate_relevancemaps(model, x, NATIVE_METHOD)
    except Exception as error:
        return _describe(error)
    if relevance.shape != x.shape or not np.isfinite(relevance).all():
        return f"map of shape {relevance.shape}, finite: {bool(np.isfinite(relevance).all())}"
    return "yes"


def run_job(name: str, dtype: str, methods: tuple[str, ...] = METHODS) -> JobResult:
    """Build ``name`` and run the twin check and the harness on it in ``dtype`` (TensorFlow must
    be in graph mode: :func:`parity.harness.graph_mode`)."""
    import tensorflow as tf

    from .harness import run_model
    from .twin import to_keras

    started = time.perf_counter()
    entry = ZOO[name]
    model = build(entry)
    x = zoo_inputs(entry.input_shape)
    result = JobResult(name, dtype, 0.0)
    if dtype == "float32":
        result.native = native_check(model, x)
        result.own_logits_error, result.own_gradient_error = own_rounding(model, x)
    twin = None
    try:
        converted = copy.deepcopy(model).to(torch.float64) if dtype == "float64" else model
        twin = to_keras(converted, entry.input_shape, dtype=dtype, check=False)
        result.twin_error = twin.verify(rtol=math.inf)  # judged by twin_allowed in the report
        result.input_layer_hidden = twin.hidden_reason or ""
    except Exception as error:
        result.twin_failure = _describe(error)
    tf.keras.backend.clear_session()  # the references build fresh Keras models (twin.fresh)
    if twin is not None and not result.twin_failure:
        # the harness runs on this twin rather than converting again with its fixed 1e-5 forward
        # check, which a float32 twin may exceed by rounding alone (see twin_allowed)
        try:
            result.run = run_model(
                name,
                model,
                x,
                entry.input_shape,
                dtype,
                list(methods),
                reference=partial(_same_twin, twin),
            )
        except Exception as error:  # a model the harness cannot run is a row saying why
            result.error = _describe(error)
            traceback.print_exc()
    result.seconds = time.perf_counter() - started
    return result


def _worker_init() -> None:
    from .harness import graph_mode

    torch.set_num_threads(1)
    graph_mode()


def run_jobs(jobs: list[tuple[str, str]], methods: tuple[str, ...]) -> list[JobResult]:
    """Run ``(model, dtype)`` jobs one after the other, each in a fresh process (a TensorFlow
    graph of a large model is not worth keeping, and a process killed for its memory takes only
    its own job with it), in the order of ``jobs``."""
    context = multiprocessing.get_context("spawn")
    results = []
    for name, dtype in jobs:
        started = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=context, initializer=_worker_init) as pool:
            try:
                result = pool.submit(run_job, name, dtype, methods).result()
            except Exception as error:  # the worker died (out of memory, a crash in TensorFlow)
                result = JobResult(
                    name,
                    dtype,
                    time.perf_counter() - started,
                    error=f"the {dtype} job's process failed: {_describe(error)}",
                )
        results.append(result)
        print(f"[zoo] {name} {dtype}: {result.seconds:.0f} s", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# rows and the report


@dataclass(frozen=True)
class MethodRow:
    """One (model, method) comparison. ``status`` is 'pass', 'FAIL' (the gate, or our library
    raised) or 'n/a' (no reference: the twin cannot be built, the harness marks the reference
    unavailable, or iNNvestigate raised; ``note`` says why)."""

    model: str
    method: str
    status: str
    verdict: Verdict | None = None
    note: str = ""


def method_rows(result32: JobResult, result64: JobResult, methods: tuple[str, ...]) -> list[MethodRow]:
    """The method rows of one model from its float32 and float64 jobs: one row naming the
    failure when the model could not be compared at all."""
    name = result32.model
    whole = result32.twin_failure or result64.twin_failure or result32.error or result64.error
    if whole:
        status = "n/a" if (result32.twin_failure or result64.twin_failure) else "FAIL"
        return [MethodRow(name, f"all {len(methods)} methods", status, note=whole)]
    rows = []
    run32, run64 = result32.run, result64.run
    for method in methods:
        # the harness prefixes our failures with 'signxai:'; its other errors are the reference's
        errors = [f"{run.dtype}: {run.errors[method]}" for run in (run32, run64) if method in run.errors]
        problem = next((text for text in errors if ": signxai: " in text), None)
        missing = next(
            (
                f"{run.dtype}: {text}"
                for run in (run32, run64)
                for text in (run.unavailable.get(method) or run.skipped.get(method),)
                if text
            ),
            None,
        ) or next((f"{text} (iNNvestigate cannot analyse it)" for text in errors), None)
        if problem:
            rows.append(MethodRow(name, method, "FAIL", note=problem))
        elif missing:
            rows.append(MethodRow(name, method, "n/a", note=missing))
        else:
            verdict = judge(run32.ours[method], run32.references[method], run64.ours[method], run64.references[method])
            rows.append(MethodRow(name, method, "pass" if verdict.passed else "FAIL", verdict, verdict.reason))
    return rows


def _twin_cell(result: JobResult) -> tuple[str, bool]:
    if result.twin_failure:
        return f"cannot build: {result.twin_failure}", False
    if result.twin_error is None:
        return "not checked", False
    allowed = twin_allowed(result)
    ok = result.twin_error <= allowed
    shown = f"{result.twin_error:.1e}" + ("" if allowed == TWIN_TOLERANCE else f" (allowed {allowed:.1e})")
    return shown + ("" if ok else f" **> {allowed:.1e}**"), ok


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.1e}"


def report(
    results: dict[tuple[str, str], JobResult], methods: tuple[str, ...], vit: str, context: dict[str, str]
) -> tuple[str, bool]:
    """The markdown report and whether every row passed."""
    model_lines = [
        "| model | input | twin forward f32 | twin forward f64 | PyTorch's own f32 gradient | native API "
        f"`{NATIVE_METHOD}` | methods pass / FAIL / n/a | time s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    detail = [
        "| model | method | status | f64 error | ours f32 vs f64 ref | iNNvestigate f32 vs f64 | allowed f32 | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    all_ok = True
    counts = {"pass": 0, "FAIL": 0, "n/a": 0}
    for name in dict.fromkeys(model for model, _ in results):
        r32, r64 = results[(name, "float32")], results[(name, "float64")]
        rows = method_rows(r32, r64, methods)
        tally = {status: sum(row.status == status for row in rows) for status in counts}
        for status in counts:
            counts[status] += tally[status]
        t32, ok32 = _twin_cell(r32)
        t64, ok64 = _twin_cell(r64)
        twin_built = not (r32.twin_failure or r64.twin_failure)
        native_ok = r32.native == "yes"
        all_ok &= native_ok and tally["FAIL"] == 0 and (ok32 and ok64 or not twin_built)
        entry = ZOO[name]
        model_lines.append(
            f"| {name} | {entry.size}x{entry.size} | {_cell(t32)} | {_cell(t64)} | "
            f"{'—' if r32.own_gradient_error is None else _fmt(r32.own_gradient_error)} | "
            f"{'yes' if native_ok else '**NO**: ' + _cell(r32.native)} | "
            f"{tally['pass']} / {tally['FAIL']} / {tally['n/a']} | {r32.seconds + r64.seconds:.0f} |"
        )
        for row in rows:
            v = row.verdict
            numbers = (
                [_fmt(v.float64_error), _fmt(v.ours_float32_error), _fmt(v.reference_float32_error), _fmt(v.allowed)]
                if v
                else ["—"] * 4
            )
            status = row.status if row.status != "FAIL" else "**FAIL**"
            detail.append(f"| {name} | {row.method} | {status} | {' | '.join(numbers)} | {_cell(row.note)} |")
    sizes: dict[str, list[str]] = {}
    for name in dict.fromkeys(model for model, _ in results):
        sizes.setdefault(ZOO[name].why_size, []).append(f"{name} {ZOO[name].size}")
    model_lines += ["", "Input sizes: " + "; ".join(f"{', '.join(names)}: {why}" for why, names in sizes.items())]
    vit_ok = vit.startswith("UnsupportedLayerError")
    all_ok &= vit_ok
    lines = ["# Model zoo: torchvision architectures against iNNvestigate", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += [
        f"- rows: {counts['pass']} pass, {counts['FAIL']} FAIL, {counts['n/a']} n/a (no reference: "
        "the twin or iNNvestigate cannot provide one; the note says why)",
        f"- attention models: a VisionTransformer under the native API "
        f"{'raises' if vit_ok else '**does not raise**'} the named error: {_cell(vit)}",
        f"- gate: float64 maps within {FORMULA_TOLERANCE:.0e}; our float32 map's error against "
        f"iNNvestigate's float64 map at most max({FLOAT32_FLOOR:.0e}, {ROUNDING_FACTOR:g} x "
        "iNNvestigate's own float32 error); errors are max |a - b| / max |b|; twin forward "
        f"within {TWIN_TOLERANCE:.0e} of the largest |logit| (in float32, or within "
        f"{ROUNDING_FACTOR:g} x the PyTorch model's own float32 error where that is larger)",
        "- PyTorch's own f32 gradient: the plain autograd input gradient of the float32 model "
        "against its float64 copy's, no library involved. Where it is far above the float32 floor, "
        "PyTorch's float32 forward itself took another branch than float64 (a max-pool near-tie, a "
        "ReLU that flips), and every float32 map of that model moves with it; iNNvestigate's "
        "float32 forward may not",
        "",
        "## Models",
        "",
        *model_lines,
        "",
        "## Rows",
        "",
        *detail,
    ]
    return "\n".join(lines) + "\n", all_ok


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m parity.zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", choices=list(ZOO), help="zoo models (default: all)")
    parser.add_argument("--methods", nargs="*", help=f"method names (default: {len(METHODS)} of them)")
    parser.add_argument("--out", type=Path, default=Path("docs/zoo.md"), help="markdown report path")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the zoo and write its report; 0 when every model passed (see the module docstring)."""
    args = _parser().parse_args(argv)
    methods = tuple(args.methods or METHODS)
    names = args.models or list(ZOO)
    started = time.time()
    print(f"[zoo] {len(names)} models x 2 dtypes x {len(methods)} methods", flush=True)
    from importlib.metadata import version

    import tensorflow as tf
    import torchvision

    vit = native_check(vision_transformer(), zoo_inputs((3, 32, 32)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], JobResult] = {}
    for index, name in enumerate(names):
        jobs = [(name, "float32"), (name, "float64")]
        results.update(zip(jobs, run_jobs(jobs, methods), strict=True))
        context = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m parity.zoo " + " ".join(argv if argv is not None else sys.argv[1:]),
            "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}, tensorflow "
            f"{tf.__version__}, innvestigate {version('innvestigate')}, numpy {np.__version__}, "
            f"python {platform.python_version()}",
            "models": f"torchvision, weights=None, seed {SEED}; BatchNorm statistics from 4 random "
            f"batches of 8; {BATCH} standard-normal inputs per model",
            "runtime": f"{time.time() - started:.0f} s"
            + ("" if index + 1 == len(names) else f" (partial: {index + 1} of {len(names)} models)"),
        }
        unrun = [model for model in ZOO if (model, "float32") not in results]
        if unrun:
            context["not compared in this run"] = ", ".join(unrun)
        # rewritten after every model, so a long run that is stopped keeps what it compared
        text, ok = report(results, methods, vit, context)
        args.out.write_text(text)
    print(text)
    print(
        f"zoo: {'no failing row' if ok else 'FAILING rows'} ({text.split('- rows: ')[1].split(' (')[0]}); "
        f"report in {args.out}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
