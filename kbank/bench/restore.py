"""`bank bench --restore-ids N`: how fast a new engine worker restores a partition's store.

Writes a changelog partition as a long-running engine would leave it after
compaction (one record per account, one batch record per 100 applied request
ids) and times a cold ChangelogRestore of it, in the bounded steps the
worker's poll loop takes.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import orjson

from kbank.streams.progress import progress_bar
from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.engine import (BatchRecord, ChangelogRestore, PartitionStore, PartitionTask,
                                  account_key, stamp)
from kbank.streams.model import Account
from kbank.streams.topics import ensure_topics
from kbank.streams.storage import StoreBudget

IDS_PER_BATCH = 100


def restore_speed(settings: Settings, accounts: int, ids: int) -> dict[str, Any]:
    ensure_topics(settings)
    producer = kafka.producer(settings, kafka.ADMIN, **{"linger.ms": 50, "queue.buffering.max.messages": 2_000_000,
                                           "compression.type": "lz4"})
    topic = settings.topic(topics.CHANGELOG)
    batches = max(1, ids // IDS_PER_BATCH)

    def put(key: bytes, value: bytes) -> None:
        kafka.produce_waiting(producer, topic, 0.05, key=key, value=value, partition=0)

    for i in range(accounts):
        put(account_key(f"acct-{i:07d}"), orjson.dumps(Account(balance=i, seq=1).to_json()))
    for b in range(batches):
        ids_of_batch = {f"r:req-{b}-{j}": stamp("fingerprint completed ", b) for j in range(IDS_PER_BATCH)}
        record = BatchRecord((0, 0), (b * IDS_PER_BATCH, (b + 1) * IDS_PER_BATCH), ids_of_batch)
        put(record.key, record.encode())
    if producer.flush(300) > 0:
        raise TimeoutError("the changelog was not written")
    task = PartitionTask(0, PartitionStore(os.path.join(tempfile.mkdtemp(prefix="bank-bench-restore-"), "p0"),
                                            StoreBudget(settings.rocksdb_memory_mb)),
                         next_request=batches * IDS_PER_BATCH)
    restorer = kafka.consumer(settings, kafka.ADMIN, settings.topic("bench-restore"), **{"enable.partition.eof": True})
    progress = progress_bar("restore: changelog records", "records")
    restore = ChangelogRestore(restorer, topic, progress=progress.update)
    started, steps, longest = time.monotonic(), 0, 0.0
    restore.add([task])
    while restore.active:
        t0 = time.monotonic()
        restore.step(settings.batch_max_records)
        steps += 1
        longest = max(longest, time.monotonic() - t0)
    elapsed = time.monotonic() - started
    progress.close()
    restorer.close()
    task.store.close()
    records = accounts + batches
    return {"accounts": accounts, "applied_ids": batches * IDS_PER_BATCH, "changelog_records": records,
            "seconds": round(elapsed, 2), "records_per_s": round(records / elapsed),
            "ids_per_s": round(batches * IDS_PER_BATCH / elapsed), "steps": steps,
            "longest_step_ms": round(longest * 1000)}
