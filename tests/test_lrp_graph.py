"""LRP on graph models against plain-torch float64 references written from iNNvestigate's
formulas (not from our rules): kernel layers get the analyzer's rule, sums and average pooling
the Z rule with the zero-only safe divide, concatenation, gates, max pooling, nearest upsampling
and reshapes their gradient, Activation-spelled activations pass relevance; relevance reaching a
tensor from several consumers is summed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parity.compare import relative_error
from signxai.torch_signxai import calculate_relevancemap, calculate_relevancemaps
from signxai.torch_signxai.methods.graph import UnsupportedLayerError
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps as tf_relevancemaps

TOL = 1e-11  # float64 formula identities: a few hundred roundings of order 1e-16 each


# ------------------------------------------------------------------ formulas (plain torch)


def _affine_grad(fn, x, share):
    """``W^T share`` of an affine ``fn`` at ``x`` (by autograd on the plain function)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = fn(x)
        (g,) = torch.autograd.grad(z, x, share)
    return g


def eps_rule(fn, x, r, eps):
    with torch.no_grad():
        z = fn(x)
    return x * _affine_grad(fn, x, r / torch.where(z >= 0, z + eps, z - eps))


def z_rule(fn, x, r):
    with torch.no_grad():
        z = fn(x)
    return x * _affine_grad(fn, x, r / torch.where(z == 0, 1e-7, z))


def alpha_beta_rule(conv: nn.Module, x, r, alpha, beta):
    """iNNvestigate's alpha-beta for a conv/dense layer, full bias in both halves."""

    def layer(w, b):
        return lambda t: F.linear(t, w, b) if isinstance(conv, nn.Linear) else conv._conv_forward(t, w, b)

    w, b = conv.weight.detach(), conv.bias.detach()
    wp, wn, bp, bn = w.clamp(min=0), w.clamp(max=0), b.clamp(min=0), b.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)

    def half(w1, w2, b1, b2):
        with torch.no_grad():
            z = layer(w1, b1)(xp) + layer(w2, b2)(xn)
        s = r / torch.where(z == 0, 1e-7, z)
        return xp * _affine_grad(layer(w1, None), xp, s) + xn * _affine_grad(layer(w2, None), xn, s)

    return alpha * half(wp, wn, bp, bn) - beta * half(wn, wp, bn, bp)


def sum_rule(terms, r):
    """iNNvestigate's AddReverseLayer: ``R_k = x_k * R / z`` with ``z = sum_k x_k``."""
    z = sum(terms)
    share = r / torch.where(z == 0, 1e-7, z)
    return [t * share for t in terms]


def grad_map(fn, x, r):
    return _affine_grad(fn, x, r)


def seed(logits, target):
    r = torch.zeros_like(logits)
    r[:, target] = logits[:, target]
    return r


# ------------------------------------------------------------------ models


class ResCatNet(nn.Module):
    """conv -> F.relu -> (residual sum with conv2, concatenated with conv3) -> optional SE gate
    -> max pool -> nearest upsampling -> functional global average pooling -> dense."""

    def __init__(self, gate: bool = True, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=bias)
        self.conv3 = nn.Conv2d(3, 2, 1, bias=bias)
        self.conv4 = nn.Conv2d(5, 5, 1, bias=bias)
        self.gate = gate
        self.fc = nn.Linear(5, 4, bias=bias)
        self.double().eval()

    def forward(self, x):
        y = F.relu(self.conv1(x))
        t = torch.cat([y + self.conv2(y), self.conv3(y)], dim=1)
        if self.gate:
            t = t * torch.sigmoid(self.conv4(F.adaptive_avg_pool2d(t, 1)))
        u = F.interpolate(F.max_pool2d(t, 2), scale_factor=2, mode="nearest")
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(u, 1), 1))


