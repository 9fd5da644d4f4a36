"""The views' table writes: buffered for a few milliseconds, then written in one go.

A Faust table assignment writes RocksDB at once and hands the record to Faust's producer
buffer, which sends it with one asyncio hand-off and one aiokafka call per write: a
profile of a views worker draining a backlog spent most of its time there (a fold of
about 1,500 source records per CPU-second). The fold writes into TableWrites instead:

  - reads see the buffered values first, so the fold reads its own writes;
  - a key written several times before a flush (an account's view, a partition's totals,
    the outcomes position) is written once;
  - flush() puts each partition's writes into its RocksDB store in one WriteBatch and hands
    them to librdkafka (one C call each) for the table's changelog, on the partition the
    source record came from, as Faust does.

Positions come last. The totals of a ledger partition and the outcomes position record how
far a source partition has been folded; each flush produces them after the data writes it
holds, so any prefix of a changelog partition that a recovery reads never has a position
beyond its data (the folds are idempotent, so data beyond a position is harmless).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import Producer
from faust.types import TP
from rocksdict import WriteBatch

from kbank.streams.kafka import produce_waiting
from kbank.streams.views.store import ViewKeys

_POSITIONS = (ViewKeys.TOTALS, ViewKeys.OUTCOMES_POSITION)
_DELETED = None


class TableWrites:
    """The writes of the fold not yet in RocksDB and the changelog, per (partition, key)."""

    def __init__(self, table: Any, producer: Producer, changelog_topic: str,
                 flush_at: int = 5000) -> None:
        self._table = table              # the Faust table: its store is created lazily
        self._producer = producer
        self._topic = changelog_topic
        self._flush_at = flush_at
        self._data: dict[tuple[int, bytes], bytes | None] = {}
        self._positions: dict[tuple[int, bytes], bytes | None] = {}
        self._acked: dict[int, int] = {}   # changelog partition -> highest acknowledged offset

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The key's value as the fold left it: buffered, else in the partition's store."""
        slot = (partition, key)
        pending = self._positions if key[:2] in _POSITIONS else self._data
        if slot in pending:
            return pending[slot]
        return self._table.data._db_for_partition(partition).get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        pending = self._positions if key[:2] in _POSITIONS else self._data
        pending[(partition, key)] = value
        if len(self._data) >= self._flush_at:
            self.flush()

    def delete(self, partition: int, key: bytes) -> None:
        assert key[:2] not in _POSITIONS, key     # positions only move forward
        self._data[(partition, key)] = _DELETED

    @property
    def unacknowledged(self) -> int:
        """Writes buffered here or not yet acknowledged by the changelog."""
        self._producer.poll(0)       # serve the delivery reports that arrived
        return len(self._data) + len(self._positions) + len(self._producer)

    def flush(self) -> int:
        """Write what is buffered to RocksDB and hand it to the changelog's producer, data
        before positions; returns how many writes."""
        self._producer.poll(0)
        self._record_acknowledged()
        if not self._data and not self._positions:
            return 0
        store = self._table.data
        batches: dict[int, WriteBatch] = {}
        written = 0
        for pending in (self._data, self._positions):
            for (partition, key), value in pending.items():
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = WriteBatch(raw_mode=True)
                if value is _DELETED:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            for partition, batch in batches.items():
                store._db_for_partition(partition).write(batch)
            batches.clear()
            for (partition, key), value in pending.items():
                produce_waiting(self._producer, self._topic, key=key, value=value,
                                partition=partition, on_delivery=self._delivered)
            written += len(pending)
            pending.clear()
        return written

    def _delivered(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report (on whichever thread polled): remember how far each
        changelog partition is acknowledged. A failed write crashes the worker at the next
        flush: a table whose changelog lacks a write cannot be recovered from it."""
        if err is not None:
            raise RuntimeError(f"views changelog write failed: {err}")
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
