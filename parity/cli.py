"""signxai-parity: check that signxai's maps of your own PyTorch model equal iNNvestigate's.

The model is converted to a Keras twin with identical weights; every method is computed by
signxai on the PyTorch model and by iNNvestigate on the twin, on the same inputs and targets, in
float32 and float64, and judged by the project's parity gate: the float64 maps agree within 1e-10
(the same formula), and signxai's float32 map is as accurate as iNNvestigate's own (its error
against iNNvestigate's float64 map at most max(1e-4, 4 x iNNvestigate's float32 error)); errors
are max |ours - reference| / max |reference|.

Exit status: 0 when every compared method passes, 1 when one fails, 2 when the check cannot run
(a usage error, a model or input that cannot be loaded, a layer the twin or LRP cannot handle,
or the parity extra missing); an error is one line on stderr that says what to do.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .compare import FLOAT32_FLOOR
from .progress import ProgressBar

if TYPE_CHECKING:
    from .cases import Case
    from .harness import ModelRun
    from .report import Row

__all__ = ["UsageError", "main", "require_parity_extra", "compare_model", "write_reports",
           "report_rows", "format_table"]

EXAMPLE = """example (a factory function build() in my_model.py in the current folder):
  signxai-parity --model my_model:build --input-shape 1,8,8 \\
      --methods gradient,lrp_epsilon_0_1,lrpsign_z --out parity-out --json parity-out/parity.json"""

PARITY_EXTRA = ("TensorFlow and iNNvestigate are needed: install the parity extra: "
                "pip install 'signxai[parity]'")

#: longest error text quoted in a one-line message
_QUOTE_CHARS = 300


class UsageError(Exception):
    """A mistake the user can fix: main prints its message as one line and exits with 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError` (one line, exit 2)."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see signxai-parity --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="signxai-parity", description=__doc__, epilog=EXAMPLE,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", metavar="MODULE:FUNCTION",
                       help="a factory returning the torch.nn.Module, e.g. my_model:build or "
                            "mypackage.models:resnet_small; the module is imported with the "
                            "current folder on sys.path")
    model.add_argument("--torchscript", type=Path, metavar="PATH",
                       help="a TorchScript file (torch.jit.save); the Keras twin converter needs "
                            "torch.fx, which cannot trace TorchScript, so prefer --model")
    parser.add_argument("--state-dict", type=Path, metavar="PATH",
                        help="weights for the model --model builds, loaded with "
                             "torch.load(PATH, map_location='cpu', weights_only=True)")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input-shape", metavar="C,H,W",
                        help="one input's shape, channels first, no batch axis (e.g. 3,32,32 or 64 "
                             "for a dense model); inputs are standard normal draws")
    inputs.add_argument("--inputs", type=Path, metavar="FILE.npy",
                        help="inputs as a .npy array, channels first, with a batch axis")
    parser.add_argument("--batch", type=int, default=4,
                        help="number of random inputs with --input-shape (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument("--methods", metavar="NAMES",
                        help="comma-separated method names, e.g. gradient,lrp_z,lrpsign_epsilon_0_1 "
                             "(default: every name of parity/method_names.txt that applies)")
    parser.add_argument("--tolerance", type=_tolerance, metavar="REL",
                        help=f"the float32 floor: a float32 error up to it always passes (default: "
                             f"{FLOAT32_FLOOR:g}, parity.compare.FLOAT32_FLOOR)")
    parser.add_argument("--float32-only", action="store_true",
                        help="skip the float64 run (about half the time) and compare the float32 "
                             "maps directly against the floor; that is not the full gate")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write parity-report.md and parity-figure.png into DIR")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="write every row's metrics, the options and the versions used as JSON")
    return parser


def _tolerance(text: str) -> float:
    """The value of ``--tolerance``: a non-negative number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run ``signxai-parity``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every row passes, 1 when a row fails, 2 for a usage error.
    """
    try:
        args = _parser().parse_args(argv)
        return _run(args)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except UsageError as error:
        print(f"signxai-parity: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    started = time.time()
    model = _load_model(args)
    x = _load_inputs(args)
    require_parity_extra()
    from .harness import graph_mode
    from .report import run_context

    graph_mode()
    warnings.filterwarnings("ignore", message="`Model.state_updates` will be removed", category=UserWarning)
    names = [name.strip() for name in args.methods.split(",")] if args.methods else None
    label = args.model or args.torchscript.name
    rows, run = compare_model(model, x, names, label=label, tolerance=args.tolerance,
                              float64=not args.float32_only, progress=True)
    context = {"model": label, "inputs": _describe_inputs(args, x),
               "options": {key: _plain(value) for key, value in vars(args).items()},
               "skipped (not applicable)": ", ".join(sorted(run.skipped)) or "none",
               **run_context(started)}
    write_reports(rows, run, context, out=args.out, json_path=args.json)
    return report_rows(rows)


def _plain(value: Any) -> Any:
    """An option's value as JSON can hold it."""
    return str(value) if isinstance(value, Path) else value


def require_parity_extra() -> None:
    """Raise :class:`UsageError` unless TensorFlow and iNNvestigate can be imported."""
    from .determinism import set_environment

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    set_environment()
    try:
        import innvestigate  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise UsageError(f"{PARITY_EXTRA} ({error})") from error


def _flat(error: BaseException) -> str:
    """An exception's message on one line, shortened to a few hundred characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS - 3] + "..."


def _one_line(error: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return f"{type(error).__name__}: {_flat(error)}"


# ----------------------------------------------------------------------------
# Loading the model and the inputs


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model the options name, in eval mode."""
    if args.state_dict is not None and args.model is None:
        raise UsageError("--state-dict needs --model to build the architecture the weights belong to")
    if args.torchscript is not None:
        return _load_torchscript(args.torchscript).eval()
    model = _build(args.model)
    if args.state_dict is not None:
        _load_state_dict(model, args.state_dict, args.model)
    return model.eval()


def _factory(spec: str) -> Callable[[], Any]:
    """The function ``module:function`` names, imported with the current folder on sys.path."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--model takes MODULE:FUNCTION (e.g. my_model:build), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name and not module_name.startswith(f"{error.name}."):
            raise UsageError(f"importing {module_name!r} failed: {_one_line(error)}") from error
        raise UsageError(f"cannot find module {module_name!r} for --model {spec}: run signxai-parity "
                         f"from the folder that holds it, or add that folder to PYTHONPATH") from error
    except Exception as error:
        raise UsageError(f"importing {module_name!r} failed: {_one_line(error)}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        found = "is not callable" if hasattr(module, attribute) else "does not exist"
        raise UsageError(f"{attribute!r} in module {module_name!r} ({module.__file__}) {found}: "
                         f"--model needs MODULE:FUNCTION naming a function that returns the model")
    return factory


def _build(spec: str) -> torch.nn.Module:
    """Call the factory ``spec`` names and check that it returns a torch.nn.Module."""
    factory = _factory(spec)
    try:
        model = factory()
    except Exception as error:
        raise UsageError(f"{spec}() raised {_one_line(error)}") from error
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{spec}() returned an object of type {type(model).__name__}, not a "
                         f"torch.nn.Module: make the factory return the model")
    return model


def _require_file(path: Path, option: str, what: str) -> None:
    """Raise :class:`UsageError` when there is no file ``path``."""
    if not path.is_file():
        raise UsageError(f"no such file: {path} ({option} takes {what})")


def _load_state_dict(model: torch.nn.Module, path: Path, spec: str) -> None:
    """Load the weights file ``path`` into ``model``."""
    _require_file(path, "--state-dict", "a file written by torch.save(model.state_dict(), PATH)")
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:
        raise UsageError(f"cannot load {path} into the model {spec}() builds: {_one_line(error)}") from error


def _load_torchscript(path: Path) -> torch.nn.Module:
    """Load a TorchScript file and check that torch.fx can trace it for the Keras twin."""
    _require_file(path, "--torchscript", "a file written by torch.jit.save")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise UsageError(f"cannot load TorchScript file {path}: {_one_line(error)}") from error
    try:
        torch.fx.symbolic_trace(model)
    except Exception as error:
        raise UsageError(f"the TorchScript model {path} cannot be traced by torch.fx, which the Keras "
                         f"twin converter needs: pass --model MODULE:FUNCTION (with --state-dict for "
                         f"trained weights) instead") from error
    return model


def _load_inputs(args: argparse.Namespace) -> np.ndarray:
    """The inputs, with batch axis, channels first."""
    if args.inputs is not None:
        return _read_npy(args.inputs)
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    shape = _shape(args.input_shape)
    rng = np.random.default_rng(args.seed)
    return rng.standard_normal((args.batch, *shape)).astype(np.float32)


def _shape(text: str) -> tuple[int, ...]:
    """Parse ``C,H,W`` (or ``F``, or ``C,L``) into positive ints."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise UsageError(f"--input-shape takes positive integers separated by commas, channels first, "
                         f"without the batch axis (e.g. 3,32,32), got {text!r}")
    return shape


def _read_npy(path: Path) -> np.ndarray:
    """A float32 array with batch axis from a .npy file."""
    _require_file(path, "--inputs", "a .npy array, channels first, with a batch axis")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as error:
        raise UsageError(f"cannot read {path} as a .npy array: {_one_line(error)}") from error
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
        raise UsageError(f"{path} holds a {x.dtype} array of shape {x.shape}; --inputs needs numbers "
                         f"with a batch axis, channels first, e.g. shape (4, 3, 32, 32)")
    return x.astype(np.float32)


def _describe_inputs(args: argparse.Namespace, x: np.ndarray) -> str:
    if args.inputs is not None:
        return f"{args.inputs}, shape {x.shape}"
    return f"{x.shape[0]} standard normal draws of shape {x.shape[1:]}, seed {args.seed}"


# ----------------------------------------------------------------------------
# Comparing


def compare_model(model: torch.nn.Module, x: np.ndarray, names: list[str] | None, *, label: str,
                  tolerance: float | None = None, float64: bool = True,
                  progress: bool = False) -> tuple[list[Row], ModelRun]:
    """Compare signxai's maps of ``model`` with iNNvestigate's on its Keras twin.

    TensorFlow must be in graph mode (:func:`parity.harness.graph_mode`).

    Parameters
    ----------
    model : torch.nn.Module
        The model, returning logits; it is not modified.
    x : numpy.ndarray
        Inputs with batch axis, channels first.
    names : list of str or None
        Method names (None: every applicable name of ``parity/method_names.txt``).
    label : str
        The model's name in the report.
    tolerance : float, optional
        The float32 floor (default :data:`parity.compare.FLOAT32_FLOOR`).
    float64 : bool
        Also run float64 and judge rows by the full gate (default); False compares the float32
        maps directly against the floor.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    rows : list of parity.report.Row
        One row per compared method.
    run : parity.harness.ModelRun
        The float32 maps of both frameworks.

    Raises
    ------
    UsageError
        When the model fails on ``x``, a method name is unknown, no method applies, or a layer
        is unsupported by the Keras twin or by signxai's LRP.
    """
    from .report import rows_from

    _check_outputs(model, x)
    chosen = _applicable(model, x, names, label)
    if any(case.spec.family == "lrp" for case in chosen):
        _check_lrp_support(model, x)
    dtypes = ["float32", "float64"] if float64 else ["float32"]
    bar = ProgressBar(len(chosen) * len(dtypes)) if progress else None
    runs = [_run_dtype(model, x, names, label, dtype, bar) for dtype in dtypes]
    if bar is not None:
        bar.close()
    return rows_from(runs[0], runs[1] if float64 else None, tolerance), runs[0]


def _check_outputs(model: torch.nn.Module, x: np.ndarray) -> None:
    """Raise :class:`UsageError` unless ``model`` maps ``x`` to logits of shape (N, classes)."""
    try:
        with torch.no_grad():
            output = model(torch.from_numpy(x))
    except Exception as error:
        raise UsageError(f"the model fails on inputs of shape {tuple(x.shape)} (batch first): "
                         f"{_one_line(error)}; give the shape it expects with --input-shape, channels "
                         f"first, without the batch axis") from error
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UsageError(f"the model returns {shape} for inputs of shape {tuple(x.shape)}; "
                         f"parity needs logits of shape (batch, classes)")


def _applicable(model: torch.nn.Module, x: np.ndarray, names: list[str] | None, label: str) -> list[Case]:
    """The cases the harness will run, after checking every name."""
    from signxai.torch_signxai.methods.grammar import parse

    from .cases import cases
    from .harness import model_kind

    for name in names or ():
        try:
            parse(name)
        except ValueError as error:
            raise UsageError(f"unknown method {name!r}: {_flat(error)}") from error
    chosen, skipped = cases(label, *model_kind(model), x, names)
    if not chosen:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise UsageError(f"no method applies to this model ({reasons}): choose others with --methods")
    return chosen


def _check_lrp_support(model: torch.nn.Module, x: np.ndarray) -> None:
    """Raise :class:`UsageError` naming the layer when signxai's LRP rejects the model."""
    from signxai.torch_signxai.methods.lrp import UnsupportedLayerError
    from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

    try:
        calculate_relevancemaps("lrp_z", x[:1], model)
    except UnsupportedLayerError as error:
        raise UsageError(f"unsupported layer for LRP: {_flat(error)}; leave the LRP "
                         f"methods out with --methods") from error


def _run_dtype(model: torch.nn.Module, x: np.ndarray, names: list[str] | None, label: str,
               dtype: str, bar: ProgressBar | None) -> ModelRun:
    """:func:`parity.harness.run_model` in ``dtype``, turning twin failures into :class:`UsageError`."""
    from .harness import run_model
    from .twin import TwinMismatchError, UnsupportedLayerError

    progress = None if bar is None else (lambda method: bar.step(f"{dtype} {method}"))
    try:
        return run_model(label, model, x, x.shape[1:], dtype, names, progress=progress)
    except UnsupportedLayerError as error:
        raise UsageError(f"unsupported layer for the Keras twin: {_flat(error)}") from error
    except TwinMismatchError as error:
        raise UsageError(f"the Keras twin does not reproduce the model's outputs, so no map can be "
                         f"compared: {_flat(error)}") from error


# ----------------------------------------------------------------------------
# Reporting


def write_reports(rows: list[Row], run: ModelRun, context: dict, *, out: Path | None = None,
                  json_path: Path | None = None) -> None:
    """Write parity-report.md and parity-figure.png into ``out`` and the JSON record to ``json_path``.

    The figure shows the rows closest to failing (:func:`parity.report.write_figure`); with no
    compared method there is no figure, and stderr says so.
    """
    from .report import write_figure, write_json, write_markdown

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_markdown(out / "parity-report.md", rows, context)
        if any(m in run.references for m in run.ours):
            write_figure(out / "parity-figure.png", [run], rows)
        else:
            print("no parity-figure.png: no method was compared", file=sys.stderr)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, rows, context)


def report_rows(rows: list[Row]) -> int:
    """Print the table, the summary and the failing methods; return the exit status (0 or 1)."""
    from .report import summary

    print(format_table([asdict(row) for row in rows]))
    print(summary(rows))
    failing = [row.method for row in rows if not row.passed]
    if failing:
        print(f"failing: {', '.join(failing)}")
    return 1 if failing else 0


def format_table(records: list[dict]) -> str:
    """The per-method table of row records: the float32 error the gate judges (against
    iNNvestigate's float64 map when float64 ran, else against its float32 map), the allowed
    error, the float64 error and whether the row passes (with the reason when it does not).

    Parameters
    ----------
    records : list of dict
        Rows as dicts with the fields of :class:`parity.report.Row` (``parity.report.write_json``'s
        ``rows``, where NaN is None).

    Returns
    -------
    str
        An aligned plain-text table, one line per row after a header.
    """
    def shown(value: float | None) -> str:
        return "-" if value is None else "nan" if math.isnan(value) else f"{value:.2e}"

    width = max([len("method"), *(len(r["method"]) for r in records)])
    lines = [f"{'method':<{width}}  {'f32 error':>9}  {'allowed':>8}  {'f64 error':>9}  pass"]
    for r in records:
        gated = r["ours_f32_error"] if r["ours_f32_error"] is not None else r["rel_error"]
        note = f"  {r['note']}" if r["note"] and not r["passed"] else ""
        lines.append(f"{r['method']:<{width}}  {shown(gated):>9}  {r['tolerance']:>8.1e}  "
                     f"{shown(r['rel_error_f64']):>9}  {'yes' if r['passed'] else 'NO'}{note}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
