"""What every chaos run sends and how it ends: the load (transfers, duplicates, misrouted
and hostile records, holds), the wait for every outcome, and the verdict (verify over the
logs, the views against their rebuild). `bank chaos` (kbank.chaos.run) and `bank chaos
--hosts` (kbank.chaos.network) both use it.
"""
from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Producer

from kbank.chaos.holds import HoldMix
from kbank.streams import kafka, topics
from kbank.streams.client import OutcomeWatcher, RequestSender
from kbank.streams.config import Settings
from kbank.streams.kafka import produce_waiting
from kbank.streams.model import request_key
from kbank.streams.supervisor import WorkerPool, wait_for_views

VIEWS_CATCH_UP_S = 90  # how long the views get to agree with the rebuilt ones after the load


@dataclass
class ChaosReport:
    faults: list[str] = field(default_factory=list)
    sent: int = 0
    duplicates_sent: int = 0
    misrouted_sent: int = 0     # through librdkafka's default partitioner
    hostile_sent: int = 0
    applied: int = 0
    completed: int = 0
    rejected: int = 0
    lost: int = 0
    applied_twice: int = 0
    money_conserved: bool = False
    holds: dict[str, int] = field(default_factory=dict)   # verify's hold counts
    hold_violations: int = 0
    views_differences: int = -1
    verify_text: str = ""

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.applied_twice == 0 and self.money_conserved
                and self.hold_violations == 0 and self.views_differences == 0)

    def render(self) -> str:
        return "\n".join([
            f"faults injected      {len(self.faults)}: {', '.join(self.faults)}",
            f"requests sent        {self.sent} (+{self.duplicates_sent} duplicate deliveries; "
            f"{self.misrouted_sent} by librdkafka's default partitioner, {self.hostile_sent} "
            f"hostile records)",
            f"applied              {self.applied} ({self.completed} completed, {self.rejected} rejected)",
            f"lost                 {self.lost}",
            f"applied twice        {self.applied_twice}",
            f"money conserved      {'yes' if self.money_conserved else 'NO'}",
            f"holds                {self.holds.get('made', 0)} made: {self.holds.get('posted', 0)} "
            f"posted, {self.holds.get('hold_released', 0)} voided, {self.holds.get('expired', 0)} "
            f"expired, {self.holds.get('pending', 0)} pending; {self.hold_violations} violation(s)",
            f"views vs ledger      {self.views_differences} difference(s)",
            "chaos: OK" if self.ok else "chaos: FAILED",
        ])


def hostile_requests(i: int, src: str, dst: str) -> list[tuple[dict | bytes, bool]]:
    """Records a careless or hostile client sends, keyed by `src`: (record, whether it has
    an outcome to wait for). None may stop the engine (issues 40 and 41)."""
    return [
        (b"not json at all", False),                                        # dead-lettered
        ({"type": ["transfer"], "request_id": f"hz-{i}", "from": src, "to": dst, "amount": 1},
         False),                                                            # rejected: invalid
        ({"type": "linked", "request_id": f"hl-{i}", "from": src,
          "transfers": [{"to": dst, "amount": 1, "from": None}]}, True),     # rejected: invalid
        ({"type": "transfer", "request_id": f"hn-{i}", "from": src, "to": dst, "amount": -5},
         True),                                                             # rejected: invalid
    ]


