"""A content-addressed cache of iNNvestigate reference maps.

A reference map depends only on the Keras twin (its architecture and weights), the inputs, the
targets, the method with its parameters, the dtype, the versions of TensorFlow, Keras,
iNNvestigate and NumPy, the determinism settings and CPU that computed it, and the harness's own
reference code (``parity/reference.py``, which supplies iNNvestigate the SIGN, std_x and gamma
rules). The cache key is a SHA-256 digest of all of them, so no library change invalidates it and
any change on the reference side does. With the deterministic settings of
:mod:`parity.determinism`, a hit is bitwise what a live run computes.

Each entry is one ``.npz`` file holding the map and the digest of its bytes; it is written to a
temporary file and renamed into place, so a reader sees a whole entry or none, and two runs that
share the folder can only write the same bytes under one key. An entry whose content does not
match its digest (a corrupt or truncated file) is recomputed and replaced.

The folder is ``$SIGNXAI_PARITY_CACHE`` if set, else ``$XDG_CACHE_HOME/signxai/parity`` (default
``~/.cache/signxai/parity``); ``python -m parity --no-cache`` runs without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_ENV", "default_folder", "ReferenceCache", "twin_digest"]

#: environment variable naming the cache folder ('' or 'off' disables the cache)
CACHE_ENV = "SIGNXAI_PARITY_CACHE"


def default_folder() -> Path | None:
    """The cache folder: ``$SIGNXAI_PARITY_CACHE``, else under the user's cache directory; None
    when the variable is '' or 'off'."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen in ("", "off") else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "signxai" / "parity"


def _update(digest: hashlib._Hash, value: Any) -> None:
    """Feed ``value`` into ``digest`` unambiguously (arrays by dtype, shape and bytes)."""
    if isinstance(value, np.ndarray):
        digest.update(f"array {value.dtype.str} {value.shape}|".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq {len(value)}|".encode())
        for item in value:
            _update(digest, item)
    elif isinstance(value, Mapping):
        digest.update(f"map {len(value)}|".encode())
        for key in sorted(value):
            _update(digest, key)
            _update(digest, value[key])
    else:
        text = repr(value).encode()
        digest.update(f"{type(value).__name__} {len(text)}|".encode() + text)


def twin_digest(keras_model: Any) -> str:
    """The SHA-256 digest of a Keras model's architecture (its JSON config) and weights."""
    digest = hashlib.sha256()
    _update(digest, json.loads(keras_model.to_json()))
    _update(digest, [np.asarray(w) for w in keras_model.get_weights()])
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _environment() -> dict[str, str]:
    """What a reference depends on besides its inputs: versions, settings, CPU, reference code."""
    from . import determinism

    source = Path(__file__).with_name("reference.py").read_bytes()
    return {
        "versions": ", ".join(f"{name} {version(name)}" for name in ("tensorflow", "keras", "innvestigate", "numpy")),
        "determinism": repr((determinism.ENVIRONMENT, determinism.THREADS)),
        "cpu": determinism.cpu(),
        "reference code": hashlib.sha256(source).hexdigest(),
    }


class ReferenceCache:
    """Reference maps stored under the digest of everything they depend on.

    Parameters
    ----------
    folder : pathlib.Path or None
        Where entries live (created when needed); None: no caching, every call computes.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits = self.misses = 0

    def key(self, twin: str, what: Any, x: np.ndarray, targets: np.ndarray) -> str:
        """The key of a reference of ``what`` (a method's base spec, or a label) on the twin with
        digest ``twin``, inputs ``x`` and ``targets``."""
        digest = hashlib.sha256()
        _update(digest, [_environment(), twin, what, x, targets])
        return digest.hexdigest()

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        """The cached value under ``key`` (an array or a dict of floats), or ``compute()``'s,
        stored under ``key``. Exceptions of ``compute`` are not cached."""
        if self.folder is None:
            return compute()
        path = self.folder / key[:2] / f"{key}.npz"
        value = self._load(path)
        if value is not None:
            self.hits += 1
            return value
        self.misses += 1
        value = compute()
        self._store(path, value)
        return value

    @staticmethod
    def _content_digest(arrays: dict[str, np.ndarray]) -> str:
        digest = hashlib.sha256()
        _update(digest, arrays)
        return digest.hexdigest()

    def _load(self, path: Path) -> Any:
        """The entry at ``path``, or None when it is missing or does not match its digest."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # missing, truncated, no npz
            return None
        stored = arrays.pop("__digest__", None)
        if stored is None or str(stored) != self._content_digest(arrays):
            return None
        if "__map__" in arrays:
            return arrays["__map__"]
        return {name: float(value) for name, value in arrays.items()}

    def _store(self, path: Path, value: Any) -> None:
        arrays = (
            {"__map__": np.asarray(value)}
            if isinstance(value, np.ndarray)
            else {name: np.asarray(number, np.float64) for name, number in value.items()}
        )
        arrays["__digest__"] = np.asarray(self._content_digest(arrays))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
