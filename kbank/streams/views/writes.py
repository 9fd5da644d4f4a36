"""The views' table writes: buffered for one fold batch, then written in one go.

A Faust table assignment writes RocksDB at once and hands the record to Faust's producer
buffer, which sends it with one asyncio hand-off and one aiokafka call per write: a
profile of a views worker draining a backlog spent most of its time there. The fold
writes into TableWrites instead:

  - reads see the buffered values first, so the fold reads its own writes;
  - flush() puts each partition's newest values into its RocksDB store in one WriteBatch,
    and hands every write to librdkafka (one C call each) for the table's changelog, on the
    partition of the source record being folded, as Faust does.

The changelog gets every write, in the order the fold made them, not only each key's
last value: recovery reads a prefix of a changelog partition, and the fold's idempotency
relies on what such a prefix can hold. A ledger event's writes end with its partition's
totals, so a prefix holds an account view at most one event ahead of the totals (that
event is recognised as REDELIVERED and counted again by offset); coalescing an account's
writes across events ahead of the totals would let a prefix hold an account several
events ahead, whose events a re-fold then skips as duplicates without counting them (the
views test that kills a worker mid-backlog caught exactly that).

A position that only says how far a source was read, with nothing folded depending on it
(the outcomes position: statuses only move forward, so re-merging them is harmless), is
written once per batch, after the batch's other writes (put_position): any prefix then
holds it only with everything it covers.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import Producer
from faust.types import TP

from kbank.streams.kafka import produce_waiting

_DELETED = None


class TableWrites:
    """The writes of the fold not yet in RocksDB and the changelog, per (partition, key)."""

    def __init__(self, table: Any, producer: Producer, changelog_topic: str,
                 flush_at: int = 20_000) -> None:
        self._table = table              # the Faust table: its store is created lazily
        self._producer = producer
        self._topic = changelog_topic
        self._flush_at = flush_at
        self._latest: dict[tuple[int, bytes], bytes | None] = {}   # for reads and RocksDB
        self._log: list[tuple[int, bytes, bytes | None]] = []      # for the changelog
        self._positions: dict[tuple[int, bytes], bytes] = {}        # after the log
        self._acked: dict[int, int] = {}   # changelog partition -> highest acknowledged offset
        self._failed: str | None = None    # the first changelog write that failed

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The key's value as the fold left it: buffered, else in the partition's store."""
        slot = (partition, key)
        if slot in self._latest:
            return self._latest[slot]
        return self._table.data._db_for_partition(partition).get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._latest[(partition, key)] = value
        self._log.append((partition, key, value))
        if len(self._log) >= self._flush_at:
            self.flush()

    def put_position(self, partition: int, key: bytes, value: bytes) -> None:
        """A read position, written once per flush after everything else (see above)."""
        self._latest[(partition, key)] = value
        self._positions[(partition, key)] = value

    def delete(self, partition: int, key: bytes) -> None:
        self._latest[(partition, key)] = _DELETED
        self._log.append((partition, key, _DELETED))

    @property
    def unacknowledged(self) -> int:
        """Writes buffered here or not yet acknowledged by the changelog."""
        self._producer.poll(0)       # serve the delivery reports that arrived
        return len(self._log) + len(self._positions) + len(self._producer)

    def flush(self) -> int:
        """Write what is buffered to RocksDB and hand it to the changelog's producer; returns
        how many writes."""
        self._producer.poll(0)
        self._record_acknowledged()
        if self._failed is not None:
            raise RuntimeError(f"views changelog write failed: {self._failed}")
        if not self._log and not self._positions:
            return 0
        self._table.data.write_values(self._latest)
        self._log.extend((partition, key, value)
                         for (partition, key), value in self._positions.items())
        for partition, key, value in self._log:
            produce_waiting(self._producer, self._topic, key=key, value=value,
                            partition=partition, on_delivery=self._delivered)
        written = len(self._log)
        self._latest.clear()
        self._log.clear()
        self._positions.clear()
        return written

    def _delivered(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report (on whichever thread polled, /health's among them):
        remember how far each changelog partition is acknowledged, and a failure, which
        crashes the worker at the fold's next flush (a table whose changelog lacks a write
        cannot be recovered from it). Raising here would reach whoever polled and be lost."""
        if err is not None:
            self._failed = self._failed or str(err)
            return
        partition, offset = msg.partition(), msg.offset()
        if offset > self._acked.get(partition, -1):
            self._acked[partition] = offset

    def _record_acknowledged(self) -> None:
        """Tell the store how far its changelog is acknowledged, as Faust does for its own
        writes, so a partition recovered again later starts from there."""
        if not self._acked:
            return
        acked, self._acked = self._acked, {}
        store = self._table.data
        for partition, offset in acked.items():
            store.set_persisted_offset(TP(self._topic, partition), offset)

    async def drain(self, timeout_s: float) -> bool:
        """Flush, then wait until the changelog acknowledged every write (a revocation),
        serving the delivery reports on this thread without blocking the event loop."""
        self.flush()
        deadline = time.monotonic() + timeout_s
        while self._producer.flush(0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        self._record_acknowledged()
        return len(self._producer) == 0
