"""Ray Data execution of :func:`signxai.torch_signxai.dataset.explain_dataset`.

Each batch of the store is one unit of work: ``map_batches`` (``map_groups`` for a Ray
``Dataset`` source, grouping its rows by batch) over an actor pool of ``workers`` actors, each
holding the model, computes the batch's maps exactly as :meth:`.dataset.Job.explain` does in
one process, on the same inputs in the same order, with one thread per actor (a GPU when the
model is on CUDA). The driver writes each batch it receives into the store; Ray Data restarts an
actor that died and reruns its batch (its default for actor pools: no limit on either; an
exception raised by the method itself is not retried).

A local cluster gets one CPU more than it has actors, for Ray Data's own tasks (actors holding
every CPU starve them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .dataset import ArraySource, Job, TorchSource

__all__ = ["explain_on_ray", "BatchExplainer"]
#: the column of row numbers a Ray Dataset source must have
INDEX_COLUMN = "id"


class BatchExplainer:
    """A Ray Data actor: explains whole batches of the store with its own copy of the model.

    Parameters
    ----------
    model : torch.nn.Module
        The model (sent on the CPU).
    device : str
        Where the actor runs it ('cpu' or 'cuda').
    job : signxai.torch_signxai.dataset.Job
        What to compute.
    source : ArraySource or TorchSource, optional
        Where the inputs of a batch are read (None: they come in the rows, column ``column``).
    column : str, optional
        The input column of a Ray Dataset source.
    """

    def __init__(
        self, model: nn.Module, device: str, job: Job, source: ArraySource | TorchSource | None, column: str | None
    ) -> None:
        torch.set_num_threads(1)
        self.model, self.job, self.source, self.column = model.to(device), job, source, column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """The maps of one batch of the store (``batch['chunk']`` names it)."""
        chunks = [int(c) for c in np.unique(batch["chunk"])]
        if len(chunks) != 1:
            raise ValueError(f"a unit of work must be one batch of the store, got batches {chunks}")
        chunk, rows = chunks[0], self.job.rows(chunks[0])
        if self.source is not None:
            x = self.source.chunk(rows)
        else:
            order = np.argsort(batch[INDEX_COLUMN], kind="stable")
            if not np.array_equal(batch[INDEX_COLUMN][order], np.arange(rows.start, rows.stop)):
                raise ValueError(
                    f"batch {chunk} needs rows {rows.start}..{rows.stop - 1} exactly once (column {INDEX_COLUMN!r})"
                )
            assert self.column is not None  # explain_on_ray refuses a Ray Dataset without one
            x = np.stack(list(batch[self.column][order]))
        maps = self.job.explain(self.model, x, chunk)
        return {"chunk": np.array([chunk]), "maps": maps[None]}


def explain_on_ray(
    model: nn.Module, data: Any, job: Job, pending: list[int], address: str, workers: int, column: str | None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(batch, maps)`` for each batch of ``pending``, computed on Ray Data.

    Parameters
    ----------
    model : torch.nn.Module
        The model; not modified (the actors get copies).
    data : ArraySource, TorchSource or ray.data.Dataset
        The inputs; a Ray ``Dataset`` needs the column ``column`` and an ``"id"`` column of row
        numbers.
    job : signxai.torch_signxai.dataset.Job
        What to compute.
    pending : list of int
        The batches to compute.
    address : str
        'local' (a cluster on this machine) or a cluster address.
    workers : int
        Actors.
    column : str, optional
        The input column of a Ray Dataset.
    """
    import ray
    import ray.data

    from .cluster import connect

    if not pending:
        return
    owned = connect(address, workers + 1)
    try:
        device = next((p.device.type for p in model.parameters()), "cpu")
        resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
        cpus = ray.cluster_resources().get("CPU", 0)
        if device == "cpu" and cpus < workers + 1:
            raise ValueError(
                f"the Ray cluster has {cpus:g} CPUs: {workers} actors of one CPU each would leave "
                f"none for Ray Data's own tasks, which then never run; use workers <= "
                f"{max(int(cpus) - 1, 1)} or a cluster with more CPUs (ray.init(num_cpus=...))"
            )
        actor: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=workers), **resources}
        cpu_model = _on_cpu(model)
        if isinstance(data, (ArraySource, TorchSource)):
            work = ray.data.from_items([{"chunk": chunk} for chunk in pending], override_num_blocks=len(pending))
            mapped = work.map_batches(
                BatchExplainer, batch_size=1, fn_constructor_args=(cpu_model, device, job, data, None), **actor
            )
        else:
            if column is None:
                raise ValueError("a Ray Dataset source needs column= naming its input column")
            missing = {column, INDEX_COLUMN} - set(data.columns())
            if missing:
                raise ValueError(
                    f"the Ray Dataset has columns {data.columns()}; explain_dataset needs "
                    f"{sorted(missing)} (an 'id' column of row numbers, as ray.data.range gives)"
                )
            wanted = set(pending)
            rows = data.map_batches(
                _with_chunk, fn_kwargs={"batch_size": job.batch_size, "wanted": wanted}, batch_format="numpy"
            )
            mapped = rows.groupby("chunk").map_groups(
                BatchExplainer,
                batch_format="numpy",
                fn_constructor_args=(cpu_model, device, job, None, column),
                **actor,
            )
        for row in mapped.iter_rows():
            yield int(row["chunk"]), np.asarray(row["maps"])
    finally:
        if owned:
            ray.shutdown()


def _with_chunk(batch: dict[str, np.ndarray], batch_size: int, wanted: set[int]) -> dict[str, np.ndarray]:
    """The rows of ``batch`` that belong to the ``wanted`` store batches, with their batch number."""
    chunk = np.asarray(batch[INDEX_COLUMN]) // batch_size
    keep = np.isin(chunk, list(wanted))
    return {**{key: np.asarray(value)[keep] for key, value in batch.items()}, "chunk": chunk[keep]}


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when it is on the CPU, else a CPU copy (the caller's model stays put)."""
    if all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()]):
        return model
    import copy

    return copy.deepcopy(model).cpu()
