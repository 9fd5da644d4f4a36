"""CPU time and resident memory of the benchmark's processes, by kind (engine, broker, load
generator, views), from /proc: so the per-core comparison is honest, it is clear which part
to optimise next, and a long run shows whether any process's memory keeps growing."""
from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children so far (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17)
    return sum(int(v) for v in fields[11:15]) / _TICK


def jit_cpu_seconds(pid: int) -> float:
    """CPU seconds of a JVM's JIT compiler threads (C1, C2): the broker compiles its hot code
    for a minute or more after it starts, a cost that a short run at a low rate feels most."""
    total = 0.0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if "CompilerThre" not in f.read():
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def reference_work_ms() -> float:
    """CPU milliseconds this thread takes for a fixed piece of pure-Python work (dicts,
    strings, integers: what the engine and the views do), sampled through a run: if it costs
    more late in a run, the machine got slower (another tenant of the host, the caches
    shared with our processes), not only our code."""
    started = time.thread_time()
    table: dict[str, int] = {}
    for i in range(20_000):
        table[f"acct-{i}"] = i * 7
    assert sum(table.values()) == 7 * 20_000 * 19_999 // 2
    return (time.thread_time() - started) * 1000


def machine_speed(minutes: int) -> Iterator[dict[str, float]]:
    """reference_work_ms() once a second, summed up per minute as it ends."""
    for minute in range(1, minutes + 1):
        samples, end = [], time.monotonic() + 60
        while time.monotonic() < end:
            samples.append(reference_work_ms())
            time.sleep(1)
        yield {"minute": minute, "median_ms": round(statistics.median(samples), 2),
               "min_ms": round(min(samples), 2), "max_ms": round(max(samples), 2)}


def cpu_by_kind(pids_by_kind: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each kind; the broker's JIT compiler threads also on their own
    ("broker JIT", a part of "broker")."""
    used = {kind: sum(cpu_seconds(p) for p in pids) for kind, pids in pids_by_kind.items()}
    if pids_by_kind.get("broker"):
        used["broker JIT"] = sum(jit_cpu_seconds(p) for p in pids_by_kind["broker"])
    return used


class CpuMeter:
    """CPU seconds used by each kind of process between two snapshots."""

    def __init__(self, pids_by_kind: dict[str, list[int]]) -> None:
        self.pids_by_kind = pids_by_kind
        self._start: dict[str, float] | None = None
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return cpu_by_kind(self.pids_by_kind)

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.used = {kind: end[kind] - (self._start or {}).get(kind, 0.0) for kind in end}

    def per_transfer_us(self, transfers: int) -> dict[str, float]:
        return {kind: round(1e6 * used / transfers, 1) if transfers else float("nan")
                for kind, used in self.used.items()}


@dataclass
class Timeline:
    """One sample a second: transfers finished so far and each process's resident memory."""

    t: list[float] = field(default_factory=list)             # seconds since the window opened
    finished: list[int] = field(default_factory=list)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)  # "kind pid" -> MB per sample
    cpu_s: dict[str, list[float]] = field(default_factory=dict)   # kind -> CPU seconds so far
    reference_ms: list[float] = field(default_factory=list)       # reference_work_ms() per sample

    def _minute_bounds(self) -> list[int]:
        """Indexes of the samples that start each minute and end the last whole one (the
        last sample ends the window, a moment short of a whole minute of the sampler's clock)."""
        bounds, minute = [0] if self.t else [], 1
        for i, t in enumerate(self.t):
            if t >= 60 * minute - 0.5:
                bounds.append(i)
                minute += 1
        return bounds

    def per_minute(self) -> list[float]:
        """Transfers/s in each whole minute of the window."""
        b = self._minute_bounds()
        return [(self.finished[j] - self.finished[i]) / (self.t[j] - self.t[i])
                for i, j in zip(b, b[1:])]

    def cores(self, kind: str, step: int) -> list[float]:
        """CPU cores a kind of process used over each span of `step` samples."""
        cpu = self.cpu_s[kind]
        return [(cpu[i] - cpu[i - step]) / (self.t[i] - self.t[i - step])
                for i in range(step, len(cpu), step)]

    def minute_cpu_us(self) -> dict[str, list[float]]:
        """CPU us per transfer of each kind in each whole minute (where a slowdown comes from)."""
        b = self._minute_bounds()
        return {kind: [round(1e6 * (cpu[j] - cpu[i]) / max(1, self.finished[j] - self.finished[i]), 1)
                       for i, j in zip(b, b[1:])]
                for kind, cpu in self.cpu_s.items()}

    def minute_reference_ms(self) -> list[float]:
        """The median CPU ms of the reference work in each whole minute: the machine's speed."""
        b = self._minute_bounds()
        return [round(statistics.median(self.reference_ms[i:j]), 2) for i, j in zip(b, b[1:])]

    def last_minute_cpu_us(self) -> dict[str, float]:
        """CPU us per transfer of each kind in the last whole minute (warm caches and JIT)."""
        end = len(self.t) - 1
        start = next((i for i in range(end, -1, -1) if self.t[end] - self.t[i] >= 60), None)
        done = self.finished[end] - self.finished[start] if start is not None else 0
        if not done:
            return {}
        return {kind: round(1e6 * (cpu[end] - cpu[start]) / done, 1) for kind, cpu in self.cpu_s.items()}

    def memory_growth(self, warmup_s: float) -> dict[str, float]:
        """Each process's growth (%) from the end of the warm-up to its largest later sample."""
        start = next((i for i, t in enumerate(self.t) if t >= warmup_s), None)
        if start is None:
            return {}
        return {name: round(100 * (max(mb[start:]) / mb[start] - 1), 1)
                for name, mb in self.rss_mb.items() if mb[start] > 0}


class Sampler:
    """Fills a Timeline from a thread until stopped; `finished` is read once a second."""

    def __init__(self, pids_by_kind: dict[str, list[int]], finished, start: float) -> None:  # noqa: ANN001
        self.timeline = Timeline()
        self._names = {pid: f"{kind} {pid}" for kind, pids in pids_by_kind.items() for pid in pids}
        self._kinds = pids_by_kind
        self._finished, self._start = finished, start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self._start + len(self.timeline.t) - time.perf_counter())):
            self._sample()

    def _sample(self) -> None:
        tl = self.timeline
        tl.t.append(time.perf_counter() - self._start)
        tl.finished.append(self._finished())
        for pid, name in self._names.items():
            tl.rss_mb.setdefault(name, []).append(rss_bytes(pid) / 2**20)
        for kind, used in cpu_by_kind(self._kinds).items():
            tl.cpu_s.setdefault(kind, []).append(used)
        tl.reference_ms.append(reference_work_ms())

    def stop(self) -> Timeline:
        """Stop sampling, with a last sample at the end of the window."""
        self._stop.set()
        self._thread.join(5)
        self._sample()
        return self.timeline
