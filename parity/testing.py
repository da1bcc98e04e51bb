"""A pytest helper: check your own model's maps against iNNvestigate's from your test suite.

:func:`assert_parity` runs TensorFlow and iNNvestigate in a child process, so the calling test
process never imports TensorFlow and stays in eager mode (iNNvestigate needs graph mode, which
cannot be switched back).

How the model reaches the child: the whole module is written with ``torch.save`` (pickle), which
stores each class by module and name. The child gets the folder of every module that defines one
of the model's classes on its ``sys.path`` and imports that module, so classes defined at the top
level of a test file or of your package work; a class defined inside a function or in
``__main__`` cannot be found again and is rejected with ``ValueError``.

Example
-------
::

    from parity.testing import assert_parity

    def test_my_model_matches_innvestigate():
        assert_parity(MyModel(), x, methods=["gradient", "lrp_epsilon_0_1", "lrpsign_z"])
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import default_folder
from .report import format_table

__all__ = ["assert_parity"]

#: lines of the child's stderr quoted when it could not run the check
_STDERR_LINES = 20


def assert_parity(
    model: Any,
    x: Any,
    methods: list[str] | None = None,
    rtol: float = 1e-4,
    input_shape: tuple[int, ...] | None = None,
    float64: bool = True,
    cache: Path | str | bool = True,
) -> list[dict]:
    """Assert that signxai's maps of ``model`` equal iNNvestigate's on its Keras twin.

    Parameters
    ----------
    model : torch.nn.Module or tf.keras.Model
        The model, returning logits; its classes must be importable (see the module docstring).
        A Keras model is saved as HDF5 for the child, which runs iNNvestigate on it as it is and
        signxai on its PyTorch twin (:func:`parity.from_keras.compare_keras`). It is not modified.
    x : numpy.ndarray or torch.Tensor
        Inputs with a batch axis (or one input of ``input_shape``): channels first for a PyTorch
        model, in the Keras model's own layout for a Keras model.
    methods : list of str, optional
        Method names (default: every applicable name of :func:`parity.cases.session_names`).
    rtol : float
        The float32 floor of the parity gate (:mod:`parity.compare`): a float32 error (max |ours -
        reference| / max |reference|) up to it always passes.
    input_shape : tuple of int, optional
        One input's shape, channels first; when ``x`` has exactly this shape a batch axis is added.
    float64 : bool
        Judge rows by the full gate, both frameworks also computing in float64 (default); False
        compares the float32 maps directly against ``rtol`` (about half the time).
    cache : pathlib.Path, str or bool
        The reference cache (:mod:`parity.cache`): True for its default folder (``$SIGNXAI_PARITY_CACHE``,
        else ``~/.cache/signxai/parity``), a folder, or False to compute every reference live.

    Returns
    -------
    list of dict
        One record per compared method (``method``, ``rel_error``, ``tolerance``, ``passed``, ...),
        as ``signxai-parity --json`` writes them.

    Raises
    ------
    AssertionError
        When a method fails the gate; the message holds the per-method table.
    ValueError
        When ``x`` does not fit ``input_shape`` or a class of the model cannot be pickled by name.
    RuntimeError
        When the check cannot run (a layer the twin or LRP cannot handle, an input the model
        rejects, the parity extra missing); the message quotes the child process.
    """
    keras = not isinstance(model, torch.nn.Module) and type(model).__module__.startswith(("keras", "tensorflow"))
    x = _batch(x, input_shape)
    folder_of_cache = default_folder() if cache is True else Path(cache) if cache else None
    request = {
        "methods": methods,
        "rtol": rtol,
        "float64": float64,
        "label": model.name if keras else type(model).__name__,
        "cache": str(folder_of_cache) if folder_of_cache else None,
        "keras": keras,
    }
    with tempfile.TemporaryDirectory(prefix="signxai-parity-") as name:
        folder = Path(name)
        if keras:
            env = _child_env(None)
            model.save(folder / "model.h5")
        else:
            env = _child_env(model)
            torch.save(model, folder / "model.pt")
        np.save(folder / "x.npy", x)
        (folder / "request.json").write_text(json.dumps(request))
        child = subprocess.run(
            [sys.executable, "-m", "parity.testing", str(folder)], env=env, capture_output=True, text=True
        )
        result = folder / "result.json"
        if not result.is_file():
            tail = "\n".join(child.stderr.strip().splitlines()[-_STDERR_LINES:])
            raise RuntimeError(f"the parity check could not run (exit {child.returncode}):\n{tail}")
        record = json.loads(result.read_text())
    rows = record["rows"]
    if not all(row["passed"] for row in rows):
        failing = ", ".join(row["method"] for row in rows if not row["passed"])
        raise AssertionError(f"{record['summary']}; failing: {failing}\n{format_table(rows)}")
    return rows


def _batch(x: Any, input_shape: tuple[int, ...] | None) -> np.ndarray:
    """``x`` as a float32 array with batch axis."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    if input_shape is None:
        return x
    if x.shape == tuple(input_shape):
        return x[None]
    if x.shape[1:] != tuple(input_shape):
        raise ValueError(
            f"x has shape {x.shape}; with input_shape={tuple(input_shape)} it must be "
            f"{tuple(input_shape)} or (batch, *{tuple(input_shape)})"
        )
    return x


