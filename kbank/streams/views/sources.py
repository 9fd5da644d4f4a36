"""The views' sources (ledger.events, transfers.outcomes), read in batches by librdkafka.

Faust hands each record to an agent through its consumer thread, conductor, channel and
stream, with Python objects at every step: a profile of a views worker draining a backlog
found that path costing several times the fold itself. Faust still owns what it is good
at (the consumer group, which worker has which partitions, the table's recovery and
standbys); the records themselves come from one librdkafka consumer, assigned by hand to
the source partitions this worker owns once their table is recovered, at the positions the
table records (the module docstring of kbank.streams.views.app says why there), and
folded on the event loop in batches, between which the fold's writes are flushed.

Everything runs on the event loop's thread: assign and revoke happen in Faust's rebalance
callbacks, so no batch is folded for a partition after its revocation.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, TopicPartition

log = logging.getLogger("bank.views")

BATCH = 2000          # records taken from librdkafka's queue at once
IDLE_WAIT_S = (0.002, 0.05)   # the loop's wait when nothing is queued: doubles while idle
# a busy reader writes what it folded at most this often (each write has costs that do not
# grow with its size: a RocksDB write per partition, the status sweep's look); an idle one
# writes as soon as it has caught up
FLUSH_EVERY_S = 0.02

FoldLedger = Callable[[int, int, bytes | None], None]           # partition, offset, value
FoldOutcome = Callable[[int, int, bytes | None, float | None], None]   # + append time (s)


class SourceReader:
    """Reads the assigned source partitions and folds each record; knows how far it got."""

    def __init__(self, consumer: Consumer, ledger_topic: str, outcomes_topic: str,
                 fold_ledger: FoldLedger, fold_outcome: FoldOutcome,
                 after_batch: Callable[[], object], batch_delay_s: float = 0.0) -> None:
        self._consumer = consumer
        self._batch_delay_s = batch_delay_s      # testing (BANK_FAULT_VIEWS_BATCH_DELAY_MS)
        self.ledger_topic, self.outcomes_topic = ledger_topic, outcomes_topic
        self._fold_ledger, self._fold_outcome = fold_ledger, fold_outcome
        self._after_batch = after_batch     # writes what was folded (the processor's flush)
        self._unwritten = 0                 # records folded since the last after_batch
        self._written_at = time.monotonic()
        self.positions: dict[tuple[str, int], int] = {}   # next offset to fold, assigned only
        # where each source partition ended when the reader last reached it: past the commit
        # marker that ends a transactional partition, which no record's offset + 1 is
        self.ends: dict[tuple[str, int], int] = {}

    def assign(self, positions: dict[tuple[str, int], int]) -> None:
        """Read these source partitions from these offsets (and no others)."""
        self.positions = dict(positions)
        self.ends = {}
        self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in positions.items()])
        for (topic, partition), offset in sorted(positions.items()):
            log.info("reading %s[%d] from %d (the views table's position)", topic, partition,
                     offset)

    def revoke(self) -> None:
        """Stop reading: a rebalance is taking the partitions away."""
        self.positions = {}
        self.ends = {}
        self._unwritten = 0     # the revocation writes what was folded (ViewsApp)
        self._consumer.unassign()

    def fold_available(self) -> int:
        """Fold what librdkafka has queued (at most BATCH records); how many were folded.
        What is folded is written (after_batch) once FLUSH_EVERY_S has passed since the
        last write, or once the reader has caught up."""
        msgs = self._consumer.consume(BATCH, 0)
        folded = 0
        positions = self.positions
        for msg in msgs:
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("reading the views' sources: %s", err)
                elif (topic, partition) in positions:
                    self.ends[(topic, partition)] = offset
                continue
            if (topic, partition) not in positions:
                continue            # fetched before a revocation
            if topic == self.ledger_topic:
                self._fold_ledger(partition, offset, msg.value())
            else:
                kind, appended_ms = msg.timestamp()
                self._fold_outcome(partition, offset, msg.value(),
                                   appended_ms / 1000 if kind == TIMESTAMP_LOG_APPEND_TIME
                                   else None)
            positions[(topic, partition)] = offset + 1
            folded += 1
        self._unwritten += folded
        now = time.monotonic()
        if self._unwritten and (folded == 0 or now - self._written_at >= FLUSH_EVERY_S):
            self._after_batch()
            self._unwritten, self._written_at = 0, now
        return folded

    async def run(self) -> None:
        """Fold until cancelled; yield to the event loop between batches. An idle worker
        waits longer and longer (up to 50 ms) between looks, so it does not spend a slice of
        a core asking an empty queue 500 times a second."""
        shortest, longest = IDLE_WAIT_S
        wait = shortest
        while True:
            if self.fold_available() == 0:
                await asyncio.sleep(wait)
                wait = min(longest, wait * 2)
            else:
                wait = shortest
                await asyncio.sleep(self._batch_delay_s)

    def lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, records behind) per assigned partition whose end is known. A
        reader that reached the end of a transactional partition has a lag of 0, not 1 for
        the commit marker there (librdkafka's position() is no help: it runs ahead of the
        fold by whatever is prefetched)."""
        rows = []
        for (topic, partition), position in sorted(self.positions.items()):
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True)
            if high >= 0:
                position = max(position, self.ends.get((topic, partition), -1))
                rows.append((topic, partition, max(0, high - position)))
        return rows
