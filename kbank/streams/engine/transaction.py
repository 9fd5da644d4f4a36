"""The one owner of the engine's Kafka transaction (rule 1 of shared/ENGINE-ANCHORS.md).

Every output of a batch (ledger events, outcomes, credits, dead letters,
changelog records) goes through `send`; `commit` flushes, fails if any record
was not delivered, then commits together with the input offsets and the
consumer's group metadata (KIP-447), so a worker whose partitions moved is
fenced by the broker: its commit fails and nothing it wrote becomes visible
to read_committed readers. Errors are sorted into TransactionAborted (abort,
rewind, go on), WorkerFenced (a newer incarnation or owner exists: drop
every task and rejoin with a new producer) and CommitOutcomeUnknown (the
commit failed without saying whether it happened: a new producer settles it
on the broker, and the worker resumes from what was committed).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from kbank.streams import kafka
from kbank.streams.config import Settings

log = logging.getLogger("bank.engine")

_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
           KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
           KafkaError.FENCED_INSTANCE_ID, KafkaError.REBALANCE_IN_PROGRESS}


class TransactionAborted(Exception):
    """The batch did not commit; nothing of it is visible. Rewind and retry."""


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
        self._errors: list[str] = []
        self._open = False
        # delivery reports of an aborted transaction, or of a retired producer, arrive later
        # (records purged by the abort or the destruction): they must not fail the next batch
        self._attempt = 0
        self._report_each: Callable[[KafkaError | None, Message], None] | None = None
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        # the commit flushes: a batch's records wait for it and go in few produce requests (a
        # short linger sent one every few ms while the batch was processed: 85 per transaction)
        conf: dict[str, object] = {
            "linger.ms": 1000, "batch.num.messages": 10000, "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1_048_576,
            "client.id": f"engine-{self.worker_id}"}
        if not self.transactional:   # BANK_UNSAFE_NO_TRANSACTIONS, for the negative controls
            return kafka.producer(self.settings, kafka.ENGINE, **conf)
        producer = kafka.producer(self.settings, kafka.ENGINE, **conf, **{
            "transactional.id": self.settings.topic(f"bank-engine-{self.worker_id}"),
            "transaction.timeout.ms": self.settings.transaction_timeout_ms})
        producer.init_transactions(60)   # fences an earlier incarnation of this worker
        return producer

    def record_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _current(self, callback: Callable[[KafkaError | None, Message], None]
                 ) -> Callable[[KafkaError | None, Message], None]:
        """`callback`, for records sent in this attempt only (see `_attempt`)."""
        attempt = self._attempt

        def report(err: KafkaError | None, msg: Message) -> None:
            if attempt == self._attempt:
                callback(err, msg)
        return report

    def begin(self) -> None:
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
        try:
            kafka.produce_waiting(self.producer, topic, value=value, key=key, partition=partition,
                                  on_delivery=report, timestamp=timestamp, headers=headers)
        except KafkaException as exc:
            raise self._sorted(exc) from exc

    def flush(self) -> None:
        """Every queued record acknowledged, or TransactionAborted."""
        if self.producer.flush(30):
            raise TransactionAborted("records not acknowledged within 30 s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise TransactionAborted(f"not delivered: {errors[:3]}")

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
        except TransactionAborted as exc:
            cause = exc.__cause__.args[0] if isinstance(exc.__cause__, KafkaException) else None
            if not (isinstance(cause, KafkaError) and cause.txn_requires_abort()):
                raise CommitOutcomeUnknown(str(exc)) from exc
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
        """WorkerFenced for fencing or a fatal error, else TransactionAborted (a produce refused
        because the transaction is in an error state aborts the batch too)."""
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is not None and (err.code() in _FENCED or kafka.is_fatal(err)):
            return WorkerFenced(str(err))
        return TransactionAborted(str(exc))

    def close(self) -> None:
        self.producer.flush(10)
