"""explain_dataset in one process: every source gives the maps the library's batched call gives for
the same batches, an interrupted run resumes to the store an uninterrupted run writes, and a
store of another job is refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zarr
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from signxai.torch_signxai import calculate_relevancemaps as native_relevancemaps
from signxai.torch_signxai import dataset as dataset_module
from signxai.torch_signxai.dataset import explain_dataset
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

METHOD = "lrp_epsilon_0_1"
BATCH = 8
COUNT = 29  # three full batches and a short last one


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    m = _model()
    with torch.no_grad():  # BatchNorm statistics away from the identity
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((COUNT, 2, 8, 8)).astype(np.float32)


def _expected(model: nn.Module, x: np.ndarray, **kwargs) -> np.ndarray:
    """The library's own batched call (TF-compatible API) on the same batches, one after the other."""
    return np.concatenate(
        [calculate_relevancemaps(METHOD, x[i : i + BATCH], model, **kwargs) for i in range(0, len(x), BATCH)]
    )


def test_array_source_equals_batched_calls(model, x, tmp_path):
    result = explain_dataset(model, x, METHOD, tmp_path / "store", batch_size=BATCH, progress=False)
    assert (result.computed, result.reused) == (4, 0)
    assert np.array_equal(result.maps[:], _expected(model, x))
    assert result.maps.chunks == (BATCH, 2, 8, 8)
    group = zarr.open_group(str(tmp_path / "store"), mode="r")
    assert group["done"][:].all()
    assert group.attrs["method"] == METHOD and group.attrs["batch_size"] == BATCH
    assert group.attrs["targets"] == "largest logit of each input"
    assert group.attrs["versions"]["torch"] == torch.__version__


def test_native_api_and_parameters(model, x, tmp_path):
    result = explain_dataset(
        model, x, METHOD, tmp_path / "store", batch_size=BATCH, api="pytorch", epsilon=0.5, progress=False
    )
    expected = np.concatenate(
        [native_relevancemaps(model, x[i : i + BATCH], METHOD, epsilon=0.5) for i in range(0, COUNT, BATCH)]
    )
    assert np.array_equal(result.maps[:], expected)
    # BatchNorm's true map and iNNvestigate's linearisation differ, so the API choice was applied
    assert not np.allclose(expected, _expected(model, x, epsilon=0.5), rtol=1e-3, atol=0)


def test_memmap_torch_dataset_and_loader_sources(model, x, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    labels = torch.arange(COUNT)
    sources = {
        "memmap": mapped,
        "tensor": torch.from_numpy(x),
        "dataset": TensorDataset(torch.from_numpy(x), labels),
        "loader": DataLoader(TensorDataset(torch.from_numpy(x), labels), batch_size=3, shuffle=False),
    }
    expected = _expected(model, x)
    for name, source in sources.items():
        result = explain_dataset(model, source, METHOD, tmp_path / name, batch_size=BATCH, progress=False)
        assert np.array_equal(result.maps[:], expected), name


class _Dicts(Dataset):
    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.x[i]), "label": i % 5}


def test_dict_items_need_a_column(model, x, tmp_path):
    result = explain_dataset(model, _Dicts(x), METHOD, tmp_path / "a", batch_size=BATCH, column="image", progress=False)
    assert np.array_equal(result.maps[:], _expected(model, x))
    with pytest.raises(ValueError, match="column="):
        explain_dataset(model, _Dicts(x), METHOD, tmp_path / "b", batch_size=BATCH, progress=False)


def test_targets_per_input_are_stored_and_used(model, x, tmp_path):
    targets = np.arange(COUNT) % 5
    result = explain_dataset(model, x, METHOD, tmp_path / "store", batch_size=BATCH, targets=targets, progress=False)
    expected = np.concatenate(
        [
            calculate_relevancemaps(METHOD, x[i : i + BATCH], model, neuron_selection=targets[i : i + BATCH])
            for i in range(0, COUNT, BATCH)
        ]
    )
    assert np.array_equal(result.maps[:], expected)
    assert np.array_equal(zarr.open_group(str(tmp_path / "store"), mode="r")["targets"][:], targets)
    with pytest.raises(ValueError, match="one per input"):
        explain_dataset(model, x, METHOD, tmp_path / "bad", batch_size=BATCH, targets=targets[:-1])


