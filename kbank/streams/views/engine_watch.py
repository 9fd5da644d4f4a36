"""Whether the engine is making progress, as any views worker can tell (issue 40).

The views never join the engine's group; they read its committed offsets and the ends of
its inputs through the Admin API (EngineLag, at most once a second). EngineProgress is the
pure rule over those readings: a partition is stalled when records wait for it and no
transaction has committed for it within BANK_ENGINE_STALL_AFTER_S. The offsets alone cannot
tell a record from a transaction marker or an aborted batch's records (an idle engine shows
1-2 per partition), so when they say "stalled" the watch reads the inputs from the
committed offsets (read_committed) once: only a record found there confirms it, and an end
found to hold none is remembered as settled.
An engine worker's own halt line (an error no retry fixes, kbank.streams.health) is the
cause shown when there is one.

/health says `"engine": "stalled"` (the views keep serving reads), a `POST ...?wait=completed`
answers 503 with the reason instead of waiting out its timeout, the console shows a red
card and `bank_engine_stalled_partitions` carries it to Prometheus.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from kbank.streams import topics
from kbank.streams.config import Settings
from kbank.streams.health import read_crashes

INPUTS = ("requests", "credits")


@dataclass(frozen=True)
class InputOffsets:
    """One engine input partition: the group's committed offset (-1: none) and its ends."""

    committed: int
    low: int
    high: int

    @property
    def behind(self) -> int:
        return max(0, self.high - (self.committed if self.committed >= 0 else self.low))


