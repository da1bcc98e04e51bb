"""Hypothesis parity suite: random small architectures, weights and inputs, converted to Keras
twins; a sample of method names each must match iNNvestigate within the parity tolerance."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from parity.cases import method_kwargs, method_names, not_applicable
from parity.compare import compare, tolerance_for
from parity.reference import ReferenceUnavailable, reference_map
from parity.twin import to_keras
from signxai.torch_signxai.methods.grammar import parse
from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

pytestmark = pytest.mark.tf

#: methods compared on random models: every name except the statistical and preset ones
NAMES = [n for n in method_names() if parse(n).family not in ("random_uniform",)]


@st.composite
def architectures(draw):
    """(model, input shape, kind): dense, 1-D conv or 2-D conv stacks with random widths, biases,
    pooling and BatchNorm, in eval mode with random weights and running statistics."""
    kind = draw(st.sampled_from(["mlp", "cnn", "cnn1d"]))
    bias = draw(st.booleans())
    classes = draw(st.integers(2, 4))
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    layers: list[nn.Module] = []
    if kind == "mlp":
        features = draw(st.integers(3, 8))
        shape, width = (features,), features
        for _ in range(draw(st.integers(1, 2))):
            out = draw(st.integers(2, 6))
            layers += [nn.Linear(width, out, bias=bias), nn.ReLU()]
            width = out
    else:
        conv, pools, norm = ((nn.Conv2d, (nn.MaxPool2d, nn.AvgPool2d), nn.BatchNorm2d) if kind == "cnn"
                             else (nn.Conv1d, (nn.MaxPool1d, nn.AvgPool1d), nn.BatchNorm1d))
        size = draw(st.integers(5, 9))
        channels = draw(st.integers(1, 2))
        shape = (channels, size, size) if kind == "cnn" else (channels, size)
        for _ in range(draw(st.integers(1, 2))):
            out = draw(st.integers(2, 4))
            padding = draw(st.sampled_from([0, 1])) if size >= 3 else 1
            layers.append(conv(channels, out, 3, padding=padding, bias=bias))
            size += 2 * padding - 2
            if draw(st.booleans()):
                bn = norm(out)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)
                nn.init.uniform_(bn.weight, 0.5, 1.5)
                layers.append(bn)
            layers.append(nn.ReLU())
            if size >= 2 and draw(st.booleans()):
                layers.append(draw(st.sampled_from(pools))(2))
                size //= 2
            channels = out
        layers.append(nn.Flatten())
        width = channels * size ** (2 if kind == "cnn" else 1)
    layers.append(nn.Linear(width, classes, bias=bias))
    return nn.Sequential(*layers).eval(), shape, kind


@settings(max_examples=12, deadline=None)
@given(arch=architectures(), methods=st.lists(st.sampled_from(NAMES), min_size=3, max_size=3, unique=True),
       seed=st.integers(0, 2 ** 16))
def test_random_models_match_innvestigate(arch, methods, seed):
    model, shape, kind = arch
    x = np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    twin = to_keras(model, shape)
    with torch.no_grad():
        targets = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    failures = []
    for method in methods:
        spec = parse(method)
        last_conv = None if kind == "mlp" else "conv"
        if not_applicable(spec, kind, last_conv):
            continue
        kwargs = method_kwargs(spec, x)
        ours = calculate_relevancemaps(method, x, model, neuron_selection=targets, **kwargs)
        tf.keras.backend.clear_session()
        try:
            ref = reference_map(parse(method, **kwargs), twin.fresh, x, targets,
                                input_layer_hidden=twin.input_layer_hidden, layer_names=twin.layer_names)
        except ReferenceUnavailable:
            continue
        metrics = compare(ours, ref)
        if not metrics.rel_error <= tolerance_for(method):
            failures.append(f"{method}: rel. error {metrics.rel_error:.2e}")
    assert not failures, f"{model}\n" + "\n".join(failures)
