"""Deterministic execution of both frameworks, and a record of the machine that ran them.

A reference map is only worth storing, and a float32 comparison only worth gating on, if running
it again gives the same bits. Three things change float32 results between runs of the same
TensorFlow graph: the number of threads an op splits its reductions over, oneDNN's kernels
(chosen per CPU), and ops without a deterministic implementation. :func:`apply` pins all three
for TensorFlow and the equivalent settings for PyTorch; :func:`describe` says which settings and
which CPU made a run, for the report and the stored fixtures' manifest.

It must run before TensorFlow is imported (oneDNN is chosen at import): every process of the
harness calls it through :func:`parity.harness.graph_mode`.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

__all__ = ["ENVIRONMENT", "THREADS", "set_environment", "apply", "describe", "cpu"]

#: environment of every TensorFlow process: oneDNN off (its kernels differ by CPU), op determinism
ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_DETERMINISTIC_OPS": "1"}
#: intra-op and inter-op threads of both frameworks (one: a reduction is summed in one order)
THREADS = 1
#: CPU flags that decide which vector kernels NumPy, PyTorch and TensorFlow run
_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")


def set_environment() -> None:
    """Set :data:`ENVIRONMENT` for TensorFlow to read when it is imported (which must come after).

    Raises
    ------
    RuntimeError
        When TensorFlow was imported before with other settings (it cannot change them then).
    """
    if "tensorflow" in sys.modules:
        wrong = {k: os.environ.get(k) for k, v in ENVIRONMENT.items() if os.environ.get(k) != v}
        if wrong:
            raise RuntimeError(
                f"TensorFlow was imported before parity.determinism.set_environment() with "
                f"{wrong}; call it (or parity.harness.graph_mode()) before importing tensorflow"
            )
    os.environ.update(ENVIRONMENT)


def apply() -> None:
    """Pin TensorFlow's and PyTorch's numerics in this process (see the module docstring).

    Raises
    ------
    RuntimeError
        When TensorFlow was imported before with other settings (see :func:`set_environment`).
    """
    set_environment()
    import tensorflow as tf
    import torch

    tf.config.experimental.enable_op_determinism()
    if tf.config.threading.get_intra_op_parallelism_threads() != THREADS:
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def cpu() -> str:
    """The CPU's model name and the vector-instruction flags it has (from ``/proc/cpuinfo``)."""
    name, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    shown = [flag for flag in _CPU_FLAGS if flag in flags]
    return f"{name} ({', '.join(shown) or 'no vector flags read'})"


def describe() -> dict[str, str]:
    """The settings :func:`apply` pins and the CPU, as strings for a report or a manifest."""
    import torch

    return {
        "determinism": f"TensorFlow op determinism, {THREADS} intra/inter-op thread, "
        f"TF_ENABLE_ONEDNN_OPTS={ENVIRONMENT['TF_ENABLE_ONEDNN_OPTS']}; torch "
        f"{torch.get_num_threads()} thread, deterministic algorithms "
        f"{'on' if torch.are_deterministic_algorithms_enabled() else 'off'}",
        "cpu": f"{cpu()}, {os.cpu_count()} logical cores; torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
    }
