"""explain_dataset on Ray Data: maps bitwise equal to a run in this process (one thread, as each
actor has), from arrays, memory maps and Ray Datasets; a killed actor is restarted and its
batch rerun, with every batch written once."""

import numpy as np
import pytest
import torch
import zarr
from killing import Killer
from torch import nn

from signxai.torch_signxai.dataset import explain_dataset

METHOD = "lrp_epsilon_0_1"


def _vgg_like() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()


@pytest.fixture(scope="module")
def model():
    return _vgg_like()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((90, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def local(model, x, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = explain_dataset(
            model, x, METHOD, tmp_path_factory.mktemp("local") / "store", batch_size=8, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    return result.maps[:]


def test_array_and_memmap_on_ray_equal_local(cluster, model, x, local, tmp_path):
    np.save(tmp_path / "x.npy", x)
    for name, data in {"array": x, "memmap": np.load(tmp_path / "x.npy", mmap_mode="r")}.items():
        result = explain_dataset(
            model, data, METHOD, tmp_path / name, batch_size=8, ray=True, workers=2, progress=False
        )
        assert (result.computed, result.reused, result.duplicates) == (12, 0, 0), name
        assert np.array_equal(result.maps[:], local), name


def test_ray_dataset_source_equals_local(cluster, model, x, local, tmp_path):
    import ray.data

    rows = ray.data.from_items([{"id": i, "image": x[i]} for i in range(len(x))], override_num_blocks=7)
    result = explain_dataset(
        model, rows, METHOD, tmp_path / "store", batch_size=8, column="image", workers=2, progress=False
    )
    assert (result.computed, result.duplicates) == (12, 0)
    assert np.array_equal(result.maps[:], local)
    with pytest.raises(ValueError, match="'id' column"):
        explain_dataset(model, ray.data.from_items([{"image": x[0]}]), METHOD, tmp_path / "bad", column="image")


def test_killed_actor_is_restarted_and_every_batch_written_once(cluster, model, x, local, tmp_path):
    store = tmp_path / "store"

    def one_batch_done() -> bool:
        try:
            return bool(zarr.open_group(str(store), mode="r")["done"][:].any())
        except Exception:  # the store is not created yet
            return False

    killer = Killer("ray::MapWorker(MapBatches(BatchExplainer))", ready=one_batch_done)
    killer.start()
    result = explain_dataset(model, x, METHOD, store, batch_size=8, ray=True, workers=2, progress=False)
    killer.join(timeout=1)
    assert killer.killed is not None, "the job ended before an actor could be killed"
    assert (result.computed, result.reused, result.duplicates) == (12, 0, 0)
    assert zarr.open_group(str(store), mode="r")["done"][:].all()
    assert np.array_equal(result.maps[:], local)
