"""How time and peak memory grow with batch size and input size: gradient and LRP-epsilon on a
VGG-style net (``benchlib.vgg_style``: conv blocks of 32, 64 and 128 channels, two 3x3 convs
each, ReLU, 2x2 max pooling; Linear(128 (size/8)^2, 256), ReLU, Linear(256, 10)).

Two series per method, through the TF-compatible API (``calculate_relevancemaps``):

* batch 1, 2, 4, ..., 256 at 112x112 input;
* input 32, 64, 96, ..., 224 (square) at batch 32.

Every point runs in two fresh child processes: one times the call (one warm-up call, then the
median of up to 3 calls, fewer when a call takes long), one measures the peak RSS growth of a
call after a warm-up call (``benchlib.measure_peak``, glibc with a fixed mmap threshold). A
series stops after a point that took more than ``--max-seconds`` (20) or grew by more than
``--max-gib`` (8) GiB, and before a point whose memory, extrapolated from the last two points,
would exceed that bound. The table gives the per-sample memory slope of the batch series and the
batch at which a call would need all of the machine's memory (``MemTotal``): where memory runs
out. The plot is written to ``benchmarks/scaling.png``.

Run: ``.venv/bin/python benchmarks/scaling.py`` (``--batches``, ``--sizes``, ``--methods``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

METHODS = ["gradient", "lrp_epsilon_0_1"]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SIZES = [32, 64, 96, 128, 160, 192, 224]
BATCH_SERIES_SIZE = 112
SIZE_SERIES_BATCH = 32
PNG = Path(__file__).resolve().parent / "scaling.png"
#: the measured points of the latest run (``--replot`` draws the plot from them again)
DATA = Path(__file__).resolve().parent / "scaling.json"


def child(method: str, batch: int, size: int, what: str) -> None:
    import statistics

    import torch

    from signxai.torch_signxai.methods.wrappers import calculate_relevancemaps

    torch.set_num_threads(B.THREADS)
    model = B.vgg_style(size)
    x = B.inputs(batch, (3, size, size))

    def fn():
        return calculate_relevancemaps(method, x, model)

    if what == "memory":
        print(json.dumps(B.measure_peak(fn)))
        return
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = 3 if first < 5 else 1
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times), "first": first}))


def machine_gib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def series(method: str, points: list[tuple[int, int]], max_seconds: float, max_gib: float) -> list[dict]:
    rows: list[dict] = []
    for batch, size in points:
        if len(rows) >= 2:
            (a, b) = rows[-2:]
            work = lambda r: r["batch"] * r["size"] ** 2  # noqa: E731
            slope = (b["gib"] - a["gib"]) / max(work(b) - work(a), 1)
            projected = b["gib"] + slope * (batch * size**2 - work(b))
            if projected > max_gib:
                rows.append(
                    {
                        "method": method,
                        "batch": batch,
                        "size": size,
                        "seconds": float("nan"),
                        "gib": float("nan"),
                        "note": f"not run: projected {projected:.1f} GiB",
                    }
                )
                break
        args = ["--child", method, str(batch), str(size)]
        timing = B.run_child(Path(__file__), args + ["time"], timeout=1800, memory=False)
        memory = B.run_child(Path(__file__), args + ["memory"], timeout=1800)
        row = {
            "method": method,
            "batch": batch,
            "size": size,
            "seconds": timing["seconds"],
            "gib": memory["peak_growth_mib"] / 1024,
            "note": "",
        }
        rows.append(row)
        print(
            f"{method:16s} batch {batch:4d} size {size:4d}: {row['seconds']:8.3f} s  {row['gib'] * 1024:9.1f} MiB",
            flush=True,
        )
        if row["seconds"] > max_seconds or row["gib"] > max_gib:
            row["note"] = "bound reached: series stopped"
            break
    return rows


def plot(batch_rows: list[dict], size_rows: list[dict], limit_gib: float, total_gib: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    styles = {"gradient": dict(marker="o", color="tab:blue"), "lrp_epsilon_0_1": dict(marker="s", color="tab:red")}
    for column, (rows, key, label) in enumerate(
        [
            (batch_rows, "batch", f"batch size ({BATCH_SERIES_SIZE}x{BATCH_SERIES_SIZE} input)"),
            (size_rows, "size", f"input side in pixels (batch {SIZE_SERIES_BATCH})"),
        ]
    ):
        for method in METHODS:
            done = [r for r in rows if r["method"] == method and r["seconds"] == r["seconds"]]
            if not done:
                continue
            xs = [r[key] for r in done]
            axes[0][column].plot(xs, [r["seconds"] for r in done], label=method, **styles[method])
            axes[1][column].plot(xs, [r["gib"] for r in done], label=method, **styles[method])
            if key == "batch" and len(done) >= 2:
                slope = (done[-1]["gib"] - done[-2]["gib"]) / (done[-1]["batch"] - done[-2]["batch"])
                if slope > 0:
                    out = done[-1]["batch"] + (total_gib - done[-1]["gib"]) / slope
                    axes[1][column].plot(
                        [done[-1]["batch"], out],
                        [done[-1]["gib"], total_gib],
                        linestyle=":",
                        color=styles[method]["color"],
                    )
                    axes[1][column].annotate(
                        f"{method}: batch ~{out:.0f}",
                        (out, total_gib),
                        xytext=(-8, -14 - 11 * METHODS.index(method)),
                        textcoords="offset points",
                        color=styles[method]["color"],
                        fontsize=8,
                        ha="right",
                    )
        for row in range(2):
            ax = axes[row][column]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        axes[0][column].set_ylabel("seconds per call (median)")
        axes[1][column].set_ylabel("peak RSS growth (GiB)")
        axes[0][column].axhline(20, color="gray", linestyle="--", linewidth=0.8)
        axes[1][column].axhline(limit_gib, color="gray", linestyle="--", linewidth=0.8)
        axes[1][column].axhline(total_gib, color="black", linestyle="-.", linewidth=0.8)
    axes[1][0].text(
        1, total_gib * 1.05, f"machine memory {total_gib:.0f} GiB (dotted: linear extrapolation)", fontsize=8
    )
    axes[1][0].text(1, limit_gib * 1.05, f"run bound {limit_gib:.0f} GiB", fontsize=8)
    fig.suptitle(f"VGG-style net, {B.THREADS} thread(s), nproc 2: gradient vs LRP-epsilon (calculate_relevancemaps)")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--batches", nargs="+", type=int, default=BATCHES)
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--max-gib", type=float, default=8.0)
    parser.add_argument("--replot", action="store_true", help=f"redraw {PNG.name} from {DATA.name}")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, batch, size, what = args.child
        child(method, int(batch), int(size), what)
        return
    if args.replot:
        data = json.loads(DATA.read_text())
        plot(data["batch"], data["size"], data["max_gib"], data["machine_gib"])
        print(f"plot: {PNG}")
        return

    import torch

    torch.set_num_threads(B.THREADS)  # as in the children, which run every point
    print(B.header("scaling") + f"; machine memory {machine_gib():.1f} GiB")
    batch_rows, size_rows = [], []
    for method in args.methods:
        batch_rows += series(method, [(b, BATCH_SERIES_SIZE) for b in args.batches], args.max_seconds, args.max_gib)
        size_rows += series(method, [(SIZE_SERIES_BATCH, s) for s in args.sizes], args.max_seconds, args.max_gib)
    grad = {(r["batch"], r["size"]): r for r in batch_rows + size_rows if r["method"] == "gradient"}
    for row in batch_rows + size_rows:
        base = grad.get((row["batch"], row["size"]))
        if row["method"] != "gradient" and base and row["seconds"] == row["seconds"]:
            row["time_ratio"] = row["seconds"] / base["seconds"]
            row["memory_ratio"] = row["gib"] / base["gib"] if base["gib"] > 0 else float("nan")
        row["mib"] = row["gib"] * 1024
        row["input"] = f"{row['size']}x{row['size']}"
    columns = [
        ("method", "method"),
        ("batch", "batch"),
        ("input", "input"),
        ("seconds", "s per call"),
        ("mib", "peak growth MiB"),
        ("time_ratio", "time x gradient"),
        ("memory_ratio", "memory x gradient"),
        ("note", "note"),
    ]
    print(f"\n### Batch series ({BATCH_SERIES_SIZE}x{BATCH_SERIES_SIZE} input)\n")
    print(B.table(batch_rows, columns))
    print(f"\n### Input-size series (batch {SIZE_SERIES_BATCH})\n")
    print(B.table(size_rows, columns))
    total = machine_gib()
    print(f"\n### Where memory runs out ({total:.1f} GiB machine)\n")
    for method in args.methods:
        done = [r for r in batch_rows if r["method"] == method and r["seconds"] == r["seconds"]]
        if len(done) >= 2:
            slope = (done[-1]["gib"] - done[-2]["gib"]) / (done[-1]["batch"] - done[-2]["batch"])
            out = done[-1]["batch"] + (total - done[-1]["gib"]) / slope if slope > 0 else float("inf")
            print(
                f"- {method}: {slope * 1024:.1f} MiB per sample at {BATCH_SERIES_SIZE}x{BATCH_SERIES_SIZE}; "
                f"a call needs the whole {total:.0f} GiB at batch ~{out:.0f}"
            )
    DATA.write_text(
        json.dumps(
            {
                "batch": batch_rows,
                "size": size_rows,
                "max_gib": args.max_gib,
                "machine_gib": total,
                "header": B.header("scaling"),
            },
            indent=1,
        )
    )
    plot(batch_rows, size_rows, args.max_gib, total)
    print(f"\nplot: {PNG}")


if __name__ == "__main__":
    main()
