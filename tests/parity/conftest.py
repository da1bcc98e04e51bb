"""Parity tests: TensorFlow in graph mode, as iNNvestigate requires.

Graph mode must be switched on before any Keras model is built, so it happens
at import. Every test in this folder gets the ``tf`` marker; run them in their
own pytest session so graph mode does not leak into other tests. Without
TensorFlow installed the folder is not collected.
"""

from pathlib import Path

import pytest

try:
    import tensorflow as tf
except ImportError:
    collect_ignore_glob = ["test_*.py"]
else:
    tf.compat.v1.disable_eager_execution()

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Mark every test collected from this folder with ``tf``."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.tf)
