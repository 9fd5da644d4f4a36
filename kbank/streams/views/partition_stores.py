"""The views' stores as the fold and the routes use them: one RocksDB store per partition.

`PartitionReads` is what every user of the views' state needs of its stores (a point read,
scans, and a batch of writes made atomic per partition); it is written once, over a store's
`_db_for_partition`. The live worker's stores are Faust's (kbank.streams.views.store.ViewsStore,
opened as Faust assigns partitions); `LocalStores` are the same stores without Faust, in a
directory of their own: the ones `bank replay views` rebuilds and the fold's tests use.

The writes skip RocksDB's write-ahead log, as Kafka Streams' stores do, and for the same
reason: the state can be made again from its changelog, here the sources. A crash then loses
the writes not yet flushed from the memtable, and only a suffix of them: each write batch is
atomic and memtables reach the disk in order, so the store is left at an earlier batch with
the source positions of that batch, and the worker folds again from there. (A clean close
flushes the memtables: RocksDB does when data is not in a log.) Measured: 1.58 us a key
with the log, 1.20 without.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

from rocksdict import Rdict, WriteBatch, WriteOptions

from kbank.streams.storage import StoreBudget

_NO_LOG = WriteOptions()
_NO_LOG.disable_wal = True


class PartitionReads:
    """Reads and batched writes of the views' per-partition RocksDB stores (keys and values
    raw bytes), over the `_db_for_partition(partition) -> Rdict` of the class it is mixed
    into."""

    _db_for_partition: Callable[[int], Rdict]

    def read(self, partition: int, key: bytes) -> bytes | None:
        """One key's value in one partition's store."""
        return self._db_for_partition(partition).get(key)

    def scan(self, partition: int, prefix: bytes, after: bytes, limit: int) -> list[bytes]:
        """The values of scan_items."""
        return [value for _, value in self.scan_items(partition, prefix, after, limit)]

    def scan_items(self, partition: int, prefix: bytes, after: bytes,
                   limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) of keys that start with `prefix` and sort after
        prefix + `after`, in key order, from one partition's local store."""
        out: list[tuple[bytes, bytes]] = []
        for key, value in self._db_for_partition(partition).items(from_key=prefix + after):
            if not key.startswith(prefix) or len(out) >= limit:
                break
            if key != prefix + after or not after:
                out.append((key, value))
        return out

    def values(self, partition: int, prefix: bytes) -> Iterator[bytes]:
        """The values of keys that start with `prefix`, in key order, read lazily."""
        for key, value in self._db_for_partition(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield value

    def write_values(self, values: dict[tuple[int, bytes], bytes | None]) -> None:
        """Write (partition, key) -> value (None: delete), one WriteBatch per partition:
        each partition's share is atomic (a SIGKILL leaves all of it or none)."""
        batches: dict[int, WriteBatch] = {}
        for (partition, key), value in values.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, batch in batches.items():
            self._db_for_partition(partition).write(batch, _NO_LOG)


class LocalStores(PartitionReads):
    """The views' stores in `directory` (one RocksDB store per partition, `<directory>/<p>`),
    opened on first use, under one memory budget."""

    def __init__(self, directory: str, budget: StoreBudget | None = None) -> None:
        self.directory = directory
        self.budget = budget or StoreBudget(256)
        self.dbs: dict[int, Rdict] = {}

    def _db_for_partition(self, partition: int) -> Rdict:
        db = self.dbs.get(partition)
        if db is None:
            os.makedirs(self.directory, exist_ok=True)
            db = self.dbs[partition] = Rdict(os.path.join(self.directory, str(partition)),
                                             self.budget.options())
        return db

    def partitions(self) -> list[int]:
        """The partitions that have a store in the directory."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        self.dbs.clear()
