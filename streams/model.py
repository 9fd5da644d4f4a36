"""The records of the system and their exact JSON encodings.

Everything the engine writes is a deterministic function of its input records,
so a batch that is processed again after an abort writes byte-identical
records; consumers rely on that to recognise duplicates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_AMOUNT = 2**63 - 1  # amounts and balances are signed 64-bit minor units
DAY_MS = 86_400_000

# ledger event kinds; `refunded` returns a debited amount whose receiver did not exist
OPENED, DEPOSITED, WITHDRAWN, DEBITED, CREDITED, REFUNDED, REJECTED = (
    "opened", "deposited", "withdrawn", "debited", "credited", "refunded", "rejected")

# how each kind of event moves the balance
BALANCE_SIGN = {OPENED: 0, DEPOSITED: 1, WITHDRAWN: -1, DEBITED: -1, CREDITED: 1,
                REFUNDED: 1, REJECTED: 0}

# outcome statuses, in the order a transfer moves through them
ACCEPTED, DEBITED_STATUS, COMPLETED, REJECTED_STATUS = "accepted", "debited", "completed", "rejected"
STATUS_RANK = {ACCEPTED: 0, DEBITED_STATUS: 1, COMPLETED: 2, REJECTED_STATUS: 2}

# rejection reasons
INSUFFICIENT_FUNDS = "insufficient_funds"
LIMIT_EXCEEDED = "limit_exceeded"
UNKNOWN_ACCOUNT = "unknown_account"
INVALID = "invalid"
DUPLICATE = "duplicate"
ACCOUNT_EXISTS = "account_exists"

# messages on transfers.credits
CREDIT, REFUND, REJECT_NOTICE = "credit", "refund", "reject_notice"


@dataclass(slots=True)
class Account:
    """An account's authoritative state, owned by the engine worker of its partition."""

    balance: int = 0
    seq: int = 0                  # seq of the account's latest ledger event
    daily_limit: int | None = None  # most outflow (withdrawals + debits) per UTC day
    day: int = 0                  # UTC day number that `spent` counts
    spent: int = 0                # outflow on `day`

    def to_json(self) -> list[Any]:
        return [self.balance, self.seq, self.daily_limit, self.day, self.spent]

    @classmethod
    def from_json(cls, raw: list[Any]) -> "Account":
        return cls(*raw)

    def copy(self) -> "Account":
        return Account(self.balance, self.seq, self.daily_limit, self.day, self.spent)


@dataclass(frozen=True, slots=True)
class Position:
    """Where an input record sits in the log: the `source` of the events it caused."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def ledger_event(account: str, seq: int, request_id: str, kind: str, amount: int,
                 counterparty: str | None, balance: int, ts: int, source: Position,
                 reason: str | None = None, daily_limit: int | None = None) -> dict[str, Any]:
    """A ledger.events record, with a fixed key order so re-encodings are identical.

    An `opened` event also carries the account's daily_limit, so that the
    limits view can be derived from the ledger alone.
    """
    event: dict[str, Any] = {
        "account": account, "seq": seq, "request_id": request_id, "kind": kind,
        "amount": amount, "counterparty": counterparty, "balance": balance, "ts": ts,
        "source": source.to_json(),
    }
    if reason is not None:
        event["reason"] = reason
    if kind == OPENED:
        event["daily_limit"] = daily_limit
    return event


def outcome(request_id: str, status: str, ts: int, reason: str | None = None,
            detail: str | None = None) -> dict[str, Any]:
    """A transfers.outcomes record."""
    out: dict[str, Any] = {"request_id": request_id, "status": status}
    if reason is not None:
        out["reason"] = reason
    if detail is not None:
        out["detail"] = detail
    out["ts"] = ts
    return out


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(raw: bytes) -> Any:
    return orjson.loads(raw)
