"""The transfer engine worker: Kafka plumbing around streams.decisions.

One process joins the engine consumer group over the co-partitioned topics
transfers.requests and transfers.credits, so it owns every record and all
state of the accounts in its partitions. Each cycle runs one Kafka
transaction over every owned partition that has input; per partition it
writes a manifest (flushed first), the outputs (ledger.events,
transfers.outcomes, transfers.credits, transfers.deadletter), the state
changelog, and, once all of that is acknowledged, an END marker.
streams.changelog explains why that order makes each batch atomic even on
a broker that shows aborted records, and where the engine resumes.
"""
from __future__ import annotations

import base64
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from streams import kafka, topics
from streams.changelog import (APPLIED_IDS, BATCH_HEADER, END, MANIFEST, ChangelogChain, Manifest,
                              batch_id)
from streams.client import read_to_end
from streams.config import Settings
from streams.decisions import (Decision, Rules, Undecodable, credit_marker, decide_credit,
                               decide_request, parse_request)
from streams.model import Position
from streams.store import PartitionStore

log = logging.getLogger("bank.engine")

RESTART_EXIT_CODE = 75  # the worker left to be restarted with clean clients (frozen, or stuck abort)


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
    replay: Manifest | None = None        # a cut-short batch to re-run exactly
    manifest_offset: int | None = None    # changelog offset of the open batch's MANIFEST
    start_position: tuple[int, int] = (0, 0)  # input position at the start of the open batch
    end_position: tuple[int, int] = (0, 0)  # input position at the end of the open batch

    def take_batch(self, limit: int) -> tuple[list[Message], list[Message]] | None:
        """The next batch's records, or None if a batch to re-run is not fetched yet."""
        if self.replay is not None:
            _, c1, _, r1 = self.replay
            have_c = c1 == self.next_credit or (self.credits and self.credits[-1].offset() >= c1 - 1)
            have_r = r1 == self.next_request or (self.requests and self.requests[-1].offset() >= r1 - 1)
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

    def buffer(self, msg: Message, is_credit: bool) -> None:
        """Keep a fetched record unless it is behind what this task already has."""
        queue, nxt = (self.credits, self.next_credit) if is_credit else (self.requests, self.next_request)
        last = queue[-1].offset() if queue else nxt - 1
        if msg.offset() > last:
            queue.append(msg)


