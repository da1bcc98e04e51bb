"""Tests for the Grad-CAM family (``signxai.torch_signxai.methods.gradcam``).

The references are computed without the library: convolutions in numpy, gradients from explicit
formulas (or autograd on a separately written functional forward), and a numpy half-pixel
linear/bilinear resize.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures import load_inputs, load_model  # noqa: E402
from signxai.torch_signxai.methods import gradcam  # noqa: E402
from signxai.torch_signxai.methods.grammar import parse  # noqa: E402
from signxai.torch_signxai.methods.wrappers import (  # noqa: E402
    calculate_relevancemap,
    calculate_relevancemaps,
)

#: the grad_cam-family names of /work/shared/method_names.txt
FAMILY_NAMES = [
    "grad_cam",
    "grad_cam_timeseries",
    "grad_cam_VGG16ILSVRC",
    "guided_grad_cam_VGG16ILSVRC",
    "grad_cam_VGG16MITPL365",
    "guided_grad_cam_VGG16MITPL365",
    "grad_cam_MNISTCNN",
    "guided_grad_cam_MNISTCNN",
    "grad_cam_x_input",
    "grad_cam_x_input_x_sign",
    "grad_cam_x_sign",
]
TOL = dict(rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- numpy references


def resize_matrix(n_in, n_out):
    """Matrix (n_out, n_in) of linear interpolation with half-pixel centres, clamped at the edges."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        low = min(int(np.floor(src)), n_in - 1)
        high = min(low + 1, n_in - 1)
        frac = src - low
        matrix[i, low] += 1 - frac
        matrix[i, high] += frac
    return matrix


def resize_np(cam, size):
    """Resize a (length,) or (height, width) map to ``size`` (linear / bilinear, half-pixel)."""
    if cam.ndim == 1:
        return resize_matrix(cam.shape[0], size[0]) @ cam
    return resize_matrix(cam.shape[0], size[0]) @ cam @ resize_matrix(cam.shape[1], size[1]).T


def conv2d_np(x, weight, bias, padding=0):
    """Stride-1 cross-correlation of x (C, H, W) with weight (K, C, kh, kw)."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    k, _, kh, kw = weight.shape
    out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.empty((k, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = np.einsum("kchw,chw->k", weight, x[:, i : i + kh, j : j + kw]) + bias
    return out


def conv1d_np(x, weight, bias, stride=1):
    """Cross-correlation of x (C, L) with weight (K, C, k)."""
    k, _, width = weight.shape
    length = (x.shape[1] - width) // stride + 1
    out = np.empty((k, length))
    for i in range(length):
        out[:, i] = np.einsum("kcw,cw->k", weight, x[:, i * stride : i * stride + width]) + bias
    return out


def reference_cam(features, grads, input_shape):
    """Grad-CAM from features A (K, *s) and d y_t / d A, broadcast to ``input_shape`` (C, *S)."""
    axes = tuple(range(1, features.ndim))
    weights = grads.mean(axis=axes, keepdims=True)
    cam = np.maximum((weights * features).sum(axis=0), 0)
    if cam.max() > 0:
        cam = cam / cam.max()
    return np.broadcast_to(resize_np(cam, input_shape[1:]), input_shape)


def relu(a):
    return np.maximum(a, 0)


def params(module):
    return module.weight.detach().numpy(), module.bias.detach().numpy()


# ----------------------------------------------------------------------------- models


def seeded(seed):
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def net2d(inplace=False):
    """Conv(pad 1) + ReLU + Conv + ReLU + Linear on 2x8x8 inputs; the last conv's features are 4x6x6."""
    return (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(3, 4, 3),
            nn.ReLU(inplace=inplace),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 5),
        )
        .double()
        .eval()
    )


def net2d_reference(model, x, target):
    """Grad-CAM of net2d's last conv, after its ReLU: d y_t / d A is the head's weight row."""
    w1, b1 = params(model[0])
    w2, b2 = params(model[2])
    features = relu(conv2d_np(relu(conv2d_np(x, w1, b1, padding=1)), w2, b2))
    grads = model[5].weight.detach().numpy()[target].reshape(features.shape)
    return reference_cam(features, grads, x.shape)


def net1d():
    """Conv1d + ReLU + strided Conv1d + ReLU + Linear on 2x20 inputs; last features 4x7."""
    return (
        nn.Sequential(
            nn.Conv1d(2, 3, 3),
            nn.ReLU(),
            nn.Conv1d(3, 4, 5, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 7, 3),
        )
        .double()
        .eval()
    )


