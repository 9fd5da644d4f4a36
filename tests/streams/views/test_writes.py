"""TableWrites: a fold batch's writes reach RocksDB once and a real changelog in order."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from rocksdict import Options, Rdict

from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.views.store import MonotoneRocksDBStore, ViewKeys
from kbank.streams.views.writes import TableWrites


class PartitionStores:
    """The part of the views' store TableWrites uses, on real RocksDB files."""

    write_values = MonotoneRocksDBStore.write_values

    def __init__(self, path: Any) -> None:
        self.path, self.dbs, self.persisted = path, {}, {}

    def _db_for_partition(self, partition: int) -> Rdict:
        if partition not in self.dbs:
            self.dbs[partition] = Rdict(str(self.path / str(partition)), Options(raw_mode=True))
        return self.dbs[partition]

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp.partition] = offset


def test_a_batch_reaches_the_changelog_in_the_fold_order_with_its_position_last(settings, tmp_path):
    topic = settings.topic(topics.LEDGER)      # an empty topic of this test's own
    stores = PartitionStores(tmp_path)
    writes = TableWrites(SimpleNamespace(data=stores), kafka.producer(settings, kafka.ADMIN), topic)
    position = ViewKeys.outcomes_position(2)
    writes.put_position(2, position, b"5")
    writes.put(2, b"k1", b"a")
    writes.put(2, b"k2", b"b")
    writes.put(2, b"k1", b"c")
    writes.delete(2, b"k2")
    writes.put_position(2, position, b"9")
    writes.put(5, b"k1", b"other partition")

    assert (writes.get(2, b"k1"), writes.get(2, b"k2"), writes.get(2, position)) == (b"c", None, b"9")
    assert stores._db_for_partition(2).get(b"k1") is None, "nothing reaches RocksDB before a flush"
    assert writes.flush() == 6     # the position once
    assert asyncio.run(writes.drain(30)) and writes.unacknowledged == 0

    assert [(m.key(), m.value()) for m in read_topic(settings, topic, partitions=[2])] == [
        (b"k1", b"a"), (b"k2", b"b"), (b"k1", b"c"), (b"k2", None), (position, b"9")]
    assert [m.value() for m in read_topic(settings, topic, partitions=[5])] == [b"other partition"]
    db = stores._db_for_partition(2)
    assert (db.get(b"k1"), db.get(b"k2"), db.get(position)) == (b"c", None, b"9")
    assert stores.persisted == {2: 4, 5: 0}, "the acknowledged changelog offsets are recorded"
    assert writes.flush() == 0