class EngineWorker:
    """One engine process; `run()` until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.rules = Rules.from_settings(settings)
        self._alive_at = time.monotonic()
        self._freeze_limit_s = settings.session_timeout_ms / 1000 / 2
        self._froze = False
        self.worker_id = worker_id
        self.t_requests = settings.topic(topics.REQUESTS)
        self.t_credits = settings.topic(topics.CREDITS)
        self.t_ledger = settings.topic(topics.LEDGER)
        self.t_changelog = settings.topic(topics.CHANGELOG)
        self.t_outcomes = settings.topic(topics.OUTCOMES)
        self.t_deadletter = settings.topic(topics.DEADLETTER)
        self.unsafe = settings.unsafe_no_transactions
        self.tasks: dict[int, PartitionTask] = {}
        self._stopping = False
        self._transactions = 0
        self._attempts = 0                               # transactions begun, for batch ids
        self._batch_header: list[tuple[str, bytes]] = []  # BATCH_HEADER of the open transaction
        self._delivery_errors: list[str] = []
        self.consumer = kafka.consumer(
            settings, settings.topic(topics.ENGINE_GROUP),
            **{"partition.assignment.strategy": "range", "fetch.wait.max.ms": 5,
               "client.id": f"engine-{worker_id}"})
        self.stats = {"requests": 0, "credits": 0, "batches": 0, "aborts": 0, "deadletters": 0,
                      "replays": 0}
        self.producer = self._new_producer()
        # credits and outcomes: in the transaction, or (embedded broker) beside it
        self.shared = self.producer if settings.shared_outputs_in_transaction else kafka.producer(
            settings, **{"linger.ms": 2, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 2_000_000,
                         "queue.buffering.max.kbytes": 1_048_576,
                         "client.id": f"engine-{worker_id}-shared", "on_delivery": self._on_delivery})
        self.restorer = kafka.consumer(settings, settings.topic("bank-engine-restore"),
                                       **{"client.id": f"engine-{worker_id}-restore",
                                          "enable.partition.eof": True})

    # -- producer -------------------------------------------------------------
    def _new_producer(self) -> Producer:
        """The worker's transactional producer; init fences an earlier incarnation."""
        conf: dict[str, object] = {
            "linger.ms": 2, "batch.num.messages": 10000,
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1_048_576,
            "client.id": f"engine-{self.worker_id}", "on_delivery": self._on_delivery}
        if self.unsafe:
            return kafka.producer(self.settings, **conf)
        producer = kafka.producer(
            self.settings, **conf,
            **{"transactional.id": self.settings.topic(f"bank-engine-{self.worker_id}"),
               "transaction.timeout.ms": self.settings.transaction_timeout_ms})
        producer.init_transactions(60)
        return producer

    # -- partition assignment and restore -----------------------------------
    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        owned = sorted({tp.partition for tp in partitions})
        log.info("worker %s assigned partitions %s", self.worker_id, owned)
        fresh = []
        for p in owned:
            if p not in self.tasks:
                # the changelog's name is part of the path: a store never meets another topic
                path = os.path.join(self.settings.state_dir, self.t_changelog,
                                    f"engine-{self.worker_id}", f"p{p}")
                self.tasks[p] = PartitionTask(p, PartitionStore(path))
                fresh.append(self.tasks[p])
        self._restore(fresh)
        consumer.assign([TopicPartition(tp.topic, tp.partition, self._next_offset(tp.topic, tp.partition))
                         for tp in partitions])
        self._alive_at = time.monotonic()  # a rebalance just confirmed what we own

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        lost = sorted({tp.partition for tp in partitions})
        log.info("worker %s revoked partitions %s", self.worker_id, lost)
        for p in lost:
            task = self.tasks.pop(p, None)
            if task is not None:
                task.store.close()
        consumer.unassign()
        self._alive_at = time.monotonic()  # a rebalance just confirmed what we own

    def _next_offset(self, topic: str, partition: int) -> int:
        task = self.tasks[partition]
        return task.next_credit if topic == self.t_credits else task.next_request

    def _restore(self, tasks: list[PartitionTask]) -> None:
        """Bring each task's store to the end of its changelog's last complete batch."""
        if not tasks:
            return
        chains = {t.partition: ChangelogChain(t.store.position) for t in tasks}
        unsafe_records: dict[int, list[tuple[bytes, bytes]]] = {t.partition: [] for t in tasks}
        assignment = [TopicPartition(self.t_changelog, t.partition, t.store.checkpoint) for t in tasks]
        for msg in read_to_end(self.restorer, assignment):
            chains[msg.partition()].add(msg.offset(), msg.key(), msg.value(), batch_id(msg))
            if self.unsafe and msg.key() not in (MANIFEST, END):
                unsafe_records[msg.partition()].append((msg.key(), msg.value()))
        unsafe_positions: dict[int, tuple[int, int]] = {}
        if self.unsafe:  # the naive design: trust every record and the group's offsets
            committed = self.consumer.committed(
                [TopicPartition(t, p) for p in chains for t in (self.t_credits, self.t_requests)], timeout=30)
            offsets = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed}
            unsafe_positions = {p: (offsets[(self.t_credits, p)], offsets[(self.t_requests, p)])
                                for p in chains}
        for task in tasks:
            chain = chains[task.partition]
            records, position, replay = chain.records, chain.position, chain.replay
            if self.unsafe:
                records, position, replay = unsafe_records[task.partition], unsafe_positions[task.partition], None
            if chain.checkpoint is None:   # no batch completed past the store's checkpoint
                task.store.restore(records, task.store.checkpoint, task.store.position)
            else:
                task.store.restore(records, chain.checkpoint, chain.checkpoint_position)
            task.next_credit, task.next_request = position
            task.replay = replay
            task.credits.clear()
            task.requests.clear()
            log.info("worker %s restored p%d: %d changelog records, position %s, replay=%s",
                     self.worker_id, task.partition, len(records), position, replay)

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
                received = self.consumer.consume(self.settings.batch_max_records,
                                                 self.settings.batch_max_ms / 1000)
                if any(m.topic() == self.t_requests for m in received):
                    self._freeze_for_test("before-batch")
                self._exit_if_frozen()
                for msg in received:
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consume error: %s", msg.error())
                        continue
                    task = self.tasks.get(msg.partition())
                    if task is not None:
                        task.buffer(msg, msg.topic() == self.t_credits)
                self._run_batches()
                if time.monotonic() - last_report > 5:
                    log.info("worker %s %s", self.worker_id, self.stats)
                    last_report = time.monotonic()
        finally:
            self.consumer.close()
            self.restorer.close()
            self.producer.flush(10)
            self.shared.flush(10)
            for task in self.tasks.values():
                task.store.close()

    def _exit_if_frozen(self) -> None:
        """Fencing for a worker that was frozen (SIGSTOP, a VM or GC pause).

        Its partitions may have moved meanwhile without it knowing yet (the
        consumer can hand out fetched records before it learns of the
        rebalance), and the embedded broker does not fence its producer. A
        batch it started would then decide inputs the new owner also decides,
        from older state. So a worker that finds more than half a session
        timeout passed between two of its own steps writes nothing more and
        exits at once; its supervisor restarts it and it rejoins cleanly. A
        batch it was in the middle of is safe: its manifest is durable, and
        the new owner re-runs exactly that range with identical results.
        """
        now = time.monotonic()
        if now - self._alive_at > self._freeze_limit_s and not self.settings.unsafe_no_freeze_fence:
            log.error("worker %s was frozen for %.1f s: its partitions may have moved; exiting "
                      "without writing more", self.worker_id, now - self._alive_at)
            self._leave_group_and_exit()
        self._alive_at = now

    def _leave_group_and_exit(self) -> None:
        """Exit to be restarted, after leaving the consumer group (best effort, at most 5 s).

        Closing the consumer sends LeaveGroup and runs _on_revoke, which only
        closes stores: nothing is written. Without it, the embedded broker
        waited for good for a member that had rejoined a rebalance and then
        vanished: CI saw a zombie wake, rejoin and exit, and no engine worker
        get a partition for the next five minutes.
        """
        closer = threading.Thread(target=self.consumer.close, daemon=True)
        closer.start()
        closer.join(5.0)
        logging.shutdown()
        os._exit(RESTART_EXIT_CODE)

    def _freeze_for_test(self, point: str) -> None:
        """BANK_FAULT_FREEZE_AT_BATCH: stop this process once, at a chosen point of a batch."""
        if (point == self.settings.fault_freeze_point and not self._froze
                and 0 < self.settings.fault_freeze_at_batch <= self.stats["batches"] + 1):
            self._froze = True
            os.kill(os.getpid(), signal.SIGSTOP)

    def _run_batches(self) -> None:
        """One transaction over every owned partition that has input."""
        room = self.settings.batch_max_records
        batch: list[tuple[PartitionTask, list[Message], list[Message]]] = []
        for task in self.tasks.values():
            if room <= 0:
                break
            replaying = task.replay is not None
            taken = task.take_batch(room)
            if taken and (taken[0] or taken[1]):
                batch.append((task, *taken))
                room -= len(taken[0]) + len(taken[1])
                self.stats["replays"] += replaying
        if not batch:
            return
        try:
            self._transact(batch)
        except (KafkaException, InjectedAbort, BufferError) as exc:
            self._recover(exc)
            return
        for task, credits, requests in batch:
            task.store.commit(task.manifest_offset, task.start_position)
            task.next_credit, task.next_request = task.end_position
            self.stats["credits"] += len(credits)
            self.stats["requests"] += len(requests)
        self.stats["batches"] += 1

    def _transact(self, batch: list[tuple[PartitionTask, list[Message], list[Message]]]) -> None:
        producer = self.producer
        if not self.unsafe:
            producer.begin_transaction()
        self._attempts += 1
        self._batch_header = [(BATCH_HEADER, f"{self.worker_id}.{os.getpid()}.{self._attempts}".encode())]
        for task, credits, requests in batch:
            c0, r0 = task.next_credit, task.next_request
            c1 = credits[-1].offset() + 1 if credits else c0
            r1 = requests[-1].offset() + 1 if requests else r0
            task.start_position, task.end_position = (c0, r0), (c1, r1)
            self._produce_manifest(task, [c0, c1, r0, r1])
        # a manifest is durable before any output it explains
        self._flush()
        self._freeze_for_test("after-manifest")
        self._exit_if_frozen()
        for task, credits, requests in batch:
            for msg in credits:
                self._apply_credit(task, msg)
            for msg in requests:
                self._apply_request(task, msg)
            accounts, marks = task.store.changes()
            for name, acct in accounts.items():
                self._log_state(task, b"a:" + name.encode(), orjson.dumps(acct.to_json()))
            self._maybe_crash()
            if marks:  # one record for all ids the batch applied: fewer records per transfer
                self._log_state(task, APPLIED_IDS, orjson.dumps(sorted(marks)))
        # every output is durable before END says the batch is whole
        self._flush()
        self._freeze_for_test("before-end")
        self._transactions += 1
        every = self.settings.fault_abort_every
        injected = every and self._transactions % every == 0
        if self.settings.fault_commit_delay_ms:
            time.sleep(self.settings.fault_commit_delay_ms / 1000)
        if injected and (self._transactions // every) % 2:
            raise InjectedAbort(f"injected abort of transaction {self._transactions} before END")
        for task, _, _ in batch:
            self._produce_end(task)
        if injected:
            self._flush()
            raise InjectedAbort(f"injected abort of transaction {self._transactions} after END")
        if self.unsafe:
            self._flush()
            self.consumer.commit(offsets=[tp for task, _, _ in batch
                                          for tp in self._offsets(task.partition, task.end_position)],
                                 asynchronous=False)
        else:
            offsets = [tp for task, _, _ in batch for tp in self._offsets(task.partition, task.end_position)]
            if self.shared is producer:
                # a real Kafka cluster: the offsets commit with the batch (they are for
                # monitoring; where to resume comes from the changelog)
                producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            else:
                # the embedded broker drops transactional offsets of concurrent producers
                producer.commit_transaction(30)
                self.consumer.commit(offsets=offsets, asynchronous=True)
        self._flush()  # runs the END markers' delivery callbacks, raises on a lost one

    def _maybe_crash(self) -> None:
        """Fault injection: die between a batch's account states and its applied ids."""
        every = self.settings.fault_crash_every
        if every and (self.stats["batches"] + 1) % every == 0:
            self._flush()
            log.warning("worker %s injected crash mid-batch", self.worker_id)
            os.kill(os.getpid(), signal.SIGKILL)

    def _produce_manifest(self, task: PartitionTask, manifest: list[int]) -> None:
        """The batch's MANIFEST; its offset becomes the store's checkpoint once the batch commits.

        The checkpoint is the manifest, not the END: a restore from there meets the batch again
        and follows whoever really continued it (this worker's END may be a zombie's late one).
        """
        task.manifest_offset = None

        def on_manifest(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                task.manifest_offset = msg.offset()
            else:
                self._on_delivery(err, msg)
        self.producer.produce(self.t_changelog, key=MANIFEST, value=orjson.dumps(manifest),
                              partition=task.partition, headers=self._batch_header, on_delivery=on_manifest)

    def _produce_end(self, task: PartitionTask) -> None:
        self.producer.produce(self.t_changelog, key=END, value=orjson.dumps(list(task.end_position)),
                              partition=task.partition, headers=self._batch_header)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _flush(self) -> None:
        """Wait until every produced record is acknowledged; raise if any was not."""
        if self.producer.flush(30) or (self.shared is not self.producer and self.shared.flush(30)):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "flush timed out"))
        if self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise KafkaException(KafkaError(KafkaError._FAIL, f"not delivered: {errors[:3]}"))

    def _offsets(self, partition: int, position: tuple[int, int]) -> list[TopicPartition]:
        return [TopicPartition(self.t_credits, partition, position[0]),
                TopicPartition(self.t_requests, partition, position[1])]

    def _recover(self, exc: Exception) -> None:
        """Abort, fence with a fresh producer, and rewind every task to its changelog."""
        # a batch that failed because the worker was frozen in it (its partitions may have
        # moved): leave, as at any other step
        self._exit_if_frozen()
        self.stats["aborts"] += 1
        log.warning("worker %s aborting transaction: %s", self.worker_id, exc)
        try:
            if not self.unsafe:
                self.producer.abort_transaction(30)
        except KafkaException as abort_exc:
            # seen after a long freeze: the old producer then retries its id for good and the
            # worker, though assigned, processed nothing more; a restart starts clean
            log.error("worker %s: abort_transaction failed (%s); exiting to be restarted",
                      self.worker_id, abort_exc)
            self._leave_group_and_exit()
        for task in self.tasks.values():
            task.store.discard()
        # the embedded broker mishandles a producer's next transaction after an abort,
        # so every abort gets a fresh producer
        shared_is_txn = self.shared is self.producer
        self.producer = self._new_producer()
        if shared_is_txn:
            self.shared = self.producer
        self._restore(list(self.tasks.values()))
        for p in self.tasks:
            for topic in (self.t_credits, self.t_requests):
                self.consumer.seek(TopicPartition(topic, p, self._next_offset(topic, p)))
        self._alive_at = time.monotonic()

    # -- per-record work -----------------------------------------------------
    def _log_state(self, task: PartitionTask, key: bytes, value: bytes) -> None:
        """A record of the open batch in the task's changelog partition, tagged with the batch."""
        self._produce(self.t_changelog, key, value, None, task.partition, headers=self._batch_header)

    def _produce(self, topic: str, key: bytes | None, value: bytes, ts: int | None,
                 partition: int | None = None, shared: bool = False,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        producer = self.shared if shared else self.producer
        kwargs: dict[str, object] = {"key": key, "value": value}
        if partition is not None:
            kwargs["partition"] = partition
        if ts is not None:
            kwargs["timestamp"] = ts
        if headers is not None:
            kwargs["headers"] = headers
        while True:
            try:
                producer.produce(topic, **kwargs)
                return
            except BufferError:
                producer.poll(0.01)

    def _emit(self, task: PartitionTask, decision: Decision, ts: int) -> None:
        if decision.state is not None:
            task.store.put_account(decision.account, decision.state)
        if decision.marker is not None:
            task.store.mark_applied(decision.marker)
        if decision.event is not None:
            self._produce(self.t_ledger, decision.account.encode(),
                          orjson.dumps(decision.event), ts, task.partition)
        for out in decision.outcomes:
            self._produce(self.t_outcomes, out["request_id"].encode(), orjson.dumps(out), ts, shared=True)
        for key, message in decision.messages:
            self._produce(self.t_credits, key.encode(), orjson.dumps(message), ts, shared=True)

    def _dead_letter(self, task: PartitionTask, msg: Message, error: str) -> None:
        self.stats["deadletters"] += 1
        record = {"error": error, "topic": msg.topic(), "partition": msg.partition(),
                  "offset": msg.offset(), "key": base64.b64encode(msg.key() or b"").decode(),
                  "value": base64.b64encode(msg.value() or b"").decode()}
        self._produce(self.t_deadletter, msg.key(), orjson.dumps(record), msg.timestamp()[1],
                      shared=True)

    def _apply_request(self, task: PartitionTask, msg: Message) -> None:
        ts = msg.timestamp()[1]
        try:
            req = parse_request(msg.key(), msg.value())
        except Undecodable as exc:
            self._dead_letter(task, msg, str(exc))
            return
        store = task.store
        acct = store.account(req.account) if req.account is not None else None
        applied = (not self.settings.unsafe_no_dedupe) and store.is_applied("r:" + req.request_id)
        pos = Position(msg.topic(), msg.partition(), msg.offset())
        self._emit(task, decide_request(req, acct, applied, ts, pos, self.rules), ts)

    def _apply_credit(self, task: PartitionTask, msg: Message) -> None:
        ts = msg.timestamp()[1]
        store = task.store
        pos = Position(msg.topic(), msg.partition(), msg.offset())
        try:
            message = orjson.loads(msg.value())
            name = message["account"]
            if msg.key() != name.encode():
                raise ValueError("credit key does not match its account")
            applied = (not self.settings.unsafe_no_dedupe) and store.is_applied(credit_marker(message))
            decision = decide_credit(message, store.account(name), applied, ts, pos)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self._dead_letter(task, msg, f"bad credit message: {exc}")
            return
        self._emit(task, decision, ts)
