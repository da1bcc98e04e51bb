"""``signxai-parity`` on user models (factories in ``user_models.py``): passing and failing runs,
the report files, and one line with exit status 2 for every mistake a user can make."""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

import parity.twin
from parity.cli import main

pytestmark = pytest.mark.tf

HERE = Path(__file__).resolve().parent
FAST = "gradient,lrp_z,lrp_epsilon_0_1,lrpsign_z"
SMALL = ["--model", "user_models:small_cnn", "--input-shape", "1,8,8"]


@pytest.fixture(autouse=True)
def user_folder(monkeypatch):
    """Run every command from this folder, as a user runs it next to their model module."""
    monkeypatch.chdir(HERE)
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture
def perturbed_twin(monkeypatch):
    """Make :func:`parity.twin.to_keras` return twins whose first kernel is 1% larger than the
    PyTorch model's (changed after the twin's own forward check)."""
    convert = parity.twin.to_keras

    def perturbed(*args, **kwargs):
        twin = convert(*args, **kwargs)
        spec = next(s for s in twin._specs if "kernel_initializer" in s.initial)
        spec.initial = {**spec.initial, "kernel_initializer": spec.initial["kernel_initializer"] * 1.01}
        return twin

    monkeypatch.setattr(parity.twin, "to_keras", perturbed)


