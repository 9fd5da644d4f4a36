"""CPU time per process kind, from /proc: so the per-core comparison is honest and it is
clear which part to optimise next (engine, broker, load generator, views)."""
from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children so far (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17)
    return sum(int(v) for v in fields[11:15]) / _TICK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class CpuMeter:
    """CPU seconds used by each kind of process between two snapshots."""

    def __init__(self, pids_by_kind: dict[str, list[int]]) -> None:
        self.pids_by_kind = pids_by_kind
        self._start: dict[str, float] | None = None
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {kind: sum(cpu_seconds(p) for p in pids) for kind, pids in self.pids_by_kind.items()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.used = {kind: end[kind] - (self._start or {}).get(kind, 0.0) for kind in end}

    def per_transfer_us(self, transfers: int) -> dict[str, float]:
        return {kind: round(1e6 * used / transfers, 1) if transfers else float("nan")
                for kind, used in self.used.items()}
