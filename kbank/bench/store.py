"""`bank bench --store-keys N`: what a partition store's read of a new key costs as it grows.

Most of the engine's store reads are misses (is this request id, this credit, new?). N
applied-id markers are written in batches of 2,500, each looked up first (a miss), into a
store opened with the engine's options (kbank.streams.storage) and into one opened
with RocksDB's defaults; the CPU per look-up and write is printed per million keys.
"""
from __future__ import annotations

import shutil
import tempfile
import time

from rocksdict import Options, Rdict, WriteBatch

from kbank.streams.config import Settings
from kbank.streams.storage import StoreBudget

BATCH = 2_500
STEP = 1_000_000


def _growth(options: Options, keys: int) -> list[float]:
    """CPU microseconds per miss-and-put, for each million keys written."""
    path = tempfile.mkdtemp(prefix="bank-bench-store-")
    db = Rdict(path, options)
    costs, started = [], time.process_time()
    try:
        for batch in range(keys // BATCH):
            writes = WriteBatch(raw_mode=True)
            for i in range(batch * BATCH, (batch + 1) * BATCH):
                key = b"r:12:acct-%07d/t%d" % (i % 10_000, i)
                assert db.get(key) is None
                writes.put(key, b"fingerprint completed ")
            db.write(writes)
            if (batch + 1) * BATCH % STEP == 0:
                now = time.process_time()
                costs.append(round((now - started) / STEP * 1e6, 2))
                started = now
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)
    return costs


def store_growth(keys: int) -> dict[str, object]:
    return {"keys": keys, "per_million_keys": [f"{(i + 1)}M" for i in range(keys // STEP)],
            "engine_options_us": _growth(StoreBudget(Settings().rocksdb_memory_mb).options(), keys),
            "rocksdb_defaults_us": _growth(Options(raw_mode=True), keys)}
