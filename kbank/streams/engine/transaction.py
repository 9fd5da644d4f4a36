"""The one owner of the engine's Kafka transaction (rule 1 of shared/ENGINE-ANCHORS.md).

Every output of a batch (ledger events, outcomes, credits, dead letters,
changelog records) goes through `send`; `commit` flushes, fails if any record
was not delivered, then commits together with the input offsets and the
consumer's group metadata (KIP-447), so a worker whose partitions moved is
fenced by the broker: its commit fails and nothing it wrote becomes visible
to read_committed readers. Errors are sorted (kbank.streams.engine.failures
decides each error's kind) into TransactionAborted (abort, rewind, go on),
WorkerFenced (a newer incarnation or owner exists: drop every task and rejoin
with a new producer), CommitOutcomeUnknown (the commit failed without saying
whether it happened: a new producer settles it on the broker, and the worker
resumes from what was committed) and TransactionRefused (no retry can succeed:
the worker halts).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from kbank.streams import kafka
from kbank.streams.config import Settings
from kbank.streams.engine.failures import ClientLog, FailureKind, kind_of

log = logging.getLogger("bank.engine")


class TransactionAborted(Exception):
    """The batch did not commit; nothing of it is visible. Rewind and retry."""

    kafka_error: KafkaError | None = None


class TransactionRefused(TransactionAborted):
    """The broker refused the batch for a reason no retry fixes (an ACL, a missing topic, a
    record too large): the worker halts (failures.FailureKind.NOT_RETRIABLE)."""


class WorkerFenced(TransactionAborted):
    """The broker fenced this worker (its producer or its group generation)."""


class CommitOutcomeUnknown(TransactionAborted):
    """commit_transaction failed without an abortable error (a timeout, a lost coordinator):
    the transaction may have committed. Re-running the batch from memory could apply it twice,
    so the worker takes a new producer (whose init_transactions makes the coordinator finish
    or abort it) and resumes from the committed offsets and changelog, as when fenced."""


class EngineTransaction:
    """A transactional producer with a stable transactional.id per worker."""

    def __init__(self, settings: Settings, worker_id: str, transactional: bool = True) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.transactional = transactional
        self._errors: list[tuple[str, KafkaError]] = []   # (topic[partition], error) undelivered
        self._open = False
        # delivery reports of an aborted transaction, or of a retired producer, arrive later
        # (records purged by the abort or the destruction): they must not fail the next batch
        self._attempt = 0
        self._report_each: Callable[[KafkaError | None, Message], None] | None = None
        self.client_log = ClientLog()   # names the topic a refused transaction wanted
        # the topics this attempt wrote to: what a halt names when the broker's refusal names
        # none (an AddPartitionsToTxn refused by the transaction coordinator)
        self.topics_written: set[str] = set()
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        # the commit flushes: a batch's records wait for it and go in few produce requests (a
        # short linger sent one every few ms while the batch was processed: 85 per transaction)
        conf: dict[str, object] = {
            "linger.ms": self.settings.engine_linger_ms, "batch.num.messages": 10000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1_048_576,
            "client.id": f"engine-{self.worker_id}", "logger": self.client_log.logger}
        if not self.transactional:   # BANK_UNSAFE_NO_TRANSACTIONS, for the negative controls
            return kafka.producer(self.settings, kafka.ENGINE, **conf)
        producer = kafka.producer(self.settings, kafka.ENGINE, **conf, **{
            "transactional.id": self.settings.topic(f"bank-engine-{self.worker_id}"),
            "transaction.timeout.ms": self.settings.transaction_timeout_ms})
        deadline = time.monotonic() + 60
        while True:   # fences an earlier incarnation of this worker (whose abort may be
            try:      # still under way: CONCURRENT_TRANSACTIONS, retriable)
                producer.init_transactions(max(1.0, deadline - time.monotonic()))
                return producer
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or time.monotonic() > deadline:
                    raise
                log.info("worker %s: init_transactions: %s; again", self.worker_id, err)
                time.sleep(0.5)

    def record_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if err.code() == KafkaError._MSG_TIMED_OUT and msg.partition() in (None, -1):
                # never given a partition: the producer never learnt of the topic
                err = KafkaError(KafkaError._UNKNOWN_TOPIC, f"timed out: {err.str()}")
            self._errors.append((f"{msg.topic()}[{msg.partition()}]", err))

    def _current(self, callback: Callable[[KafkaError | None, Message], None]
                 ) -> Callable[[KafkaError | None, Message], None]:
        """`callback`, for records sent in this attempt only (see `_attempt`)."""
        attempt = self._attempt

        def report(err: KafkaError | None, msg: Message) -> None:
            if attempt == self._attempt:
                callback(err, msg)
        return report

    def begin(self) -> None:
        self.client_log.txn_error = None
        self.topics_written = set()
        if self.transactional:
            self._run(self.producer.begin_transaction)
        # a transaction fails its commit if any of its records was not delivered, so its
        # records need no delivery report each (a Python call per record, measured ~6% of
        # the engine); without transactions (an unsafe negative control) every record has one
        self._report_each = None if self.transactional else self._current(self.record_delivery)
        self._open = True

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1,
             timestamp: int = 0,
             on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record of the open transaction (waits while the local queue is full).
        partition -1: by the key; timestamp 0: now; on_delivery: this record's report (its
        error, if any, also fails the batch)."""
        report = self._current(on_delivery) if on_delivery is not None else self._report_each
        self.topics_written.add(topic)
        try:
            try:   # positional: produce()'s keyword parsing cost 0.8 us a record (7 a transfer)
                self.producer.produce(topic, value, key, partition, report, None, timestamp,
                                      headers)
            except BufferError:   # the local queue is full: serve reports, then again
                kafka.produce_waiting(self.producer, topic, value=value, key=key,
                                      partition=partition, on_delivery=report,
                                      timestamp=timestamp, headers=headers)
        except KafkaException as exc:
            raise self._sorted(exc) from exc

    def flush(self) -> None:
        """Every queued record acknowledged, or TransactionAborted."""
        if self.producer.flush(30):
            raise TransactionAborted("records not acknowledged within 30 s")
        if self._errors:
            errors, self._errors = self._errors, []
            final = [(where, err) for where, err in errors
                     if kind_of(err) is FailureKind.NOT_RETRIABLE]
            if final:   # a record refused for good: the whole batch is
                where, err = final[0]
                raise self._sorted(KafkaException(KafkaError(err.code(), f"{where}: {err.str()}")))
            if self.client_log.txn_error is not None:   # why the records were purged
                raise self._sorted(KafkaException(self.client_log.txn_error))
            raise TransactionAborted(f"not delivered: {[f'{w}: {e}' for w, e in errors[:3]]}")

    def commit(self, offsets: list[TopicPartition], consumer) -> None:  # noqa: ANN001
        """Commit the open transaction with the input offsets (or, unsafe: after it)."""
        self.flush()
        if not self.transactional:
            self._open = False
            self._run(lambda: consumer.commit(offsets=offsets, asynchronous=False))
            return
        if offsets:   # none when the batch only requested hold expiries
            self._run(self.producer.send_offsets_to_transaction, offsets,
                      consumer.consumer_group_metadata(), 30)
        try:
            self._run(self.producer.commit_transaction, 30)
        except WorkerFenced:
            raise
        except TransactionRefused:
            raise
        except TransactionAborted as exc:
            cause = exc.kafka_error
            if not (isinstance(cause, KafkaError) and cause.txn_requires_abort()):
                unknown = CommitOutcomeUnknown(str(exc))
                unknown.kafka_error = cause
                raise unknown from exc
            raise
        self._open = False

    def abort(self) -> None:
        """Abort the open transaction, or replace a producer that can no longer abort."""
        if not self._open:
            return
        self._open = False
        self._attempt += 1
        self._errors = []
        if not self.transactional:
            return
        try:
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            log.warning("worker %s: abort failed (%s); starting a new producer", self.worker_id, exc)
            self.renew()

    def renew(self) -> None:
        """A fresh producer (after fencing, a fatal error or an unknown commit outcome);
        init_transactions fences the old one, which is destroyed on a thread of its own (its
        destruction can wait for a coordinator that is gone)."""
        self._open = False
        self._attempt += 1
        self._errors = []
        retired = [self.producer]
        self.producer = None  # type: ignore[assignment]  # the thread's list holds the last reference
        threading.Thread(target=retired.clear, name="retire-producer", daemon=True).start()
        self.producer = self._new_producer()

    def _run(self, call: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Run a producer call, its error sorted (retriable ones are retried by librdkafka)."""
        try:
            call(*args, **kwargs)
        except KafkaException as exc:
            raise self._sorted(exc) from exc

    @staticmethod
    def _sorted(exc: KafkaException) -> TransactionAborted:
        """By the error's kind: WorkerFenced for fencing or a fatal error, TransactionRefused
        for one no retry fixes, else TransactionAborted (a produce refused because the
        transaction is in an error state aborts the batch too)."""
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        kind = kind_of(err) if err is not None else FailureKind.RETRIABLE
        sorted_exc: TransactionAborted
        if kind is FailureKind.NOT_RETRIABLE:
            sorted_exc = TransactionRefused(str(err))
        elif kind in (FailureKind.FENCED, FailureKind.FATAL):
            sorted_exc = WorkerFenced(str(err))
        else:
            sorted_exc = TransactionAborted(str(exc))
        sorted_exc.kafka_error = err
        return sorted_exc

    def close(self) -> None:
        self.producer.flush(10)
