"""Workloads for the integration tests, and the checks every one of them ends with."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from kbank.chaos.holds import HoldMix
from kbank.replay.ledger import LedgerFold
from kbank.replay.verify import VerifyReport, verify
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from kbank.streams import kafka, topics
from kbank.streams.client import BULK_READ, OutcomeWatcher, RequestSender, read_to_end, read_topic
from kbank.streams.config import Settings
from kbank.streams.model import split_request_key


@dataclass
class Workload:
    """Requests sent so far, with what a test needs to check the end state."""

    settings: Settings
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    request_ids: list[str] = field(default_factory=list)
    deposits: int = 0
    duplicates_sent: int = 0
    setup_timeout_s: float = 120
    # requests the broker refused (a broker killed under the send, say) and the errors: a
    # client sends them again, as `resend_refused` does, and the id makes that a retry
    refused: list[tuple[dict, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sender = RequestSender(self.settings)
        self.watcher = OutcomeWatcher(self.settings, from_beginning=True)

    def send(self, request: dict, duplicate: bool = False) -> None:
        def acked(error: str | None, _msg) -> None:  # noqa: ANN001 - a confluent-kafka Message
            if error is not None:
                self.refused.append((request, error))
        self.request_ids.append(self.sender.send(request, acked))   # its request key
        if duplicate:
            self.sender.send(request, acked)
            self.duplicates_sent += 1

    def resend_refused(self, rounds: int = 5) -> list[str]:
        """Send again what the broker refused until it takes all of it; the errors seen."""
        errors: list[str] = []
        for _ in range(rounds):
            self.sender.flush()
            again, self.refused = self.refused, []
            if not again:
                break
            errors += [error for _, error in again]
            for request, _ in again:
                self.sender.send(request, lambda e, _m, r=request: e and self.refused.append((r, e)))
        assert not self.refused, f"the broker kept refusing requests: {self.refused[:3]}"
        return errors

    def open_accounts(self, names: list[str], deposit: int, wait=None) -> None:  # noqa: ANN001
        """Open and fund the accounts; `wait(timeout_s)` (default: the watcher's) until done."""
        for name in names:
            self.send({"type": "open_account", "request_id": f"open-{name}", "account": name})
        for name in names:
            self.send({"type": "deposit", "request_id": f"dep-{name}", "account": name, "amount": deposit})
            self.deposits += deposit
        self.sender.flush()
        # a credit that overtakes its receiver's open_account is refunded, so wait
        assert (wait or self.wait)(self.setup_timeout_s), "accounts were not opened in time"

    def random_transfers(self, names: list[str], count: int, prefix: str, max_amount: int,
                         duplicate_every: int = 0, rate_per_s: float | None = None) -> None:
        start = time.monotonic()
        for i in range(count):
            src, dst = self.rng.sample(names, 2)
            self.send({"type": "transfer", "request_id": f"{prefix}-{i}", "from": src, "to": dst,
                       "amount": self.rng.randint(1, max_amount)},
                      duplicate=bool(duplicate_every) and i % duplicate_every == 0)
            if rate_per_s and i % 100 == 0:
                ahead = start + i / rate_per_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        self.sender.flush()

    def random_holds(self, names: list[str], count: int, prefix: str, max_amount: int,
                     rate_per_s: float | None = None) -> None:
        """Holds, each later posted, voided, raced or left to expire (kbank.chaos.holds.HoldMix)."""
        mix = HoldMix(names, prefix, max_amount, random.Random(self.rng.random()))
        start = time.monotonic()
        for i in range(count):
            for request in mix.step():
                self.send(request)
            if rate_per_s and i % 20 == 0:
                ahead = start + i / rate_per_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        self.sender.flush()

    def statuses(self) -> dict[str, str]:
        """Status by bare request id (the tests' ids are unique across accounts)."""
        with self.watcher._lock:
            return {split_request_key(key)[1]: st for key, st in self.watcher.status.items()}

    def status(self, request_id: str) -> str | None:
        return self.statuses().get(request_id)

    def wait(self, timeout_s: float = 180) -> bool:
        return self.watcher.wait(self.request_ids, timeout_s)

    def close(self) -> None:
        self.watcher.close()


def ledger(settings: Settings) -> LedgerFold:
    fold = LedgerFold()
    for msg in read_topic(settings, settings.topic(topics.LEDGER)):
        fold.apply(msg.value(), f"@{msg.partition()}:{msg.offset()}")
    return fold


def hidden_records(settings: Settings, logical_topic: str) -> int:
    """Records of a topic that read_uncommitted readers see and read_committed ones do not:
    the outputs of aborted transactions (a killed, aborted or fenced batch)."""
    topic = settings.topic(logical_topic)
    seen = {iso: sum(1 for _ in read_topic(settings, topic, isolation=iso))
            for iso in ("read_uncommitted", "read_committed")}
    return seen["read_uncommitted"] - seen["read_committed"]


def engine_backlog(settings: Settings) -> int:
    """Committed input records the engine group has not yet processed: a request's final outcome
    can come before the last of its messages (a settled hold's release notice) is applied."""
    group = kafka.consumer(settings, kafka.ADMIN, settings.topic(topics.ENGINE_GROUP))
    reader = kafka.consumer(settings, kafka.ADMIN, settings.topic("bank-backlog"), **BULK_READ)
    try:
        wanted = []
        for logical in (topics.REQUESTS, topics.CREDITS):
            name = settings.topic(logical)
            parts = reader.list_topics(name, timeout=30).topics[name].partitions
            wanted += [TopicPartition(name, p) for p in parts]
        start = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                 for tp in group.committed(wanted, timeout=30)]
        return sum(1 for _ in read_to_end(reader, start))
    finally:
        group.close()
        reader.close()


