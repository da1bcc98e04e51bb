"""Ray tests: a local cluster of this machine (127.0.0.1, no dashboard), shared by the session.

Every test in this folder gets the ``ray`` marker (``nox -s ray``); without Ray installed the
folder is not collected, so the ray session then collects nothing and fails.
"""

import importlib.util
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None:
    collect_ignore_glob = ["test_*.py"]

_HERE = Path(__file__).resolve().parent
#: CPUs of the test cluster: two workers and one for Ray Data's own tasks
CPUS = 3


def pytest_collection_modifyitems(config, items):
    """Mark every test collected from this folder with ``ray``."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def cluster():
    """A local Ray cluster, connected for the whole session."""
    import ray

    from parity.determinism import ENVIRONMENT
    from signxai.torch_signxai.cluster import connect

    connect("local", CPUS, dict(ENVIRONMENT))
    yield ray
    ray.shutdown()
