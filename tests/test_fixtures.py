"""Tests for the trained fixture models in ``fixtures/``."""

import json
import operator
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures import FIXTURES, load_inputs, load_labels, load_model  # noqa: E402
from fixtures.models import (  # noqa: E402
    CHAIN_FIXTURES,
    FIXTURE_DIR,
    GRAPH_FIXTURES,
    WEIGHTS_DIR,
)

NAMES = sorted(FIXTURES)
GRAPH_NAMES = sorted(GRAPH_FIXTURES)
RECORD = json.loads((FIXTURE_DIR / "training.json").read_text())
CONV = {"cnn": nn.Conv2d, "cnn1d": nn.Conv1d}


def traced(model):
    """The model's ``torch.fx`` graph, traced at module level."""
    return torch.fx.symbolic_trace(model)


def call_functions(model):
    """The functions the traced graph calls between modules, in order (``F.relu``, ``operator.add``)."""
    return [node.target for node in traced(model).graph.nodes if node.op == "call_function"]


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


def test_registry_has_the_chain_and_graph_fixtures():
    assert sorted(CHAIN_FIXTURES) == ["digits_cnn", "digits_cnn_bn", "digits_mlp", "series_cnn1d"]
    assert GRAPH_NAMES == ["digits_densenet", "digits_mobilenet", "digits_resnet"]
    assert FIXTURES == {**CHAIN_FIXTURES, **GRAPH_FIXTURES}
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
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), trained.parameters(), strict=True))


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


@pytest.mark.parametrize("name", sorted(CHAIN_FIXTURES))
def test_relus_are_modules_and_not_inplace(name):
    model = load_model(name)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus
    assert not any(m.inplace for m in relus)
    assert not any(node.target is torch.nn.functional.relu for node in traced(model).graph.nodes)


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
    registered = [n for n, m in model.named_modules() if isinstance(m, CONV[info.kind])]
    assert registered[-1] == info.gradcam_layer  # where the parity harness looks for it


def test_digits_cnn_registers_classifier_before_features():
    model = load_model("digits_cnn")
    assert [n for n, _ in model.named_children()] == ["classifier", "features"]
    first_linear_registered = next(n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    x = torch.from_numpy(load_inputs("digits_cnn"))
    first_executed = executed_modules(model, x, (nn.Linear, nn.Conv2d))[0]
    assert first_linear_registered == "classifier.1"
    assert first_executed == "features.0"


def test_loading_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in NAMES:
        load_model(name)
        load_inputs(name)
        load_labels(name)


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_graph_fixture_activations_are_never_inplace(name):
    model = load_model(name)
    units = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    assert units
    assert not any(m.inplace for m in units)


def test_resnet_graph_adds_a_strided_projection_and_uses_functional_relu():
    model = load_model("digits_resnet")
    calls = call_functions(model)
    assert calls.count(operator.add) == 2
    assert calls.count(torch.nn.functional.relu) == 2
    projection = model.block2.shortcut
    assert isinstance(projection[0], nn.Conv2d) and isinstance(projection[1], nn.BatchNorm2d)
    assert projection[0].kernel_size == (1, 1) and projection[0].stride == (2, 2)
    assert isinstance(model.block1.shortcut, nn.Identity)
    block = model.block2
    with torch.no_grad():
        hidden = model.block1(model.stem(torch.from_numpy(load_inputs("digits_resnet"))))
        main = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(hidden)))))
        assert main.shape == projection(hidden).shape == (8, 16, 4, 4)
        assert torch.equal(block(hidden), torch.relu(main + projection(hidden)))


def test_densenet_concatenates_along_channels_and_uses_functional_relu():
    model = load_model("digits_densenet")
    calls = call_functions(model)
    assert calls.count(torch.cat) == 4
    assert calls.count(torch.nn.functional.relu) == 1
    layer = model.block1[0]
    order = [type(m) for m in layer.children()]
    assert order == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]  # BN-ReLU-conv
    assert isinstance(model.transition[-1], nn.AvgPool2d)
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (2, 12, 8, 8)
    assert torch.equal(out[:, :8], x)


def test_mobilenet_inverted_residuals_are_depthwise_relu6_and_linear():
    model = load_model("digits_mobilenet")
    blocks = [m for m in model.modules() if type(m).__name__ == "InvertedResidual"]
    assert [b.use_residual for b in blocks] == [True, False, True]
    assert call_functions(model).count(operator.add) == 2
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    strides = []
    for block in blocks:
        kinds = [type(m) for m in block.layers]
        # expand conv-BN-ReLU6, depthwise conv-BN-ReLU6, linear bottleneck conv-BN (no activation)
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6] * 2 + [nn.Conv2d, nn.BatchNorm2d]
        depthwise = block.layers[3]
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels > 1
        assert depthwise.kernel_size == (3, 3)
        strides.append(depthwise.stride)
    assert strides == [(1, 1), (2, 2), (1, 1)]


@pytest.mark.parametrize(
    "name, count", [("digits_cnn_bn", 2), ("digits_resnet", 6), ("digits_densenet", 6), ("digits_mobilenet", 11)]
)
def test_batchnorm_statistics_are_trained(name, count):
    bns = [m for m in load_model(name).modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == count
    for bn in bns:
        assert bn.num_batches_tracked > 0
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean), atol=1e-3)
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var), atol=1e-2)
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight), atol=1e-3)


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_graph_fixtures_are_small(name):
    assert sum(p.numel() for p in load_model(name).parameters()) < 10_000
