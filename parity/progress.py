"""A text progress bar for long runs: it redraws in place on a terminal and writes one line per
step elsewhere (CI logs)."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """A text progress bar: ``[#####-----] 3/8 float32 lrp_z``.

    Parameters
    ----------
    total : int
        Number of steps.
    stream : file, optional
        Where to draw (default: ``sys.stderr``); on a terminal the bar redraws in place,
        elsewhere (CI logs) each step is a line.
    width : int
        Number of characters of the bar.
    """

    #: a redrawn line is padded to this length, to cover a longer line before it
    PAD = 72

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.width, self.done = total, width, 0
        self.stream = sys.stderr if stream is None else stream
        self.end = "\r" if self.stream.isatty() else "\n"

    def step(self, label: str, count: int = 1) -> None:
        """Count ``count`` steps and draw the bar with ``label``."""
        self.done += count
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {label}"
        self.stream.write((line.ljust(self.PAD) if self.end == "\r" else line) + self.end)
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line on a terminal."""
        if self.end == "\r":
            self.stream.write("\n")