def _child_env(model: torch.nn.Module | None) -> dict[str, str]:
    """The environment of the child: PYTHONPATH finds parity and every class of ``model``."""
    import parity

    roots = [] if model is None else _class_roots(model)
    folders = [*roots, str(Path(parity.__file__).resolve().parents[1])]
    inherited = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(folders + ([inherited] if inherited else [])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _class_roots(model: torch.nn.Module) -> list[str]:
    """The folders from which the modules defining the model's classes are imported by name."""
    roots: list[str] = []
    for cls in dict.fromkeys(type(module) for module in model.modules()):
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            raise ValueError(
                f"assert_parity sends the model to a child process with torch.save, which "
                f"stores classes by module and name: define {cls.__qualname__} at the top "
                f"level of an importable module (not in __main__ or inside a function)"
            )
        file = getattr(sys.modules.get(cls.__module__), "__file__", None)
        if file is not None:
            depth = cls.__module__.count(".") + (Path(file).name == "__init__.py")
            root = str(Path(file).resolve().parents[depth])
            if root not in roots:
                roots.append(root)
    return roots


def _child(folder: Path) -> int:
    """The child process: compare the saved model on the saved inputs, write ``result.json``.

    Returns
    -------
    int
        0 when the result was written, 2 when the check could not run (one line on stderr).
    """
    from .fanout import Backend
    from .pipeline import Subject, UsageError, check, publish, require_parity_extra

    request = json.loads((folder / "request.json").read_text())
    try:
        require_parity_extra()
        from .harness import graph_mode

        graph_mode()
        cache = Path(request["cache"]) if request["cache"] else None
        x = np.load(folder / "x.npy")
        if request["keras"]:
            from .from_keras import compare_keras, load_keras

            outcome = compare_keras(
                load_keras(str(folder / "model.h5")),
                x,
                request["methods"],
                label=request["label"],
                tolerance=request["rtol"],
                float64=request["float64"],
                cache=cache,
            )[0]
        else:
            # a whole module, pickled by the caller's process moments ago
            model = torch.load(folder / "model.pt", map_location="cpu", weights_only=False).eval()
            outcome = check(
                [Subject(request["label"], model, x)],
                request["methods"],
                tolerance=request["rtol"],
                float64=request["float64"],
                backend=Backend(workers=1),
                cache=cache,
            )
        outcome.context["options"] = request
    except UsageError as error:
        print(f"assert_parity: {error}", file=sys.stderr)
        return 2
    publish(outcome, json_path=folder / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
