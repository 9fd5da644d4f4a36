"""TableWrites: a fold batch's writes and the positions they cover reach RocksDB together,
in one write batch per partition, and nothing of them goes anywhere else (issue 42: the
sources are the views' changelog)."""
from __future__ import annotations

from rocksdict import Options, Rdict

from kbank.streams.views.layout import ViewKeys
from kbank.streams.views.partition_stores import LocalStores
from kbank.streams.views.writes import TableWrites


def test_a_batch_and_its_positions_reach_rocksdb_together(tmp_path):
    stores = LocalStores(str(tmp_path))
    writes = TableWrites(lambda: stores)
    position = ViewKeys.outcomes_position(2)
    writes.put_no_flush(2, position, b"5")
    writes.put(2, b"k1", b"a")
    writes.put(2, b"k2", b"b")
    writes.put(2, b"k1", b"c")
    writes.delete(2, b"k2")
    writes.put_no_flush(2, position, b"9")
    writes.put(5, b"k1", b"other partition")

    assert (writes.get(2, b"k1"), writes.get(2, b"k2"), writes.get(2, position)) == (b"c", None, b"9")
    assert stores._db_for_partition(2).get(b"k1") is None, "nothing reaches RocksDB before a flush"
    assert writes.unacknowledged == 4
    assert writes.flush() == 4     # each key's last value once
    assert writes.unacknowledged == 0
    db = stores._db_for_partition(2)
    assert (db.get(b"k1"), db.get(b"k2"), db.get(position)) == (b"c", None, b"9")
    assert stores._db_for_partition(5).get(b"k1") == b"other partition"
    assert writes.flush() == 0


def test_a_store_reopened_after_a_flush_holds_the_state_and_its_position(tmp_path):
    """What a restarted worker reads back: the state with the position it covers."""
    stores = LocalStores(str(tmp_path))
    writes = TableWrites(lambda: stores)
    writes.put(1, ViewKeys.account("alice"), b"view")
    writes.put_no_flush(1, ViewKeys.outcomes_position(1), b"42")
    writes.flush()
    stores.close()
    again = Rdict(str(tmp_path / "1"), Options(raw_mode=True))
    assert (again.get(ViewKeys.account("alice")), again.get(ViewKeys.outcomes_position(1))) == \
        (b"view", b"42")
