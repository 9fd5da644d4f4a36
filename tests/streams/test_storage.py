"""A process's stores share one RocksDB memory budget (kbank/streams/storage.py)."""
from __future__ import annotations

import os
import time

from rocksdict import Options, Rdict, WriteBatch

from kbank.streams.storage import StoreBudget

MB = 2**20


def _fill(db: Rdict, store: int, megabytes: int) -> None:
    value = os.urandom(1000)
    for batch in range(megabytes):
        writes = WriteBatch(raw_mode=True)
        for i in range(1000):
            writes.put(b"s%d:%d:%d" % (store, batch, i), value)
        db.write(writes)


def _memtables(stores: list[Rdict]) -> int:
    return sum(db.property_int_value("rocksdb.size-all-mem-tables") or 0 for db in stores)


def _write_four_stores(tmp_path, options) -> tuple[list[Rdict], int]:  # noqa: ANN001
    stores = [Rdict(str(tmp_path / f"p{i}"), options()) for i in range(4)]
    for i, db in enumerate(stores):
        _fill(db, i, 6)          # 24 MB written in all: three times the budget
    return stores, _memtables(stores)


def test_stores_of_a_process_share_one_bounded_budget(tmp_path) -> None:
    budget = StoreBudget(8)
    stores, memtables = _write_four_stores(tmp_path, budget.options)
    try:
        # the memtables of all four stores come back within the write buffers' half of the
        # budget once the flushes they triggered (in RocksDB's threads) are done, and are
        # charged to the one cache, which stays within its size
        deadline = time.monotonic() + 30
        while memtables > 4 * MB * 1.25:
            assert time.monotonic() < deadline, memtables
            time.sleep(0.05)
            memtables = _memtables(stores)
        assert memtables <= budget.usage_bytes() <= 8 * MB * 1.1, budget.usage_bytes()
        for i, db in enumerate(stores):
            assert db.get(b"s%d:5:999" % i) is not None and db.get(b"s%d:0:0" % i) is not None
            assert db.get(b"s%d:6:0" % i) is None
    finally:
        for db in stores:
            db.close()


def test_without_a_budget_the_memtables_hold_everything(tmp_path) -> None:
    """Negative control: with RocksDB's defaults (64 MB memtables per store) the same writes
    stay in memory, a little more of it for each store a process opens."""
    stores, memtables = _write_four_stores(tmp_path, lambda: Options(raw_mode=True))
    try:
        assert memtables > 20 * MB, memtables
    finally:
        for db in stores:
            db.close()
