"""The transfer engine worker: Kafka plumbing around streams.decisions.

One process joins the engine consumer group over the co-partitioned topics
transfers.requests and transfers.credits, so it owns every record and all
state of the accounts in its partitions. Each cycle it takes a batch of
records per owned partition and, inside ONE Kafka transaction, writes:

  1. a manifest to engine.changelog: the exact input ranges of the batch;
  2. the outputs: ledger.events, transfers.outcomes, transfers.credits,
     transfers.deadletter;
  3. the state changelog: the new state of every changed account and the
     applied request ids, each tagged with the batch's end offsets;
  4. the consumer offsets (send_offsets_to_transaction).

Exactly-once on a broker that shows aborted records (the embedded one does):
a batch's effects count only once its input offsets are committed. On
restore, changelog records of a batch whose end offsets lie beyond the
committed offsets are ignored, and if a manifest starts exactly at the
committed offsets (a batch that was produced but not committed, maybe
visible downstream), the next batch re-processes exactly those ranges.
Processing is deterministic (time comes from the input records), so the
re-run writes byte-identical records and consumers drop the copies by
(account, seq) or request id. On a broker that hides aborted records the
same code is plain Kafka exactly-once.
"""
from __future__ import annotations

import base64
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from streams import kafka, topics
from streams.client import read_to_end
from streams.config import Settings
from streams.decisions import Undecodable, credit_marker, decide_credit, decide_request, parse_request
from streams.model import Position
from streams.store import PartitionStore

log = logging.getLogger("bank.engine")

_MANIFEST = b"m"


class InjectedAbort(Exception):
    """Raised by the fault injector to abort a transaction after producing."""


@dataclass
class PartitionTask:
    """Everything the worker holds for one owned partition."""

    partition: int
    store: PartitionStore
    next_credit: int = 0                  # next credits offset to process
    next_request: int = 0                 # next requests offset to process
    credits: list[Message] = field(default_factory=list)
    requests: list[Message] = field(default_factory=list)
    replay: tuple[int, int, int, int] | None = None  # manifest to re-run: c0, c1, r0, r1

    def take_batch(self, limit: int) -> tuple[list[Message], list[Message]] | None:
        """The next batch's records, or None if a manifest replay is not yet fetched."""
        if self.replay is not None:
            _, c1, _, r1 = self.replay
            have_c = c1 == self.next_credit or any(m.offset() >= c1 - 1 for m in self.credits[-1:])
            have_r = r1 == self.next_request or any(m.offset() >= r1 - 1 for m in self.requests[-1:])
            if not (have_c and have_r):
                return None
            credits = [m for m in self.credits if m.offset() < c1]
            requests = [m for m in self.requests if m.offset() < r1]
            self.replay = None
        else:
            credits = self.credits[:limit]
            requests = self.requests[:max(0, limit - len(credits))]
        del self.credits[:len(credits)]
        del self.requests[:len(requests)]
        return credits, requests


