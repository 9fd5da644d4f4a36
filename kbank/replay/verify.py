"""`bank replay verify`: check the system's invariants over its logs.

Reads ledger.events, transfers.requests and transfers.outcomes and checks:
  - per-account sequences are gap-free, re-deliveries identical;
  - each balance follows from the previous one and never goes below 0;
  - each request is applied at most once (one deciding event, at most one
    credit or refund per transfer, never both);
  - every debit has exactly one credit or refund, or is still in flight;
  - money is conserved: sum of balances + in flight = deposits - withdrawals;
  - nothing is lost: every request with a request_id has an outcome
    (with --complete: a final one);
  - holds: each is settled (posted, voided or expired) at most once, and then
    posted + released equals what it reserved; every account's held amount
    follows from its events and stays within its balance (available >= 0).
"""
from __future__ import annotations

import gc
import sys
from collections import Counter
from dataclasses import dataclass, field

import orjson

from kbank.replay.ledger import LedgerFold
from kbank.streams.progress import progress_bar
from kbank.streams import topics
from kbank.streams.client import read_topic
from kbank.streams.decisions import deciding_account, parse_json
from kbank.streams.config import Settings
from kbank.streams.model import (COMPLETED, CREDITED, DEBITED, DEPOSITED, EXPIRED, HELD, HOLD_RELEASED,
                           HOLD_SETTLING, OPENED, POSTED, REFUNDED, REJECTED_STATUS, WITHDRAWN,
                           event_request_key, is_final, is_name, outcome_key, request_key,
                           status_moves)

_DECIDING = {OPENED, DEPOSITED, WITHDRAWN, DEBITED, HELD, POSTED, HOLD_RELEASED, EXPIRED}


@dataclass
class VerifyReport:
    events: int = 0
    duplicates_dropped: int = 0
    accounts: int = 0
    total_balance: int = 0
    deposits: int = 0
    withdrawals: int = 0
    in_flight: int = 0
    in_flight_transfers: int = 0
    requests: int = 0
    requests_with_outcome: int = 0
    requests_final: int = 0
    completed: int = 0
    rejected: int = 0
    applied_twice: int = 0
    lost: int = 0
    holds: Counter[str] = field(default_factory=Counter)   # made, posted, voided, expired, pending
    violations: list[str] = field(default_factory=list)

    @property
    def money_conserved(self) -> bool:
        return self.total_balance + self.in_flight == self.deposits - self.withdrawals

    @property
    def ok(self) -> bool:
        return not self.violations and self.money_conserved

    def render(self) -> str:
        lines = [
            f"ledger events        {self.events} applied, {self.duplicates_dropped} duplicate copies dropped",
            f"accounts             {self.accounts}",
            f"requests             {self.requests} sent, {self.requests_with_outcome} with an outcome, "
            f"{self.requests_final} final ({self.completed} completed, {self.rejected} rejected)",
            f"lost                 {self.lost}",
            f"applied twice        {self.applied_twice}",
            f"holds                {self.holds['made']} made: {self.holds[POSTED]} posted, "
            f"{self.holds[HOLD_RELEASED]} voided, {self.holds[EXPIRED]} expired, "
            f"{self.holds['pending']} pending ({self.holds['pending_amount']} reserved)",
            f"money                balances {self.total_balance} + in flight {self.in_flight} "
            f"({self.in_flight_transfers} transfers) vs deposits {self.deposits} - withdrawals "
            f"{self.withdrawals}: {'conserved' if self.money_conserved else 'NOT CONSERVED'}",
            f"violations           {len(self.violations)}",
        ]
        lines += [f"  - {v}" for v in self.violations[:50]]
        if len(self.violations) > 50:
            lines.append(f"  ... and {len(self.violations) - 50} more")
        lines.append("verify: OK" if self.ok else "verify: FAILED")
        return "\n".join(lines)