class EngineLag:
    """The engine group's committed offsets against the ends of transfers.requests and
    transfers.credits, read at most once a second.

    Read with a consumer that names the engine's group but never joins it (OffsetFetch and
    ListOffsets only: the views' DESCRIBE on that group), not the Admin API: sampled every
    few seconds in every views worker, librdkafka's admin requests timing out while a
    broker was down ended a views worker on an internal assertion (rd_kafka_enq_once)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reader: Any = None
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[tuple[str, int], InputOffsets]] = (0.0, {})

    def offsets(self) -> dict[tuple[str, int], InputOffsets]:
        """(input, partition) -> offsets. Raises KafkaException when the broker does not
        answer in time."""
        from confluent_kafka import TopicPartition

        from kbank.streams import kafka

        with self._lock:
            at, found = self._cached
            if time.monotonic() - at < 1.0:
                return found
            if self._reader is None:
                self._reader = kafka.consumer(self.settings, kafka.VIEWS,
                                              self.settings.topic(topics.ENGINE_GROUP))
            names = {"requests": self.settings.topic(topics.REQUESTS),
                     "credits": self.settings.topic(topics.CREDITS)}
            wanted = [TopicPartition(t, p) for t in names.values()
                      for p in range(self.settings.partitions)]
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in self._reader.committed(wanted, timeout=10)}
            found = {}
            for label, topic in names.items():
                for p in range(self.settings.partitions):
                    low, high = self._reader.get_watermark_offsets(TopicPartition(topic, p),
                                                                   timeout=5)
                    found[(label, p)] = InputOffsets(committed.get((topic, p), -1), low, high)
            self._cached = (time.monotonic(), found)
            return found

    def read(self) -> list[dict[str, Any]]:
        """Records behind per partition: [{partition, requests, credits}]."""
        found = self.offsets()
        return [{"partition": p, **{label: found[(label, p)].behind for label in INPUTS}}
                for p in range(self.settings.partitions)]


@dataclass
class _Progress:
    committed: int
    high_at_commit: int   # the end when the offset last moved, or an end found settled
    since: float          # when the committed offset last moved (or was first seen)
    confirmed: bool = False   # a record was found waiting


@dataclass
class EngineProgress:
    """The stall rule over successive EngineLag readings (pure: times are passed in)."""

    stall_after_s: float
    progress: dict[tuple[str, int], _Progress] = field(default_factory=dict)
    last_reading: float | None = None
    unavailable: str | None = None

    def observe(self, now: float, offsets: dict[tuple[str, int], InputOffsets]) -> None:
        self.last_reading, self.unavailable = now, None
        for key, seen in offsets.items():
            known = self.progress.get(key)
            if known is None:   # first sight: whatever lies past the offset may be waiting
                self.progress[key] = _Progress(seen.committed, seen.high - seen.behind, now)
            elif seen.committed != known.committed:
                self.progress[key] = _Progress(seen.committed, seen.high, now)

    def failed(self, reason: str) -> None:
        self.unavailable = reason

    def settled(self, key: tuple[str, int], high: int) -> None:
        """Nothing a read_committed reader sees lies before `high` past the committed offset."""
        known = self.progress.get(key)
        if known is not None:
            known.high_at_commit = max(known.high_at_commit, high)
            known.confirmed = False

    def confirmed(self, key: tuple[str, int]) -> None:
        """A record was found waiting past the committed offset."""
        if key in self.progress:
            self.progress[key].confirmed = True

    def suspected(self, now: float, offsets: dict[tuple[str, int], InputOffsets]
                  ) -> dict[tuple[str, int], float]:
        """(input, partition) -> since when, for those whose offsets say records wait with no
        commit for stall_after_s (records, markers or aborted records: to be confirmed)."""
        out = {}
        for key, seen in offsets.items():
            known = self.progress.get(key)
            if known is None or now - known.since < self.stall_after_s:
                continue
            if seen.high > known.high_at_commit and seen.behind > 0:
                out[key] = known.since
        return out

    def stalled(self, now: float, offsets: dict[tuple[str, int], InputOffsets]
                ) -> dict[tuple[str, int], float]:
        """The suspected ones where a waiting record was found."""
        return {key: since for key, since in self.suspected(now, offsets).items()
                if self.progress[key].confirmed}


def engine_state(progress: EngineProgress, offsets: dict[tuple[str, int], InputOffsets],
                 now: float, wall_now_ms: int, crashes: dict[str, Any]) -> dict[str, Any]:
    """What /health and /overview say of the engine: ok, stalled (partitions, cause, since)
    or unknown (its offsets could not be read)."""
    if progress.unavailable is not None or progress.last_reading is None:
        return {"engine": "unknown",
                "reason": progress.unavailable or "the engine's offsets were not read yet"}
    stalled = progress.stalled(now, offsets)
    if not stalled:
        return {"engine": "ok"}
    since_s = min(stalled.values())
    since_ms = wall_now_ms - int((now - since_s) * 1000)
    halts = sorted((info.get("halted_at", 0), info["halt"])
                   for info in crashes.get("worker", {}).values() if info.get("halt"))
    cause = halts[-1][1] if halts and halts[-1][0] >= since_ms - 60_000 else \
        f"records wait and no transaction committed for {now - since_s:.0f} s"
    return {"engine": "stalled",
            "stall": {"partitions": sorted({p for _, p in stalled}),
                      "inputs": sorted(f"{label}/{p}" for label, p in stalled),
                      "cause": cause, "since": since_ms}}


class EngineWatch:
    """A views worker's reader of the engine's progress: `sample()` from a timer, `state()`
    from any request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lag = EngineLag(settings)
        self.progress = EngineProgress(settings.engine_stall_after_s)
        self._offsets: dict[tuple[str, int], InputOffsets] = {}
        self._answered_at = time.monotonic()   # the brokers' last answer (or the start)

    def sample(self) -> None:
        """Read the offsets once (blocking: run it off the event loop)."""
        try:
            self._offsets = self.lag.offsets()
        except KafkaException as exc:   # the broker did not answer: shown, not raised
            self.progress.failed(f"{type(exc).__name__}: {exc}")
            return
        now = self._answered_at = time.monotonic()
        self.progress.observe(now, self._offsets)
        suspected = [key for key in self.progress.suspected(now, self._offsets)
                     if not self.progress.progress[key].confirmed]
        if suspected:
            self._confirm(suspected)

    def _confirm(self, keys: list[tuple[str, int]]) -> None:
        """Read each suspected input from its committed offset: a record confirms the stall;
        reaching the end without one settles it (markers, aborted records)."""
        from confluent_kafka import TopicPartition

        from kbank.streams import kafka

        names = {"requests": self.settings.topic(topics.REQUESTS),
                 "credits": self.settings.topic(topics.CREDITS)}
        wanted = {(names[label], p): (label, p) for label, p in keys}
        reader = kafka.consumer(self.settings, kafka.VIEWS, self.settings.topic("bank-views-watch"),
                                **{"enable.partition.eof": True})
        try:
            reader.assign([TopicPartition(topic, p, max(self._offsets[key].committed,
                                                        self._offsets[key].low))
                           for (topic, p), key in wanted.items()])
            open_keys = dict(wanted)
            deadline = time.monotonic() + 5
            while open_keys and time.monotonic() < deadline:
                msg = reader.poll(0.5)
                if msg is None or (msg.topic(), msg.partition()) not in open_keys:
                    continue
                key = open_keys.pop((msg.topic(), msg.partition()))
                if msg.error() is None:
                    self.progress.confirmed(key)
                elif msg.error().code() == msg.error()._PARTITION_EOF:
                    self.progress.settled(key, self._offsets[key].high)
                else:
                    open_keys[(msg.topic(), msg.partition())] = key
        finally:
            reader.close()

    def state(self) -> dict[str, Any]:
        return engine_state(self.progress, self._offsets, time.monotonic(),
                            int(time.time() * 1000), read_crashes(self.settings.state_dir))

    def unreachable_for_s(self) -> float | None:
        """Seconds since the brokers last answered this worker, once past
        BANK_VIEWS_STALE_AFTER_S (None: they answer). A worker cut from them still serves what
        it has folded, which may be older than what the ledger holds; its answers say so."""
        if self.settings.unsafe_views_serve_isolated:
            return None
        silent = time.monotonic() - self._answered_at
        return silent if silent > self.settings.views_stale_after_s else None

    def stalled_partitions(self) -> int:
        return len({p for _, p in self.progress.stalled(time.monotonic(), self._offsets)})
