"""The cross-account checks of `bank replay verify`, each one object that owns its state: it
folds applied events, merges another partitions' share (parallel verify), saves what a
checkpoint carries and restores from it, and reports at the end. Adding a piece of state
touches one class (issue 43: it was listed by hand in four places that disagreed).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from kbank.replay.checkpoint import Checkpoint
from kbank.replay.ledger import AccountFold, LedgerFold
from kbank.replay.report import Money, VerifyReport as Report
from kbank.streams.model import (CREDITED, DEBITED, DEPOSITED, EXPIRED, HELD, HOLD_RELEASED,
                                 HOLD_SETTLING, OPENED, POSTED, REFUNDED, WITHDRAWN,
                                 event_request_key, request_key)

# the events that decide a request (one per use of its id on its account)
DECIDING = {OPENED, DEPOSITED, WITHDRAWN, DEBITED, HELD, POSTED, HOLD_RELEASED, EXPIRED}


class AppliedOnce:
    """Each request's deciding event applied at most once per use of its id: an id used again
    after the engine's window is a new request. A checkpoint carries none of it: a use that
    began before the checkpoint counts as new after it (the window is shorter than a
    checkpoint's reach), and a violation fails the verify, which then writes no checkpoint."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.deciding: Counter[tuple[str, str, str]] = Counter()   # (request, kind, account)
        self.life: dict[tuple[str, str, str], int] = {}   # when its id's current use began
        self.twice: list[tuple[str, int]] = []   # (request, applications) of earlier uses

    def add(self, request: str, kind: str, account: str, ts: int) -> None:
        key = (request, kind, account)    # a linked transfer: held, then posted
        began = self.life.get(key)
        if began is None or ts - began >= self.window_ms:
            if self.deciding[key] > 1:
                self.twice.append((request, self.deciding[key]))
            self.life[key] = ts
            self.deciding[key] = 0
        self.deciding[key] += 1

    def merge(self, other: "AppliedOnce") -> None:
        assert not self.life.keys() & other.life.keys(), "an account lives on one partition"
        self.deciding.update(other.deciding)
        self.life.update(other.life)
        self.twice += other.twice

    def save(self) -> dict[str, Any]:
        return {}

    def restore(self, cp: Checkpoint) -> None:
        pass

    def finish(self, report: Report) -> None:
        for rid, n in self.twice + [(rid, n) for (rid, _, _), n in self.deciding.items()]:
            if n > 1:
                report.applied_twice += 1
                report.violations.append(f"request {rid} applied {n} times")


class Deposits:
    """Money brought in and taken out, per currency (the right side of conservation)."""

    def __init__(self) -> None:
        self.money: dict[str, Money] = {}

    def add(self, kind: str, currency: str, amount: int) -> None:
        money = self.money.get(currency)
        if money is None:
            money = self.money[currency] = Money()
        if kind == DEPOSITED:
            money.deposits += amount
        elif kind == WITHDRAWN:
            money.withdrawals += amount

    def merge(self, other: "Deposits") -> None:
        for cur, money in other.money.items():
            total = self.money.setdefault(cur, Money())
            total.deposits += money.deposits
            total.withdrawals += money.withdrawals

    def save(self) -> dict[str, Any]:
        return {"money": {cur: [m.deposits, m.withdrawals] for cur, m in self.money.items()}}

    def restore(self, cp: Checkpoint) -> None:
        for cur, (deposits, withdrawals) in cp.money.items():
            self.money[cur] = Money(deposits=deposits, withdrawals=withdrawals)

    def finish(self, fold: LedgerFold, report: Report) -> None:
        report.currencies = self.money
        for acct in fold.accounts.values():
            self.money.setdefault(acct.currency, Money()).balance += acct.balance


class TransferLegs:
    """Every debit has its credit or refund, never more (per request and currency: a linked
    exchange moves two currencies under one request); what is still owed is in flight. A
    checkpoint carries the transfers still open."""

    def __init__(self) -> None:
        self.returned: Counter[tuple[str, str]] = Counter()   # amount credited + refunded
        self.refunds: Counter[tuple[str, str]] = Counter()
        self.debits: Counter[tuple[str, str]] = Counter()

    def debit(self, request: str, currency: str, amount: int) -> None:
        self.debits[(request, currency)] += amount

    def give_back(self, request: str, currency: str, amount: int, refund: bool) -> None:
        self.returned[(request, currency)] += amount
        if refund:
            self.refunds[(request, currency)] += 1

    def merge(self, other: "TransferLegs") -> None:
        self.returned.update(other.returned)
        self.refunds.update(other.refunds)
        self.debits.update(other.debits)

    def open_items(self) -> dict[str, list[int]]:
        """The transfers a checkpoint must carry: debited but not all credited or refunded."""
        return {f"{rid}\x00{cur}": [debited, self.returned[(rid, cur)], self.refunds[(rid, cur)]]
                for (rid, cur), debited in self.debits.items()
                if self.returned[(rid, cur)] != debited}

    def save(self) -> dict[str, Any]:
        return {"open_transfers": self.open_items()}

    def restore(self, cp: Checkpoint) -> None:
        for key, (debited, returned, refunds) in cp.open_transfers.items():
            rid, _, cur = key.partition("\x00")
            self.debits[(rid, cur)] = debited
            self.returned[(rid, cur)] = returned
            self.refunds[(rid, cur)] = refunds

    def finish(self, money: dict[str, Money], report: Report) -> None:
        for (rid, cur), amount in self.returned.items():
            if (rid, cur) not in self.debits:
                report.violations.append(f"request {rid} credited/refunded {cur} without a debit")
            elif amount > self.debits[(rid, cur)]:
                report.applied_twice += 1
                report.violations.append(f"request {rid}: {amount} credited or refunded "
                                         f"({self.refunds[(rid, cur)]} refunds) of "
                                         f"{self.debits[(rid, cur)]} debited")
        for (rid, cur), amount in self.debits.items():
            if self.returned[(rid, cur)] < amount:   # a linked transfer's members land one by one
                money[cur].in_flight += amount - self.returned[(rid, cur)]
                report.in_flight_transfers += 1


class Holds:
    """Each hold settled at most once, then in full; every account's held amount follows from
    its hold events and stays within its balance. A checkpoint carries the holds still open,
    the accounts' held amounts and the count of holds done."""

    def __init__(self) -> None:
        self.reserved: dict[str, int] = {}                       # hold_id -> amount held
        self.settled: dict[str, list[tuple[str, int]]] = {}      # hold_id -> [(kind, posted+released)]
        self.held: Counter[str] = Counter()                      # account -> held, from its events
        self.violations: list[str] = []                          # of the holds' rules
        self.holds_done: Counter[str] = Counter()   # holds made and settled before a checkpoint

    def step(self, ev: dict, acct: AccountFold) -> None:
        """A sender's hold event: the hold's life, and the account's held amount."""
        kind, name, amount = ev["kind"], ev["account"], ev["amount"]
        hold_id = request_key(name, ev["hold_id"]) + (f"@{ev['link']}" if "link" in ev else "")
        if kind == HELD:
            if hold_id in self.reserved:
                self._retire(hold_id)
            self.reserved[hold_id] = amount
            self.held[name] += amount
        else:
            settled = amount + ev.get("released", 0) if kind == POSTED else amount
            self.settled.setdefault(hold_id, []).append((kind, settled))
            self.held[name] -= settled
        if ev.get("held", 0) != self.held[name]:
            self.violations.append(f"account {name} seq {ev['seq']}: held {ev.get('held', 0)}, "
                                   f"its hold events give {self.held[name]}")
        floor = ev["balance"] + acct.overdraft_limit
        if self.held[name] < 0 or (kind == HELD and self.held[name] > floor):
            self.violations.append(f"account {name} seq {ev['seq']}: held {self.held[name]} "
                                   f"outside 0..balance + overdraft {floor} (available < 0)")

    def _retire(self, hold_id: str) -> None:
        """A hold id made again (its request id re-used after the window): the earlier hold
        must be settled, exactly once and in full; it is counted as done."""
        steps = self.settled.pop(hold_id, [])
        if len(steps) != 1:
            self.violations.append(f"hold {hold_id} made again after {len(steps)} settlements")
        elif steps[0][1] != self.reserved[hold_id]:
            self.violations.append(f"hold {hold_id}: posted + released {steps[0][1]} != "
                                   f"reserved {self.reserved[hold_id]}")
        else:
            self.holds_done["made"] += 1
            self.holds_done[steps[0][0]] += 1

    def merge(self, other: "Holds") -> None:
        assert not self.reserved.keys() & other.reserved.keys(), "a hold lives on one partition"
        assert not self.settled.keys() & other.settled.keys(), "a hold lives on one partition"
        self.reserved.update(other.reserved)
        self.settled.update(other.settled)
        self.held.update(other.held)
        self.violations += other.violations
        self.holds_done.update(other.holds_done)

    def save(self) -> dict[str, Any]:
        settled = {h for h in self.settled if h in self.reserved}
        done = Counter(self.holds_done)
        done["made"] += len(settled)
        for hold_id in settled:
            done[self.settled[hold_id][0][0]] += 1
        return {"open_holds": {h: a for h, a in self.reserved.items() if h not in self.settled},
                "held": {n: v for n, v in self.held.items() if v}, "holds_done": dict(done)}

    def restore(self, cp: Checkpoint) -> None:
        self.reserved.update(cp.open_holds)
        self.held.update(cp.held)
        self.holds_done.update(cp.holds_done)

    def finish(self, report: Report) -> None:
        before = len(report.violations)
        report.violations += self.violations
        report.holds.update(self.holds_done)
        report.holds["made"] += len(self.reserved)
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


class LedgerChecks:
    """The cross-account checks, accumulated one applied (de-duplicated) event at a time."""

    def __init__(self, window_ms: int) -> None:
        self.applied = AppliedOnce(window_ms)   # window_ms: the engine's id window
        self.deposits = Deposits()
        self.transfers = TransferLegs()
        self.holds = Holds()

    def _parts(self) -> tuple[AppliedOnce, Deposits, TransferLegs, Holds]:
        return self.applied, self.deposits, self.transfers, self.holds

    def add(self, ev: dict, acct: AccountFold) -> None:
        """One applied event of `acct` (its currency and rules as of the event)."""
        kind = ev["kind"]
        if kind in DECIDING:
            rid = event_request_key(ev)
            self.applied.add(rid, kind, ev["account"], ev["ts"])
            self.deposits.add(kind, acct.currency, ev["amount"])
            if kind in (DEBITED, POSTED):
                self.transfers.debit(rid, acct.currency, ev["amount"])
            if kind == HELD or kind in HOLD_SETTLING:
                self.holds.step(ev, acct)
        elif kind in (CREDITED, REFUNDED):
            self.transfers.give_back(event_request_key(ev), acct.currency, ev["amount"],
                                     refund=kind == REFUNDED)

    def merge(self, other: "LedgerChecks") -> None:
        """Another partitions' checks into these, each check merging its own state."""
        for mine, theirs in zip(self._parts(), other._parts()):
            mine.merge(theirs)

    def save(self) -> dict[str, Any]:
        """What a checkpoint carries of the checks (Checkpoint's fields by name)."""
        saved: dict[str, Any] = {}
        for part in self._parts():
            fields = part.save()
            assert not saved.keys() & fields.keys(), "each field has one owner"
            saved.update(fields)
        return saved

    @classmethod
    def restored(cls, cp: Checkpoint, window_ms: int) -> "LedgerChecks":
        checks = cls(window_ms)
        for part in checks._parts():
            part.restore(cp)
        return checks

    def finish(self, fold: LedgerFold, report: Report) -> None:
        """Each check's findings, and the fold's, into `report`."""
        self.deposits.finish(fold, report)
        self.holds.finish(report)
        self.applied.finish(report)
        self.transfers.finish(self.deposits.money, report)
        money = self.deposits.money.values()
        report.violations += fold.violations
        report.events = fold.applied
        report.duplicates_dropped = fold.duplicates
        report.accounts = len(fold.accounts)
        report.total_balance = sum(a.balance for a in fold.accounts.values())
        report.deposits = sum(m.deposits for m in money)
        report.withdrawals = sum(m.withdrawals for m in money)
        report.in_flight = sum(m.in_flight for m in money)
        report.heads = fold.heads
        report.read_from = dict(fold.starts)
        report.read_to = {p: end for p, end in fold.ends.items() if p in fold.starts}
        report.first_ts, report.last_ts = fold.first_ts, fold.last_ts
