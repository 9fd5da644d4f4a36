"""The engine worker: the poll loop and the rebalance callbacks.

One process joins the engine consumer group over the co-partitioned topics
transfers.requests and transfers.credits (range assignment: partition p of
both goes to one worker), so it owns every record and all state of the
accounts in its partitions. Each cycle is one Kafka transaction over every
owned partition that has input (BatchProcessor sends the records,
EngineTransaction commits them with the input offsets), and only then are
the stores written. On assignment a partition's inputs are paused while the
poll loop restores its store to the changelog's end (ChangelogRestore, a
bounded step per cycle, so other partitions go on and the consumer keeps
polling), then resume at the group's committed offset (read with
require_stable: librdkafka asks for stable offsets when reading
read_committed, so a pending transaction of the previous owner is waited
for). A failed or fenced transaction rewinds every task to its last commit.
An error no retry fixes, or the same abort `BANK_ENGINE_ABORT_LIMIT` times in
a row, ends the worker with one line (kbank.streams.engine.failures): it
never spins, and its supervisor restarts it with a backoff.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.engine.failures import (AbortStreak, FailureKind, WorkerHalted, error_of,
                                           halt_message, kind_of)
from kbank.streams.health import record_halt
from kbank.streams.engine.faults import EngineFaults, InjectedAbort
from kbank.streams.engine.metrics import EngineMetrics
from kbank.streams.engine.poison import MoneyInFlightFails
from kbank.streams.engine.processor import BatchProcessor, Topics
from kbank.streams.engine.task import PartitionTask
from kbank.streams.engine.restore import ChangelogRestore
from kbank.streams.engine.state import PartitionStore
from kbank.streams.storage import StoreBudget
from kbank.streams.engine.transaction import (CommitOutcomeUnknown, EngineTransaction,
                                              TransactionAborted, TransactionRefused,
                                              WorkerFenced)
from kbank.streams.principals import user_name
from kbank.streams.runtime import quiet_gc

log = logging.getLogger("bank.engine")


class EngineWorker:
    """One engine process; `run()` until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, worker_id: str, metrics_port: int | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.topics = Topics(*(settings.topic(t) for t in (
            topics.REQUESTS, topics.CREDITS, topics.LEDGER, topics.OUTCOMES, topics.DEADLETTER,
            topics.CHANGELOG, topics.BATCHES)))
        self.faults = EngineFaults(settings)
        self.store_budget = StoreBudget(settings.rocksdb_memory_mb)  # shared by its stores
        self.lag: dict[tuple[str, int], int] = {}   # (topic, partition) -> records behind
        self._lag_read_at = 0.0
        self.tasks: dict[int, PartitionTask] = {}
        self.batches = 0
        self.aborts = 0
        self.streak = AbortStreak(settings.engine_abort_limit)
        self._stopping = False
        self.consumer = kafka.consumer(
            settings, kafka.ENGINE, settings.topic(topics.ENGINE_GROUP),
            **{"partition.assignment.strategy": "range",
               "fetch.wait.max.ms": settings.engine_fetch_wait_ms,
               "fetch.min.bytes": settings.engine_fetch_min_bytes,
               "queued.max.messages.kbytes": settings.engine_fetch_queue_kb,
               "client.id": f"engine-{worker_id}",
               "isolation.level": "read_uncommitted" if settings.unsafe_read_uncommitted
               else "read_committed"})
        self.restorer = kafka.consumer(settings, kafka.ENGINE, settings.topic("bank-engine-restore"),
                                       **{"client.id": f"engine-{worker_id}-restore",
                                          "enable.partition.eof": True})
        self.txn = EngineTransaction(settings, worker_id, not settings.unsafe_no_transactions)
        meta = self.consumer.list_topics(self.topics.requests, timeout=30)
        partitions = len(meta.topics[self.topics.requests].partitions)
        self.cluster_id = meta.cluster_id or "unknown-cluster"
        self.processor = BatchProcessor(settings, self.topics, partitions, self.txn)
        self.metrics = EngineMetrics(metrics_port, settings.engine_metrics_bind,
                                     stats=lambda: self.processor.stats,
                                     lag=lambda: self.lag, owned=lambda: len(self.tasks))
        self.restore = ChangelogRestore(self.restorer, self.topics.changelog,
                                        settings.engine_restore_timeout_s,
                                        progress=self.metrics.restore_records.inc)
        self._restore_t0: dict[int, float] = {}

    # -- partition assignment -------------------------------------------------
    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:  # noqa: ANN001
        owned = sorted({tp.partition for tp in partitions})
        log.info("worker %s assigned partitions %s", self.worker_id, owned)
        fresh = [self._open_task(p) for p in owned if p not in self.tasks]
        self._read_committed(fresh)
        consumer.assign([TopicPartition(tp.topic, tp.partition, self._position(tp.topic, tp.partition))
                         for tp in partitions])
        self._start_restore(fresh)

    def _open_task(self, partition: int) -> PartitionTask:
        # the cluster's id and the changelog's name are in the path: a store never meets
        # another cluster or topic
        path = os.path.join(self.settings.state_dir, self.cluster_id, self.topics.changelog,
                            f"engine-{self.worker_id}", f"p{partition}")
        task = self.tasks[partition] = PartitionTask(partition, PartitionStore(path, self.store_budget))
        return task

    def _read_committed(self, tasks: list[PartitionTask]) -> None:
        """The group's committed offsets (stable: no pending transaction) of these tasks."""
        if not tasks:
            return
        wanted = [TopicPartition(t, task.partition) for task in tasks
                  for t in (self.topics.credits, self.topics.requests)]
        for tp in self.consumer.committed(wanted, timeout=60):
            task = self.tasks[tp.partition]
            offset = tp.offset if tp.offset >= 0 else None
            if tp.topic == self.topics.credits:
                task.next_credit = offset
            else:
                task.next_request = offset

    def _inputs(self, partition: int) -> list[TopicPartition]:
        return [TopicPartition(t, partition) for t in (self.topics.credits, self.topics.requests)]

    def _start_restore(self, tasks: list[PartitionTask]) -> None:
        """Pause the tasks' inputs and restore their stores from the poll loop (_restore_step)."""
        if not tasks:
            return
        self.consumer.pause([tp for task in tasks for tp in self._inputs(task.partition)])
        for task in tasks:
            task.clear()
            self._restore_t0[task.partition] = time.monotonic()
        self.restore.add(tasks)
        self.metrics.restoring.set(len(self.restore.tasks))

    def _restore_step(self) -> None:
        """Some changelog records; a task whose store has caught up resumes its inputs where the
        group committed them (records fetched before the pause were dropped, not processed)."""
        for task in self.restore.step(self.settings.batch_max_records):
            p = task.partition
            task.clear()
            task.track_holds()
            for tp in self._inputs(p):
                tp.offset = self._position(tp.topic, p)
                self.consumer.seek(tp)
            self.consumer.resume(self._inputs(p))
            self.metrics.restored(time.monotonic() - self._restore_t0.pop(p, time.monotonic()))
            log.info("worker %s resumes p%d at credits %s, requests %s (changelog %d)",
                     self.worker_id, p, task.next_credit, task.next_request,
                     task.store.changelog_offset)
        self.metrics.restoring.set(len(self.restore.tasks))

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:  # noqa: ANN001
        # every batch commits before the loop polls again: nothing is pending here
        log.info("worker %s revoked partitions %s", self.worker_id,
                 sorted({tp.partition for tp in partitions}))
        self.restore.remove(sorted({tp.partition for tp in partitions}))
        self.metrics.restoring.set(len(self.restore.tasks))
        for p in {tp.partition for tp in partitions}:
            task = self.tasks.pop(p, None)
            if task is not None:
                task.store.close()
        consumer.unassign()

    def _position(self, topic: str, partition: int) -> int:
        task = self.tasks[partition]
        offset = task.next_credit if topic == self.topics.credits else task.next_request
        return OFFSET_BEGINNING if offset is None else offset

    # -- the processing loop -------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.consumer.subscribe([self.topics.requests, self.topics.credits],
                                on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        last_report = time.monotonic()
        quiet_gc()
        try:
            while not self._stopping:
                # liveness backstop: librdkafka can wait on a coordinator it no longer queries
                # after a broker loss (confluentinc/librdkafka#5511); a crash is a fault we handle
                if self.settings.engine_stall_exit_s > 0:
                    faulthandler.dump_traceback_later(self.settings.engine_stall_exit_s, exit=True)
                received = self.consumer.consume(self.settings.batch_max_records,
                                                 self.settings.batch_max_ms / 1000)
                for msg in received:
                    err = msg.error()
                    if err is not None:
                        self._on_consume_error(err, msg.topic())
                        continue
                    task = self.tasks.get(msg.partition())
                    if task is not None and msg.partition() not in self.restore.tasks:
                        (task.credits if msg.topic() == self.topics.credits else task.requests).append(msg)
                if received:
                    self.faults.before_batch(self.batches + 1)
                if self.restore.active:
                    self._restore_step()
                self._run_batch()
                if time.monotonic() - self._lag_read_at > 1.0:
                    self._read_lag()
                if time.monotonic() - last_report > 5:
                    log.info("worker %s batches=%d aborts=%d %s", self.worker_id, self.batches,
                             self.aborts, self.processor.stats)
                    last_report = time.monotonic()
        finally:
            faulthandler.cancel_dump_traceback_later()
            self._close()

    def _read_lag(self) -> None:
        """Records behind the end of each owned input partition, counted from what the worker
        has committed (the ends as last fetched, or asked of the broker when none is cached)."""
        self._lag_read_at = time.monotonic()
        lag = {}
        try:
            for p, task in list(self.tasks.items()):
                for topic, done, buffered in ((self.topics.requests, task.next_request, task.requests),
                                              (self.topics.credits, task.next_credit, task.credits)):
                    tp = TopicPartition(topic, p)
                    low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                    if high < 0:
                        low, high = self.consumer.get_watermark_offsets(tp, timeout=0.5)
                    at = done if done is not None else low
                    if not buffered:   # all fetched is processed: the position also skips
                        at = max(at, self.consumer.position([tp])[0].offset)  # commit markers
                    lag[(topic, p)] = max(0, high - at)
        except KafkaException as exc:   # no answer in time: read again next time
            log.warning("worker %s: lag not read: %s", self.worker_id, exc)
            return
        self.lag = lag

    def _on_consume_error(self, err: KafkaError, topic: str | None = None) -> None:
        kind = kind_of(err)
        if kind is FailureKind.NOT_RETRIABLE:   # READ refused, a topic gone: no retry fixes it
            self._halt(err, [topic] if topic else [], f"consuming: {err.str()}")
        if kind is FailureKind.FATAL:   # exit, to be restarted, rather than poll a dead consumer
            raise RuntimeError(f"fatal consumer error: {err}")
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error: %s", err)
            self.metrics.consume_errors.inc()

    def _halt(self, err: KafkaError | None, topics_named: list[str], detail: str) -> None:
        """End the worker with one line naming what was refused (WorkerHalted), recorded
        where the supervisor and the views' /health read it."""
        message = halt_message(self.worker_id,
                               f"User:{user_name(self.settings, kafka.ENGINE)}"
                               if self.settings.kafka_credentials else "(unauthenticated)",
                               err, topics_named, detail)
        log.error("%s", message)
        record_halt(self.settings.state_dir, "worker", self.worker_id, message)
        raise WorkerHalted(message)

    def _close(self) -> None:
        closer = threading.Thread(target=self.consumer.close, daemon=True)
        closer.start()
        closer.join(10)
        self.restorer.close()
        self.txn.close()
        for task in self.tasks.values():
            task.store.close()

    def _run_batch(self) -> None:
        """One transaction over every owned partition that has input or a hold to expire."""
        room = self.settings.batch_max_records
        batch: list[tuple[PartitionTask, list, list]] = []
        ready = [task for p, task in self.tasks.items() if p not in self.restore.tasks]
        for task in ready:
            if room <= 0:
                break
            credits, requests = task.take(room)
            if credits or requests:
                batch.append((task, credits, requests))
                room -= len(credits) + len(requests)
        now_ms = int(time.time() * 1000)
        due = [task for task in ready if task.deadlines and task.deadlines[0][0] <= now_ms]
        if not batch and not due:
            return
        batch_no = self.batches + 1
        t0 = time.monotonic()
        offsets: list[TopicPartition] = []
        try:
            self.txn.begin()
            for task in due:
                self.processor.request_expiries(task, now_ms)
            for task, credits, requests in batch:
                try:
                    (c0, c1), (r0, r1) = self.processor.run(
                        task, credits, requests,
                        mid_changelog=lambda: self.faults.mid_changelog(batch_no, self.txn.flush))
                except MoneyInFlightFails as exc:   # never skipped: stop, with the reason
                    self._halt(None, [], str(exc))
                if credits:
                    offsets.append(TopicPartition(self.topics.credits, task.partition, c1))
                if requests:
                    offsets.append(TopicPartition(self.topics.requests, task.partition, r1))
            self.faults.before_commit(batch_no, self.txn.flush)
            self.txn.commit(offsets, self.consumer)
            self.faults.after_commit(batch_no)
        except (TransactionAborted, InjectedAbort) as exc:
            self._rewind(exc)
            return
        self.streak.committed()
        for task, credits, requests in batch:
            if credits:
                task.next_credit = credits[-1].offset() + 1
            if requests:
                task.next_request = requests[-1].offset() + 1
            task.batch_committed(task.store.changes()[2])
            task.store.commit(task.changelog_next, (task.next_credit or 0, task.next_request or 0))
        for task in due:
            task.expiring = []
        self.batches += 1
        self.metrics.committed(sum(len(c) + len(r) for _, c, r in batch), time.monotonic() - t0)

    def _rewind(self, exc: Exception) -> None:
        """Abort; every task goes back to its last commit. Fenced, or not knowing whether the
        batch committed: a new producer, and the committed offsets and stores read again."""
        self.aborts += 1
        self.metrics.aborted(type(exc).__name__)
        err = error_of(exc)
        cause = f"{type(exc).__name__}: {err.name() if err is not None else str(exc)[:120]}"
        self.streak.aborted(cause)
        refused = isinstance(exc, TransactionRefused) and not self.settings.unsafe_retry_refused
        if refused or self.streak.exhausted:
            detail = str(exc) if refused else \
                f"{self.streak.count} aborts in a row, no commit between ({self.streak.describe()})"
            named = self.txn.client_log.topics_named()
            if not named and self.txn.topics_written:   # the coordinator's refusal names none
                detail += f" (the batch was writing to {', '.join(sorted(self.txn.topics_written))})"
            try:
                self.txn.abort()   # leave no open transaction behind (bounded: 30 s, or renew)
            finally:
                self._halt(err, named, detail)
        fenced = isinstance(exc, WorkerFenced) or (
            isinstance(exc, CommitOutcomeUnknown) and not self.settings.unsafe_rerun_unknown_commit)
        log.warning("worker %s aborting transaction%s: %s", self.worker_id,
                    " (fenced or outcome unknown)" if fenced else "", exc)
        if fenced:
            self.txn.renew()
        else:
            self.txn.abort()
        tasks = list(self.tasks.values())
        for task in tasks:
            task.clear()
        if fenced:
            # another owner may have written since: start over from what is committed
            self._read_committed(tasks)
            self._start_restore(tasks)
        for task in tasks:
            for topic in (self.topics.credits, self.topics.requests):
                try:
                    self.consumer.seek(TopicPartition(topic, task.partition,
                                                      self._position(topic, task.partition)))
                except Exception as seek_exc:  # noqa: BLE001 - revoked meanwhile: the rebalance resumes it
                    log.info("seek p%d: %s", task.partition, seek_exc)
