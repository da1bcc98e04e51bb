"""Sessions: `nox -s tests` (the test suite: the fast suite, then the TensorFlow tests in a pytest
process of their own), `nox -s parity` (the main job: the cross-framework harness on the bundled
fixtures), `nox -s docs` (the documentation site), `nox -s ray` (the harness and dataset
explanations on a local Ray cluster), `nox -s zoo` (torchvision's architectures), `nox -s bench`
(benchmarks).

pytest's exit code 5 ("no tests collected") fails a session like any other non-zero code:
an empty run is a broken run.
"""

import time
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
#: pytest-xdist options of the test suite: every test process computes on one thread (the suite's
#: conftest and the harness's determinism pin it), so two processes use CI's two cores; a test
#: module stays in one process, so its module fixtures (twins, trained fixtures) are built once
WORKERS = ("-n", "2", "--dist", "loadfile")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite: the library, fixtures and stored references without TensorFlow (posargs
    go to this run), then, in a pytest process of its own (TensorFlow's graph mode must not
    leak into the other tests), the TensorFlow tests: twin, references, the CLI and
    assert_parity, the Hypothesis parity suite. Both runs use two worker processes
    (:data:`WORKERS`; ``nox -s tests -- -n 0`` runs the first in one). Prints its wall time."""
    started = time.time()
    session.install("-e", ".[parity,test,dataset]")
    session.run(
        "pytest", "-m", "not tf and not slow and not ray", "-p", "no:cacheprovider", *WORKERS, *session.posargs, env=ENV
    )
    session.run(
        "pytest",
        "-m",
        "tf and not slow",
        "-p",
        "no:cacheprovider",
        *WORKERS,
        "tests/parity",
        "tests/test_parity_helper.py",
        env=ENV,
    )
    session.log(f"nox -s tests took {time.time() - started:.0f} s (install included)")


@nox.session(python=PYTHON)
def parity(session: nox.Session) -> None:
    """The main job: iNNvestigate on Keras twins of the fixture models (references whose inputs
    did not change come from the reference cache), every row judged by the parity gate;
    writes parity-report.md, parity-report.json and parity-figure.png and prints the summary
    and its wall time."""
    started = time.time()
    session.install("-e", ".[parity,test]")
    session.run("python", "-m", "parity", *session.posargs, env=ENV)
    session.log(f"nox -s parity took {time.time() - started:.0f} s (install included)")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site (MkDocs, API pages from the numpydoc docstrings by mkdocstrings)
    into site/; a warning (a broken link, a docstring that does not parse) fails the build."""
    session.install("-e", ".", "mkdocs>=1.6", "mkdocstrings[python]>=0.26")
    session.run("mkdocs", "build", "--strict", "--clean")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) over the tree and mypy on signxai/ and parity/ (settings in
    pyproject.toml); the library and matplotlib are installed so mypy sees their types."""
    session.install("ruff==0.17.6", "mypy==2.4.1", "matplotlib", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=PYTHON)
def ray(session: nox.Session) -> None:
    """The Ray tests on a local cluster (127.0.0.1, no dashboard): the harness fanned out over
    Ray equals one process, a killed worker is retried, dataset explanations on Ray Data equal
    a local run. Not part of .ci/run. pyarrow < 21 keeps NumPy 1.x, which TensorFlow 2.14 needs."""
    session.install("-e", ".[parity,test,dataset,ray]", "pyarrow<21")
    session.run("pytest", "-m", "ray", "-p", "no:cacheprovider", "tests/on_ray", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def zoo(session: nox.Session) -> None:
    """torchvision's architectures (random init) against iNNvestigate on Keras twins; writes
    docs/zoo.md with the run time. Heavy (CPU hours); not part of .ci/run."""
    session.install("-e", ".[parity,test]")
    session.run("python", "-m", "parity.zoo", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (ratios measured in one process); not part of the test gate."""
    session.install("-e", ".[parity,test,dataset,ray]", "pyarrow<21")
    for script in sorted(Path("benchmarks").glob("*.py")):
        session.run("python", str(script), env=ENV)