def assert_invariants(settings: Settings, workload: Workload, drained_by=None) -> VerifyReport:  # noqa: ANN001
    """Money conserved, nothing lost, nothing applied twice, sequences gap-free. With
    `drained_by` (the engine's WorkerPool, restarted if its workers died), first wait until the
    engine has processed everything it was sent: holds leave messages after their outcomes."""
    if drained_by is not None:
        def drained() -> bool:
            drained_by.restart_dead()
            return engine_backlog(settings) == 0
        wait_until(drained, 120, "the engine to process its backlog", poll_s=0.5)
    report = verify(settings, require_final=True)
    assert report.violations == [], report.render()
    assert report.lost == 0
    assert report.applied_twice == 0
    assert report.in_flight == 0
    assert report.money_conserved, report.render()
    assert report.deposits == workload.deposits
    assert report.requests == len(set(workload.request_ids))
    assert report.holds["pending"] == 0, report.render()
    return report


def denied_operations(log_path, settings: Settings) -> list[str]:  # noqa: ANN001 - a Path
    """The broker's authorizer log lines (StandardAuthorizer, INFO) denying an operation to a
    principal of this deployment (its users are named after its topic prefix)."""
    import re

    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    user = re.compile(rf"User:{re.escape(settings.topic_prefix)}\w+")
    return [line for line in text.splitlines() if "Denied" in line and user.search(line)]


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.1) -> None:  # noqa: ANN001
    """Poll `condition()` until it is true; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(poll_s)


def verify_until(settings: Settings, shows, timeout_s: float, what: str,  # noqa: ANN001
                 poll_s: float = 2.0, between=None) -> VerifyReport:  # noqa: ANN001
    """Run verify (require_final=False) until `shows(report)` is true, calling `between()`
    (say, restarting workers) before each run; fail naming `what` with the last report.
    A negative control waits so for the damage its missing guard lets through."""
    reports: list[VerifyReport] = []

    def shown() -> bool:
        if between is not None:
            between()
        reports.append(verify(settings, require_final=False))
        return bool(shows(reports[-1]))
    try:
        wait_until(shown, timeout_s, what, poll_s=poll_s)
    except AssertionError:
        raise AssertionError(reports[-1].render() if reports else "no verify ran") from None
    return reports[-1]


def log_count(path, text: str) -> int:  # noqa: ANN001 - a pathlib.Path
    """How often `text` occurs in a worker's log file (0 if it has none yet)."""
    return path.read_text().count(text) if path.exists() else 0


def status_path(key: str) -> str:
    """GET /transfers/{id}?account= of a request key."""
    from urllib.parse import quote

    account, rid = split_request_key(key)
    return f"/transfers/{quote(rid, safe='')}?account={quote(account, safe='')}"
