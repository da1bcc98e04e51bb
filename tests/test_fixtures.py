"""Tests for the trained fixture models in ``fixtures/``."""

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures import FIXTURES, load_inputs, load_labels, load_model  # noqa: E402
from fixtures.models import FIXTURE_DIR, WEIGHTS_DIR  # noqa: E402

NAMES = sorted(FIXTURES)
RECORD = json.loads((FIXTURE_DIR / "training.json").read_text())
CONV = {"cnn": nn.Conv2d, "cnn1d": nn.Conv1d}


def logits(name):
    """Return the model's outputs on its stored inputs, as a tensor."""
    with torch.no_grad():
        return load_model(name)(torch.from_numpy(load_inputs(name)))


def executed_modules(model, x, kind):
    """Return the names of the leaf modules of type ``kind`` in call order."""
    order = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, kind)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def test_registry_has_the_four_fixtures():
    assert NAMES == ["digits_cnn", "digits_cnn_bn", "digits_mlp", "series_cnn1d"]
    for name, info in FIXTURES.items():
        assert info.name == name
        assert info.kind in {"mlp", "cnn", "cnn1d"}
        assert (WEIGHTS_DIR / info.weights).is_file()
        assert info.description and "\n" not in info.description


def test_registry_is_frozen():
    with pytest.raises(AttributeError):
        FIXTURES["digits_mlp"].name = "other"


def test_unknown_name_raises():
    with pytest.raises(KeyError, match="digits_mlp"):
        load_model("no_such_fixture")


@pytest.mark.parametrize("name", NAMES)
def test_loads_in_eval_mode_on_cpu(name):
    model = load_model(name)
    assert not any(m.training for m in model.modules())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_factory_gives_an_untrained_model(name):
    fresh = FIXTURES[name].factory()
    trained = load_model(name)
    assert fresh.state_dict().keys() == trained.state_dict().keys()
    assert any(
        not torch.equal(a, b)
        for a, b in zip(fresh.parameters(), trained.parameters())
    )


@pytest.mark.parametrize("name", NAMES)
def test_stored_inputs_shape_and_signs(name):
    x = load_inputs(name)
    assert x.dtype == np.float32
    assert x.shape == (8, *FIXTURES[name].input_shape)
    assert (x > 0).any() and (x < 0).any()


@pytest.mark.parametrize("name", NAMES)
def test_logits_shape_and_not_softmax(name):
    out = logits(name)
    assert out.shape == (8, FIXTURES[name].n_classes)
    assert (out < 0).any()
    assert not torch.allclose(out.sum(dim=1), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_predictions_match_training_record(name):
    labels = load_labels(name)
    rec = RECORD["models"][name]
    assert labels.tolist() == rec["stored_labels"]
    correct = int((logits(name).argmax(dim=1).numpy() == labels).sum())
    assert correct == rec["stored_correct"]
    assert correct >= 6
    assert rec["test_accuracy"] > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_deterministic(name):
    model = load_model(name)
    x = torch.from_numpy(load_inputs(name))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_relus_are_modules_and_not_inplace(name):
    model = load_model(name)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus
    assert not any(m.inplace for m in relus)


@pytest.mark.parametrize("name", NAMES)
def test_gradcam_layer_is_the_last_executed_conv(name):
    info = FIXTURES[name]
    model = load_model(name)
    if info.kind == "mlp":
        assert info.gradcam_layer is None
        return
    modules = dict(model.named_modules())
    assert isinstance(modules[info.gradcam_layer], CONV[info.kind])
    x = torch.from_numpy(load_inputs(name))
    convs = executed_modules(model, x, (nn.Conv1d, nn.Conv2d))
    assert convs[-1] == info.gradcam_layer


def test_digits_cnn_registers_classifier_before_features():
    model = load_model("digits_cnn")
    assert [n for n, _ in model.named_children()] == ["classifier", "features"]
    first_linear_registered = next(
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    )
    x = torch.from_numpy(load_inputs("digits_cnn"))
    first_executed = executed_modules(model, x, (nn.Linear, nn.Conv2d))[0]
    assert first_linear_registered == "classifier.1"
    assert first_executed == "features.0"


def test_batchnorm_statistics_are_trained():
    bns = [m for m in load_model("digits_cnn_bn").modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2
    for bn in bns:
        assert bn.num_batches_tracked > 0
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean), atol=1e-3)
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var), atol=1e-2)
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight), atol=1e-3)


def test_loading_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in NAMES:
        load_model(name)
        load_inputs(name)
        load_labels(name)
