"""Deterministic references: two live runs of iNNvestigate in two fresh processes give the same
bits, on the fixture whose float32 maps are the most ill-conditioned (BatchNorm)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from parity import determinism
from parity.harness import graph_mode, run_fixture

pytestmark = pytest.mark.tf

METHODS = ["lrp_z", "lrp_epsilon_0_001", "lrp_alpha_2_beta_1", "gradient"]


def _references(dtype: str) -> dict[str, np.ndarray]:
    return run_fixture("digits_cnn_bn", dtype, METHODS, ours=False, identities=False).references


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_processes_compute_bitwise_equal_references(dtype):
    context = multiprocessing.get_context("spawn")
    runs = []
    for _ in range(2):  # one fresh process each: nothing carries over between the two runs
        with ProcessPoolExecutor(1, mp_context=context, initializer=graph_mode) as pool:
            runs.append(pool.submit(_references, dtype).result())
    assert sorted(runs[0]) == sorted(METHODS)
    for method in METHODS:
        assert runs[0][method].tobytes() == runs[1][method].tobytes(), method


def test_settings_are_pinned_and_described():
    graph_mode()  # this test process, as the harness's processes do
    import tensorflow as tf
    import torch

    assert tf.config.threading.get_intra_op_parallelism_threads() == determinism.THREADS
    assert torch.get_num_threads() == determinism.THREADS and torch.are_deterministic_algorithms_enabled()
    described = determinism.describe()
    assert "TF_ENABLE_ONEDNN_OPTS=0" in described["determinism"]
    assert "logical cores" in described["cpu"]
