"""Recovery of a partition's store from engine.changelog, its own component.

A store's RocksDB holds only committed data, the changelog offset and the
input position it reflects; a restore reads the changelog (read_committed,
so aborted and open transactions are invisible) from that offset until the
store's input position has reached the group's committed offsets. That is
the "done" test, not the partition-EOF alone: EndTxn returns before the
coordinator has written the commit markers to every partition, so a new
owner can see the previous owner's offsets committed while the changelog's
last stable offset is still before that transaction's records; it keeps
reading until they appear. The changelog is compacted, so a worker with no
local state reads one record per account plus the batch records, not the
whole history.
"""
from __future__ import annotations

import logging
import time

from typing import Callable

from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.engine.processor import PartitionTask

log = logging.getLogger("bank.engine")


def restore(restorer: Consumer, changelog: str, tasks: list[PartitionTask],
            timeout_s: float = 300.0, progress: Callable[[int], None] | None = None) -> None:
    """Bring each task's store up to its committed input offsets (task.next_credit/next_request);
    `progress` is told how many changelog records each step applied."""
    if not tasks:
        return
    by_partition = {t.partition: t for t in tasks}
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
                if p not in remaining:
                    continue
                if err is None:
                    pending[p].append((msg.key(), msg.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    task = by_partition[p]
                    task.store.apply_changelog(pending[p], msg.offset())
                    if progress is not None:
                        progress(len(pending[p]))
                    pending[p] = []
                    task.changelog_next = msg.offset()
                    if _caught_up(task):
                        remaining.discard(p)
                        log.info("restored p%d to changelog offset %d", p, msg.offset())
                    else:
                        log.info("p%d: changelog at %d reflects inputs %s, committed %s: waiting for "
                                 "the commit markers", p, msg.offset(), task.store.position,
                                 (task.next_credit, task.next_request))
                else:
                    log.warning("restore: %s", err)
    finally:
        restorer.unassign()


def _caught_up(task: PartitionTask) -> bool:
    credits, requests = task.store.position
    return ((task.next_credit is None or credits >= task.next_credit)
            and (task.next_request is None or requests >= task.next_request))
