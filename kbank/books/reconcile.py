"""Reconciliation on Kafka: statement lines imported into recon.lines, rules in recon.rules,
and the worker (`bank reconciler`) that writes each account's results to recon.results.

An import is one transaction (every line of the file or none); a line already imported
(the same id: kbank.books.statements) is not written again. The worker keeps no state of its
own: on start it reads the lines, the rules, the results written so far and the ledger
events of the accounts that have statements; whenever an account's lines, rules or events
change it reconciles the account again (kbank.books.matching, a pure function of them) and
writes what differs from its last results, in one transaction (a result changed, or a
tombstone for an item that has none now). So a worker killed at any point loses and doubles
nothing: its successor (the same transactional id fences it) restores the committed results
and writes what they still lack.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from kbank.books.matching import LedgerItem, Rules, differences, reconcile
from kbank.books.statements import StatementLine
from kbank.streams import kafka, topics
from kbank.streams.books.recon import result_key, split_result_key
from kbank.streams.client import BULK_READ, read_topic
from kbank.streams.config import Settings
from kbank.streams.model import OPENED, VERSION_HEADERS
from kbank.streams.partitioning import partition_for

log = logging.getLogger("bank.reconciler")
WORKER_TRANSACTION = "bank-reconciler"
DEFAULT_RULES = Rules()


_READERS = {kafka.TOOLS: "bank-reader", kafka.OPERATOR: "operator-reader",
            kafka.BOOKS: "bank-reconciler-reader", kafka.VIEWS: "bank-views-reader"}


def _read(settings: Settings, logical_topic: str, role: str, **options: Any):  # noqa: ANN202
    """read_topic as `role`, under a group of its own (each principal's ACLs name its groups)."""
    return read_topic(settings, settings.topic(logical_topic), role=role, group=_READERS[role],
                      **options)


def stored_lines(settings: Settings, role: str = kafka.TOOLS) -> dict[str, dict[str, StatementLine]]:
    """Every imported line: account -> line id -> line (a record that is not a line skipped)."""
    found: dict[str, dict[str, StatementLine]] = defaultdict(dict)
    for msg in _read(settings, topics.RECON_LINES, role):
        try:
            line = StatementLine.from_json(orjson.loads(msg.value()))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            continue
        found[line.account].setdefault(line.line_id, line)
    return found


def import_lines(settings: Settings, lines: list[StatementLine]) -> tuple[int, int]:
    """Write the lines not imported yet, all in one transaction, as the operator; returns
    (written, already there)."""
    assert lines and len({ln.account for ln in lines}) == 1, "one account's lines at a time"
    account = lines[0].account
    known = stored_lines(settings, kafka.OPERATOR).get(account, {})
    new = [ln for ln in lines if ln.line_id not in known]
    if new:
        producer = kafka.producer(settings, kafka.OPERATOR, **{
            "transactional.id": settings.topic(f"bank-recon-import-{account}"), "acks": "all"})
        producer.init_transactions(30)
        producer.begin_transaction()
        for line in new:
            producer.produce(settings.topic(topics.RECON_LINES), key=account.encode(),
                             value=orjson.dumps(line.to_json()), headers=VERSION_HEADERS)
        producer.commit_transaction(60)
    return len(new), len(lines) - len(new)


def write_rules(settings: Settings, account: str, rules: Rules) -> None:
    producer = kafka.producer(settings, kafka.OPERATOR, acks="all")
    producer.produce(settings.topic(topics.RECON_RULES), key=account.encode(),
                     value=orjson.dumps(rules.to_json()))
    if producer.flush(30):
        raise TimeoutError("the rules were not acknowledged in 30 s")


def stored_results(settings: Settings, role: str = kafka.TOOLS) -> dict[str, dict[str, Any]]:
    """account -> item -> its latest result, as committed."""
    found: dict[str, dict[str, Any]] = defaultdict(dict)
    for msg in _read(settings, topics.RECON_RESULTS, role):
        account, item = split_result_key(msg.key() or b"")
        if msg.value() is None:
            found[account].pop(item, None)
        else:
            found[account][item] = orjson.loads(msg.value())
    return found


class AccountLedger:
    """The ledger events of the accounts that have statements, as reconciliation items."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.currency: dict[str, str] = {}

    def add(self, event: dict[str, Any]) -> None:
        account = event["account"]
        known = self.events[account]
        if known and event["seq"] <= known[-1]["seq"]:
            return                       # a re-delivery
        known.append(event)
        if event["kind"] == OPENED:
            self.currency[account] = event.get("currency", "USD")

    def items(self, account: str, rules: Rules) -> list[LedgerItem]:
        currency = self.currency.get(account, "USD")
        return [item for e in self.events.get(account, [])
                if (item := LedgerItem.from_event(e, currency, rules)) is not None]


def read_account(settings: Settings, account: str, role: str, into: AccountLedger) -> None:
    """An account's ledger events (its partition, to the end it has now) into `into`."""
    key = account.encode("utf-8", "surrogatepass")
    for msg in _read(settings, topics.LEDGER, role,
                     partitions=[partition_for(key, settings.partitions)]):
        if msg.key() == key:
            into.add(orjson.loads(msg.value()))


class Reconciler:
    """The worker: see the module's doc."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lines: dict[str, dict[str, StatementLine]] = defaultdict(dict)
        self.rules: dict[str, Rules] = {}
        self.ledger = AccountLedger()
        self.results: dict[str, dict[str, Any]] = defaultdict(dict)
        self.dirty: set[str] = set()
        self.behind: set[tuple[str, int]] = set()
        self.watched: set[int] = set()         # the ledger partitions it reads
        self.ledger_topic = settings.topic(topics.LEDGER)
        self.written = self.transactions = 0
        self._stopping = False
        self.producer = kafka.producer(settings, kafka.BOOKS, **{
            "transactional.id": settings.topic(WORKER_TRANSACTION), "acks": "all"})
        self.consumer = kafka.consumer(settings, kafka.BOOKS, settings.topic("bank-reconciler"),
                                       **BULK_READ)

    def restore(self) -> None:
        """The committed results, then every line and rule; then only the ledger partitions
        of the accounts with lines, from their start (an account's events are read only
        after its lines: none is missed), so a bank without statements reads no ledger."""
        self.producer.init_transactions(60)     # fences a previous worker; its open transaction aborts
        self.results = stored_results(self.settings, kafka.BOOKS)
        self.lines = stored_lines(self.settings, kafka.BOOKS)
        for msg in _read(self.settings, topics.RECON_RULES, kafka.BOOKS):
            self._fold_rules(msg.key(), msg.value())
        self.dirty = set(self.lines) | set(self.results)
        assignment = [TopicPartition(self.settings.topic(t), 0, OFFSET_BEGINNING)
                      for t in (topics.RECON_LINES, topics.RECON_RULES)]
        self.watched = {partition_for(a.encode("utf-8", "surrogatepass"), self.settings.partitions)
                        for a in self.lines}
        assignment += [TopicPartition(self.ledger_topic, p, OFFSET_BEGINNING)
                       for p in sorted(self.watched)]
        self.behind = {(tp.topic, tp.partition) for tp in assignment}   # not yet read to its end
        self.consumer.assign(assignment)

    def _fold_rules(self, key: bytes | None, value: bytes | None) -> None:
        account = (key or b"").decode("utf-8", "replace")
        try:
            self.rules[account] = Rules.from_json(value) if value is not None else DEFAULT_RULES
        except (ValueError, TypeError) as exc:
            log.error("skipping the rules of %s: %s", account, exc)
            return
        self.dirty.add(account)

    def _fold(self, msg: Any) -> None:
        topic = msg.topic()[len(self.settings.topic_prefix):]
        if topic == topics.LEDGER:
            account = (msg.key() or b"").decode("utf-8", "replace")
            if account in self.lines:
                self.ledger.add(orjson.loads(msg.value()))
                self.dirty.add(account)
        elif topic == topics.RECON_RULES:
            self._fold_rules(msg.key(), msg.value())
        else:
            try:
                line = StatementLine.from_json(orjson.loads(msg.value()))
            except (orjson.JSONDecodeError, TypeError, ValueError):
                return
            if line.account not in self.lines:
                self._watch(line.account)
            self.lines[line.account].setdefault(line.line_id, line)
            self.dirty.add(line.account)

    def _watch(self, account: str) -> None:
        """An account's first statement: read its ledger partition from the start, or, if
        that partition is read already, the events of it that went by."""
        self.lines[account] = {}
        key = account.encode("utf-8", "surrogatepass")
        partition = partition_for(key, self.settings.partitions)
        if partition not in self.watched:
            self.watched.add(partition)
            self.behind.add((self.ledger_topic, partition))
            self.consumer.incremental_assign(
                [TopicPartition(self.ledger_topic, partition, OFFSET_BEGINNING)])
            return
        read_account(self.settings, account, kafka.BOOKS, self.ledger)

    def reconcile_dirty(self) -> int:
        """Reconcile each account that changed; write its differences in a transaction."""
        written = 0
        for account in sorted(self.dirty):
            rules = self.rules.get(account, DEFAULT_RULES)
            now = reconcile(list(self.lines.get(account, {}).values()),
                            self.ledger.items(account, rules), rules)
            changes = differences(self.results.get(account, {}), now)
            if changes:
                self._write(account, changes)
                written += len(changes)
            self.results[account] = now
        self.dirty.clear()
        return written

    def _write(self, account: str, changes: dict[str, dict[str, Any] | None]) -> None:
        """One account's changed results (None: a tombstone) in one transaction."""
        self.producer.begin_transaction()
        try:
            for item, result in sorted(changes.items()):
                self.producer.produce(self.settings.topic(topics.RECON_RESULTS),
                                      key=result_key(account, item),
                                      value=None if result is None else orjson.dumps(result))
            self.transactions += 1
            if self.transactions == self.settings.fault_reconciler_crash_at:
                self.producer.flush(30)
                log.warning("injected crash in transaction %d", self.transactions)
                logging.shutdown()
                os.kill(os.getpid(), signal.SIGKILL)
            self.producer.commit_transaction(60)
        except BaseException:
            self.producer.abort_transaction(30)
            raise
        self.written += len(changes)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stopping", True))
        self.restore()
        log.info("reconciler: %d accounts with statements, %d results", len(self.lines),
                 sum(len(r) for r in self.results.values()))
        last = 0.0
        while not self._stopping:
            for msg in self.consumer.consume(10_000, 0.2):
                error = msg.error()
                if error is None:
                    self._fold(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    self.behind.discard((msg.topic(), msg.partition()))
                else:
                    raise KafkaException(error)
            if self.dirty and not self.behind and time.monotonic() - last > 0.5:
                written = self.reconcile_dirty()
                last = time.monotonic()
                if written:
                    log.info("reconciler: %d results written (%d in all)", written, self.written)
        self.consumer.close()
