"""The model-zoo check's pieces that need no TensorFlow (``parity/zoo.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from parity import zoo
from parity.harness import ModelRun

ISSUE_MODELS = {
    "vgg16",
    "alexnet",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "densenet121",
    "squeezenet1_1",
    "googlenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "mnasnet0_5",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
}


def test_zoo_is_the_issues_model_list():
    assert set(zoo.ZOO) == ISSUE_MODELS


def test_methods_cover_every_rule_and_input_prefix():
    from signxai.torch_signxai.methods.grammar import parse

    specs = [parse(name) for name in zoo.METHODS]
    lrp = [s for s in specs if s.family == "lrp"]
    assert {s.input_rule for s in lrp} >= {None, "sign", "z", "zbox", "w_square", "flat"}
    families = {s.family for s in specs}
    assert {"gradient", "guided_backprop", "deconvnet", "smoothgrad", "grad_cam", "lrp"} <= families
    rules = {s.rule for s in lrp}
    assert len(rules) >= 8


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)
    )


def test_calibration_gives_the_plain_average_of_the_batch_statistics():
    net = _bn_net()
    zoo.calibrate_batchnorm(net, (3, 5, 5), passes=3, batch=6, seed=7)
    bn = net[1]
    assert not net.training and not bn.training
    assert bn.momentum == 0.3  # restored
    assert int(bn.num_batches_tracked) == 3
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        feats = [net[0](torch.randn(6, 3, 5, 5, generator=generator)) for _ in range(3)]
    means = [f.mean(dim=(0, 2, 3)) for f in feats]
    variances = [f.var(dim=(0, 2, 3), unbiased=True) for f in feats]  # BN keeps the unbiased variance
    torch.testing.assert_close(bn.running_mean, sum(means) / 3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, sum(variances) / 3, rtol=1e-5, atol=1e-6)


def test_calibration_leaves_a_model_without_batchnorm_unchanged():
    net = nn.Sequential(nn.Linear(3, 2)).train()
    before = [p.clone() for p in net.parameters()]
    assert zoo.calibrate_batchnorm(net, (3,)) is net and not net.training
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_inputs_are_seeded_and_batched():
    a, b = zoo.zoo_inputs((3, 5, 5)), zoo.zoo_inputs((3, 5, 5))
    assert a.dtype == np.float32 and a.shape == (zoo.BATCH, 3, 5, 5)
    np.testing.assert_array_equal(a, b)


def _run(dtype, ours=None, references=None, errors=None, unavailable=None):
    x = np.zeros((2, 3, 4, 4), dtype)
    return ModelRun(
        "m",
        dtype,
        x,
        np.zeros(2, int),
        ours=ours or {},
        references=references or {},
        errors=errors or {},
        unavailable=unavailable or {},
    )


def test_method_rows_name_each_outcome():
    ref = np.ones((2, 3, 4, 4))
    off = ref * (1 + 1e-6)
    run32 = _run(
        "float32",
        ours={"a": ref, "b": ref},
        references={"a": ref, "b": ref},
        errors={"c": "signxai: UnsupportedLayerError: no rule"},
        unavailable={"d": "cannot"},
    )
    run64 = _run(
        "float64",
        ours={"a": ref, "b": off},
        references={"a": ref, "b": ref},
        unavailable={"c": "x", "d": "cannot"},
        errors={"e": "NotImplementedError: checks"},
    )
    results = [zoo.JobResult("m", dtype, 1.0, run=run) for dtype, run in (("float32", run32), ("float64", run64))]
    rows = {row.method: row for row in zoo.method_rows(*results, ("a", "b", "c", "d", "e"))}
    assert rows["a"].status == "pass"
    assert rows["b"].status == "FAIL" and "formula" in rows["b"].note
    assert rows["c"].status == "FAIL" and "UnsupportedLayerError" in rows["c"].note
    assert rows["d"].status == "n/a" and "cannot" in rows["d"].note
    assert rows["e"].status == "n/a" and "iNNvestigate cannot analyse" in rows["e"].note


def test_a_model_the_twin_cannot_build_is_a_row_saying_so():
    failed = zoo.JobResult("m", "float32", 1.0, twin_failure="UnsupportedLayerError: channel shuffle")
    other = zoo.JobResult("m", "float64", 1.0, twin_failure="UnsupportedLayerError: channel shuffle")
    rows = zoo.method_rows(failed, other, ("a", "b"))
    assert [(r.method, r.status) for r in rows] == [("all 2 methods", "n/a")]
    assert "channel shuffle" in rows[0].note


def test_a_model_the_harness_cannot_run_is_a_failing_row():
    ok = zoo.JobResult("m", "float32", 1.0, run=_run("float32"))
    crashed = zoo.JobResult("m", "float64", 1.0, error="FailedPreconditionError: no variable")
    rows = zoo.method_rows(ok, crashed, ("a",))
    assert [(r.method, r.status, r.note) for r in rows] == [
        ("all 1 methods", "FAIL", "FailedPreconditionError: no variable")
    ]


def test_a_long_error_keeps_its_first_and_last_lines():
    error = RuntimeError("Graph execution error:\n\n  trace line\n  another\nCould not find variable bn/moving_mean")
    assert zoo._describe(error) == ("RuntimeError: Graph execution error: [...] Could not find variable bn/moving_mean")


def test_native_check_names_the_error_of_an_attention_model():
    text = zoo.native_check(zoo.vision_transformer(), zoo.zoo_inputs((3, 32, 32)))
    assert text.startswith("UnsupportedLayerError")
    # it names the first construct of the transformer that LRP has no rule for
    assert any(word in text for word in ("class_token", "LayerNorm", "MultiheadAttention"))


def test_native_check_accepts_a_chain():
    net = zoo.calibrate_batchnorm(_bn_net(), (3, 5, 5))
    assert zoo.native_check(net, zoo.zoo_inputs((3, 5, 5))) == "yes"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ISSUE_MODELS))
def test_each_zoo_model_builds_calibrated_and_accepts_its_input(name):
    entry = zoo.ZOO[name]
    model = zoo.build(entry)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(int(m.num_batches_tracked) == 4 for m in norms)
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    with torch.no_grad():
        out = model(torch.from_numpy(zoo.zoo_inputs(entry.input_shape)))
    assert out.shape == (zoo.BATCH, 1000) and torch.isfinite(out).all()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if entry.size % 2 and first.stride == (2, 2) and first.padding != (0, 0):
        # TF 'same' at stride 2 on an odd side pads (kernel - 1) / 2 on both sides
        assert first.padding[0] == (first.kernel_size[0] - 1) // 2


def test_report_of_a_failed_job_and_a_passing_one():
    ref = np.ones((2, 3, 4, 4))
    run32 = _run("float32", ours={"a": ref}, references={"a": ref})
    run64 = _run("float64", ours={"a": ref}, references={"a": ref})
    results = {
        ("resnet18", "float32"): zoo.JobResult(
            "resnet18", "float32", 2.0, run=run32, twin_error=1e-7, native="yes", own_gradient_error=3e-7
        ),
        ("resnet18", "float64"): zoo.JobResult("resnet18", "float64", 3.0, run=run64, twin_error=1e-15),
        ("vgg16", "float32"): zoo.JobResult("vgg16", "float32", 1.0, twin_error=2e-7, native="yes"),
        ("vgg16", "float64"): zoo.JobResult("vgg16", "float64", 1.0, error="the float64 job's process failed: x"),
    }
    text, ok = zoo.report(results, ("a",), "UnsupportedLayerError: attention", {"runtime": "1 s"})
    assert not ok
    assert "| resnet18 | 65x65 | 1.0e-07 | 1.0e-15 | 3.0e-07 | yes | 1 / 0 / 0 | 5 |" in text
    assert "| vgg16 | 224x224 | 2.0e-07 | not checked | — | yes | 0 / 1 / 0 | 2 |" in text
    assert "rows: 1 pass, 1 FAIL, 0 n/a" in text
    ok_text, ok = zoo.report(
        {k: v for k, v in results.items() if k[0] == "resnet18"}, ("a",), "UnsupportedLayerError: attention", {}
    )
    assert ok
    _, not_refused = zoo.report({k: v for k, v in results.items() if k[0] == "resnet18"}, ("a",), "yes", {})
    assert not not_refused


def test_a_float32_twin_may_round_as_much_as_the_model_itself():
    deep = zoo.JobResult("m", "float32", 1.0, twin_error=3e-5, own_logits_error=1e-5)
    assert zoo.twin_allowed(deep) == zoo.ROUNDING_FACTOR * 1e-5
    assert zoo._twin_cell(deep)[1]
    shallow = zoo.JobResult("m", "float32", 1.0, twin_error=3e-5, own_logits_error=1e-8)
    assert zoo.twin_allowed(shallow) == zoo.TWIN_TOLERANCE and not zoo._twin_cell(shallow)[1]
    # float64 has no rounding allowance: 1e-5 there is a wrong twin
    wide = zoo.JobResult("m", "float64", 1.0, twin_error=3e-5, own_logits_error=1e-5)
    assert not zoo._twin_cell(wide)[1]


def test_own_rounding_is_the_float32_models_error_against_its_float64_copy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 3)).eval()
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    y32 = net(torch.from_numpy(x)).detach().double().numpy()
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in net.parameters())
    h = np.tanh(x.astype(np.float64) @ w1.T + b1)  # numpy, float64
    y64 = h @ w2.T + b2
    targets = y32.argmax(1)
    g64 = ((1 - h**2) * w2[targets]) @ w1  # d y[target] / d x, by hand
    inputs = torch.from_numpy(x).requires_grad_(True)
    out = net(inputs)
    (g32,) = torch.autograd.grad(out.gather(1, torch.from_numpy(targets)[:, None]).sum(), inputs)
    logits_error, gradient_error = zoo.own_rounding(net, x)
    assert 0 < logits_error == pytest.approx(np.abs(y32 - y64).max() / np.abs(y64).max(), rel=1e-6)
    expected = np.abs(g32.double().numpy() - g64).max() / np.abs(g64).max()
    assert 0 < gradient_error == pytest.approx(expected, rel=1e-6)
    assert next(net.parameters()).dtype == torch.float32  # the model itself is not converted
