"""RocksDB options of the engine's and the views' stores: one memory budget per process.

A worker process holds one store per partition it owns. With RocksDB's per-store defaults
each store has its own memtables (64 MB each, and Faust's views stores up to three) and its
own block cache (Faust's: 2 GB each), so a process's memory grows with its partition count
and with time, and every store's first flush lands at about the same moment (measured: the
engine's memory climbed to 340 MB and the 10-minute run got slower from there;
BENCHMARKS.md). A StoreBudget is what a process's stores share instead: one block cache of
BANK_ROCKSDB_MEMORY_MB, to which the memtables are charged (a write buffer manager: a flush
once they reach half of it), and the bloom filters and indexes are kept in it as well, so the
whole of RocksDB's memory in the process is bounded by the one figure.
"""
from __future__ import annotations

from rocksdict import BlockBasedOptions, Cache, Options, WriteBufferManager

_MB = 2**20
# A store's own memtable: small, so that many stores under one budget flush one at a time,
# often and cheaply, rather than all at once.
_MEMTABLE_MAX_BYTES = 16 * _MB
# Most reads of a store are misses (is this request id, this credit, new?), which without a
# bloom filter look into every level's files: measured, a miss and a put went from 4.8 to
# about 14 us as a store grew from 1 to 4 million keys; with 10 bits a key they stay about 5.
BLOOM_BITS_PER_KEY = 10


class StoreBudget:
    """The block cache and write buffer manager that every store of one process shares."""

    def __init__(self, megabytes: int) -> None:
        assert megabytes >= 8, megabytes
        self.bytes = megabytes * _MB
        self.cache = Cache(self.bytes)
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            self.bytes // 2, False, self.cache)

    def options(self) -> Options:
        """Options of one store (raw bytes keys and values) under this budget."""
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(min(_MEMTABLE_MAX_BYTES, self.bytes // 8))
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        return options

    def usage_bytes(self) -> int:
        """What the cache holds now, memtables included."""
        return self.cache.get_usage()
