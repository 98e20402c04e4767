"""A one-line progress bar on stderr, shown only when stderr is a terminal."""
from __future__ import annotations

import sys
import time


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ProgressBar:
    def __init__(self, total: int, label: str, enabled=None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(total, 1)
        self.label = label
        self.base = 0          # bytes of finished files
        self.start = time.monotonic()
        self._last = 0.0

    def file_progress(self, done_in_file: int) -> None:
        self.update(self.base + done_in_file)

    def file_done(self, size: int) -> None:
        self.base += size
        self.update(self.base)

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width)
        rate = done / max(now - self.start, 1e-9)
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {frac * 100:5.1f}% "
                          f"{human_bytes(done)}/{human_bytes(self.total)} "
                          f"{human_bytes(rate)}/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.base, force=True)
            self.stream.write("\n")
            self.stream.flush()
