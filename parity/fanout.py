"""Where the harness's tasks run: in this process, in local processes, or on a Ray cluster.

A task is one model, one dtype and a group of method names (:class:`Task`); running it gives one
:class:`parity.harness.ModelRun` with those rows. Every backend runs the same function,
:func:`perform`, in a process of its own that has called :func:`parity.harness.graph_mode`
(deterministic numerics, TensorFlow graph mode), so the maps do not depend on where a task ran.

Ray is an optional extra (``pip install 'signxai[ray]'``); the cluster is reached by
:func:`signxai.torch_signxai.cluster.connect` ('local' starts one bound to 127.0.0.1 with the
dashboard off), and its workers get the determinism environment of :mod:`parity.determinism`.
Ray retries a task whose worker died (:data:`RAY_RETRIES` times); each task's result is taken
once, so a retried task neither loses nor duplicates rows.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .harness import ModelRun
    from .twin import Twin

__all__ = ["Subject", "Task", "Backend", "perform", "execute", "RAY_RETRIES"]

#: how often Ray reruns a task whose worker process died
RAY_RETRIES = 3


@dataclass(frozen=True)
class Subject:
    """A model to check and the inputs it is checked on.

    Parameters
    ----------
    label : str
        The model's name in the report.
    model : torch.nn.Module
        The PyTorch model, returning logits (sent to workers by pickle: its classes must be
        importable there).
    inputs : numpy.ndarray
        Inputs with batch axis, channels first.
    reference : callable, optional
        The Keras side, a function of the dtype returning the :class:`parity.twin.Twin`
        iNNvestigate runs on (a user's own Keras model, :func:`parity.from_keras.keras_twin`);
        default: the model converted by :func:`parity.twin.to_keras`. A subject with one runs in
        this process.
    """

    label: str
    model: torch.nn.Module
    inputs: np.ndarray
    reference: Callable[[str], Twin] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape, channels first, without the batch axis."""
        return tuple(self.inputs.shape[1:])


@dataclass(frozen=True)
class Task:
    """One unit of work: methods ``methods`` of subject number ``subject`` in ``dtype``; the
    first task of each (subject, dtype) also checks the reference identities."""

    subject: int
    dtype: str
    methods: tuple[str, ...]
    identities: bool


@dataclass(frozen=True)
class Backend:
    """Where tasks run: ``workers`` local processes (1: this process), or the Ray cluster at
    ``ray`` ('local' starts one on this machine with ``workers`` CPUs)."""

    workers: int = 2
    ray: str | None = None

    def describe(self) -> str:
        """The backend in words, for the report."""
        if self.ray is not None:
            return f"Ray cluster {self.ray!r}" + (f" ({self.workers} CPUs)" if self.ray == "local" else "")
        return "this process" if self.workers <= 1 else f"{self.workers} local processes"


_GRAPH_MODE = False


def perform(subject: Subject, task: Task, ours: bool, cache: Path | None) -> ModelRun:
    """Run ``task`` on ``subject`` in this process (put into graph mode on its first task)."""
    global _GRAPH_MODE
    from .cache import ReferenceCache
    from .harness import graph_mode, run_model

    if not _GRAPH_MODE:
        graph_mode()
        _GRAPH_MODE = True
    return run_model(
        subject.label,
        subject.model,
        subject.inputs,
        subject.input_shape,
        task.dtype,
        list(task.methods),
        ours=ours,
        identities=task.identities,
        cache=ReferenceCache(cache),
        reference=subject.reference,
    )


def execute(
    subjects: list[Subject],
    tasks: list[Task],
    backend: Backend,
    *,
    ours: bool = True,
    cache: Path | None = None,
    done: Callable[[Task], None] | None = None,
) -> list[ModelRun]:
    """Run every task on ``backend``; return their runs in the order of ``tasks``.

    Parameters
    ----------
    subjects : list of Subject
        The models, referred to by :attr:`Task.subject`.
    tasks : list of Task
        The work.
    backend : Backend
        Where it runs.
    ours : bool
        Also compute the library's maps (False: iNNvestigate's references only).
    cache : pathlib.Path, optional
        Folder of the reference cache (:mod:`parity.cache`; None: every reference live).
    done : callable, optional
        Called with each task as it finishes (in the order they finish).
    """
    done = done or (lambda task: None)
    if backend.ray is not None:
        return _on_ray(subjects, tasks, backend, ours, cache, done)
    if backend.workers <= 1:
        runs = []
        for task in tasks:
            runs.append(perform(subjects[task.subject], task, ours, cache))
            done(task)
        return runs
    results: dict[int, ModelRun] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(backend.workers, mp_context=context, initializer=_hold, initargs=(subjects,)) as pool:
        futures = {pool.submit(_perform_held, task, ours, cache): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            done(tasks[futures[future]])
    return [results[index] for index in range(len(tasks))]


_HELD: list[Subject] = []


def _hold(subjects: list[Subject]) -> None:
    """Process-pool initializer: keep the subjects, sent once per process rather than per task."""
    _HELD[:] = subjects


def _perform_held(task: Task, ours: bool, cache: Path | None) -> ModelRun:
    return perform(_HELD[task.subject], task, ours, cache)


def _on_ray(
    subjects: list[Subject],
    tasks: list[Task],
    backend: Backend,
    ours: bool,
    cache: Path | None,
    done: Callable[[Task], None],
) -> list[ModelRun]:
    import ray

    from signxai.torch_signxai.cluster import connect

    from .determinism import ENVIRONMENT

    environment = {**ENVIRONMENT, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    assert backend.ray is not None  # called for a Ray backend only
    owned = connect(backend.ray, backend.workers, environment)
    try:
        remote = ray.remote(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=False)(perform)
        held = [ray.put(subject) for subject in subjects]
        pending = {remote.remote(held[task.subject], task, ours, cache): index for index, task in enumerate(tasks)}
        results: dict[int, ModelRun] = {}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(finished[0])
            results[index] = ray.get(finished[0])
            done(tasks[index])
        return [results[index] for index in range(len(tasks))]
    finally:
        if owned:
            ray.shutdown()