def reference_rescat(model: ResCatNet, x: torch.Tensor, target: int, kernel_rule) -> torch.Tensor:
    """LRP of :class:`ResCatNet` node by node; ``kernel_rule(layer, x, r)`` for conv/dense."""
    with torch.no_grad():
        h = model.conv1(x)
        y = torch.relu(h)
        y2, c3 = model.conv2(y), model.conv3(y)
        s = y + y2
        t = torch.cat([s, c3], dim=1)
        g, q, a = t, None, None
        if model.gate:
            a = F.adaptive_avg_pool2d(t, 1)
            q = torch.sigmoid(model.conv4(a))
            g = t * q
        m = F.max_pool2d(g, 2)
        u = F.interpolate(m, scale_factor=2, mode="nearest")
        p = F.adaptive_avg_pool2d(u, 1)
        logits = model.fc(p.flatten(1))
    r = kernel_rule(model.fc, p.flatten(1), seed(logits, target)).view_as(p)
    r = z_rule(lambda v: F.adaptive_avg_pool2d(v, 1), u, r)
    r = grad_map(lambda v: F.interpolate(v, scale_factor=2, mode="nearest"), m, r)
    r_g = grad_map(lambda v: F.max_pool2d(v, 2), g, r)
    if model.gate:
        r_t = r_g * q  # each factor gets R times the other one
        r_q = (r_g * t).sum(dim=(2, 3), keepdim=True)
        r_a = kernel_rule(model.conv4, a, r_q)  # the sigmoid passes relevance
        r_t = r_t + z_rule(lambda v: F.adaptive_avg_pool2d(v, 1), t, r_a)
    else:
        r_t = r_g
    r_s, r_c3 = r_t[:, :3], r_t[:, 3:]
    r_y_direct, r_y2 = sum_rule([y, y2], r_s)
    r_y = r_y_direct + kernel_rule(model.conv2, y, r_y2) + kernel_rule(model.conv3, y, r_c3)
    return kernel_rule(model.conv1, x, r_y)  # the ReLU passes relevance


def _x(shape=(2, 2, 6, 6), seed_=0):
    return np.random.default_rng(seed_).normal(size=shape)


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize(
    "name, rule",
    [
        ("lrp_epsilon_0_1", lambda layer, x, r: eps_rule(layer, x, r, 0.1)),
        ("lrp_z", z_rule),
        ("lrp_alpha_2_beta_1", lambda layer, x, r: alpha_beta_rule(layer, x, r, 2.0, 1.0)),
    ],
)
def test_every_node_kind_against_the_formulas(gate, name, rule):
    model = ResCatNet(gate=gate)
    x = _x()
    got = calculate_relevancemaps(model, x, method=name, target_class=[1, 3])
    expected = np.stack(
        [reference_rescat(model, torch.from_numpy(x[i : i + 1]), t, rule)[0].numpy() for i, t in enumerate([1, 3])]
    )
    assert relative_error(got, expected) < TOL
    # the TF-compatible API gives the same map on a model without BatchNorm
    assert relative_error(tf_relevancemaps(name, x, model, neuron_selection=[1, 3]), expected) < TOL


def test_sums_and_average_pooling_keep_the_z_rule_under_another_analyzer():
    """The premise of the formula test: with the sum under epsilon instead, the map differs."""
    model = ResCatNet(gate=False)
    x = torch.from_numpy(_x()[:1])
    got = calculate_relevancemap(model, x[0].numpy(), method="lrp_epsilon_1", target_class=0)
    right = reference_rescat(model, x, 0, lambda layer, v, r: eps_rule(layer, v, r, 1.0))[0].numpy()
    assert relative_error(got, right) < TOL
    wrong = calculate_relevancemap(model, x[0].numpy(), method="gradient_x_input", target_class=0)
    assert relative_error(got, wrong) > 1e-3


def test_z_rule_is_gradient_times_input_on_relu_graphs_with_sums_and_concatenations():
    model = ResCatNet(gate=False)
    x = _x((3, 2, 6, 6), 4)
    z = calculate_relevancemaps(model, x, method="lrp_z", target_class=[0, 1, 2])
    gxi = calculate_relevancemaps(model, x, method="gradient_x_input", target_class=[0, 1, 2])
    assert relative_error(z, gxi) < 1e-10


def test_z_rule_conserves_the_logit_without_biases():
    model = ResCatNet(gate=False, bias=False)
    x = _x((3, 2, 6, 6), 5)
    maps = calculate_relevancemaps(model, x, method="lrp_z", target_class=[0, 1, 2])
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(maps.reshape(3, -1).sum(axis=1), logits[[0, 1, 2], [0, 1, 2]], rtol=1e-10)


