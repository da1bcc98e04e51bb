"""Shared pieces of the benchmark scripts: the benchmark models, interleaved timing, direct
(Zennit / autograd) reference calls, and peak-memory measurement in child processes.

The scripts in ``benchmarks/`` put that folder on ``sys.path`` (a script's own folder is there
when it runs), so ``import benchlib`` works from any of them; this package is no script, so
``nox -s bench`` (which runs ``benchmarks/*.py``) does not run it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: intra-op threads of every timed run. The machine has 2 cores shared with other jobs: while
#: another process keeps one core busy, 2 threads make every parallel kernel wait for a
#: descheduled thread (a small CNN's gradient took 110 ms instead of 0.5 ms), so the default is
#: 1; set BENCH_THREADS=2 on an idle machine.
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


# ---------------------------------------------------------------------------------------------
# models


def small_cnn(seed: int = 0) -> nn.Module:
    """The small CNN: 3x32x32 -> 10 logits; conv 16 and conv 32 (3x3, padding 1), each with
    ReLU and a 2x2 max pool, then Linear(2048, 64), ReLU, Linear(64, 10). Seeded random
    weights, eval mode, float32."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()


def torchvision_model(name: str, seed: int = 0) -> nn.Module:
    """torchvision's architecture ``name`` (``torchvision.models.get_model``) with seeded random
    initialisation (``weights=None``: nothing is downloaded), eval mode, float32, built as
    torchvision builds it (in-place ReLUs included; BatchNorm keeps its initial statistics)."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).eval()


def vgg16(seed: int = 0) -> nn.Module:
    """torchvision's VGG16 (:func:`torchvision_model`); its ReLUs are ``inplace=True``."""
    return torchvision_model("vgg16", seed)


def vgg_style(size: int, seed: int = 0) -> nn.Module:
    """A VGG-style CNN for 3 x size x size inputs (size a multiple of 8): conv blocks of 32, 64
    and 128 channels, each two 3x3 convs (padding 1) with ReLU and a 2x2 max pool, then
    Linear(128 * (size/8)^2, 256), ReLU, Linear(256, 10). Seeded random weights, eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = 3
    for width in (32, 64, 128):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels = width
    side = size // 8
    layers += [nn.Flatten(), nn.Linear(128 * side * side, 256), nn.ReLU(), nn.Linear(256, 10)]
    return nn.Sequential(*layers).eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "small_cnn": (small_cnn, (3, 32, 32)),
    "vgg16": (vgg16, (3, 224, 224)),
}

#: Grad-CAM layer of each model (its last conv)
GRADCAM_LAYERS = {"small_cnn": "3", "vgg16": "features.28"}


def inputs(batch: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Standard-normal inputs of shape (batch, *shape), seeded."""
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# timing


