"""The views' table writes: buffered for one fold batch, then written in one RocksDB batch.

The views' state is a function of their sources (ledger.events, transfers.outcomes), which
are kept for ever: the sources are the changelog (issue 42; Kafka Streams does the same for
a table read from a source topic, `reuse.ktable.source.topics`). No per-event copy of the
state goes to Kafka. What makes a store resumable is that it records, with the state, how
far it has folded each source partition (the totals' offset for the ledger, the outcomes
position), and that both reach the disk in one write batch:

  - reads see the buffered values first, so the fold reads its own writes;
  - flush() puts each partition's newest values, positions included, into its RocksDB store
    in one WriteBatch (atomic: a SIGKILL leaves the store at one flush or the next, never
    between), so a restarted worker resumes from its own store, and a worker without one
    folds the partition from the start of the ledger.
"""
from __future__ import annotations

from typing import Callable

from kbank.streams.views.partition_stores import PartitionReads

_DELETED = None


class TableWrites:
    """The writes of the fold not yet in RocksDB, per (partition, key)."""

    def __init__(self, stores: Callable[[], PartitionReads], flush_at: int = 20_000,
                 before_flush: Callable[[], None] = lambda: None) -> None:
        self.stores = stores             # e.g. the Faust table's, which it makes lazily
        self._before_flush = before_flush   # the fold's writes made at a flush (what it
        # keeps decoded: views, statuses, totals, positions)
        self._flush_at = flush_at
        self._latest: dict[tuple[int, bytes], bytes | None] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The key's value as the fold left it: buffered, else in the partition's store."""
        slot = (partition, key)
        if slot in self._latest:
            return self._latest[slot]
        return self.stores().read(partition, key)

    def get_or(self, partition: int, key: bytes, stored: bytes | None) -> bytes | None:
        """The key's value as the fold left it, given what its store holds (read already,
        by a scan): the batch's own write if it made one."""
        return self._latest.get((partition, key), stored)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._latest[(partition, key)] = value
        if len(self._latest) >= self._flush_at:
            self.flush()

    def put_no_flush(self, partition: int, key: bytes, value: bytes) -> None:
        """A write that never starts a flush itself: a read position (written with the state
        it covers, in the same batch), or what the fold writes while a flush begins."""
        self._latest[(partition, key)] = value

    def delete(self, partition: int, key: bytes) -> None:
        self._latest[(partition, key)] = _DELETED

    @property
    def unacknowledged(self) -> int:
        """Writes buffered here, not yet in RocksDB."""
        return len(self._latest)

    def flush(self) -> int:
        """Write what is buffered to RocksDB, one batch per partition; returns how many
        keys."""
        self._before_flush()
        if not self._latest:
            return 0
        self.stores().write_values(self._latest)
        written = len(self._latest)
        self._latest.clear()
        return written
