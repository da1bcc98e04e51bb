"""signxai-parity: check that signxai's maps of your own PyTorch model equal iNNvestigate's.

The model is converted to a Keras twin with identical weights; every method is computed by
signxai on the PyTorch model and by iNNvestigate on the twin, on the same inputs and targets, in
float32 and float64, and judged by the project's parity gate: the float64 maps agree within 1e-10
(the same formula), and signxai's float32 map is as accurate as iNNvestigate's own (its error
against iNNvestigate's float64 map at most max(1e-4, 10 x iNNvestigate's float32 error)); errors
are max |ours - reference| / max |reference|.

Exit status: 0 when every compared method passes, 1 when one fails, 2 when the check cannot run
(a usage error, a model or input that cannot be loaded, a layer the twin or LRP cannot handle,
or the parity extra missing); an error is one line on stderr that says what to do.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch

from .cache import CACHE_ENV, default_folder
from .compare import FLOAT32_FLOOR
from .fanout import Backend
from .pipeline import UsageError, one_line, require_parity_extra

if TYPE_CHECKING:
    from .report import Row

__all__ = ["main", "add_run_options", "backend_of", "cache_of", "report_rows"]

EXAMPLE = """example (a factory function build() in my_model.py in the current folder):
  signxai-parity --model my_model:build --input-shape 1,8,8 \\
      --methods gradient,lrp_epsilon_0_1,lrpsign_z --out parity-out --json parity-out/parity.json"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see signxai-parity --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="signxai-parity", description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--model",
        metavar="MODULE:FUNCTION",
        help="a factory returning the torch.nn.Module, e.g. my_model:build or "
        "mypackage.models:resnet_small; the module is imported with the "
        "current folder on sys.path",
    )
    model.add_argument(
        "--torchscript",
        type=Path,
        metavar="PATH",
        help="a TorchScript file (torch.jit.save); the Keras twin converter needs "
        "torch.fx, which cannot trace TorchScript, so prefer --model",
    )
    model.add_argument(
        "--keras",
        metavar="PATH",
        help="a Keras model (.h5 or .keras file, or SavedModel folder): iNNvestigate runs on it as it "
        "is, signxai on its PyTorch twin (parity.from_keras); --input-shape and --inputs are then in "
        "the Keras model's layout (channels last) and may be left out (the model's input shape)",
    )
    model.add_argument(
        "--keras-factory",
        metavar="MODULE:FUNCTION",
        help="a factory returning a Keras model, checked as --keras checks a file",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="with --keras: write the PyTorch twin as model.py (torch only) and state_dict.pt into DIR",
    )
    parser.add_argument(
        "--state-dict",
        type=Path,
        metavar="PATH",
        help="weights for the model --model builds, loaded with "
        "torch.load(PATH, map_location='cpu', weights_only=True)",
    )
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="one input's shape, channels first, no batch axis (e.g. 3,32,32 or 64 "
        "for a dense model); inputs are standard normal draws",
    )
    inputs.add_argument(
        "--inputs", type=Path, metavar="FILE.npy", help="inputs as a .npy array, channels first, with a batch axis"
    )
    parser.add_argument("--batch", type=int, default=4, help="number of random inputs with --input-shape (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument(
        "--methods",
        metavar="NAMES",
        help="comma-separated method names, e.g. gradient,lrp_z,lrpsign_epsilon_0_1 (default: every "
        "name of the parity session that applies, parity.cases.session_names(); list them with "
        "--list-methods)",
    )
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        metavar="REL",
        help=f"the float32 floor: a float32 error up to it always passes (default: "
        f"{FLOAT32_FLOOR:g}, parity.compare.FLOAT32_FLOOR)",
    )
    parser.add_argument(
        "--float32-only",
        action="store_true",
        help="skip the float64 run (about half the time) and compare the float32 "
        "maps directly against the floor; that is not the full gate",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="write parity-report.md and parity-figure.png into DIR")
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="write every row's metrics, the options and the versions used as JSON"
    )
    add_run_options(parser, workers=1)
    parser.add_argument(
        "--list-methods",
        action="store_true",
        help="print every method name family with its parameters and defaults, and the "
        "iNNvestigate analyzer each matches, then exit (no model needed)",
    )
    return parser