class FanOut(nn.Module):
    """One ReLU output read by two dense layers and a residual sum: three shares to add up."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.a, self.b, self.c, self.head = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.relu = nn.ReLU()
        self.double()

    def forward(self, x):
        y = self.relu(self.a(x))
        return self.head(self.b(y) + self.c(y) + y)


def test_relevance_from_several_consumers_is_summed():
    model = FanOut()
    x = torch.from_numpy(_x((1, 5), 6))

    def rule(layer, v, r):
        return eps_rule(layer, v, r, 0.01)

    with torch.no_grad():
        y = torch.relu(model.a(x))
        b, c = model.b(y), model.c(y)
        logits = model(x)
    r = rule(model.head, b + c + y, seed(logits, 2))
    (r_bc, r_y), r_yy = sum_rule([b + c, y], r), None
    r_b, r_c = sum_rule([b, c], r_bc)  # Python evaluates (b + c) + y: two binary sums
    r_yy = r_y + rule(model.b, y, r_b) + rule(model.c, y, r_c)
    expected = rule(model.a, x, r_yy)[0].numpy()
    got = calculate_relevancemap(model, x[0].numpy(), method="lrp_epsilon_0_01", target_class=2)
    assert relative_error(got, expected) < TOL


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.act = nn.ReLU6()
        self.head = nn.Linear(2 * 8 * 8, 3)
        self.double()

    def forward(self, x):
        return self.head(self.up(self.grouped(self.act(self.dw(self.conv(x))))).flatten(1))


def test_depthwise_grouped_and_transposed_convolutions_and_relu6():
    """Every conv with its groups gets the rule; ReLU6 (a Keras ReLU layer) takes its gradient."""
    model = Depthwise()
    x = torch.from_numpy(_x((1, 2, 4, 4), 7))

    def rule(layer, v, r):
        return eps_rule(layer, v, r, 0.1)

    with torch.no_grad():
        h0 = model.conv(x)
        h1 = model.dw(h0)
        h2 = model.act(h1)
        h3 = model.grouped(h2)
        h4 = model.up(h3)
        logits = model(x)
    r = rule(model.head, h4.flatten(1), seed(logits, 0)).view_as(h4)
    r = rule(model.up, h3, r)
    r = rule(model.grouped, h2, r)
    r = grad_map(model.act, h1, r)
    r = rule(model.dw, h0, r)
    expected = rule(model.conv, x, r)[0].numpy()
    got = calculate_relevancemap(model, x[0].numpy(), method="lrp_epsilon_0_1", target_class=0)
    assert relative_error(got, expected) < TOL


class TwoInputLayers(nn.Module):
    """Two convolutions read the input (one behind a flatten/unflatten), one behind a padding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(14)
        self.a, self.b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.c = nn.Conv2d(2, 2, 3)
        self.head = nn.Linear(6 * 4 * 4, 3)
        self.double()

    def forward(self, x):
        same = x.flatten(1).view(x.shape)
        feats = torch.cat([self.a(x), self.b(same), self.c(F.pad(x, (1, 1, 1, 1)))], dim=1)
        return self.head(torch.relu(feats).flatten(1))


def test_input_layers_are_graph_positions():
    """lrpz_: the Z rule at every kernel layer iNNvestigate calls an input layer (a and b), not at
    one behind a padding (c), epsilon elsewhere."""
    model = TwoInputLayers()
    x = torch.from_numpy(_x((1, 2, 4, 4), 8))

    def eps(layer, v, r):
        return eps_rule(layer, v, r, 0.1)

    with torch.no_grad():
        padded = F.pad(x, (1, 1, 1, 1))
        feats = torch.cat([model.a(x), model.b(x), model.c(padded)], dim=1)
        logits = model(x)
    r = eps(model.head, torch.relu(feats).flatten(1), seed(logits, 1)).view_as(feats)
    r_pad = eps(model.c, padded, r[:, 4:])
    expected = (
        z_rule(model.a, x, r[:, :2])
        + z_rule(model.b, x, r[:, 2:4])
        + grad_map(lambda v: F.pad(v, (1, 1, 1, 1)), x, r_pad)
    )[0].numpy()
    got = calculate_relevancemap(model, x[0].numpy(), method="lrpz_epsilon_0_1", target_class=1)
    assert relative_error(got, expected) < TOL


def test_deep_taylor_takes_the_gradient_of_sums_and_refuses_gates():
    model = ResCatNet(gate=False)
    x = _x((1, 2, 6, 6), 9)[0]
    got = calculate_relevancemap(model, x, method="lrp_deep_taylor", target_class=0)
    assert np.isfinite(got).all()
    with pytest.raises(UnsupportedLayerError, match="gate"):
        calculate_relevancemap(ResCatNet(gate=True), x, method="lrp_deep_taylor", target_class=0)


class TokenMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 3)
        self.double()

    def forward(self, x):
        return self.head(self.a(x).mean(1))


def test_mean_over_a_non_spatial_axis_is_refused():
    with pytest.raises(UnsupportedLayerError, match="mean.*axes \\[1\\]"):
        calculate_relevancemap(TokenMean(), np.ones((5, 4)), method="lrp_epsilon_0_1")