def median_seconds(
    fns: dict[str, Callable[[], object]], warmup: int, runs: int, budget_s: float | None = None
) -> dict[str, float]:
    """Median wall time of each function. The functions take turns in every round, so that a
    change of machine load affects all of them alike. With ``budget_s``, rounds stop early once
    that much time has passed (after at least one timed round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    started = time.perf_counter()
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def ratio_rows(
    config: str, medians: dict[str, float], plain: str, ours: str, targets: dict[str, float]
) -> list[dict[str, object]]:
    """Table rows of one configuration's median times: each method's ratio to the plain autograd
    gradient (``medians[plain]``) and to our gradient (``medians[ours]``), and, for a method with
    a target ratio, whether the larger of the two meets it."""
    rows = []
    for method, seconds in medians.items():
        target = targets.get(method)
        worst = max(seconds / medians[plain], seconds / medians[ours])
        rows.append(
            {
                "config": config,
                "method": method,
                "ms": seconds * 1e3,
                "ratio": seconds / medians[plain],
                "ratio_ours": seconds / medians[ours],
                "target": f"<= {target}" if target else "",
                "verdict": ("met" if worst <= target else "MISSED") if target else "",
            }
        )
    return rows


def header(what: str) -> str:
    """One line naming the machine, the versions and the thread count."""
    from importlib.metadata import version

    return (
        f"{what}: torch {torch.__version__}, zennit {version('zennit')}, "
        f"{torch.get_num_threads()} threads, nproc {os.cpu_count()}, {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def table(rows: list[dict[str, object]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` = [(key, title), ...]."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(key, "")) for key, _ in columns) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# direct calls (what a Zennit / autograd user writes for the same numbers)


def logit_seed(output: torch.Tensor) -> torch.Tensor:
    """One-hot of each row's largest logit, times that logit's value (iNNvestigate's start)."""
    output = output.detach()
    seed = torch.zeros_like(output)
    rows = torch.arange(output.shape[0])
    index = output.argmax(dim=1)
    seed[rows, index] = output[rows, index]
    return seed


def one_hot_seed(output: torch.Tensor) -> torch.Tensor:
    """One-hot of each row's largest logit."""
    seed = torch.zeros_like(output)
    seed[torch.arange(output.shape[0]), output.detach().argmax(dim=1)] = 1.0
    return seed


def plain_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input gradient of each row's largest logit: one forward, one ``torch.autograd.grad``."""
    probe = x.detach().clone().requires_grad_(True)
    output = model(probe)
    return torch.autograd.grad(output, probe, grad_outputs=one_hot_seed(output))[0]


def targets_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each row's largest logit."""
    with torch.no_grad():
        return model(x.clone()).argmax(dim=1)


def plain_gradient_at(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Input gradient of the given class of each row."""
    probe = x.detach().clone().requires_grad_(True)
    output = model(probe)
    seed = torch.zeros_like(output)
    seed[torch.arange(output.shape[0]), targets] = 1.0
    return torch.autograd.grad(output, probe, grad_outputs=seed)[0]


# ---------------------------------------------------------------------------------------------
# memory


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to the current RSS (Linux ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_bytes() -> int:
    """Peak RSS (VmHWM) of this process since the last :func:`reset_peak`."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


#: environment of memory-measuring children: glibc returns every large block to the system at
#: once (a fixed mmap threshold), so RSS follows the live tensors instead of malloc's free lists
MEMORY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "OMP_NUM_THREADS": str(THREADS),
}


#: environment that lets glibc keep freed memory for reuse (the largest dynamic mmap threshold,
#: no trimming): a new activation-sized tensor then reuses pages instead of faulting fresh ones in
KEEP_MEMORY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


def run_child(
    script: Path, args: list[str], timeout: float = 900, memory: bool = True, extra_env: dict[str, str] | None = None
) -> dict:
    """Run ``script`` with ``args`` in a fresh Python process and return the JSON object it
    prints on its last stdout line. ``memory``: with MEMORY_ENV (for peak-memory runs only: a
    fixed mmap threshold makes every large allocation a system call and slows PyTorch down,
    up to 2x on a small CNN), else only the thread settings. ``extra_env`` is added last."""
    env = dict(
        os.environ,
        **(MEMORY_ENV if memory else {"TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": str(THREADS)}),
        **(extra_env or {}),
    )
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT)
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_peak(fn: Callable[[], object]) -> dict[str, float]:
    """Run ``fn`` once (after one warm-up call) and return the peak RSS growth over the RSS
    just before the call, the RSS left behind after it returned, and the absolute peak, in MiB."""
    import gc

    fn()  # warm-up: kernels, thread pools, lazily built state
    gc.collect()
    before = rss_bytes()
    reset_peak()
    result = fn()
    del result
    gc.collect()
    peak, after = peak_bytes(), rss_bytes()
    mib = 1024 * 1024
    return {
        "peak_growth_mib": (peak - before) / mib,
        "left_mib": (after - before) / mib,
        "peak_mib": peak / mib,
        "before_mib": before / mib,
    }