def add_run_options(parser: argparse.ArgumentParser, workers: int) -> None:
    """Add the options that say where the work runs and where references are cached
    (``--workers``, ``--ray``, ``--cache``, ``--no-cache``) to ``parser``."""
    parser.add_argument(
        "--workers",
        type=_positive,
        default=workers,
        metavar="N",
        help=f"local processes the work is split over (default: {workers}; 1 runs it in "
        f"this process), or the CPUs of the cluster --ray starts",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the work on a Ray cluster (the ray extra): without ADDRESS a local "
        "one bound to 127.0.0.1 with --workers CPUs; else e.g. 'auto' or "
        "'ray://host:10001'",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=default_folder(),
        metavar="DIR",
        help=f"folder of the reference cache (default: ${CACHE_ENV}, else "
        f"~/.cache/signxai/parity); a reference whose inputs did not change is "
        f"read from it, bitwise what a live run computes",
    )
    parser.add_argument("--no-cache", action="store_true", help="compute every reference live")


def backend_of(args: argparse.Namespace) -> Backend:
    """Where the work runs, from :func:`add_run_options`' options."""
    if args.ray is not None and importlib.util.find_spec("ray") is None:
        raise UsageError("--ray needs Ray: install the ray extra: pip install 'signxai[ray]'")
    return Backend(args.workers, args.ray)


def cache_of(args: argparse.Namespace) -> Path | None:
    """The reference cache folder from :func:`add_run_options`' options (None: off)."""
    return None if args.no_cache else args.cache


def _positive(text: str) -> int:
    """The value of ``--workers``: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


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
        if _wants_method_list(argv):
            from signxai.torch_signxai.methods import format_methods

            print(format_methods())
            return 0
        args = _parser().parse_args(argv)
        return _run(args)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except UsageError as error:
        print(f"signxai-parity: error: {error}", file=sys.stderr)
        return 2


def _wants_method_list(argv: list[str] | None) -> bool:
    """Whether the arguments ask for ``--list-methods`` (which needs no model)."""
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--list-methods", action="store_true")
    return listing.parse_known_args(argv)[0].list_methods


def _run(args: argparse.Namespace) -> int:
    if args.keras or args.keras_factory:
        return _run_keras(args)
    if args.export is not None:
        raise UsageError("--export writes the PyTorch twin of a Keras model: it needs --keras or --keras-factory")
    model = _load_model(args)
    x = _load_inputs(args)
    require_parity_extra()
    from .harness import graph_mode
    from .pipeline import Subject, check, publish

    graph_mode()
    warnings.filterwarnings("ignore", message="`Model.state_updates` will be removed", category=UserWarning)
    names = [name.strip() for name in args.methods.split(",")] if args.methods else None
    label = args.model or args.torchscript.name
    context = {
        "model": label,
        "inputs": _describe_inputs(args, x),
        "options": {key: _plain(value) for key, value in vars(args).items()},
    }
    outcome = check(
        [Subject(label, model, x)],
        names,
        tolerance=args.tolerance,
        float64=not args.float32_only,
        backend=backend_of(args),
        cache=cache_of(args),
        progress=True,
        context=context,
    )
    publish(outcome, out=args.out, json_path=args.json)
    return report_rows(outcome.rows)


def _run_keras(args: argparse.Namespace) -> int:
    """``--keras``: iNNvestigate on the user's Keras model, signxai on its PyTorch twin."""
    if args.ray is not None or args.workers > 1:
        raise UsageError("a Keras model's check runs in one process: leave out --workers and --ray")
    if args.state_dict is not None:
        raise UsageError("--state-dict belongs to --model; a Keras model brings its own weights")
    require_parity_extra()
    from .from_keras import compare_keras, export, load_keras
    from .harness import graph_mode
    from .pipeline import publish

    graph_mode()
    warnings.filterwarnings("ignore", message="`Model.state_updates` will be removed", category=UserWarning)
    source = args.keras or args.keras_factory
    keras_model = load_keras(source)
    x = _load_inputs(args, tuple(int(n) for n in keras_model.inputs[0].shape[1:]))
    names = [name.strip() for name in args.methods.split(",")] if args.methods else None
    outcome, torch_model = compare_keras(
        keras_model,
        x,
        names,
        label=str(source),
        tolerance=args.tolerance,
        float64=not args.float32_only,
        progress=True,
        cache=cache_of(args),
    )
    outcome.context.update(
        {
            "model": f"{source} (Keras; signxai on its PyTorch twin)",
            "inputs": _describe_inputs(args, x),
            "options": {key: _plain(value) for key, value in vars(args).items()},
        }
    )
    if args.export is not None:
        files = export(torch_model, args.export)
        print(f"PyTorch twin written: {', '.join(map(str, files))}")
    publish(outcome, out=args.out, json_path=args.json)
    return report_rows(outcome.rows)


