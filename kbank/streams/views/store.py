"""The views table's store in Faust: one RocksDB store per partition, opened as Faust
assigns the partitions, under the process's memory budget.

The store is resumable on its own: it holds, with the state, how far the state has folded
each source partition (kbank.streams.views.writes), so the ledger and the outcomes are its
changelog (issue 42): nothing of it is written to Kafka. Its layout is
kbank.streams.views.layout; its reads and writes, kbank.streams.views.partition_stores.
"""
from __future__ import annotations

from typing import Any

from faust import stores
from faust.stores.rocksdb import RocksDBOptions, Store as RocksDBStore
from rocksdict import Options

from kbank.streams.storage import StoreBudget
from kbank.streams.views.partition_stores import PartitionReads

STORE_URL = "bank-views-rocksdb://"


class _BudgetedOptions(RocksDBOptions):
    """Faust's opener of a partition's RocksDB, with the process's StoreBudget for options
    (Faust's own give each partition a 2 GB block cache and up to three 64 MB memtables)."""

    def __init__(self, budget: StoreBudget) -> None:
        super().__init__(use_rocksdict=True)
        self.budget = budget

    def as_options(self) -> Options:
        return self.budget.options()


class ViewsStore(PartitionReads, RocksDBStore):
    """Faust's RocksDB store under the process's memory budget, with the scans and the
    batched writes the views need."""

    budget: StoreBudget | None = None  # the process's, set by the views app before any store opens

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.budget is not None, "the views app sets ViewsStore.budget"
        self.rocksdb_options = _BudgetedOptions(self.budget)


stores.STORES.aliases["bank-views-rocksdb"] = f"{__name__}:ViewsStore"
