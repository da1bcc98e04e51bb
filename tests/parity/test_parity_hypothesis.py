"""Hypothesis parity suite: random small architectures, weights and inputs, converted to Keras
twins; a sample of method names each must pass the parity gate against iNNvestigate (both
frameworks in float32 and float64, :func:`parity.compare.judge`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from parity.cases import method_names
from parity.harness import run_model
from parity.report import rows_from
from signxai.torch_signxai.methods.grammar import parse

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
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layers: list[nn.Module] = []
    if kind == "mlp":
        features = draw(st.integers(3, 8))
        shape, width = (features,), features
        for _ in range(draw(st.integers(1, 2))):
            out = draw(st.integers(2, 6))
            layers += [nn.Linear(width, out, bias=bias), nn.ReLU()]
            width = out
    else:
        conv, pools, norm = (
            (nn.Conv2d, (nn.MaxPool2d, nn.AvgPool2d), nn.BatchNorm2d)
            if kind == "cnn"
            else (nn.Conv1d, (nn.MaxPool1d, nn.AvgPool1d), nn.BatchNorm1d)
        )
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
@given(
    arch=architectures(),
    methods=st.lists(st.sampled_from(NAMES), min_size=3, max_size=3, unique=True),
    seed=st.integers(0, 2**16),
)
def test_random_models_match_innvestigate(arch, methods, seed):
    model, shape, _ = arch
    x = np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    run32, run64 = (run_model("random", model, x, shape, dtype, methods) for dtype in ("float32", "float64"))
    failures = [
        f"{row.method}: {row.note}"
        for row in rows_from(run32, run64)
        if not row.passed and not row.note.startswith("no reference")
    ]
    assert not failures, f"{model}\n" + "\n".join(failures)