def _plain(value: Any) -> Any:
    """An option's value as JSON can hold it."""
    return str(value) if isinstance(value, Path) else value


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


def load_factory(spec: str) -> Callable[[], Any]:
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
            raise UsageError(f"importing {module_name!r} failed: {one_line(error)}") from error
        raise UsageError(
            f"cannot find module {module_name!r} for --model {spec}: run signxai-parity "
            f"from the folder that holds it, or add that folder to PYTHONPATH"
        ) from error
    except Exception as error:
        raise UsageError(f"importing {module_name!r} failed: {one_line(error)}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        found = "is not callable" if hasattr(module, attribute) else "does not exist"
        raise UsageError(
            f"{attribute!r} in module {module_name!r} ({module.__file__}) {found}: "
            f"--model needs MODULE:FUNCTION naming a function that returns the model"
        )
    return factory


def _build(spec: str) -> torch.nn.Module:
    """Call the factory ``spec`` names and check that it returns a torch.nn.Module."""
    factory = load_factory(spec)
    try:
        model = factory()
    except Exception as error:
        raise UsageError(f"{spec}() raised {one_line(error)}") from error
    if not isinstance(model, torch.nn.Module):
        raise UsageError(
            f"{spec}() returned an object of type {type(model).__name__}, not a "
            f"torch.nn.Module: make the factory return the model"
        )
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
        raise UsageError(f"cannot load {path} into the model {spec}() builds: {one_line(error)}") from error


def _load_torchscript(path: Path) -> torch.nn.Module:
    """Load a TorchScript file and check that torch.fx can trace it for the Keras twin."""
    _require_file(path, "--torchscript", "a file written by torch.jit.save")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise UsageError(f"cannot load TorchScript file {path}: {one_line(error)}") from error
    try:
        torch.fx.symbolic_trace(model)
    except Exception as error:
        raise UsageError(
            f"the TorchScript model {path} cannot be traced by torch.fx, which the Keras "
            f"twin converter needs: pass --model MODULE:FUNCTION (with --state-dict for "
            f"trained weights) instead"
        ) from error
    return model


def _load_inputs(args: argparse.Namespace, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The inputs, with batch axis (channels first; a Keras model's own layout with --keras), drawn
    in ``shape`` when neither --inputs nor --input-shape is given."""
    if args.inputs is not None:
        return _read_npy(args.inputs)
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    if args.input_shape is not None:
        shape = _shape(args.input_shape)
    elif shape is None:
        raise UsageError("give the inputs: --input-shape C,H,W (random draws) or --inputs x.npy")
    rng = np.random.default_rng(args.seed)
    return rng.standard_normal((args.batch, *shape)).astype(np.float32)


def _shape(text: str) -> tuple[int, ...]:
    """Parse ``C,H,W`` (or ``F``, or ``C,L``) into positive ints."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise UsageError(
            f"--input-shape takes positive integers separated by commas, channels first, "
            f"without the batch axis (e.g. 3,32,32), got {text!r}"
        )
    return shape


def _read_npy(path: Path) -> np.ndarray:
    """A float32 array with batch axis from a .npy file."""
    _require_file(path, "--inputs", "a .npy array, channels first, with a batch axis")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as error:
        raise UsageError(f"cannot read {path} as a .npy array: {one_line(error)}") from error
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
        raise UsageError(
            f"{path} holds a {x.dtype} array of shape {x.shape}; --inputs needs numbers "
            f"with a batch axis, channels first, e.g. shape (4, 3, 32, 32)"
        )
    return x.astype(np.float32)


def _describe_inputs(args: argparse.Namespace, x: np.ndarray) -> str:
    if args.inputs is not None:
        return f"{args.inputs}, shape {x.shape}"
    return f"{x.shape[0]} standard normal draws of shape {x.shape[1:]}, seed {args.seed}"


# ----------------------------------------------------------------------------
# Reporting


def report_rows(rows: list[Row]) -> int:
    """Print the table, the summary and the failing methods; return the exit status (0 or 1)."""
    from .report import format_table, summary

    print(format_table([asdict(row) for row in rows]))
    print(summary(rows))
    failing = [row.method for row in rows if not row.passed]
    if failing:
        print(f"failing: {', '.join(failing)}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
