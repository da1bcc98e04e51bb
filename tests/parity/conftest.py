"""Parity tests: TensorFlow in graph mode, as iNNvestigate requires, with the harness's
deterministic settings.

Both must be set before TensorFlow is imported and any Keras model is built, so they are set at
import (:func:`parity.harness.graph_mode`). Every test in this folder gets the ``tf`` marker; run
them in their own pytest session so graph mode does not leak into other tests. Without
TensorFlow installed the folder is not collected.
"""

import importlib.util
from pathlib import Path

import pytest

if importlib.util.find_spec("tensorflow") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    from parity.harness import graph_mode

    graph_mode()

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Mark every test collected from this folder with ``tf``."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.tf)
