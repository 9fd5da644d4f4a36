"""Recovery of a partition's store from engine.changelog, its own component.

A store's RocksDB holds only committed data and the changelog offset it
reflects; a restore reads the changelog (read_committed, so aborted and
open transactions are invisible) from there to the end, the end being the
partition-EOF event (transaction markers take offsets, so "the last record
seen" is not the test). The changelog is compacted, so a worker with no
local state reads one record per account plus the batch records, not the
whole history. A store whose offset is past the changelog's end belongs to
another cluster (or an older topic of the same name): it is wiped.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.engine.processor import PartitionTask
from streams.engine.state import PartitionStore

log = logging.getLogger("bank.engine")


def restore(restorer: Consumer, changelog: str, tasks: list[PartitionTask],
            timeout_s: float = 300.0) -> None:
    """Bring each task's store up to the end of its changelog partition."""
    if not tasks:
        return
    by_partition = {t.partition: t for t in tasks}
    for task in tasks:
        _, high = restorer.get_watermark_offsets(TopicPartition(changelog, task.partition), 30)
        if task.store.changelog_offset > high:
            log.warning("store of p%d is past its changelog's end (%d > %d): wiping it",
                        task.partition, task.store.changelog_offset, high)
            path = task.store.path
            task.store.close()
            PartitionStore.wipe(path)
            task.store = PartitionStore(path)
    pending: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in by_partition}
    remaining = set(by_partition)
    restorer.assign([TopicPartition(changelog, t.partition, t.store.changelog_offset) for t in tasks])
    deadline = time.monotonic() + timeout_s
    try:
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog partitions {sorted(remaining)} not restored in {timeout_s} s")
            for msg in restorer.consume(10000, 0.1):
                err = msg.error()
                p = msg.partition()
                if err is None and p in remaining:
                    pending[p].append((msg.key(), msg.value()))
                elif err.code() == KafkaError._PARTITION_EOF and p in remaining:
                    remaining.discard(p)
                    by_partition[p].store.apply_changelog(pending.pop(p), msg.offset())
                    by_partition[p].changelog_next = msg.offset()
                    log.info("restored p%d to changelog offset %d", p, msg.offset())
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("restore: %s", err)
    finally:
        restorer.unassign()
