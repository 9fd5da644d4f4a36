"""A progress line on stderr for long reads (replay, verify, bench)."""
from __future__ import annotations

import sys
import time


class Progress:
    """`label: 123,456 events (210,000/s)`, redrawn at most twice a second."""

    def __init__(self, label: str, unit: str = "events", enabled: bool = True) -> None:
        self.label, self.unit, self.enabled = label, unit, enabled
        self.count = 0
        self.start = time.monotonic()
        self._shown = 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.5:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        sys.stderr.write(f"\r{self.label}: {self.count:,} {self.unit} ({self.rate(now):,.0f}/s){end}")
        sys.stderr.flush()

    def rate(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start

    def done(self) -> None:
        if self.enabled:
            self._draw(time.monotonic(), "\n")