class ConvBNReLU(nn.Module):
    """Conv + BatchNorm + ReLU + Linear: the conv is not directly followed by an activation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU()
        self.head = nn.Linear(3 * 6 * 6, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))).flatten(1))


class Reordered(nn.Module):
    """``late`` is registered before ``early`` but runs after it; a functional ReLU follows it
    (Grad-CAM's features at ``late`` are that ReLU's output)."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(3, 4, 3)
        self.early = nn.Conv2d(2, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.late(self.act(self.early(x)))).flatten(1))


class InPlaceAfterConv(nn.Module):
    """The conv's output is scaled in place by a functional op before its activation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        out = self.conv(x)
        out.mul_(2.0)
        return self.head(torch.relu(out).flatten(1))


class TinyVGG(nn.Module):
    """VGG16's ``features`` layout (conv at features.28, ReLU at .29) with 4 channels, 32x32 inputs."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for item in [4, 4, "M", 4, 4, "M", 4, 4, 4, "M", 4, 4, 4, "M", 4, 4, 4, "M"]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(4, 5)
        for conv in layers:
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, std=(2 / (9 * conv.in_channels)) ** 0.5)
                nn.init.constant_(conv.bias, 0.1)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def hooks_left(model):
    """Every hook still registered on any module of ``model``."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [(name, kind) for name, module in model.named_modules() for kind in kinds if getattr(module, kind)]


def run(name, model, x, **kwargs):
    """One input through the TF-compatible API, with a check that the model was left as it was."""
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    out = calculate_relevancemap(name, x, model, **kwargs)
    assert hooks_left(model) == []
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    return out


# ----------------------------------------------------------------------------- reference tests


@pytest.mark.parametrize("target", [0, 3])
def test_2d_matches_numpy_reference(target):
    rng = seeded(0)
    model = net2d()
    x = rng.normal(size=(2, 8, 8))
    out = run("grad_cam", model, x, neuron_selection=target)
    np.testing.assert_allclose(out, net2d_reference(model, x, target), **TOL)


def test_default_target_is_the_largest_logit():
    rng = seeded(1)
    model = net2d()
    x = rng.normal(size=(2, 8, 8))
    top = int(model(torch.from_numpy(x)[None]).argmax())
    np.testing.assert_allclose(run("grad_cam", model, x), net2d_reference(model, x, top), **TOL)


def test_named_earlier_layer_matches_autograd_on_a_separate_forward():
    rng = seeded(2)
    model = net2d()
    x = rng.normal(size=(2, 8, 8))
    w1, b1 = params(model[0])
    features = relu(conv2d_np(x, w1, b1, padding=1))
    leaf = torch.from_numpy(features).requires_grad_(True)
    hidden = torch.relu(F.conv2d(leaf[None], model[2].weight.detach(), model[2].bias.detach()))
    logit = F.linear(hidden.flatten(1), model[5].weight.detach(), model[5].bias.detach())[0, 1]
    (grads,) = torch.autograd.grad(logit, leaf)
    expected = reference_cam(features, grads.numpy(), x.shape)
    out = run("grad_cam", model, x, layer_name="0", neuron_selection=1)
    np.testing.assert_allclose(out, expected, **TOL)
    # same spatial size as the input: the resize is the identity and the peak is exactly 1
    assert out.max() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["grad_cam", "grad_cam_timeseries"])
def test_1d_matches_numpy_reference(name):
    rng = seeded(3)
    model = net1d()
    x = rng.normal(size=(2, 20))
    w1, b1 = params(model[0])
    w2, b2 = params(model[2])
    features = relu(conv1d_np(relu(conv1d_np(x, w1, b1)), w2, b2, stride=2))
    grads = model[5].weight.detach().numpy()[2].reshape(features.shape)
    out = run(name, model, x, neuron_selection=2)
    np.testing.assert_allclose(out, reference_cam(features, grads, x.shape), **TOL)


def test_resize_matrix_agrees_with_a_hand_computed_case():
    # 2 -> 4 with half-pixel centres: sources -0.25 (clamped), 0.25, 0.75, 1.25 (clamped high)
    np.testing.assert_allclose(resize_matrix(2, 4) @ np.array([0.0, 1.0]), [0.0, 0.25, 0.75, 1.0])


# ----------------------------------------------------------------------------- activation convention


def test_features_are_taken_after_a_directly_following_activation():
    rng = seeded(4)
    model = net2d()
    x = rng.normal(size=(2, 8, 8))
    w1, b1 = params(model[0])
    w2, b2 = params(model[2])
    pre = conv2d_np(relu(conv2d_np(x, w1, b1, padding=1)), w2, b2)
    head = model[5].weight.detach().numpy()[0].reshape(pre.shape)
    before = reference_cam(pre, head * (pre > 0), x.shape)
    out = run("grad_cam", model, x, layer_name="2", neuron_selection=0)
    np.testing.assert_allclose(out, net2d_reference(model, x, 0), **TOL)
    assert not np.allclose(out, before)
    np.testing.assert_allclose(run("grad_cam", model, x, layer_name="3", neuron_selection=0), out, **TOL)


def test_inplace_activation_gives_the_same_map():
    rng = seeded(5)
    model = net2d()
    inplace = net2d(inplace=True)
    inplace.load_state_dict(model.state_dict())
    x = rng.normal(size=(2, 8, 8))
    np.testing.assert_allclose(run("grad_cam", inplace, x, neuron_selection=1), net2d_reference(model, x, 1), **TOL)


def test_conv_followed_by_batchnorm_uses_the_conv_output():
    seeded(6)
    model = ConvBNReLU().double().eval()
    x = np.random.default_rng(6).normal(size=(2, 8, 8))
    w, b = params(model.conv)
    features = conv2d_np(x, w, b)
    bn = model.bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()[:, None, None]
    shift = bn.bias.detach().numpy()[:, None, None] - bn.running_mean.numpy()[:, None, None] * scale
    normed = features * scale + shift
    grads = model.head.weight.detach().numpy()[2].reshape(features.shape) * (normed > 0) * scale
    out = run("grad_cam", model, x, layer_name="conv", neuron_selection=2)
    np.testing.assert_allclose(out, reference_cam(features, grads, x.shape), **TOL)
    np.testing.assert_allclose(run("grad_cam", model, x, neuron_selection=2), out, **TOL)


# ----------------------------------------------------------------------------- layer selection


def test_default_layer_is_the_last_conv_executed_not_registered():
    rng = seeded(7)
    model = Reordered().double().eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[-1] == "early"
    x = rng.normal(size=(2, 8, 8))
    w1, b1 = params(model.early)
    w2, b2 = params(model.late)
    # the functional ReLU after ``late`` counts as its activation (the Keras twin fuses it)
    features = relu(conv2d_np(relu(conv2d_np(x, w1, b1, padding=1)), w2, b2))
    grads = model.head.weight.detach().numpy()[0].reshape(features.shape)
    out = run("grad_cam", model, x, neuron_selection=0)
    np.testing.assert_allclose(out, reference_cam(features, grads, x.shape), **TOL)
    np.testing.assert_allclose(run("grad_cam", model, x, layer_name="late", neuron_selection=0), out, **TOL)
    assert not np.allclose(run("grad_cam", model, x, layer_name="early", neuron_selection=0), out)


def test_target_layer_alias_is_accepted():
    rng = seeded(8)
    model = Reordered().double().eval()
    x = rng.normal(size=(2, 8, 8))
    np.testing.assert_array_equal(
        run("grad_cam", model, x, target_layer="early"), run("grad_cam", model, x, layer_name="early")
    )


def test_unknown_layer_name_lists_the_conv_layers():
    model = Reordered().double().eval()
    with pytest.raises(ValueError, match=r"'nope'.*late, early"):
        run("grad_cam", model, np.zeros((2, 8, 8)), layer_name="nope")
    assert hooks_left(model) == []


def test_non_conv_layer_is_rejected():
    model = Reordered().double().eval()
    with pytest.raises(ValueError, match="needs a conv layer.*'head'"):
        run("grad_cam", model, np.zeros((2, 8, 8)), layer_name="head")
    assert hooks_left(model) == []


def test_unexecuted_layer_is_rejected():
    model = Reordered().double().eval()
    model.unused = nn.Conv2d(4, 4, 1).double()
    with pytest.raises(ValueError, match="'unused' was not executed"):
        run("grad_cam", model, np.zeros((2, 8, 8)), layer_name="unused")


def test_features_modified_in_place_later_are_rejected():
    model = InPlaceAfterConv().double().eval()
    with pytest.raises(ValueError, match="modified in place"):
        run("grad_cam", model, np.ones((1, 6, 6)))
    assert hooks_left(model) == []


def test_vgg_presets_name_features_28():
    rng = seeded(9)
    model = TinyVGG().double().eval()
    x = rng.normal(size=(3, 32, 32))
    expected = run("grad_cam", model, x, layer_name="features.28", neuron_selection=1)
    for name in ("grad_cam_VGG16ILSVRC", "grad_cam_VGG16MITPL365"):
        np.testing.assert_array_equal(run(name, model, x, neuron_selection=1), expected)
    assert not np.array_equal(
        run("grad_cam_VGG16ILSVRC", model, x, layer_name="features.25", neuron_selection=1), expected
    )


# ----------------------------------------------------------------------------- normalisation, batches


def test_all_zero_map_stays_zero_in_a_batch():
    rng = seeded(10)
    model = net2d()
    with torch.no_grad():
        model[5].weight[0] = -model[5].weight[0].abs()
        model[5].weight[1] = model[5].weight[1].abs()
    x = rng.normal(size=(2, 2, 8, 8))
    out = calculate_relevancemaps("grad_cam", x, model, neuron_selection=[0, 1])
    assert np.all(out[0] == 0)
    assert np.isfinite(out).all() and out[1].max() > 0
    np.testing.assert_allclose(out[1], net2d_reference(model, x[1], 1), **TOL)


def test_dead_features_give_a_zero_map():
    model = net2d()
    with torch.no_grad():
        model[2].bias.fill_(-1e3)
    out = run("grad_cam", model, np.ones((2, 8, 8)), neuron_selection=0)
    assert np.all(out == 0)


def test_maps_lie_in_unit_interval_with_peak_one_on_the_feature_grid():
    rng = seeded(11)
    model = net2d()
    x = rng.normal(size=(4, 2, 8, 8))
    out = calculate_relevancemaps("grad_cam", x, model, layer_name="0")
    assert out.min() >= 0
    np.testing.assert_allclose(out.reshape(4, -1).max(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", ["grad_cam", "guided_grad_cam_MNISTCNN", "grad_cam_x_sign"])
def test_batch_equals_per_sample(name):
    rng = seeded(12)
    model = net2d()
    x = rng.normal(size=(4, 2, 8, 8))
    targets = [0, 4, 2, 2]
    batched = calculate_relevancemaps(name, x, model, neuron_selection=targets)
    single = np.stack([run(name, model, xi, neuron_selection=t) for xi, t in zip(x, targets, strict=True)])
    np.testing.assert_allclose(batched, single, **TOL)


def test_one_forward_pass_for_the_whole_batch():
    model = net2d()
    calls = []
    handle = model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    try:
        calculate_relevancemaps("grad_cam", np.ones((3, 2, 8, 8)), model)
    finally:
        handle.remove()
    assert calls == [3]


# ----------------------------------------------------------------------------- guided, errors, names


def test_guided_grad_cam_is_guided_backprop_times_grad_cam():
    rng = seeded(13)
    model = net2d()
    x = rng.normal(size=(2, 8, 8))
    for target in (0, 3):
        guided = run("guided_grad_cam_MNISTCNN", model, x, neuron_selection=target)
        product = run("guided_backprop", model, x, neuron_selection=target) * run(
            "grad_cam", model, x, neuron_selection=target
        )
        np.testing.assert_allclose(guided, product, **TOL)
    spec = parse("guided_grad_cam", layer_name="0")
    batch = torch.from_numpy(x)[None]
    direct = gradcam.guided_grad_cam(model, batch, 1, spec)
    np.testing.assert_allclose(
        direct[0].numpy(),
        run("guided_backprop", model, x, neuron_selection=1)
        * run("grad_cam", model, x, layer_name="0", neuron_selection=1),
        **TOL,
    )


def test_timeseries_rejects_a_2d_layer():
    model = net2d()
    with pytest.raises(ValueError, match="grad_cam_timeseries needs a 1-D conv layer"):
        run("grad_cam_timeseries", model, np.ones((2, 8, 8)))
    assert hooks_left(model) == []


def test_input_without_spatial_axes_is_rejected():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="needs a conv layer"):
        run("grad_cam", model, np.ones(6, dtype=np.float32))


def test_model_without_conv_is_rejected():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).double()
    with pytest.raises(ValueError, match="needs a conv layer"):
        gradcam.grad_cam(model, torch.ones(1, 2, 4, dtype=torch.float64), None, parse("grad_cam"))
    assert hooks_left(model) == []


def family_case(name):
    """A model and one input suited to ``name`` (1-D for timeseries, VGG layout for presets)."""
    rng = np.random.default_rng(14)
    if "timeseries" in name:
        return net1d().float(), rng.normal(size=(2, 20)).astype(np.float32)
    if "VGG16" in name:
        return TinyVGG().eval(), rng.normal(size=(3, 32, 32)).astype(np.float32)
    return net2d().float(), rng.normal(size=(2, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_name_gives_a_finite_map_of_the_input_shape(name):
    torch.manual_seed(15)
    model, x = family_case(name)
    out = run(name, model, x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    if name.startswith("grad_cam") and name.endswith(("grad_cam", "ILSVRC", "PL365", "CNN", "series")):
        assert out.min() >= 0 and out.max() <= 1 + 1e-6
        np.testing.assert_array_equal(out, np.broadcast_to(out[:1], out.shape))


def test_post_multipliers_scale_the_map():
    rng = seeded(16)
    model = net2d()
    x = rng.normal(size=(2, 8, 8))
    cam = run("grad_cam", model, x)
    np.testing.assert_allclose(run("grad_cam_x_input", model, x), cam * x, **TOL)
    np.testing.assert_allclose(run("grad_cam_x_sign", model, x), cam * np.where(x >= 0, 1, -1), **TOL)


@pytest.mark.parametrize(
    "fixture,name", [("digits_cnn", "grad_cam"), ("digits_cnn_bn", "grad_cam"), ("series_cnn1d", "grad_cam_timeseries")]
)
def test_trained_fixtures(fixture, name):
    model = load_model(fixture)
    x = load_inputs(fixture)
    maps = calculate_relevancemaps(name, x, model)
    assert maps.shape == x.shape and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    np.testing.assert_allclose(maps[2], run(name, model, x[2]), rtol=1e-5, atol=1e-6)
    assert hooks_left(model) == []


class ConvThenActivation(nn.Module):
    """conv -> ReLU (module or functional) -> head: Grad-CAM's features are the ReLU's output in
    both spellings, as the Keras twin's conv with its fused activation gives them."""

    def __init__(self, functional: bool):
        super().__init__()
        torch.manual_seed(3)
        self.functional = functional
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(3 * 5 * 5, 2)

    def forward(self, x):
        features = self.conv(x)
        features = torch.relu(features) if self.functional else self.act(features)
        return self.head(features.flatten(1))