class Load(threading.Thread):
    """Transfers at a steady rate among opened accounts, every 30th sent twice; every 10th
    step also makes a hold and may post, void or race an earlier one (kbank.chaos.holds).
    Every 4th transfer goes through librdkafka's default partitioner (consistent_random: most
    land on a partition their key does not map to, and are forwarded), and every 50th step
    sends the hostile records of `hostile_requests`."""

    def __init__(self, settings: Settings, names: list[str], rate: float, seed: int = 3) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.sender = RequestSender(settings)
        self.plain = Producer(kafka.client_config(settings, kafka.OPERATOR))   # its defaults
        self.misrouted = self.hostile = 0
        self.names, self.rate, self.rng = names, rate, random.Random(seed)
        self.holds = HoldMix(names, "ch", 3_000, random.Random(seed + 1))
        self.ids: list[str] = []
        self.duplicates = 0
        self.stop = threading.Event()

    def run(self) -> None:
        start, i = time.monotonic(), 0
        while not self.stop.is_set():
            src, dst = self.rng.sample(self.names, 2)
            req = {"type": "transfer", "request_id": f"c-{i}", "from": src, "to": dst,
                   "amount": self.rng.randint(1, 3_000)}
            if i % 4 == 2:
                self._send_plain(src, orjson.dumps(req))
                key = request_key(src, req["request_id"])
                self.misrouted += 1
            else:
                key = self.sender.send(req)
            if i % 50 == 25:
                for record, answered in hostile_requests(i, src, dst):
                    raw = record if isinstance(record, bytes) else orjson.dumps(record)
                    self._send_plain(src, raw)
                    self.hostile += 1
                    if answered:
                        self.ids.append(request_key(src, record["request_id"]))
            if i % 30 == 0:
                self.sender.send(req)
                self.duplicates += 1
            self.ids.append(key)
            if i % 10 == 0:
                for hold_req in self.holds.step():
                    self.ids.append(self.sender.send(hold_req))
            i += 1
            ahead = start + i / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self.sender.flush()
        self.plain.flush(60)

    def _send_plain(self, account: str, value: bytes) -> None:
        """A record through the plain producer, keyed by `account`."""
        produce_waiting(self.plain, self.settings.topic(topics.REQUESTS), key=account.encode(),
                        value=value)
        self.plain.poll(0)


def open_accounts(settings: Settings, accounts: int) -> tuple[OutcomeWatcher, list[str], list[str]]:
    """Open and fund the load's accounts; (the watcher of outcomes, the setup's request keys,
    the accounts' names)."""
    names = [f"acct-{i}" for i in range(accounts)]
    watcher = OutcomeWatcher(settings, from_beginning=True)
    setup = RequestSender(settings)
    ids = []
    for name in names:
        for req in ({"type": "open_account", "request_id": f"open-{name}", "account": name},
                    {"type": "deposit", "request_id": f"dep-{name}", "account": name,
                     "amount": 100_000}):
            ids.append(setup.send(req))
    setup.flush()
    if not watcher.wait(ids, 120):
        raise RuntimeError("accounts were not opened")
    return watcher, ids, names


def finish_load(load: Load, ids: list[str], watcher: OutcomeWatcher, engine: WorkerPool,
                report: ChaosReport, log) -> None:  # noqa: ANN001
    """Stop the load and wait (up to 5 minutes, restarting engine workers that exited) for
    the outcome of every request; the counts go in the report."""
    load.stop.set()
    load.join()
    all_ids = ids + load.ids
    log(f"chaos: load stopped after {len(load.ids)} transfers; waiting for every outcome")
    deadline = time.monotonic() + 300
    while watcher.finished(all_ids) < len(all_ids) and time.monotonic() < deadline:
        engine.restart_dead()
        time.sleep(0.5)
    watcher.close()
    report.sent, report.duplicates_sent = len(all_ids), load.duplicates
    report.misrouted_sent, report.hostile_sent = load.misrouted, load.hostile


def check(settings: Settings, report: ChaosReport, urls: list[str], views: WorkerPool, log,  # noqa: ANN001
           api_key: str) -> None:
    from kbank.replay.verify import verify
    from kbank.replay.views import compare, rebuild

    result = verify(settings, require_final=True)
    report.verify_text = result.render()
    report.applied = result.requests_final
    report.completed, report.rejected = result.completed, result.rejected
    report.lost = result.lost + (result.requests - result.requests_final)
    report.applied_twice = result.applied_twice
    report.money_conserved = result.money_conserved and not result.violations
    report.holds = dict(result.holds)
    report.hold_violations = result.holds["pending"] + result.holds["violations"]
    log("chaos: verify\n  " + report.verify_text.replace("\n", "\n  "))
    if not wait_for_views(urls, settings.partitions):
        log("chaos: views not ready for the comparison")
        return
    rebuilt = rebuild(settings, tempfile.mkdtemp(prefix="bank-chaos-views-"), show_progress=False)
    # a views worker restarted late in the run may still be folding the last outcomes (a worker
    # that took partitions it had no store for folds them from the ledger's start): differences
    # must vanish within the deadline to pass
    deadline = time.monotonic() + VIEWS_CATCH_UP_S
    while True:
        diffs = asyncio.run(compare(rebuilt, urls[0], settings.partitions, api_key,
                                    show_progress=False))
        if not diffs or time.monotonic() > deadline:
            break
        log(f"chaos: {len(diffs)} view difference(s); asking again (views may still be catching up)")
        time.sleep(5)
    for line in diffs[:20]:
        log(f"  - {line}")
    report.views_differences = len(diffs)
