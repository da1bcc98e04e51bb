"""Killing a Ray worker mid-run, as a crash or an out-of-memory kill would."""

import os
import signal
import threading
import time
from pathlib import Path

__all__ = ["processes_titled", "Killer"]


def processes_titled(title: str) -> list[int]:
    """PIDs of the processes whose command line starts with ``title`` (Ray names a worker
    ``ray::<task or actor>`` while it runs one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title.encode()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Killer(threading.Thread):
    """Kill (SIGKILL) the first process titled ``title`` once ``ready()`` is true."""

    def __init__(self, title: str, ready=lambda: True, timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.title, self.ready, self.timeout, self.killed = title, ready, timeout, None

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline and self.killed is None:
            pids = processes_titled(self.title) if self.ready() else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                self.killed = pids[0]
            time.sleep(0.2)
