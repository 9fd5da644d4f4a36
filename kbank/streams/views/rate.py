"""Each API key's rate (pure): a token bucket per key, and the records views workers share
what each key used at them by (kbank.streams.views.usage sends and reads them), so a key's
rate holds across every views worker (issue 41)."""
from __future__ import annotations

import threading
from typing import Any

import orjson

MAX_KEYS_PER_RECORD = 1000
_MAX_COUNT = 10**9


def usage_records(writer: str, used: dict[str, int], now_ms: int) -> list[bytes]:
    """The records that say what each key used at `writer` (chunked: each record bounded)."""
    items = sorted(used.items())
    return [orjson.dumps({"w": writer, "t": now_ms, "used": dict(items[i:i + MAX_KEYS_PER_RECORD])})
            for i in range(0, len(items), MAX_KEYS_PER_RECORD)]


def read_usage(raw: bytes | None) -> tuple[str, int, dict[str, int]] | None:
    """(writer, ms, used) of a well-formed record, else None."""
    try:
        doc: Any = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or set(doc) != {"w", "t", "used"}:
        return None
    writer, at, used = doc["w"], doc["t"], doc["used"]
    if not isinstance(writer, str) or not isinstance(at, int) or isinstance(at, bool) \
            or not isinstance(used, dict) or len(used) > MAX_KEYS_PER_RECORD:
        return None
    if not all(isinstance(k, str) and len(k) <= 64 and isinstance(n, int)
               and not isinstance(n, bool) and 0 < n <= _MAX_COUNT for k, n in used.items()):
        return None
    return writer, at, used


class RateLimiter:
    """A token bucket per key: `rate` requests a second sustained, `burst` at once. What
    the key used at other views workers is charged here too (kbank.streams.views.usage),
    so the rate holds across the cluster; a bucket may go below zero by it (the key waits
    longer), down to one burst's debt at most."""

    def __init__(self, rate: float, burst: int) -> None:
        assert rate > 0 and burst >= 1, (rate, burst)
        self.rate, self.burst = rate, float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}   # key id -> (tokens, at)
        self._used: dict[str, int] = {}     # requests let through since take_used()
        self._lock = threading.Lock()       # charged from the usage tail's thread

    def wait_s(self, key_id: str, now: float) -> float:
        """0 and take a token if the key may go now; else how long until it may."""
        with self._lock:
            tokens = self._refilled(key_id, now)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                self._used[key_id] = self._used.get(key_id, 0) + 1
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate

    def charge(self, key_id: str, count: int, now: float) -> None:
        """Take what the key used at another worker out of its bucket here."""
        assert count > 0, count
        with self._lock:
            tokens = max(-self.burst, self._refilled(key_id, now) - count)
            self._buckets[key_id] = (tokens, now)

    def take_used(self) -> dict[str, int]:
        """What each key used here since the last call (for the other workers)."""
        with self._lock:
            used, self._used = self._used, {}
            return used

    def _refilled(self, key_id: str, now: float) -> float:
        tokens, at = self._buckets.get(key_id, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)