class LedgerChecks:
    """The cross-account checks, accumulated one applied (de-duplicated) event at a time."""

    def __init__(self) -> None:
        self.deciding: Counter[tuple[str, str]] = Counter()   # (request_id, kind)
        self.returned: Counter[str] = Counter()   # amount credited + refunded per request
        self.refunds: Counter[str] = Counter()
        self.debits: dict[str, int] = {}
        self.deposits = self.withdrawals = 0
        self.reserved: dict[str, int] = {}                       # hold_id -> amount held
        self.settled: dict[str, list[tuple[str, int]]] = {}      # hold_id -> [(kind, posted+released)]
        self.held: Counter[str] = Counter()                      # account -> held, from its events
        self.violations: list[str] = []                         # of the holds' rules

    def add(self, ev: dict) -> None:
        kind = ev["kind"]
        if kind in _DECIDING:
            rid = event_request_key(ev)
            self.deciding[(rid, kind)] += 1   # a linked transfer is held, then posted
            if kind == DEPOSITED:
                self.deposits += ev["amount"]
            elif kind == WITHDRAWN:
                self.withdrawals += ev["amount"]
            elif kind in (DEBITED, POSTED):
                self.debits[rid] = ev["amount"]
            if kind == HELD or kind in HOLD_SETTLING:
                self._hold_step(ev)
        elif kind == CREDITED:
            self.returned[event_request_key(ev)] += ev["amount"]
        elif kind == REFUNDED:
            self.returned[event_request_key(ev)] += ev["amount"]
            self.refunds[event_request_key(ev)] += 1

    def _hold_step(self, ev: dict) -> None:
        """A sender's hold event: the hold's life, and the account's held amount."""
        kind, name, amount = ev["kind"], ev["account"], ev["amount"]
        hold_id = request_key(name, ev["hold_id"])
        if kind == HELD:
            self.reserved[hold_id] = amount
            self.held[name] += amount
        else:
            settled = amount + ev.get("released", 0) if kind == POSTED else amount
            self.settled.setdefault(hold_id, []).append((kind, settled))
            self.held[name] -= settled
        if ev.get("held", 0) != self.held[name]:
            self.violations.append(f"account {name} seq {ev['seq']}: held {ev.get('held', 0)}, "
                                   f"its hold events give {self.held[name]}")
        if not 0 <= self.held[name] <= ev["balance"]:
            self.violations.append(f"account {name} seq {ev['seq']}: held {self.held[name]} "
                                   f"outside 0..balance {ev['balance']} (available < 0)")

    def _finish_holds(self, report: VerifyReport) -> None:
        before = len(report.violations)
        report.violations += self.violations
        report.holds["made"] = len(self.reserved)
        for hold_id, steps in self.settled.items():
            if hold_id not in self.reserved:
                report.violations.append(f"hold {hold_id} settled but never made")
                continue
            if len(steps) > 1:
                report.applied_twice += 1
                report.violations.append(f"hold {hold_id} settled {len(steps)} times: "
                                         f"{[k for k, _ in steps]}")
            kind, amount = steps[0]
            report.holds[kind] += 1
            if amount != self.reserved[hold_id]:
                report.violations.append(f"hold {hold_id}: posted + released {amount} != "
                                         f"reserved {self.reserved[hold_id]}")
        for hold_id, amount in self.reserved.items():
            if hold_id not in self.settled:
                report.holds["pending"] += 1
                report.holds["pending_amount"] += amount
        report.holds["violations"] = len(report.violations) - before

    def finish(self, fold: LedgerFold, report: VerifyReport) -> None:
        report.deposits, report.withdrawals = self.deposits, self.withdrawals
        self._finish_holds(report)
        for (rid, _), n in self.deciding.items():
            if n > 1:
                report.applied_twice += 1
                report.violations.append(f"request {rid} applied {n} times")
        for rid, amount in self.returned.items():
            if rid not in self.debits:
                report.violations.append(f"request {rid} credited/refunded without a debit")
            elif amount > self.debits[rid]:
                report.applied_twice += 1
                report.violations.append(f"request {rid}: {amount} credited or refunded "
                                         f"({self.refunds[rid]} refunds) of {self.debits[rid]} debited")
        for rid, amount in self.debits.items():
            if self.returned[rid] < amount:   # a linked transfer's members land one by one
                report.in_flight += amount - self.returned[rid]
                report.in_flight_transfers += 1
        report.violations += fold.violations
        report.events = fold.applied
        report.duplicates_dropped = fold.duplicates
        report.accounts = len(fold.accounts)
        report.total_balance = sum(a.balance for a in fold.accounts.values())