class SharedConv(nn.Module):
    """The same conv module at the input and in the middle: no single rule for lrpz_."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 2, 3, padding=1), nn.Linear(2 * 4 * 4, 3)
        self.double()

    def forward(self, x):
        return self.head(self.conv(torch.relu(self.conv(x))).flatten(1))


def test_a_module_called_at_an_input_and_a_hidden_position_is_refused():
    x = _x((1, 2, 4, 4), 10)[0]
    assert np.isfinite(calculate_relevancemap(SharedConv(), x, method="lrp_epsilon_0_1")).all()
    with pytest.raises(UnsupportedLayerError, match="'conv'.*input, until_layer_idx or last layer"):
        calculate_relevancemap(SharedConv(), x, method="lrpz_epsilon_0_1")


def test_the_model_is_left_as_it_was():
    model = ResCatNet()
    model.train()
    before = {name: m.training for name, m in model.named_modules()}
    calculate_relevancemap(model, _x()[0], method="lrp_epsilon_0_1")
    assert {name: m.training for name, m in model.named_modules()} == before
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert all(p.requires_grad for p in model.parameters())


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = (
            nn.Linear(4, 8),
            nn.MultiheadAttention(8, 2, batch_first=True),
            nn.Linear(8, 3),
        )
        self.double()

    def forward(self, x):
        tokens = self.embed(x)
        return self.head(self.attn(tokens, tokens, tokens)[0].mean(1))


def test_attention_raises_the_named_error():
    with pytest.raises(UnsupportedLayerError, match="MultiheadAttention.*'attn'|'attn'.*MultiheadAttention"):
        calculate_relevancemap(Attention(), np.ones((5, 4)), method="lrp_epsilon_0_1")


# ------------------------------------------------------------------ torchvision architectures


def _torchvision(name: str) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).double().eval()
    for module in model.modules():  # BatchNorm statistics of a plausible scale
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_var.uniform_(0.5, 1.5)
            module.running_mean.uniform_(-0.1, 0.1)
    return model


def test_squeezenet_lrp_z_is_gradient_times_input():
    model = _torchvision("squeezenet1_1")
    x = np.random.default_rng(0).normal(size=(3, 64, 64))
    z = calculate_relevancemap(model, x, method="lrp_z", target_class=7)
    gxi = calculate_relevancemap(model, x, method="gradient_x_input", target_class=7)
    assert relative_error(z, gxi) < 1e-10
    assert np.isfinite(calculate_relevancemap(model, x, method="lrp_epsilon_0_1")).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1"])
def test_torchvision_models_explain(name):
    model = _torchvision(name)
    x = np.random.default_rng(1).normal(size=(3, 64, 64))
    for method in ("lrp_epsilon_0_1", "lrpsign_epsilon_0_1", "guided_backprop"):
        rmap = calculate_relevancemap(model, x, method=method)
        assert rmap.shape == x.shape and np.isfinite(rmap).all() and np.abs(rmap).max() > 0, method


def test_a_softmax_wrapped_graph_model_explains_its_logits():
    from signxai.torch_signxai import remove_softmax

    inner = ResCatNet()
    wrapped = remove_softmax(nn.Sequential(inner, nn.Softmax(dim=1)))
    x = _x()[0]
    for method in ("lrp_epsilon_0_1", "guided_backprop"):
        np.testing.assert_array_equal(
            calculate_relevancemap(wrapped, x, method=method, target_class=2),
            calculate_relevancemap(inner, x, method=method, target_class=2),
        )


class SumOfBranches(nn.Module):
    """``sum`` of three branches (it starts from 0) and a term plus a shape number (refused)."""

    def __init__(self, shape_term: bool = False) -> None:
        super().__init__()
        torch.manual_seed(15)
        self.a, self.b, self.c, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 2)
        self.shape_term = shape_term
        self.double()

    def forward(self, x):
        total = sum([self.a(x), self.b(x), self.c(x)])
        return self.head(total + x.shape[1] if self.shape_term else total)


def test_python_sum_of_tensors_is_a_z_rule_sum_and_a_shape_constant_is_refused():
    x = _x((2, 4), 16)
    z = calculate_relevancemaps(SumOfBranches(), x, method="lrp_z", target_class=[0, 1])
    gxi = calculate_relevancemaps(SumOfBranches(), x, method="gradient_x_input", target_class=[0, 1])
    assert relative_error(z, gxi) < 1e-10
    with pytest.raises(UnsupportedLayerError, match="adds a constant"):
        calculate_relevancemaps(SumOfBranches(shape_term=True), x, method="lrp_z")