def test_functional_activation_after_the_conv_counts_as_its_activation():
    rng = seeded(11)
    x = rng.normal(size=(2, 5, 5))
    module, functional = (ConvThenActivation(f).double().eval() for f in (False, True))
    w, b = params(module.conv)
    features = relu(conv2d_np(x, w, b, padding=1))
    grads = module.head.weight.detach().numpy()[0].reshape(features.shape)
    expected = reference_cam(features, grads, x.shape)
    np.testing.assert_allclose(run("grad_cam", module, x, neuron_selection=0), expected, **TOL)
    np.testing.assert_allclose(run("grad_cam", functional, x, neuron_selection=0), expected, **TOL)
    assert hooks_left(functional) == []


class _ProjectionLast(nn.Module):
    """A residual block whose strided projection shortcut runs (and is registered) after the
    main branch, as in torchvision's BasicBlock: the last conv executed is the shortcut's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut = nn.Conv2d(3, 4, 1, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        out = self.conv2(torch.relu(self.conv1(y)))
        out = torch.relu(out + self.shortcut(y))
        return self.fc(out.mean(dim=(2, 3)))


def test_default_layer_is_the_conv_farthest_from_the_input_not_the_last_executed():
    model = _ProjectionLast().eval()
    assert gradcam.deepest_conv(model) == "conv2"  # 3 convs on its path; the shortcut has 2
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    default = calculate_relevancemaps("grad_cam", x, model, neuron_selection=[0, 2])
    named = calculate_relevancemaps("grad_cam", x, model, neuron_selection=[0, 2], layer_name="conv2")
    shortcut = calculate_relevancemaps("grad_cam", x, model, neuron_selection=[0, 2], layer_name="shortcut")
    assert np.array_equal(default, named)
    assert not np.allclose(default, shortcut)


def test_default_layer_among_equally_deep_convs_is_the_last_executed():
    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Conv2d(1, 2, 3, padding=1)
            self.a = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return torch.cat([self.b(x), self.a(x)], dim=1).mean(dim=(2, 3))

    assert gradcam.deepest_conv(Parallel()) == "a"
