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
local state reads one record per account and hold plus the batch records,
not the whole history.

As in Kafka Streams, the restore is not done inside the rebalance callback:
the worker's poll loop calls `step()` between its batches, a bounded amount
of work each time, while the restoring partitions' inputs stay paused; so a
long restore neither blocks the consumer's poll nor holds up the partitions
that are ready.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaError, TopicPartition

from kbank.streams.engine.task import PartitionTask

log = logging.getLogger("bank.engine")


class ChangelogRestore:
    """The partitions being restored, and the restore consumer reading their changelog."""

    def __init__(self, restorer: Consumer, changelog: str, timeout_s: float = 300.0,
                 progress: Callable[[int], None] | None = None) -> None:
        self.restorer = restorer
        self.changelog = changelog
        self.timeout_s = timeout_s
        self.progress = progress
        self.tasks: dict[int, PartitionTask] = {}
        self._pending: dict[int, list[tuple[bytes, bytes]]] = {}
        self._deadline: dict[int, float] = {}
        # per partition, the changelog offset the store has applied up to: what a fetch hands
        # out below it is already in the store (see step)
        self._floor: dict[int, int] = {}

    @property
    def active(self) -> bool:
        return bool(self.tasks)

    def add(self, tasks: list[PartitionTask]) -> None:
        """Start restoring these tasks (their next_credit/next_request already read)."""
        self.remove([t.partition for t in tasks])   # one being restored starts over
        for task in tasks:
            self.tasks[task.partition] = task
            self._pending[task.partition] = []
            self._deadline[task.partition] = time.monotonic() + self.timeout_s
            self._floor[task.partition] = task.store.changelog_offset
        self.restorer.incremental_assign(
            [TopicPartition(self.changelog, t.partition, t.store.changelog_offset) for t in tasks])

    def remove(self, partitions: list[int]) -> None:
        """Stop restoring these partitions (revoked, or to be restarted)."""
        gone = sorted({p for p in partitions if p in self.tasks})
        for p in gone:
            del self.tasks[p], self._pending[p], self._deadline[p], self._floor[p]
        if gone:
            self.restorer.incremental_unassign([TopicPartition(self.changelog, p) for p in gone])

    def step(self, max_records: int = 10_000, wait_s: float = 0.05) -> list[PartitionTask]:
        """Read up to max_records changelog records; the tasks that are now restored."""
        done: list[PartitionTask] = []
        for msg in self.restorer.consume(max_records, wait_s):
            p = msg.partition()
            # one fetch can end a partition twice (its end, then records and its new end,
            # seen on a slow link): done once is done
            if p not in self.tasks or any(t.partition == p for t in done):
                continue
            err = msg.error()
            # Below the store's own offset a record is already applied and an end is not the
            # end: a replica that lost its leadership answered "out of range" and the consumer
            # started the partition over (seen across hosts: applying those records put
            # older accounts over newer holds, and a hold's expiry then found `held` short)
            if err is None:
                if msg.offset() < self._floor[p]:
                    continue
                self._pending[p].append((msg.key(), msg.value()))
                if len(self._pending[p]) >= max_records:   # memory stays bounded
                    self._apply(p, msg.offset() + 1)
            elif err.code() == KafkaError._PARTITION_EOF:
                if msg.offset() < self._floor[p]:
                    log.info("p%d: changelog end %d is before the store's %d (a stale replica "
                             "answered): reading on", p, msg.offset(), self._floor[p])
                elif self._reached_end(p, msg.offset()):
                    done.append(self.tasks[p])
            else:
                log.warning("restore: %s", err)
        for p, deadline in self._deadline.items():
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog partition {p} not restored in {self.timeout_s} s")
        self.remove([t.partition for t in done])
        return done

    def _apply(self, p: int, next_offset: int) -> None:
        """Write the records read so far; a restore cut short goes on from next_offset."""
        self.tasks[p].store.apply_changelog(self._pending[p], next_offset)
        self._floor[p] = next_offset
        if self.progress is not None:
            self.progress(len(self._pending[p]))
        self._pending[p] = []

    def _reached_end(self, p: int, end: int) -> bool:
        task = self.tasks[p]
        self._apply(p, end)
        task.changelog_next = end
        if _caught_up(task):
            log.info("restored p%d to changelog offset %d", p, end)
            return True
        log.info("p%d: changelog at %d reflects inputs %s, committed %s: waiting for the commit "
                 "markers", p, end, task.store.position, (task.next_credit, task.next_request))
        return False


def _caught_up(task: PartitionTask) -> bool:
    credits, requests = task.store.position
    return ((task.next_credit is None or credits >= task.next_credit)
            and (task.next_request is None or requests >= task.next_request))