class _Failing(Dataset):
    """Inputs whose item ``fail_at`` raises while ``armed`` (an interruption mid-run)."""

    def __init__(self, x: np.ndarray, fail_at: int) -> None:
        self.x, self.fail_at, self.armed = x, fail_at, True

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.armed and i == self.fail_at:
            raise KeyboardInterrupt
        return torch.from_numpy(self.x[i])


def _chunk_files(store) -> dict[str, int]:
    folder = store / "maps" / "c"
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_interrupted_run_resumes_to_the_uninterrupted_store(model, x, tmp_path):
    whole = explain_dataset(model, x, METHOD, tmp_path / "whole", batch_size=BATCH, progress=False)
    source = _Failing(x, fail_at=2 * BATCH + 3)  # inside the third batch
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(model, source, METHOD, tmp_path / "resumed", batch_size=BATCH, progress=False)
    done = zarr.open_group(str(tmp_path / "resumed"), mode="r")["done"][:]
    assert done.tolist() == [True, True, False, False]
    before = _chunk_files(tmp_path / "resumed")
    source.armed = False
    resumed = explain_dataset(model, source, METHOD, tmp_path / "resumed", batch_size=BATCH, progress=False)
    assert (resumed.computed, resumed.reused) == (2, 2)
    assert np.array_equal(resumed.maps[:], whole.maps[:])
    after = _chunk_files(tmp_path / "resumed")
    assert {k: after[k] for k in before} == before  # finished batches were not rewritten
    assert sorted(after) == sorted(_chunk_files(tmp_path / "whole"))
    again = explain_dataset(model, source, METHOD, tmp_path / "resumed", batch_size=BATCH, progress=False)
    assert (again.computed, again.reused) == (0, 4)


def test_store_of_another_job_is_refused(model, x, tmp_path):
    explain_dataset(model, x, METHOD, tmp_path / "store", batch_size=BATCH, progress=False)
    with pytest.raises(ValueError, match="holds another job.*method"):
        explain_dataset(model, x, "lrp_z", tmp_path / "store", batch_size=BATCH, progress=False)
    with pytest.raises(ValueError, match="holds another job.*batch_size"):
        explain_dataset(model, x, METHOD, tmp_path / "store", batch_size=4, progress=False)
    other = _model()  # other weights
    with pytest.raises(ValueError, match="holds another job.*model"):
        explain_dataset(other, x, METHOD, tmp_path / "store", batch_size=BATCH, progress=False)


def test_a_folder_that_is_not_a_store_is_left_alone(model, x, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a zarr store"):
        explain_dataset(model, x, METHOD, folder, batch_size=BATCH, progress=False)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_parameters_resume(model, x, tmp_path):
    first = explain_dataset(
        model, x, "zblrp_epsilon_0_1", tmp_path / "store", batch_size=BATCH, low=-3.0, high=3.0, progress=False
    )
    again = explain_dataset(
        model, x, "zblrp_epsilon_0_1", tmp_path / "store", batch_size=BATCH, low=-3.0, high=3.0, progress=False
    )
    assert (first.computed, again.computed, again.reused) == (4, 0, 4)


def test_bad_input_is_refused_before_any_work(model, x, tmp_path):
    with pytest.raises(ValueError, match="shuffle=False"):
        explain_dataset(model, DataLoader(TensorDataset(torch.from_numpy(x)), shuffle=True), METHOD, tmp_path / "a")
    with pytest.raises(ValueError, match="batch_size"):
        explain_dataset(model, x, METHOD, tmp_path / "b", batch_size=0)
    with pytest.raises(ValueError, match="api"):
        explain_dataset(model, x, METHOD, tmp_path / "c", api="keras")
    with pytest.raises(ValueError):
        explain_dataset(model, x, "lrp_no_such_rule", tmp_path / "d")
    with pytest.raises(TypeError, match="numpy array"):
        explain_dataset(model, [1, 2, 3], METHOD, tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_the_callers_model_is_left_alone(model, x, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    explain_dataset(model, x, METHOD, tmp_path / "store", batch_size=BATCH, progress=False)
    assert model.training
    model.eval()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_memmap_sources_travel_as_their_file(x, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, x)
    source = dataset_module.source_of(np.load(path, mmap_mode="r"))
    function, args = source.__reduce__()
    assert os.path.samefile(args[0], path)  # the file name, not the bytes
    assert np.array_equal(function(*args).chunk(slice(3, 9)), x[3:9])