class _Where:
    """A record's position, formatted only if a violation names it."""

    __slots__ = ("msg",)

    def __init__(self, msg) -> None:  # noqa: ANN001 - confluent_kafka.Message
        self.msg = msg

    def __format__(self, spec: str) -> str:
        return f"{self.msg.topic()}[{self.msg.partition()}]@{self.msg.offset()}"


def check_requests(request_ids: list[str], outcomes: dict[str, str], report: VerifyReport,
                   require_final: bool) -> None:
    report.requests = len(request_ids)
    for rid in request_ids:
        status = outcomes.get(rid)
        if status is None:
            report.lost += 1
            report.violations.append(f"request {rid} has no outcome (lost)")
            continue
        report.requests_with_outcome += 1
        if is_final(status):
            report.requests_final += 1
            report.completed += status == COMPLETED
            report.rejected += status == REJECTED_STATUS
        elif require_final:
            report.violations.append(f"request {rid} is still {status}")


def fold_outcomes(values: list[dict]) -> dict[str, str]:
    """request key -> status, the furthest along (model.status_moves)."""
    status: dict[str, str] = {}
    for out in values:
        if not isinstance(out.get("request_id"), str):
            continue
        key = outcome_key(out)
        if status_moves(status.get(key), out):
            status[key] = out["status"]
    return status


def verify(settings: Settings, require_final: bool = False, show_progress: bool = False) -> VerifyReport:
    """Read the logs and check every invariant."""
    report = VerifyReport()
    fold = LedgerFold()
    checks = LedgerChecks()
    progress = progress_bar("verify: ledger.events", enabled=show_progress)
    gc.disable()  # the fold keeps many objects alive; generational GC would rescan them all
    try:
        for msg in read_topic(settings, settings.topic(topics.LEDGER)):
            progress.update()
            ev = fold.apply(msg.value(), _Where(msg))
            if ev is not None:
                checks.add(ev)
    finally:
        gc.enable()
    progress.close()
    checks.finish(fold, report)
    values = []
    for msg in read_topic(settings, settings.topic(topics.OUTCOMES)):
        try:
            value = orjson.loads(msg.value())
            if not isinstance(value, dict):
                raise TypeError("not a JSON object")
            values.append(value)
        except (orjson.JSONDecodeError, TypeError) as exc:
            report.violations.append(f"{_Where(msg)}: malformed outcome ({exc})")
    outcomes = fold_outcomes(values)
    request_ids: list[str] = []
    seen: set[str] = set()
    for msg in read_topic(settings, settings.topic(topics.REQUESTS)):
        try:
            body = parse_json(msg.value())
            rid, scope = body.get("request_id"), deciding_account(body)
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
            continue  # undecodable records are dead-lettered, not lost
        if not is_name(rid):
            continue
        if not (is_name(scope) and msg.key() == scope.encode()):
            scope = ""   # decided in no account's scope (rejected invalid)
        key = request_key(scope, rid)
        if key not in seen:
            seen.add(key)
            request_ids.append(key)
    check_requests(request_ids, outcomes, report, require_final)
    return report


def main(settings: Settings, require_final: bool) -> int:
    report = verify(settings, require_final, show_progress=True)
    print(report.render())
    sys.stdout.flush()
    return 0 if report.ok else 1
