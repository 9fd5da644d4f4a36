"""The views' decision logic: how one ledger event changes the derived state.

Pure functions of (current view state, event, ledger offset): no Kafka, no
store. The Faust views app (kbank.streams.views.app) and `bank replay views` both
use them, which is what makes a rebuilt view comparable with the live one.

Idempotency. The views consume at-least-once, and the ledger itself may hold
identical copies of an event (aborted transactions the broker shows). So:
  - an account view applies an event only if its seq is the next one; it
    remembers the ledger offset of the event it applied last, which tells a
    re-delivery of *that record* (whose side effects may be incomplete after a
    crash, so they are redone) from a copy at another offset (ignored);
  - history entries are keyed by (account, seq): writing one again is a no-op;
  - per-partition totals remember the last ledger offset they counted and
    count an applied event only if its offset is beyond it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from kbank.streams.model import (BALANCE_SIGN, CREDITED, DAY_MS, DEBITED, DEPOSITED, EXPIRED, HELD,
                           HOLD_RELEASED, MAX_AMOUNT, OPENED, POSTED, REFUNDED, REJECTED,
                           REJECTED_STATUS, STATUS_RANK, WITHDRAWN, is_name, status_moves)

_OUTFLOW = {WITHDRAWN, DEBITED, HELD}   # what counts toward the daily limit when it happens


class Applied(Enum):
    NEW = "new"            # the next event of its account: apply everything
    REDELIVERED = "redelivered"  # the very record applied last: redo the idempotent side effects
    DUPLICATE = "duplicate"  # a copy of an event already applied: ignore
    GAP = "gap"            # a seq beyond the next one: never produced by the engine; ignore, count


@dataclass(slots=True)
class AccountView:
    """What GET /accounts/{id} serves: balance, sequence and limits."""

    balance: int = 0
    seq: int = 0
    offset: int = -1                 # ledger offset of the event with this seq
    daily_limit: int | None = None
    day: int = 0                     # UTC day number that `outflow` counts
    outflow: int = 0                 # withdrawals + debits - refunds on `day`
    opened_ts: int = 0
    updated_ts: int = 0
    held: int = 0                    # reserved by its pending holds (pending out)
    pending_in: int = 0              # held for it by other accounts' pending holds

    def to_bytes(self) -> bytes:
        return orjson.dumps([self.balance, self.seq, self.offset, self.daily_limit, self.day,
                             self.outflow, self.opened_ts, self.updated_ts, self.held,
                             self.pending_in])

    @classmethod
    def from_bytes(cls, raw: bytes) -> "AccountView":
        return cls(*orjson.loads(raw))

    def public(self, account: str) -> dict[str, Any]:
        """The JSON body of GET /accounts/{id} (no store internals)."""
        limit = self.daily_limit
        return {
            "account": account, "balance": self.balance, "seq": self.seq,
            "available": self.balance - self.held, "pending_out": self.held,
            "pending_in": self.pending_in,
            "limits": {"daily_limit": limit, "day": self.day, "outflow": self.outflow,
                       "remaining": None if limit is None else max(0, limit - self.outflow)},
            "opened_ts": self.opened_ts, "updated_ts": self.updated_ts,
        }


def classify(view: AccountView | None, seq: int, offset: int) -> Applied:
    current = view.seq if view is not None else 0
    if seq == current + 1:
        return Applied.NEW
    if seq > current + 1:
        return Applied.GAP
    if view is not None and seq == view.seq and offset == view.offset:
        return Applied.REDELIVERED
    return Applied.DUPLICATE


def apply_to_account(view: AccountView | None, event: dict[str, Any], offset: int) -> AccountView:
    """The account view after a NEW event (the given view is updated in place)."""
    new = AccountView() if view is None else view
    kind, amount, ts = event["kind"], event["amount"], event["ts"]
    new.balance, new.seq, new.offset, new.updated_ts = event["balance"], event["seq"], offset, ts
    new.held, new.pending_in = event.get("held", 0), event.get("pending_in", 0)
    if kind == OPENED:
        new.daily_limit, new.opened_ts, new.day = event.get("daily_limit"), ts, ts // DAY_MS
    elif kind in _OUTFLOW:
        day = ts // DAY_MS
        if day != new.day:
            new.day, new.outflow = day, 0
        new.outflow = min(MAX_AMOUNT, new.outflow + amount)
    elif kind == REFUNDED:
        day = ts // DAY_MS
        if day != new.day:
            new.day, new.outflow = day, 0
        new.outflow = max(0, new.outflow - amount)
    elif kind in (POSTED, HOLD_RELEASED, EXPIRED) and ts // DAY_MS == new.day:
        released = event.get("released", 0) if kind == POSTED else amount
        new.outflow = max(0, new.outflow - released)
    return new


def history_key(account: str, seq: int) -> bytes:
    """Keys sort by account, then seq: a page of history is one key range."""
    return f"{account}\x00{seq:012d}".encode()


@dataclass(slots=True)
class PartitionTotals:
    """Aggregates of one ledger partition; the global figures are their sum."""

    offset: int = -1        # last ledger offset counted
    accounts: int = 0
    balance: int = 0
    deposits: int = 0
    withdrawals: int = 0
    debited: int = 0        # money that left a sender in a transfer
    returned: int = 0       # money that arrived: credited to the receiver or refunded
    completed: int = 0      # transfers credited
    rejected: int = 0       # transfers rejected by the sender's side or refunded
    events: int = 0
    held: int = 0           # reserved by pending holds

    FIELDS = ("offset", "accounts", "balance", "deposits", "withdrawals", "debited", "returned",
              "completed", "rejected", "events", "held")

    def to_bytes(self) -> bytes:
        return orjson.dumps([getattr(self, f) for f in self.FIELDS])

    @classmethod
    def from_bytes(cls, raw: bytes) -> "PartitionTotals":
        return cls(*orjson.loads(raw))

    def count(self, event: dict[str, Any], offset: int, requests_topic: str) -> bool:
        """Count an applied event once; False if this offset was counted already."""
        if offset <= self.offset:
            return False
        self.offset = offset
        kind, amount = event["kind"], event["amount"]
        self.events += 1
        self.balance += BALANCE_SIGN[kind] * amount
        if kind == OPENED:
            self.accounts += 1
        elif kind == DEPOSITED:
            self.deposits += amount
        elif kind == WITHDRAWN:
            self.withdrawals += amount
        elif kind in (DEBITED, POSTED):
            self.debited += amount
        elif kind == CREDITED:
            self.returned += amount
            self.completed += 1
        elif kind == REFUNDED:
            self.returned += amount
            self.rejected += 1
        elif kind == REJECTED and event.get("counterparty") is not None \
                and event["source"]["topic"] == requests_topic:
            self.rejected += 1  # the sender's side of a rejected transfer
        if kind == HELD:
            self.held += amount
        elif kind == POSTED:
            self.held -= amount + event.get("released", 0)
        elif kind in (HOLD_RELEASED, EXPIRED):
            self.held -= amount
        return True


def global_figures(parts: list[PartitionTotals]) -> dict[str, int]:
    """GET /stats: the sum over every partition."""
    debited = sum(p.debited for p in parts)
    returned = sum(p.returned for p in parts)
    return {
        "accounts": sum(p.accounts for p in parts),
        "total_balance": sum(p.balance for p in parts),
        "money_in_flight": debited - returned,
        "deposits": sum(p.deposits for p in parts),
        "withdrawals": sum(p.withdrawals for p in parts),
        "transfers_completed": sum(p.completed for p in parts),
        "transfers_rejected": sum(p.rejected for p in parts),
        "ledger_events": sum(p.events for p in parts),
        "money_held": sum(p.held for p in parts),
        "partitions": len(parts),
    }


def merge_status(current: dict[str, Any] | None, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """The status of a request after an outcome; None if it changes nothing.

    Statuses only move forward (accepted -> debited -> completed | rejected), so
    re-deliveries and reordering cannot move one back, and the answer to a re-sent
    request id never overrides the first decision (model.status_moves).
    """
    if not status_moves(current["status"] if current is not None else None, outcome):
        return None
    status = outcome["status"]
    new = {"request_id": outcome["request_id"], "account": outcome.get("account"),
           "status": status, "ts": outcome.get("ts")}
    if status == REJECTED_STATUS:
        new["reason"] = outcome.get("reason")
        if outcome.get("detail") is not None:
            new["detail"] = outcome["detail"]
    hold = {**(current or {}).get("hold", {}), **(outcome.get("hold") or {})}
    if hold:
        new["hold"] = hold
    requested_by = (current or {}).get("requested_by") or outcome.get("requested_by")
    if requested_by is not None:
        new["requested_by"] = requested_by    # who asked: the first outcome that says
    return new


def parse_outcome(raw: bytes | None) -> dict[str, Any] | None:
    """A transfers.outcomes record whose fields the status view relies on, or None."""
    try:
        out = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(out, dict) or not _name(out.get("request_id")) \
            or not (out.get("account") is None or _name(out.get("account"))) \
            or out.get("status") not in STATUS_RANK \
            or not (out.get("ts") is None or _int_in(out.get("ts"), 0, MAX_AMOUNT)) \
            or not isinstance(out.get("hold", {}), dict) \
            or not (out.get("requested_by") is None or _name(out["requested_by"])):
        return None
    return out


def _name(value: Any) -> bool:
    return is_name(value)


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


_EVENT_INTS = ("seq", "amount", "balance", "ts")


def parse_ledger_event(raw: bytes | None) -> dict[str, Any] | None:
    """A ledger.events record with every field the fold reads in range, or None: the
    views count and skip anything else rather than fold it (or fail on it)."""
    try:
        ev = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(ev, dict) or not _name(ev.get("account")) \
            or not _name(ev.get("request_id")) or ev.get("kind") not in BALANCE_SIGN \
            or not all(_int_in(ev.get(f), 0, MAX_AMOUNT) for f in _EVENT_INTS) or ev["seq"] < 1 \
            or not (ev.get("counterparty") is None or _name(ev["counterparty"])) \
            or not all(_int_in(ev.get(f, 0), 0, MAX_AMOUNT) for f in ("held", "pending_in",
                                                                       "released")) \
            or not (ev.get("daily_limit") is None or _int_in(ev["daily_limit"], 0, MAX_AMOUNT)):
        return None
    source = ev.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("topic"), str) \
            or not _int_in(source.get("partition"), -1, 2**31) \
            or not _int_in(source.get("offset"), -1, 2**63 - 1):
        return None
    return ev


def hold_view(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """GET /holds/{id}: a hold's state, from the status of the request that made it."""
    if status is None or "hold" not in status:
        return None
    return {"hold_id": status["request_id"], "state": status["status"], **status["hold"],
            "ts": status["ts"]}
