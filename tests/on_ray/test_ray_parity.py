"""The parity harness on a local Ray cluster gives bitwise the rows of one process, and a worker
killed mid-run is retried by Ray without losing or duplicating a row."""

import numpy as np
import pytest
from killing import Killer

from parity.fanout import Backend
from parity.pipeline import fixture_subjects, run_jobs

METHODS = ["gradient", "lrp_epsilon_0_1", "lrpsign_z", "guided_backprop", "smoothgrad", "grad_cam"]


@pytest.fixture(scope="module")
def local():
    """Every fixture in float32, in this process, references computed live."""
    return run_jobs(fixture_subjects(), ["float32"], METHODS, backend=Backend(workers=1))


def _assert_same(runs, local):
    assert runs.keys() == local.keys()
    for job, run in runs.items():
        expected = local[job]
        assert run.references.keys() == expected.references.keys() and run.references, job
        assert run.ours.keys() == expected.ours.keys(), job
        assert not run.errors and not expected.errors, job
        for method in expected.references:
            assert np.array_equal(run.references[method], expected.references[method]), (job, method)
            assert np.array_equal(run.ours[method], expected.ours[method]), (job, method)
        assert np.array_equal(run.targets, expected.targets)


def test_ray_run_equals_one_process(cluster, local):
    _assert_same(run_jobs(fixture_subjects(), ["float32"], METHODS, backend=Backend(workers=2, ray="local")), local)


def test_killed_worker_is_retried_without_lost_or_duplicate_rows(cluster, local):
    killer = Killer("ray::perform")
    killer.start()
    runs = run_jobs(fixture_subjects(), ["float32"], METHODS, backend=Backend(workers=2, ray="local"))
    killer.join(timeout=1)
    assert killer.killed is not None, "no worker was running a task to kill"
    _assert_same(runs, local)  # run_jobs itself raises when a row is missing or comes twice
