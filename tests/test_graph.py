"""The model graph: node kinds, activations, positions, fusion and the cache."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from signxai.torch_signxai.methods.graph import KINDS, model_graph


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = y + self.conv2(y)
        return self.head(torch.flatten(y, 1))


class Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.head(y.mean((2, 3)))


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.squeeze, self.gate = nn.Conv2d(6, 6, 1), nn.Sigmoid()
        self.act = nn.ReLU6()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        y = self.act(self.depthwise(self.conv(x)))
        y = y * self.gate(self.squeeze(F.adaptive_avg_pool2d(y, 1)))
        return self.head(y.view(y.size(0), -1, 25).permute(0, 2, 1).mean(1))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = -x
        return self.b(self.a(x))


def _kinds(graph):
    return [(node.label, node.kind.name) for node in graph.nodes]


def test_residual_add_and_functional_relu():
    graph = model_graph(Residual())
    kinds = dict(_kinds(graph))
    assert kinds["'conv1'"] == "conv" and kinds["'bn1'"] == "batchnorm" and kinds["'head'"] == "linear"
    relu = next(node for node in graph.nodes if node.kind.name == "activation")
    assert relu.op == "call_function" and relu.activation.name == "relu" and relu.activation.relu_like
    assert relu.activation.keras_layer == "Activation" and relu.activation.lrp == "pass"
    assert relu.fused_into is None  # it follows BatchNorm, not a kernel layer
    add = next(node for node in graph.nodes if node.kind.name == "add")
    assert add.kind.lrp == "z" and len(add.inputs) == 2
    assert add.inputs[0] == relu.name and graph[add.inputs[1]].target == "conv2"
    # the ReLU's output fans out to conv2 and the add
    assert {node.name for node in graph.consumers(relu.name)} == {add.name, graph.by_module(graph.module.conv2)[0].name}
    flatten = graph.consumers(add.name)[0]
    assert flatten.kind.name == "reshape" and flatten.kind.reshape
    assert {graph[n].target for n in graph.input_layers} == {"conv1"}
    assert {graph[n].target for n in graph.last_layers} == {"head"}


def test_concatenation_and_spatial_mean():
    graph = model_graph(Dense())
    kinds = [kind for _, kind in _kinds(graph)]
    assert kinds.count("concat") == 1 and kinds.count("mean") == 1
    cat = next(node for node in graph.nodes if node.kind.name == "concat")
    assert [graph[n].target for n in cat.inputs] == ["a", "b"] and cat.kind.lrp == "gradient"
    # both convolutions read the input directly: both are input layers
    assert {graph[n].target for n in graph.input_layers} == {"a", "b"}
    relu = graph.by_module(graph.module.relu)[0]
    assert relu.fused_into is None  # it follows a concatenation


def test_gate_depthwise_conv_relu6_and_reshapes():
    model = Gated()
    graph = model_graph(model)
    depthwise = graph.by_module(model.depthwise)[0]
    assert depthwise.kind.name == "conv" and depthwise.module.groups == 6
    relu6 = graph.by_module(model.act)[0]
    assert relu6.activation.name == "relu6" and relu6.activation.relu_like
    assert relu6.activation.keras_layer == "ReLU" and dict(relu6.activation.keras_config) == {"max_value": 6.0}
    assert relu6.activation.lrp == "gradient" and relu6.fused_into is None  # a ReLU layer never fuses
    sigmoid = graph.by_module(model.gate)[0]
    assert sigmoid.fused_into == graph.by_module(model.squeeze)[0].name and not sigmoid.activation.relu_like
    gate = next(node for node in graph.nodes if node.kind.name == "gate")
    assert set(gate.inputs) == {relu6.name, sigmoid.name}
    pool = next(node for node in graph.nodes if node.kind.name == "avg_pool")
    assert pool.op == "call_function" and pool.kind.lrp == "z"
    kinds = [kind for _, kind in _kinds(graph)]
    assert "meta" in kinds  # y.size(0)
    view = next(node for node in graph.nodes if node.target == "view")
    assert view.inputs == (gate.name,)  # the size node carries no tensor
    assert {graph[n].target for n in graph.input_layers} == {"conv"}
    assert {graph[n].target for n in graph.last_layers} == {"head"}


def test_input_layer_behind_a_flatten_but_not_behind_a_pad():
    flat = model_graph(nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(12, 3)))
    assert {flat[n].target for n in flat.input_layers} == {"2"}
    padded = model_graph(nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 3)))
    assert padded.input_layers == frozenset()


def test_activation_table_follows_keras_applications():
    graph = model_graph(
        nn.Sequential(nn.Linear(3, 3), nn.SiLU(), nn.LeakyReLU(0.2), nn.ELU(), nn.ELU(0.5), nn.Hardswish(), nn.Tanh())
    )
    acts = {node.target: node.activation for node in graph.nodes if node.activation is not None}
    assert dict(acts["1"].keras_config) == {"activation": "swish"} and acts["1"].lrp == "pass"
    assert graph[graph.by_module(graph.module.get_submodule("1"))[0].name].fused_into is not None
    assert acts["2"].keras_layer == "LeakyReLU" and acts["2"].keras_config["alpha"] == 0.2
    assert acts["2"].lrp == "gradient"
    assert acts["3"].keras_layer == "Activation" and acts["4"].keras_layer == "ELU"
    assert acts["5"].keras_layer is None and acts["5"].lrp == "gradient"
    assert not any(a.relu_like for a in acts.values())


def test_functional_activation_parameters_are_read():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            return F.leaky_relu(torch.relu(self.a(x)), 0.3)

    graph = model_graph(Net())
    acts = [node.activation for node in graph.nodes if node.activation is not None]
    assert [a.name for a in acts] == ["relu", "leaky_relu"] and acts[1].keras_config["alpha"] == 0.3


def test_unknown_operations_are_marked_unsupported():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm = nn.Linear(3, 3), nn.LayerNorm(3)
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return torch.exp(self.norm(self.a(x))) * self.scale

    graph = model_graph(Net())
    unsupported = {node.label for node in graph.nodes if node.kind.lrp == "unsupported"}
    assert "'norm'" in unsupported
    assert any("exp" in label for label in unsupported) and any("scale" in label for label in unsupported)


def test_untraceable_models_and_single_layers_have_no_graph():
    assert model_graph(Untraceable()) is None
    assert model_graph(nn.Linear(3, 2)) is None


def test_cached_weakly_and_rebuilt_when_the_module_tree_changes():
    model = Residual()
    graph = model_graph(model)
    assert model_graph(model) is graph
    model.conv2 = nn.Conv2d(4, 4, 3, padding=1)
    rebuilt = model_graph(model)
    assert rebuilt is not graph and rebuilt.by_module(model.conv2)
    model.eval()  # the training flags decide what dropout traces to
    assert model_graph(model) is not rebuilt
    ref = weakref.ref(model)
    del model, graph, rebuilt
    gc.collect()
    assert ref() is None


def test_graph_module_shares_the_models_parameters():
    model = Residual().double()
    graph = model_graph(model)
    assert graph.module.conv1 is model.conv1
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    model.eval()
    assert torch.equal(model_graph(model).module(x), model(x))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_has_a_known_lrp_treatment(name):
    assert KINDS[name].lrp in {"rule", "batchnorm", "z", "gradient", "activation", "none", "unsupported"}


def test_a_softmax_wrapper_has_the_wrapped_graph_without_its_softmax():
    from signxai.torch_signxai import remove_softmax

    model = nn.Sequential(Residual(), nn.Softmax(dim=1)).double().eval()
    wrapper = remove_softmax(model)
    graph = model_graph(wrapper)
    assert not any(node.kind.name == "softmax" for node in graph.nodes)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert torch.equal(graph.module(x), wrapper(x))
    assert graph.by_module(model[0].conv1)


def test_in_place_functional_activations_keep_their_semantics_as_modules():
    from signxai.torch_signxai.methods.modular import of_model

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            y = self.a(x)
            F.relu_(y)  # the result is not used: y itself is modified
            z = torch.relu(self.a(x))
            z.relu_()
            return self.b(y + F.relu(z, inplace=True))

    model = Net().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    modular = of_model(model)
    assert sum(name.startswith("_graph_") for name, _ in modular.module.named_modules()) == 5
    assert torch.equal(modular.module(x), model(x))
