"""Processing one partition's batch: input records -> decisions -> records of the transaction.

The decisions are kbank.streams.decisions' pure functions; this module only reads
state from the task's store, writes the decisions' outputs through the
transaction, and writes the changelog (account states, then the batch record).
It never commits or aborts: the worker does, through EngineTransaction.

A request on a partition its key does not map to (a producer with another
partitioner, or a hand-picked partition) is forwarded, unchanged and inside
the same transaction, to the owning partition of the engine's own
transfers.credits (kbank.streams.engine.routing), and decided there: every
account's state lives on exactly one partition whatever client wrote the
request, and the engine needs no write access to the clients' topic.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaError, Message

from kbank.streams.config import Settings
from kbank.streams.decisions import (MAX_DETAIL, BadMessage, Decision, Rules, Undecodable,
                                     expiry_message, parse_message, parse_request)
from kbank.streams.engine.apply import (MAX_OUTPUT_BYTES, NEVER_EXPIRES, credit_decision,
                                       expiry_horizon, record, request_decision)
from kbank.streams.engine.changelog import BatchRecord, account_key, hold_key
from kbank.streams.storekeys import CHAIN_KEY, CLOCK_KEY, SUPPLY_KEY
from kbank.streams.engine import routing
from kbank.streams.engine.faults import PlantedBug
from kbank.streams.engine.poison import FailureLog, MoneyInFlightFails
from kbank.streams.engine.task import PartitionTask
from kbank.streams.engine.transaction import EngineTransaction
from kbank.streams.model import (ENGINE_ERROR, dead_letter, REJECTED_STATUS, VERSION_HEADERS, Position,
                                 outcome, split_request_key)

# expiry index entries a batch may retire beyond three per input (an input makes at most
# three: its id, its external_ref, a hold it settles), so expiry keeps up with what comes in
_EXPIRY_STEP = 1_000


@dataclass
class Topics:
    requests: str
    credits: str
    ledger: str
    outcomes: str
    deadletter: str
    changelog: str
    batches: str


@dataclass
class ProcessorStats:
    requests: int = 0
    credits: int = 0
    forwarded: int = 0
    deadletters: int = 0
    expiries: int = 0
    contained: int = 0   # requests refused with engine_error (kbank.streams.engine.poison)


class BatchProcessor:
    """Decides one partition's batch and sends every resulting record."""

    def __init__(self, settings: Settings, topics: Topics, partitions: int,
                 out: EngineTransaction) -> None:
        self.settings = settings
        self.rules = Rules.from_settings(settings, partitions)
        self.topics = topics
        self.partitions = partitions
        self.out = out
        self.dedupe = not settings.unsafe_no_dedupe
        self.stats = ProcessorStats()
        self.failures = FailureLog(settings.state_dir, settings.engine_failure_limit)
        self.faults = PlantedBug(settings.fault_bug_on)

    def run(self, task: PartitionTask, credits: list[Message], requests: list[Message],
            mid_changelog=None) -> tuple[tuple[int, int], tuple[int, int]]:  # noqa: ANN001
        """Process the records; returns the input ranges (credits, requests) it covered."""
        c0 = credits[0].offset() if credits else (task.next_credit or 0)
        r0 = requests[0].offset() if requests else (task.next_request or 0)
        for msg in credits:
            self._guarded(task, msg, self._apply_credit)
        for msg in requests:
            if not self._forward_if_misrouted(task, msg):
                self._guarded(task, msg, self._apply_request)
        c1 = credits[-1].offset() + 1 if credits else c0
        r1 = requests[-1].offset() + 1 if requests else r0
        store = task.store
        changelog, partition, send = self.topics.changelog, task.partition, self.out.send
        if self.dedupe:
            for key in store.expire(expiry_horizon(store.clock(), self.rules),
                                    _EXPIRY_STEP + 3 * (len(credits) + len(requests))):
                send(changelog, key, None, partition)
        accounts, marks, holds = store.changes()
        for name, acct in accounts.items():
            send(changelog, account_key(name), orjson.dumps(acct.to_json()), partition)
        for key, hold in holds.items():
            send(changelog, hold_key(key), orjson.dumps(hold.to_json()), partition)
        if store.supply_changed():
            send(changelog, SUPPLY_KEY, orjson.dumps(store.supply()), partition)
        if store.chain_moved():
            send(changelog, CHAIN_KEY, store.chain_head().encode(), partition)
        if store.clock_moved():
            send(changelog, CLOCK_KEY, str(store.clock()).encode(), partition)
        ids = {}
        for marker, value in marks.items():
            if marker.startswith(NEVER_EXPIRES):
                send(changelog, marker.encode(), value.encode(), partition)
            else:
                ids[marker] = value
        if mid_changelog is not None:
            mid_changelog()
        *parts, record = BatchRecord((c0, c1), (r0, r1), ids, None,
                                     store.clock()).split(MAX_OUTPUT_BYTES)
        for part in parts:
            send(changelog, part.key, part.encode(), partition)
        store.note_batch_records([part.key for part in parts] + [record.key])
        send(self.topics.batches, record.key, record.range_record, partition)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            """The batch record is the task's last changelog record of the batch: its offset
            is where a restore of the committed store goes on."""
            if err is None:
                task.changelog_next = max(task.changelog_next, msg.offset() + 1)
            else:
                self.out.record_delivery(err, msg)
        send(changelog, record.key, record.encode(), partition, on_delivery=delivered)
        self.stats.credits += len(credits)
        self.stats.requests += len(requests)
        return (c0, c1), (r0, r1)

    def request_expiries(self, task: PartitionTask, now_ms: int) -> None:
        """Write an expire request for each due hold to the partition's own input, stamped
        no earlier than the deadline: the log, not this clock, decides (replay agrees)."""
        due = task.due_holds(now_ms)
        for key, hold in due:
            self.out.send(self.topics.credits, hold.sender.encode(),
                          orjson.dumps(expiry_message(split_request_key(key)[1], hold)),
                          task.partition, max(now_ms, hold.deadline))
        self.stats.expiries += len(due)

    # -- per record ------------------------------------------------------------
    def _guarded(self, task: PartitionTask, msg: Message, apply) -> None:  # noqa: ANN001
        """Apply one record. Bad input is dead-lettered by `apply` itself (only decoding and
        validation errors are); anything else is a bug in the engine: it propagates, with
        the record named, and aborts the batch and the worker, loudly, counted at its
        position; once a position has failed BANK_ENGINE_FAILURE_LIMIT times, its record is
        contained (kbank.streams.engine.poison) instead of halting its partitions."""
        if self.failures.known:   # empty unless a record failed before
            position = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
            error = self.failures.exhausted(position)
            if error is not None and self._is_request(msg):
                self._contain(task, msg, error)
                return
        try:
            self.faults.planted_bug(msg)
            apply(task, msg)
        except Exception as exc:
            position = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
            count = self.failures.failed(position, f"{type(exc).__name__}: {exc}")
            if count >= self.failures.limit and not self._is_request(msg):
                raise MoneyInFlightFails(   # tried again at each start: heals once fixed
                    f"{position} failed {count} times ({type(exc).__name__}: {exc}): money "
                    f"in flight is never skipped; the engine needs a fix") from exc
            exc.add_note(f"while deciding {msg.topic()}[{msg.partition()}]@{msg.offset()} "
                         f"(failure {count} of {self.failures.limit} at this position)")
            raise

    def _is_request(self, msg: Message) -> bool:
        """A client's request (on its topic, or forwarded to the engine's own), not money in
        flight."""
        return msg.topic() == self.topics.requests or routing.is_forwarded(msg)

    def _contain(self, task: PartitionTask, msg: Message, error: str) -> None:
        """A request that keeps failing: refused (engine_error) and dead-lettered with the
        error."""
        self.stats.contained += 1
        self._dead_letter(msg, f"engine_error after {self.failures.limit} failures: {error}")
        try:
            req = parse_request(msg.key(), msg.value())
        except Exception:  # noqa: BLE001 - the parser may be what fails: dead-lettered only
            return
        ts = msg.timestamp()[1]
        self._emit(task, Decision(outcomes=[outcome(
            req.account or "", req.request_id, REJECTED_STATUS, ts, ENGINE_ERROR,
            f"the engine failed deciding it {self.failures.limit} times: {error}"[:MAX_DETAIL])]),
            ts)

    def _forward_if_misrouted(self, task: PartitionTask, msg: Message) -> bool:
        """Forward a request of another partition's key to that partition (routing)."""
        key = msg.key()
        if not routing.is_misrouted(key, task.partition, self.partitions):
            return False
        if len(msg.value() or b"") > routing.MAX_FORWARD_BYTES:
            self._dead_letter(msg, "misrouted and too large to forward")
            return True
        self.out.send(self.topics.credits, key, msg.value(),
                      routing.owner(key, self.partitions), msg.timestamp()[1],
                      headers=routing.forward_headers(msg))
        self.stats.forwarded += 1
        return True

    def _emit(self, task: PartitionTask, decision: Decision, ts: int) -> None:
        """Encode every output, then change the state, then send: all or nothing."""
        out = record(task.store, decision, ts)
        if out.event is not None:
            self.out.send(self.topics.ledger, decision.account.encode(), out.event,
                          task.partition, ts, headers=VERSION_HEADERS)
        for key, value in out.outcomes:
            self.out.send(self.topics.outcomes, key, value, -1, ts, headers=VERSION_HEADERS)
        for key, value in out.messages:
            self.out.send(self.topics.credits, key, value, -1, ts)

    def _dead_letter(self, msg: Message, error: str) -> None:
        """The record, its key and at most DEADLETTER_COPY_BYTES of its value."""
        self.stats.deadletters += 1
        key, value = dead_letter(msg, error)
        # with its own delivery report (dead letters are rare): a refusal names its topic
        self.out.send(self.topics.deadletter, key, value,
                      timestamp=msg.timestamp()[1], on_delivery=self.out.record_delivery)

    def _apply_request(self, task: PartitionTask, msg: Message,
                       pos: Position | None = None) -> None:
        """Decide a request: one of this partition's, or one forwarded to it (`pos`: where
        the client wrote it)."""
        ts = msg.timestamp()[1]
        pos = pos or Position(msg.topic(), msg.partition(), msg.offset())
        try:
            decision = request_decision(task.store, msg.key(), msg.value(), ts, pos, self.rules,
                                        self.dedupe)
        except Undecodable as exc:
            self._dead_letter(msg, str(exc))
            return
        self._emit(task, decision, ts)

    def _apply_credit(self, task: PartitionTask, msg: Message) -> None:
        ts = msg.timestamp()[1]
        pos = Position(msg.topic(), msg.partition(), msg.offset())
        try:
            if (original := routing.forwarded_from(msg)) is not None:
                self._apply_request(task, msg, original)
                return
            decision = credit_decision(task.store, parse_message(msg.key(), msg.value()), ts, pos,
                                       self.rules, self.dedupe)
        except BadMessage as exc:
            self._dead_letter(msg, f"bad credit message: {exc}")
            return
        self._emit(task, decision, ts)