class EngineWorker:
    """One engine process; `run()` until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.t_requests = settings.topic(topics.REQUESTS)
        self.t_credits = settings.topic(topics.CREDITS)
        self.t_ledger = settings.topic(topics.LEDGER)
        self.t_changelog = settings.topic(topics.CHANGELOG)
        self.t_outcomes = settings.topic(topics.OUTCOMES)
        self.t_deadletter = settings.topic(topics.DEADLETTER)
        self.tasks: dict[int, PartitionTask] = {}
        self._stopping = False
        self._transactions = 0
        self._changelog_offsets: dict[int, int] = {}
        self.consumer = kafka.consumer(
            settings, settings.topic(topics.ENGINE_GROUP),
            **{"partition.assignment.strategy": "range",
               "max.poll.interval.ms": 300000,
               "fetch.wait.max.ms": 5,
               "client.id": f"engine-{worker_id}"})
        self.restorer = kafka.consumer(settings, settings.topic("bank-engine-restore"),
                                       **{"client.id": f"engine-{worker_id}-restore",
                                          "enable.partition.eof": True})
        self.producer = self._new_producer()
        self.stats = {"requests": 0, "credits": 0, "batches": 0, "aborts": 0, "deadletters": 0}

    # -- producer lifecycle --------------------------------------------------
    def _new_producer(self) -> Producer:
        conf: dict[str, object] = {
            "linger.ms": 5, "batch.num.messages": 10000,
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1_048_576,
            "client.id": f"engine-{self.worker_id}-txn"}
        if self.settings.unsafe_no_transactions:
            return kafka.producer(self.settings, **conf)
        producer = kafka.producer(
            self.settings, **conf,
            **{"transactional.id": self.settings.topic(f"bank-engine-{self.worker_id}"),
               "transaction.timeout.ms": self.settings.transaction_timeout_ms})
        producer.init_transactions(30)
        return producer

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None and msg.topic() == self.t_changelog:
            p = msg.partition()
            self._changelog_offsets[p] = max(self._changelog_offsets.get(p, 0), msg.offset() + 1)

    # -- partition assignment and restore -----------------------------------
    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        owned = sorted({tp.partition for tp in partitions})
        log.info("worker %s assigned partitions %s", self.worker_id, owned)
        for p in owned:
            if p not in self.tasks:
                path = os.path.join(self.settings.state_dir, f"engine-{self.worker_id}", f"p{p}")
                self.tasks[p] = PartitionTask(p, PartitionStore(path))
        positions = self._restore(owned)
        consumer.assign([TopicPartition(tp.topic, tp.partition, positions[(tp.topic, tp.partition)])
                         for tp in partitions])

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions}
        log.info("worker %s revoked partitions %s", self.worker_id, sorted(lost))
        for p in lost:
            task = self.tasks.pop(p, None)
            if task is not None:
                task.store.close()
        consumer.unassign()

    def _committed(self, owned: list[int]) -> dict[tuple[str, int], int]:
        tps = [TopicPartition(t, p) for p in owned for t in (self.t_requests, self.t_credits)]
        result = {}
        for tp in self.consumer.committed(tps, timeout=30):
            if tp.error:
                raise KafkaException(tp.error)
            result[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else 0
        return result

    def _restore(self, owned: list[int]) -> dict[tuple[str, int], int]:
        """Bring each owned partition's store to its committed offsets; return them.

        Replays the changelog from each store's checkpoint, keeping only records
        of committed batches (end offsets within the committed offsets).
        """
        committed = self._committed(owned)
        trust_all = self.settings.unsafe_no_transactions
        valid: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in owned}
        uncommitted_from: dict[int, int] = {}   # first changelog offset not known committed
        end = {p: self.tasks[p].store.checkpoint for p in owned}
        for p in owned:
            self.tasks[p].replay = None
        assignment = [TopicPartition(self.t_changelog, p, end[p]) for p in owned]
        for msg in read_to_end(self.restorer, assignment):
            p, offset = msg.partition(), msg.offset()
            task = self.tasks[p]
            end[p] = offset + 1
            c_done, r_done = committed[(self.t_credits, p)], committed[(self.t_requests, p)]
            value = orjson.loads(msg.value())
            if msg.key() == _MANIFEST:
                c0, c1, r0, r1 = value
                if not trust_all and (c0, r0) == (c_done, r_done) and (c1, r1) != (c0, r0):
                    # produced, maybe seen downstream, not committed: re-run exactly this
                    task.replay = task.replay or (c0, c1, r0, r1)
                    uncommitted_from.setdefault(p, offset)
                continue
            end_c, end_r, payload = value
            if trust_all or (end_c <= c_done and end_r <= r_done):
                valid[p].append((msg.key(), orjson.dumps(payload)))
            else:
                uncommitted_from.setdefault(p, offset)
        for p in owned:
            task = self.tasks[p]
            task.store.restore(valid[p], uncommitted_from.get(p, end[p]))
            task.next_credit = committed[(self.t_credits, p)]
            task.next_request = committed[(self.t_requests, p)]
            task.credits.clear()
            task.requests.clear()
            log.info("worker %s restored p%d: %d changelog records, replay=%s",
                     self.worker_id, p, len(valid[p]), task.replay)
        return committed

    # -- the processing loop -------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.consumer.subscribe([self.t_requests, self.t_credits],
                                on_assign=self._on_assign, on_revoke=self._on_revoke)
        last_report = time.monotonic()
        try:
            while not self._stopping:
                self._buffer(self.consumer.consume(self.settings.batch_max_records,
                                                   self.settings.batch_max_ms / 1000))
                self._run_batch()
                if time.monotonic() - last_report > 5:
                    log.info("worker %s %s", self.worker_id, self.stats)
                    last_report = time.monotonic()
        finally:
            self.consumer.close()
            self.restorer.close()
            for task in self.tasks.values():
                task.store.close()

    def _buffer(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", msg.error())
                continue
            task = self.tasks.get(msg.partition())
            if task is None:
                continue
            if msg.topic() == self.t_credits:
                last = task.credits[-1].offset() if task.credits else task.next_credit - 1
                if msg.offset() > last:
                    task.credits.append(msg)
            else:
                last = task.requests[-1].offset() if task.requests else task.next_request - 1
                if msg.offset() > last:
                    task.requests.append(msg)

    def _run_batch(self) -> None:
        batch: list[tuple[PartitionTask, list[Message], list[Message]]] = []
        room = self.settings.batch_max_records
        for task in self.tasks.values():
            if room <= 0:
                break
            taken = task.take_batch(room)
            if taken and (taken[0] or taken[1]):
                batch.append((task, *taken))
                room -= len(taken[0]) + len(taken[1])
        if not batch:
            return
        try:
            self._transact(batch)
        except (KafkaException, InjectedAbort, BufferError) as exc:
            self._recover(exc)

    def _transact(self, batch: list[tuple[PartitionTask, list[Message], list[Message]]]) -> None:
        producer = self.producer
        transactional = not self.settings.unsafe_no_transactions
        if transactional:
            producer.begin_transaction()
        offsets: list[TopicPartition] = []
        ends: list[tuple[PartitionTask, int, int]] = []
        for task, credits, requests in batch:
            p = task.partition
            c0, r0 = task.next_credit, task.next_request
            c1 = credits[-1].offset() + 1 if credits else c0
            r1 = requests[-1].offset() + 1 if requests else r0
            self._produce(self.t_changelog, _MANIFEST, orjson.dumps([c0, c1, r0, r1]), None, p)
            for msg in credits:
                self._apply_credit(task, msg)
            for msg in requests:
                self._apply_request(task, msg)
            accounts, marks = task.store.changes()
            for name, acct in accounts.items():
                self._produce(self.t_changelog, b"a:" + name.encode(),
                              orjson.dumps([c1, r1, acct.to_json()]), None, p)
            for marker in marks:
                self._produce(self.t_changelog, marker.encode(), orjson.dumps([c1, r1, 1]), None, p)
            offsets += [TopicPartition(self.t_credits, p, c1), TopicPartition(self.t_requests, p, r1)]
            ends.append((task, c1, r1))
            self.stats["credits"] += len(credits)
            self.stats["requests"] += len(requests)
        self._transactions += 1
        if not transactional:
            producer.flush(30)
            self.consumer.commit(offsets=offsets, asynchronous=False)
        else:
            producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
            every = self.settings.fault_abort_every
            if every and self._transactions % every == 0:
                producer.flush(30)  # the outputs reach the broker before the abort
                raise InjectedAbort(f"injected abort of transaction {self._transactions}")
            producer.commit_transaction(30)
            producer.poll(0)
        for task, c1, r1 in ends:
            task.store.commit(self._changelog_offsets.get(task.partition))
            task.next_credit, task.next_request = c1, r1
        self.stats["batches"] += 1

    def _recover(self, exc: Exception) -> None:
        """Abort, re-create the producer, and rewind every partition to its committed state."""
        self.stats["aborts"] += 1
        log.warning("worker %s aborting transaction: %s", self.worker_id, exc)
        try:
            if not self.settings.unsafe_no_transactions:
                self.producer.abort_transaction(30)
        except KafkaException as abort_exc:
            log.warning("abort_transaction failed: %s", abort_exc)
        # the embedded broker loses the offsets of the next transaction of a producer
        # that aborted, so every abort gets a fresh producer
        self.producer.flush(5)
        self.producer = self._new_producer()
        for task in self.tasks.values():
            task.store.discard()
        owned = sorted(self.tasks)
        if not owned:
            return
        positions = self._restore(owned)
        for (topic, p), offset in positions.items():
            self.consumer.seek(TopicPartition(topic, p, offset))

    # -- per-record work -----------------------------------------------------
    def _produce(self, topic: str, key: bytes | None, value: bytes, ts: int | None,
                 partition: int | None = None) -> None:
        kwargs: dict[str, object] = {"key": key, "value": value, "on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if ts is not None:
            kwargs["timestamp"] = ts
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.01)

    def _emit(self, task: PartitionTask, decision, ts: int) -> None:
        if decision.state is not None:
            task.store.put_account(decision.account, decision.state)
        if decision.marker is not None:
            task.store.mark_applied(decision.marker)
        if decision.event is not None:
            self._produce(self.t_ledger, decision.account.encode(), orjson.dumps(decision.event),
                          ts, task.partition)
        for out in decision.outcomes:
            self._produce(self.t_outcomes, out["request_id"].encode(), orjson.dumps(out), ts)
        for key, message in decision.messages:
            self._produce(self.t_credits, key.encode(), orjson.dumps(message), ts)

    def _dead_letter(self, msg: Message, error: str) -> None:
        self.stats["deadletters"] += 1
        raw = msg.value() or b""
        record = {"error": error, "topic": msg.topic(), "partition": msg.partition(),
                  "offset": msg.offset(), "key": base64.b64encode(msg.key() or b"").decode(),
                  "value": base64.b64encode(raw).decode()}
        self._produce(self.t_deadletter, msg.key(), orjson.dumps(record), msg.timestamp()[1])

    def _apply_request(self, task: PartitionTask, msg: Message) -> None:
        ts = msg.timestamp()[1]
        try:
            req = parse_request(msg.key(), msg.value())
        except Undecodable as exc:
            self._dead_letter(msg, str(exc))
            return
        store = task.store
        acct = store.account(req.account) if req.account is not None else None
        applied = (not self.settings.unsafe_no_dedupe) and store.is_applied("r:" + req.request_id)
        pos = Position(msg.topic(), msg.partition(), msg.offset())
        self._emit(task, decide_request(req, acct, applied, ts, pos), ts)

    def _apply_credit(self, task: PartitionTask, msg: Message) -> None:
        ts = msg.timestamp()[1]
        try:
            message = orjson.loads(msg.value())
            marker = credit_marker(message)
            name = message["account"]
            if msg.key() != name.encode():
                raise ValueError("credit key does not match its account")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self._dead_letter(msg, f"bad credit message: {exc}")
            return
        store = task.store
        applied = (not self.settings.unsafe_no_dedupe) and store.is_applied(marker)
        pos = Position(msg.topic(), msg.partition(), msg.offset())
        try:
            decision = decide_credit(message, store.account(name), applied, ts, pos)
        except (KeyError, TypeError, ValueError) as exc:
            self._dead_letter(msg, f"bad credit message: {exc}")
            return
        self._emit(task, decision, ts)
