"""Many threads explaining with one model at once, and the private views they run on.

Every map computed while three other threads explain with the same model must be bitwise the map
of the same call made alone; the model must stay exactly as it was (hooks, flags, ``forward``,
parameters and buffers), also as seen from another thread while the calls run. The view pool must
see weight updates (in place, ``load_state_dict``, replaced tensors), a swapped submodule, and must
not keep a deleted model alive. Several models explained at once each give their own maps, and
tracing a model (fx patches ``nn.Module`` for the whole process) leaves other threads alone.
"""

from __future__ import annotations

import copy
import gc
import random
import sys
import threading
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from signxai.torch_signxai import calculate_relevancemap as native_map
from signxai.torch_signxai.methods import private
from signxai.torch_signxai.methods.graph import model_graph
from signxai.torch_signxai.methods.wrappers import calculate_relevancemap as tf_map

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)

#: (method, parameters): LRP, the gradient family and Grad-CAM
CALLS = [
    ("lrp_epsilon_0_1", {}),
    ("lrp_alpha_1_beta_0", {}),
    ("lrpsign_epsilon_0_1", {}),
    ("gradient", {}),
    ("guided_backprop", {}),
    ("smoothgrad", {"num_samples": 4, "noise_level": 0.3, "seed": 7}),
    ("grad_cam", {}),
    ("deeplift_method", {}),
]


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Switch threads every 10 us instead of every 5 ms, so that races show up in short tests."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-pool, conv-ReLU, dropout and dense head; input (3, 12, 12), 4 classes. BatchNorm
    and dropout make train mode visible in every map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 6 * 6, 4))
        with torch.no_grad():
            self.features[1].running_mean.uniform_(-0.3, 0.3)
            self.features[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.head(self.features(x))


class Branching(SmallCNN):
    """The small CNN with data-dependent control flow: fx cannot trace it, LRP runs it as a chain."""

    def forward(self, x):
        features = self.features(x)
        if x.size(-1) < 12:
            raise ValueError("input too small")
        return self.head(features)


def inputs(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.normal(size=(3, 12, 12)).astype(np.float32) for _ in range(count)]


def explain(api: str, model: nn.Module, x: np.ndarray, method: str, params: dict) -> np.ndarray:
    if api == "tf":
        return tf_map(method, x, model, neuron_selection=1, **params)
    return native_map(model, x, method=method, target_class=1, **params)


def state(model: nn.Module) -> dict:
    """Everything an explanation must leave alone, as plain comparable values."""
    return {
        "hooks": {n: {a: list(getattr(m, a)) for a in HOOK_DICTS} for n, m in model.named_modules()},
        "training": {n: m.training for n, m in model.named_modules()},
        "forward": {n: ("forward" in vars(m), type(m).forward) for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: p.grad is None for n, p in model.named_parameters()},
        "tensors": {
            n: (id(t), t.data_ptr(), t._version, t.detach().clone())
            for n, t in model.state_dict(keep_vars=True).items()
        },
    }


def same_state(a: dict, b: dict) -> bool:
    if {k: v for k, v in a.items() if k != "tensors"} != {k: v for k, v in b.items() if k != "tensors"}:
        return False
    return a["tensors"].keys() == b["tensors"].keys() and all(
        a["tensors"][n][:3] == b["tensors"][n][:3] and torch.equal(a["tensors"][n][3], b["tensors"][n][3])
        for n in a["tensors"]
    )


@pytest.mark.parametrize("build", [SmallCNN, Branching])
def test_four_threads_get_the_maps_of_calls_made_alone(build):
    model = build().train()
    model.features[0].weight.requires_grad_(False)  # a mixed set of flags, to be kept
    xs = inputs(3)
    jobs = [(api, i, method, params) for api in ("tf", "native") for i in range(len(xs)) for method, params in CALLS]
    alone = {job[:3]: explain(job[0], model, xs[job[1]], job[2], job[3]) for job in jobs}
    # eval semantics: the train-mode model explains as a deep copy of it in eval mode does
    evaluated = copy.deepcopy(model).eval()
    for (api, i, method), expected in alone.items():
        params = dict(CALLS)[method]
        assert np.array_equal(explain(api, evaluated, xs[i], method, params), expected), (api, method)
    before = state(model)

    work = jobs * 4
    random.Random(0).shuffle(work)
    results: list = []
    errors: list = []
    changed: list = []
    done = threading.Event()
    start = threading.Barrier(5)

    def worker(part: list) -> None:
        start.wait()
        try:
            for api, i, method, params in part:
                results.append(((api, i, method), explain(api, model, xs[i], method, params)))
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    def watcher() -> None:
        start.wait()
        while not done.is_set():
            if not same_state(state(model), before):
                changed.append(state(model))
                return

    threads = [threading.Thread(target=worker, args=(work[k::4],)) for k in range(4)]
    observer = threading.Thread(target=watcher)
    for thread in (*threads, observer):
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    observer.join()

    assert not errors, errors[:3]
    assert len(results) == len(work)
    wrong = [key for key, result in results if not np.array_equal(result, alone[key])]
    assert not wrong, f"{len(wrong)} maps differ from the call made alone: {wrong[:5]}"
    assert not changed, "the model changed while the calls ran"
    assert same_state(state(model), before)
    assert model.training and model.head[1].training


def _gradient(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return native_map(model, x, method="gradient", target_class=1)


def _lrp(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return native_map(model, x, method="lrp_epsilon_0_1", target_class=1)


@pytest.mark.parametrize("method", [_gradient, _lrp])
def test_the_views_see_weight_updates_and_a_swapped_submodule(method):
    model = SmallCNN().eval()
    x = inputs(1)[0]
    first = method(model, x)
    (view,) = [v for views in private._POOLS[model].free.values() for v in views]
    # in place (an optimiser step): the same view, the new weights
    with torch.no_grad():
        model.features[4].weight.mul_(-1.5)
    updated = method(model, x)
    assert not np.array_equal(updated, first)
    assert np.array_equal(updated, method(copy.deepcopy(model), x))
    assert [v for views in private._POOLS[model].free.values() for v in views] == [view]
    # the caller toggling train/eval changes nothing a view copies: the same view again
    model.train()
    assert np.array_equal(method(model, x), updated)
    model.eval()
    assert [v for views in private._POOLS[model].free.values() for v in views] == [view]
    # load_state_dict copies into the same tensors
    other = SmallCNN().eval()
    with torch.no_grad():
        for tensor in other.parameters():
            tensor.add_(0.25)
    model.load_state_dict(other.state_dict())
    assert np.array_equal(method(model, x), method(other, x))
    # tensors replaced: the pool is rebuilt
    model.load_state_dict(SmallCNN().state_dict(), assign=True)
    assert np.array_equal(method(model, x), first)
    with torch.no_grad():
        model.features[4].weight.data = model.features[4].weight.data * 2
    assert np.array_equal(method(model, x), method(copy.deepcopy(model), x))
    # a swapped submodule
    torch.manual_seed(5)
    model.features[4] = nn.Conv2d(6, 8, 3, padding=1)
    swapped = method(model, x)
    assert np.array_equal(swapped, method(copy.deepcopy(model), x))
    assert not np.array_equal(swapped, first)
    # an attribute changed in place (BatchNorm's eps): seen
    model.features[1].eps = 0.5
    changed = method(model, x)
    assert np.array_equal(changed, method(copy.deepcopy(model), x))
    assert not np.array_equal(changed, swapped)


@pytest.mark.parametrize("build", [SmallCNN, Branching])
def test_a_deleted_model_is_freed(build):
    model = build()
    x = inputs(1)[0]
    for method, params in CALLS:
        native_map(model, x, method=method, **params)
    assert model in private._POOLS
    if build is Branching:
        assert model_graph(model) is None  # the chain path is what this case covers
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_the_view_shares_storage_but_not_parameters_or_flags():
    model = SmallCNN().train()
    view = private.build_view(model)
    for (name, param), (view_name, alias) in zip(model.named_parameters(), view.named_parameters(), strict=True):
        assert name == view_name
        assert alias is not param and alias.data_ptr() == param.data_ptr()
        assert param.requires_grad and not alias.requires_grad
    assert all(not m.training for m in view.modules()) and all(m.training for m in model.modules())
    assert all(a is not b for a, b in zip(model.modules(), view.modules(), strict=True))


def test_tracing_a_model_leaves_other_threads_forward_passes_alone():
    """fx tracing patches ``nn.Module.__call__`` for the whole process while it runs; models
    explained meanwhile in other threads must run as they are."""
    model = SmallCNN().eval()
    x = inputs(1)[0]
    expected = {method: native_map(model, x, method=method) for method in ("gradient", "lrp_epsilon_0_1")}
    done = threading.Event()
    errors, wrong = [], []

    def worker() -> None:
        try:
            while not done.is_set():
                for method, value in expected.items():
                    if not np.array_equal(native_map(model, x, method=method), value):
                        wrong.append(method)
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        graphs = [model_graph(SmallCNN()) for _ in range(30)]  # a new model each time: a new trace
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert all(graph is not None for graph in graphs)
    assert not errors, errors[:3]
    assert not wrong


def test_several_models_explained_at_once_each_give_their_own_maps():
    models = [SmallCNN().eval(), Branching().eval()]
    with torch.no_grad():
        models[1].features[0].weight.mul_(-1.0)  # different weights, same paths
    xs = inputs(2)
    jobs = [(m, i, method) for m in range(2) for i in range(2) for method in ("lrp_epsilon_0_1", "gradient")]
    alone = {job: native_map(models[job[0]], xs[job[1]], method=job[2]) for job in jobs}
    assert not np.array_equal(alone[0, 0, "gradient"], alone[1, 0, "gradient"])
    results, errors = [], []

    def worker(part: list) -> None:
        try:
            for job in part:
                results.append((job, native_map(models[job[0]], xs[job[1]], method=job[2])))
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    work = jobs * 6
    random.Random(1).shuffle(work)
    threads = [threading.Thread(target=worker, args=(work[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert len(results) == len(work)
    assert all(np.array_equal(result, alone[job]) for job, result in results)
