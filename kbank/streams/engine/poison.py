"""Containment of a record that makes the engine fail (issue 41; Kafka Streams' processing
exception handler, KIP-1033, does the same for its users).

A failure while deciding a record is a bug in the engine, never bad input: the batch aborts
and the worker ends loudly, and its supervisor restarts it. But the restarted worker reads
the same record again, so one such record would halt its partitions for good. The
failures are counted per input position, in a file beside the stores that outlives the
worker (BANK_STATE_DIR/engine-failures.json). From the `limit`th failure on at the same
position:

- a request is refused with the reason `engine_error` (no state changes, no ledger event;
  its id is not remembered, so a retry after the fix is decided anew) and dead-lettered
  with the error, loudly counted (`bank_engine_records_decided{kind="contained"}`);
- money in flight (a credit, refund or notice between partitions, or a hold's expiry) is
  never skipped: from the `limit`th failure on, the worker halts with one line
  (kbank.streams.engine.failures), which the views' /health shows as the engine's stall;
  each restart tries the record again, so the partition heals once the bug is fixed.
"""
from __future__ import annotations

import os
import orjson

from kbank.streams.files import private_dir

FAILURES_FILE = "engine-failures.json"
_MAX_ERROR = 500        # characters of an error kept
_MAX_POSITIONS = 1_000  # positions remembered


class MoneyInFlightFails(Exception):
    """A transfers.credits message fails again and again: the worker must stop, not skip it."""


class FailureLog:
    """Failures per input position ("topic/partition/offset"), kept across restarts. Read
    once when the worker starts: a failure ends the process, so what this incarnation must
    know was written by the ones before it."""

    def __init__(self, state_dir: str, limit: int) -> None:
        self.state_dir, self.limit = state_dir, limit
        self.path = os.path.join(state_dir, FAILURES_FILE)
        self.known = self._read()   # empty in the common case: nothing to look up

    def _read(self) -> dict[str, dict]:
        try:
            with open(self.path, "rb") as f:
                data = orjson.loads(f.read())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def failed(self, position: str, error: str) -> int:
        """Count a failure at `position` (written at once: the worker is about to end);
        returns how many there have been."""
        data = self._read()
        entry = data.get(position) if isinstance(data.get(position), dict) else {}
        count = int(entry.get("count", 0)) + 1
        data.pop(position, None)
        data[position] = {"count": count, "error": error[:_MAX_ERROR]}
        while len(data) > _MAX_POSITIONS:   # the oldest first: bounded
            data.pop(next(iter(data)))
        private_dir(self.state_dir)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(data))
        os.replace(tmp, self.path)
        self.known = data
        return count

    def exhausted(self, position: str) -> str | None:
        """The error of a position that failed `limit` times (None: go on deciding it)."""
        entry = self.known.get(position)
        if isinstance(entry, dict) and int(entry.get("count", 0)) >= self.limit:
            return str(entry.get("error", "unknown error"))
        return None