def error_line(capsys) -> str:
    """The one line a failed command wrote to stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("signxai-parity: error: ")
    return lines[0]


def test_passing_model_writes_report_figure_and_json(tmp_path, capsys):
    out, record = tmp_path / "report", tmp_path / "ci" / "parity.json"
    code = main([*SMALL, "--methods", FAST, "--out", str(out), "--json", str(record)])
    captured = capsys.readouterr()
    assert code == 0
    assert "parity: 4/4 passed" in captured.out
    assert "8/8 user_models:small_cnn float64" in captured.err
    assert (out / "parity-figure.png").stat().st_size > 0
    assert "| user_models:small_cnn | lrpsign_z |" in (out / "parity-report.md").read_text()
    data = json.loads(record.read_text())
    assert [r["method"] for r in data["rows"]] == sorted(FAST.split(","))
    assert all(r["passed"] and r["rel_error_f64"] is not None for r in data["rows"])
    assert data["context"]["options"]["methods"] == FAST
    assert "innvestigate 2.1.2" in data["context"]["versions"]


def test_state_dict_and_npy_inputs(tmp_path, capsys):
    torch.manual_seed(1)
    trained = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 3),
    )
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32))
    code = main(
        [
            "--model",
            "user_models:small_cnn",
            "--state-dict",
            str(tmp_path / "weights.pt"),
            "--inputs",
            str(tmp_path / "x.npy"),
            "--methods",
            "gradient,lrp_z",
        ]
    )
    assert code == 0
    assert "parity: 2/2 passed" in capsys.readouterr().out


def test_tolerance_option_sets_the_float32_floor(tmp_path, capsys):
    # the floor is the allowed float32 error wherever ROUNDING_FACTOR x iNNvestigate's own float32 error is below it
    record = tmp_path / "parity.json"
    code = main([*SMALL, "--methods", "gradient,lrp_epsilon_0_1", "--tolerance", "0.5", "--json", str(record)])
    rows = json.loads(record.read_text())["rows"]
    assert code == 0
    assert [r["tolerance"] for r in rows] == [0.5, 0.5]


def test_float32_only_compares_float32_maps_directly(tmp_path, capsys):
    # float32 rounding differs between the frameworks for epsilon-LRP (rel. error ~1e-7), so a
    # floor of 1e-12 fails that row in the direct comparison
    record = tmp_path / "parity.json"
    code = main(
        [*SMALL, "--methods", "lrp_epsilon_0_1", "--float32-only", "--tolerance", "1e-12", "--json", str(record)]
    )
    (row,) = json.loads(record.read_text())["rows"]
    assert code == 1
    assert row["rel_error_f64"] is None and row["tolerance"] == 1e-12 and row["rel_error"] > 1e-12
    assert "lrp_epsilon_0_1" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.usefixtures("perturbed_twin")
def test_perturbed_twin_fails_naming_the_methods(tmp_path, capsys):
    record = tmp_path / "parity.json"
    code = main([*SMALL, "--methods", FAST, "--json", str(record)])
    assert code == 1
    assert capsys.readouterr().out.splitlines()[-1] == "failing: gradient, lrp_epsilon_0_1, lrp_z, lrpsign_z"
    assert not any(r["passed"] for r in json.loads(record.read_text())["rows"])


def test_functional_relu_model_passes(capsys):
    """A ReLU written as ``F.relu`` in ``forward`` is explained on the model's graph (LRP passes
    relevance through it, guided backprop modifies it), as iNNvestigate does on the twin."""
    code = main(
        [
            "--model",
            "user_models:functional_relu",
            "--input-shape",
            "1,8,8",
            "--methods",
            "gradient,lrp_z,guided_backprop",
        ]
    )
    assert code == 0
    assert "parity: 3/3 passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--model", "no_such_module:build", "--input-shape", "1,8,8"], "cannot find module 'no_such_module'"),
        (["--model", "user_models:no_such_factory", "--input-shape", "1,8,8"], "'no_such_factory'"),
        (["--model", "user_models", "--input-shape", "1,8,8"], "--model takes MODULE:FUNCTION"),
        (["--model", "user_models:not_a_model", "--input-shape", "1,8,8"], "not a torch.nn.Module"),
        (["--model", "user_models:small_cnn", "--input-shape", "3,8,8"], "inputs of shape (4, 3, 8, 8)"),
        (["--model", "user_models:small_cnn", "--input-shape", "1,eight"], "--input-shape takes positive"),
        (
            ["--model", "user_models:hardswish_mlp", "--input-shape", "1,8,8", "--methods", "gradient"],
            "unsupported layer for the Keras twin: Hardswish",
        ),
        (["--model", "user_models:small_cnn", "--inputs", "missing.npy"], "no such file: missing.npy"),
        (
            ["--model", "user_models:small_cnn", "--input-shape", "1,8,8", "--methods", "lrp_epsilom_0_1"],
            "unknown method 'lrp_epsilom_0_1'",
        ),
        (
            ["--model", "user_models:small_cnn", "--state-dict", "missing.pt", "--input-shape", "1,8,8"],
            "no such file: missing.pt",
        ),
        (["--input-shape", "1,8,8"], "one of the arguments --model --torchscript --keras --keras-factory is required"),
        (["--model", "user_models:small_cnn"], "give the inputs: --input-shape C,H,W"),
        (["--model", "user_models:small_cnn", "--input-shape", "1,8,8", "--export", "out"], "--export writes"),
    ],
)
def test_user_error_is_one_line_and_exit_2(args, says, capsys):
    assert main(args) == 2
    assert says in error_line(capsys)


def test_missing_parity_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "innvestigate", None)
    assert main([*SMALL, "--methods", "gradient"]) == 2
    assert "install the parity extra: pip install 'signxai[parity]'" in error_line(capsys)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_model_is_refused_in_one_line(tmp_path, capsys):
    import user_models

    torch.jit.save(torch.jit.script(user_models.small_cnn()), str(tmp_path / "model.pt"))
    assert main(["--torchscript", str(tmp_path / "model.pt"), "--input-shape", "1,8,8"]) == 2
    assert "cannot be traced by torch.fx" in error_line(capsys)


def test_help_explains_every_option_and_ends_with_an_example(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--state-dict",
        "--torchscript",
        "--input-shape",
        "--batch",
        "--seed",
        "--inputs",
        "--methods",
        "--tolerance",
        "--float32-only",
        "--out",
        "--json",
        "--workers",
        "--ray",
        "--cache",
        "--no-cache",
        "--keras",
        "--keras-factory",
        "--export",
        "--list-methods",
    ):
        assert option in text
    assert text.rstrip().splitlines()[-2].strip().startswith("signxai-parity --model my_model:build")


def test_console_script_points_at_main():
    (script,) = entry_points(group="console_scripts", name="signxai-parity")
    assert script.value == "parity.cli:main"
