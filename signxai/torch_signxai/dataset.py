"""Explanations of whole datasets, streamed into a chunked, resumable on-disk store.

:func:`explain_dataset` explains every input of a dataset with one method, a batch at a time
(the library's batched pass), and writes the maps into a zarr store: an array ``maps`` with one
chunk per batch, an array ``done`` with one flag per batch, set after the batch's maps are
written, and the job in the store's attributes (method, parameters, API, targets, batch size,
a fingerprint of the model's weights, the versions that computed it). Run again on the same
store, it computes only the batches not yet done, so an interrupted job resumes without
recomputing or duplicating a batch; a store of another job is refused.

Sources: a numpy array or memory map, a map-style torch ``Dataset`` or a ``DataLoader`` over
one (in order: a shuffling loader is refused), or a Ray ``Dataset``. With ``ray=`` the batches
are spread over a Ray cluster (:mod:`signxai.torch_signxai.dataset_ray`); each map is bitwise
what the same batch gives in this process in the same dtype, device and number of threads.

Needs the dataset extra (``pip install 'signxai[dataset]'``: zarr, tqdm); Ray needs the ray extra.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset

from .methods.api import run_method
from .methods.grammar import parse

__all__ = ["explain_dataset", "ExplainedDataset", "Job", "ArraySource", "TorchSource", "source_of"]

#: zarr attributes that must match for a run to resume a store
_JOB_KEYS = ("method", "params", "api", "targets", "batch_size", "count", "model")


@dataclass(frozen=True, eq=False)
class Job:
    """What is explained: the method with its parameters, the API (``'tensorflow'``: the
    TF-compatible numbers of :mod:`.methods.wrappers`; ``'pytorch'``: the native API, BatchNorm's
    true affine map), the targets (None: each input's largest logit; an int; or one per input)
    and the batch size (one store chunk per batch)."""

    method: str
    params: dict[str, Any]
    api: str
    targets: Any
    batch_size: int
    count: int

    def chunks(self) -> int:
        """Number of batches."""
        return math.ceil(self.count / self.batch_size)

    def rows(self, chunk: int) -> slice:
        """The inputs of batch ``chunk``."""
        return slice(chunk * self.batch_size, min((chunk + 1) * self.batch_size, self.count))

    def explain(self, model: nn.Module, x: Any, chunk: int) -> np.ndarray:
        """The maps of batch ``chunk``, whose inputs are ``x``."""
        kwargs = dict(self.params)
        if self.targets is not None:
            kwargs["neuron_selection"] = (
                self.targets[self.rows(chunk)] if isinstance(self.targets, np.ndarray) else self.targets
            )
        batchnorm = "innvestigate" if self.api == "tensorflow" else "exact"
        return run_method(self.method, model, x, kwargs, single=False, batchnorm=batchnorm)

    def attributes(self, model: nn.Module) -> dict[str, Any]:
        """The job as the store records it (JSON)."""
        targets = (
            "largest logit of each input"
            if self.targets is None
            else "one per input (array 'targets')"
            if isinstance(self.targets, np.ndarray)
            else int(self.targets)
        )
        record = {
            "method": self.method,
            "params": _plain(self.params),
            "api": self.api,
            "targets": targets,
            "batch_size": self.batch_size,
            "count": self.count,
            "model": fingerprint(model),
        }
        return json.loads(json.dumps(record))  # as the store gives it back (tuples as lists)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {value.dtype} {tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it (arrays and other objects by ``repr``)."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _plain(v) for k, v in value.items()}
        return repr(value)


# ---------------------------------------------------------------------------------------------
# Sources


class ArraySource:
    """Inputs from a numpy array or memory map (batch axis first)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        """The number of inputs."""
        return len(self.array)

    def chunk(self, rows: slice) -> np.ndarray:
        """The inputs ``rows``."""
        return np.asarray(self.array[rows])

    def batches(self, job: Job, chunks: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """``(chunk, inputs)`` for each of ``chunks``, in order."""
        for chunk in chunks:
            yield chunk, self.chunk(job.rows(chunk))

    def __reduce__(self) -> tuple:
        """Pickle a memory map as its file, any other array as its values."""
        # a memory map travels as its file, not its bytes
        if isinstance(self.array, np.memmap) and self.array.filename is not None:
            return _open_memmap, (
                self.array.filename,
                self.array.dtype.str,
                self.array.shape,
                self.array.offset,
                "F" if self.array.flags.f_contiguous and not self.array.flags.c_contiguous else "C",
            )
        return ArraySource, (np.asarray(self.array),)


def _open_memmap(
    filename: str, dtype: str, shape: tuple[int, ...], offset: int, order: Literal["C", "F"]
) -> ArraySource:
    return ArraySource(np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset, order=order))


class TorchSource:
    """Inputs from a map-style torch ``Dataset`` (an item is the input, or a tuple or dict whose
    first element or ``column`` is), batched by ``collate_fn`` with ``num_workers`` loader
    processes."""

    def __init__(
        self, dataset: Dataset, column: str | None = None, collate_fn: Any = None, num_workers: int = 0
    ) -> None:
        if not hasattr(dataset, "__len__"):
            raise TypeError(
                "explain_dataset needs a map-style torch Dataset (with __len__ and "
                "__getitem__); an IterableDataset has no order to resume from"
            )
        self.dataset, self.column = dataset, column
        self.collate_fn, self.num_workers = collate_fn, num_workers

    def __len__(self) -> int:
        """The number of inputs."""
        return len(self.dataset)

    def _loader(self, indices: Sequence[int], batch_size: int) -> DataLoader:
        return DataLoader(
            Subset(self.dataset, list(indices)),
            batch_size=batch_size,
            shuffle=False,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
        )

    def chunk(self, rows: slice) -> Any:
        """The inputs ``rows``, collated."""
        indices = range(rows.start, rows.stop)
        return _inputs_of(next(iter(self._loader(indices, len(indices)))), self.column)

    def batches(self, job: Job, chunks: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """``(chunk, inputs)`` for each of ``chunks``, in order, loaded by one ``DataLoader``
        (chunks are ``batch_size`` long except the last of the dataset, so its batches are the
        chunks)."""
        indices = [i for chunk in chunks for i in range(job.rows(chunk).start, job.rows(chunk).stop)]
        for chunk, batch in zip(chunks, self._loader(indices, job.batch_size), strict=True):
            yield chunk, _inputs_of(batch, self.column)


def _inputs_of(batch: Any, column: str | None) -> Any:
    """The inputs of a collated batch: the batch, its first element, or its ``column``."""
    if isinstance(batch, dict):
        if column is None or column not in batch:
            raise ValueError(f"the dataset's items are dicts with keys {sorted(batch)}: name the input with column=")
        return batch[column]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def source_of(data: Any, column: str | None = None) -> ArraySource | TorchSource:
    """The source of a numpy array, memory map, torch ``Dataset`` or in-order ``DataLoader``."""
    if isinstance(data, np.ndarray):
        return ArraySource(data)
    if isinstance(data, torch.Tensor):
        return ArraySource(data.detach().cpu().numpy())
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler) or data.batch_sampler is None:
            raise ValueError(
                "explain_dataset needs a DataLoader that keeps the dataset's order "
                "(shuffle=False, no custom sampler), so that a batch is the same "
                "inputs when a run resumes; or pass the Dataset itself"
            )
        return TorchSource(data.dataset, column, data.collate_fn, data.num_workers)
    if isinstance(data, Dataset):
        return TorchSource(data, column)
    raise TypeError(
        f"explain_dataset takes a numpy array or memory map, a torch Dataset or "
        f"DataLoader, or a Ray Dataset; got {type(data).__name__}"
    )


def _is_ray_dataset(data: Any) -> bool:
    """Whether ``data`` is a Ray ``Dataset`` (without importing Ray when it was not imported)."""
    ray_data = sys.modules.get("ray.data")
    return ray_data is not None and isinstance(data, ray_data.Dataset)


# ---------------------------------------------------------------------------------------------
# The store


def _versions() -> dict[str, str]:
    """Versions of what computes and stores the maps."""
    import zarr

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "signxai": installed("signxai"),
        "zennit": installed("zennit"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
    }


def _open_store(path: Path, job: Job, model: nn.Module) -> Any:
    """The zarr group at ``path`` for ``job``: created with its ``done`` flags, or an existing
    store of the same job (a store of another job raises ``ValueError``)."""
    import zarr

    attributes = job.attributes(model)
    if path.exists() and not (path / "zarr.json").exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not a zarr store: give a new or empty folder for the maps")
    if (path / "zarr.json").exists():
        group = zarr.open_group(str(path), mode="r+")
        held = {key: group.attrs.get(key) for key in _JOB_KEYS}
        changed = {key: (held[key], attributes[key]) for key in _JOB_KEYS if held[key] != attributes[key]}
        if changed:
            details = "; ".join(f"{key}: store has {old!r}, this call {new!r}" for key, (old, new) in changed.items())
            raise ValueError(
                f"the store {path} holds another job ({details}): give another store, or delete this one to start over"
            )
        return group
    group = zarr.open_group(str(path), mode="w")
    group.create_array("done", shape=(job.chunks(),), chunks=(1,), dtype="bool", fill_value=False)
    if isinstance(job.targets, np.ndarray):
        group.create_array("targets", data=job.targets, chunks=(job.batch_size,))
    group.attrs.update({**attributes, "versions": _versions()})
    return group


def _write(group: Any, job: Job, chunk: int, maps: np.ndarray) -> None:
    """Store batch ``chunk``'s maps (creating the ``maps`` array on the first), then flag it done."""
    rows = job.rows(chunk)
    if maps.shape[0] != rows.stop - rows.start:
        raise ValueError(f"batch {chunk} gave {maps.shape[0]} maps for {rows.stop - rows.start} inputs")
    if "maps" not in group:
        group.create_array(
            "maps",
            shape=(job.count, *maps.shape[1:]),
            chunks=(job.batch_size, *maps.shape[1:]),
            dtype=maps.dtype,
            fill_value=0,
        )
    stored = group["maps"]
    if stored.shape[1:] != maps.shape[1:] or stored.dtype != maps.dtype:
        raise ValueError(
            f"batch {chunk} gave maps of shape {maps.shape[1:]} and dtype {maps.dtype}; the store "
            f"holds {stored.shape[1:]} {stored.dtype}"
        )
    stored[rows] = maps
    group["done"][chunk] = True


@dataclass(frozen=True)
class ExplainedDataset:
    """The result of :func:`explain_dataset`: the store's ``maps`` array (zarr, read lazily), how
    many batches this call computed, how many it found done, and how many results of a batch
    already written came again (a batch Ray reran after its result arrived) and were dropped."""

    path: Path
    maps: Any
    computed: int
    reused: int
    duplicates: int = 0


def explain_dataset(
    model: nn.Module,
    data: Any,
    method: str,
    store: str | Path,
    *,
    batch_size: int = 32,
    targets: Any = None,
    api: str = "tensorflow",
    column: str | None = None,
    ray: str | bool | None = None,
    workers: int = 1,
    progress: bool = True,
    **params: Any,
) -> ExplainedDataset:
    """Explain every input of ``data`` with ``method`` into the zarr store ``store``.

    Parameters
    ----------
    model : torch.nn.Module
        The model (returning logits), on the device it should run on; it is not modified.
    data : numpy.ndarray, numpy.memmap, torch.utils.data.Dataset, torch.utils.data.DataLoader or ray.data.Dataset
        The inputs, channels first, in a fixed order. A ``DataLoader`` must not shuffle (its
        ``collate_fn`` and ``num_workers`` are used, its batch size is replaced by ``batch_size``);
        dataset items may be the input or ``(input, label, ...)`` or a dict (name its input
        with ``column``). A Ray ``Dataset`` needs ``column`` and an ``"id"`` column of row numbers
        (as ``ray.data.range`` gives) and is explained on Ray.
    method : str
        A method name of the grammar (for example ``'lrp_epsilon_0_1'``).
    store : str or pathlib.Path
        Folder of the zarr store; an existing store of the same job is resumed.
    batch_size : int
        Inputs per batch, and per chunk of the store.
    targets : None, int or array of int
        The explained class: None for each input's largest logit, an int for all, or one per input.
    api : {'tensorflow', 'pytorch'}
        ``'tensorflow'``: the numbers of the TF-compatible API (iNNvestigate's, BatchNorm
        linearised as iNNvestigate does); ``'pytorch'``: the native API (BatchNorm's true map).
    column : str, optional
        The input's key in dict items or Ray rows.
    ray : str or bool, optional
        Run the batches on Ray Data, one actor per worker holding the model: True or 'local'
        starts a local cluster (127.0.0.1, no dashboard); another string is a cluster address.
    workers : int
        Ray actors (each gets one CPU, or one GPU when the model is on CUDA).
    progress : bool
        Show a tqdm progress bar over the inputs.
    **params
        The method's parameters (``epsilon=``, ``mu=``, ...).

    Returns
    -------
    ExplainedDataset
        The store's ``maps`` array and what this call computed.

    Raises
    ------
    ValueError
        For an unknown method, a bad batch size or targets, a shuffling loader, or a store that
        holds another job.
    """
    parse(method, **params)  # an unknown name or parameter fails before any work
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if api not in ("tensorflow", "pytorch"):
        raise ValueError(f"api must be 'tensorflow' or 'pytorch', got {api!r}")
    on_ray = ray not in (None, False) or _is_ray_dataset(data)
    source = None if _is_ray_dataset(data) else source_of(data, column)
    count = data.count() if source is None else len(source)
    job = Job(method, params, api, _targets(targets, count), batch_size, count)
    path = Path(store)
    group = _open_store(path, job, model)
    done = group["done"][:]
    pending = [chunk for chunk in range(job.chunks()) if not done[chunk]]
    bar = _bar(progress, count, sum(job.rows(c).stop - job.rows(c).start for c in range(job.chunks()) if done[c]))
    if on_ray:
        from .dataset_ray import explain_on_ray

        address = "local" if ray in (None, True) else str(ray)
        results = explain_on_ray(model, data if source is None else source, job, pending, address, workers, column)
    else:
        assert source is not None  # only a Ray dataset has none, and it runs on Ray
        results = ((chunk, job.explain(model, x, chunk)) for chunk, x in source.batches(job, pending))
    computed, duplicates = set(), 0
    for chunk, maps in results:
        if chunk in computed:  # a batch Ray reran after its result was taken: the same bytes
            duplicates += 1
            continue
        _write(group, job, chunk, maps)
        computed.add(chunk)
        if bar is not None:
            bar.update(maps.shape[0])
    if bar is not None:
        bar.close()
    if len(computed) != len(pending):
        raise RuntimeError(f"batches {sorted(set(pending) - computed)} were not computed")
    return ExplainedDataset(
        path, group["maps"] if "maps" in group else None, len(computed), job.chunks() - len(pending), duplicates
    )


def _targets(targets: Any, count: int) -> Any:
    """None, an int, or an int64 array of one target per input."""
    if targets is None or isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        return None if targets is None else int(targets)
    values = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets)
    if values.ndim != 1 or len(values) != count or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"targets must be None, an int, or {count} integers (one per input); got "
            f"{values.dtype} of shape {values.shape}"
        )
    return values.astype(np.int64)


def _bar(progress: bool, total: int, initial: int) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="input", desc="explain_dataset")
