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
MAX_NAME = 128          # characters of an account name, request id, hold id or requester


def is_name(value: Any) -> bool:
    """An account name, request id or hold id: a string of 1 to MAX_NAME characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME

# ledger event kinds; `refunded` returns a debited amount whose receiver did not exist
OPENED, DEPOSITED, WITHDRAWN, DEBITED, CREDITED, REFUNDED, REJECTED = (
    "opened", "deposited", "withdrawn", "debited", "credited", "refunded", "rejected")
# two-phase transfers: on the sender, `held` reserves, then exactly one of `posted` (moves
# part or all of it, releasing the rest), `hold_released` (voided) or `expired`; on the
# receiver, `incoming_held` and `incoming_released` show money on its way (a post credits it)
HELD, POSTED, HOLD_RELEASED, EXPIRED, INCOMING_HELD, INCOMING_RELEASED = (
    "held", "posted", "hold_released", "expired", "incoming_held", "incoming_released")
HOLD_SETTLING = (POSTED, HOLD_RELEASED, EXPIRED)

# how each kind of event moves the balance
BALANCE_SIGN = {OPENED: 0, DEPOSITED: 1, WITHDRAWN: -1, DEBITED: -1, CREDITED: 1,
                REFUNDED: 1, REJECTED: 0, HELD: 0, POSTED: -1, HOLD_RELEASED: 0, EXPIRED: 0,
                INCOMING_HELD: 0, INCOMING_RELEASED: 0}

# outcome statuses, in the order a request moves through them. A hold's own request_id
# goes accepted -> held -> posted | voided | expired (or rejected).
ACCEPTED, DEBITED_STATUS, COMPLETED, REJECTED_STATUS = "accepted", "debited", "completed", "rejected"
HELD_STATUS, POSTED_STATUS, VOIDED_STATUS, EXPIRED_STATUS = "held", "posted", "voided", "expired"
STATUS_RANK = {ACCEPTED: 0, DEBITED_STATUS: 1, HELD_STATUS: 1, COMPLETED: 2, REJECTED_STATUS: 2,
               POSTED_STATUS: 2, VOIDED_STATUS: 2, EXPIRED_STATUS: 2}
FINAL_RANK = 2
# where a client's `?wait=completed` stops: the request's own decision is known
DECIDED_STATUSES = frozenset({COMPLETED, REJECTED_STATUS, HELD_STATUS, POSTED_STATUS,
                              VOIDED_STATUS, EXPIRED_STATUS})


def status_moves(current: str | None, outcome: dict[str, Any]) -> bool:
    """The one rule of every status fold (views, verify, recompute, client tails): a status
    only moves forward, and an answer to a re-sent request id (`retry`: the original
    decision restated, or an idempotency_conflict) never moves it."""
    status = outcome.get("status")
    if status not in STATUS_RANK or outcome.get("retry"):
        return False
    return current is None or STATUS_RANK[status] > STATUS_RANK[current]


def is_final(status: str | None) -> bool:
    return status is not None and STATUS_RANK.get(status) == FINAL_RANK

# rejection reasons
INSUFFICIENT_FUNDS = "insufficient_funds"
LIMIT_EXCEEDED = "limit_exceeded"
UNKNOWN_ACCOUNT = "unknown_account"
INVALID = "invalid"
DUPLICATE = "duplicate"
ACCOUNT_EXISTS = "account_exists"
UNKNOWN_HOLD = "unknown_hold"
HOLD_CLOSED = "hold_closed"       # posted, voided or expired already
HOLD_EXCEEDED = "hold_exceeded"   # a post of more than was held
IDEMPOTENCY_CONFLICT = "idempotency_conflict"   # a request id reused with another body
OVERFLOW = "overflow"             # the result would leave the signed 64-bit range
# reasons that answer a re-sent request id: they never override the first decision's status
RESENT_REASONS = frozenset({DUPLICATE, IDEMPOTENCY_CONFLICT})
REASONS = frozenset({INSUFFICIENT_FUNDS, LIMIT_EXCEEDED, UNKNOWN_ACCOUNT, INVALID, DUPLICATE,
                     ACCOUNT_EXISTS, UNKNOWN_HOLD, HOLD_CLOSED, HOLD_EXCEEDED,
                     IDEMPOTENCY_CONFLICT, OVERFLOW})

# messages on transfers.credits
CREDIT, REFUND, REJECT_NOTICE = "credit", "refund", "reject_notice"
HOLD_NOTICE, RELEASE_NOTICE = "hold_notice", "release_notice"   # the receiver's pending-in
LINK_CHECK, LINK_ACK = "link_check", "link_ack"   # a linked transfer asks each receiver first


@dataclass(slots=True)
class Account:
    """An account's authoritative state, owned by the engine worker of its partition."""

    balance: int = 0
    seq: int = 0                  # seq of the account's latest ledger event
    daily_limit: int | None = None  # most outflow (withdrawals + debits) per UTC day
    day: int = 0                  # UTC day number that `spent` counts
    spent: int = 0                # outflow on `day` (holds count when made)
    held: int = 0                 # reserved by this account's pending holds (pending out)
    pending_in: int = 0           # held for this account by other accounts' pending holds

    @property
    def available(self) -> int:
        return self.balance - self.held

    def to_json(self) -> list[Any]:
        row = [self.balance, self.seq, self.daily_limit, self.day, self.spent]
        return row + [self.held, self.pending_in] if self.held or self.pending_in else row

    @classmethod
    def from_json(cls, raw: list[Any]) -> "Account":
        return cls(*raw)

    def copy(self) -> "Account":
        return Account(self.balance, self.seq, self.daily_limit, self.day, self.spent,
                       self.held, self.pending_in)


PENDING, HOLD_POSTED, HOLD_VOIDED, HOLD_EXPIRED = "pending", "posted", "voided", "expired"


@dataclass(slots=True)
class Hold:
    """A pending (or settled) hold, kept by the engine on its sender's partition.

    Its id is the request_id of the `hold` request that made it. A linked
    transfer is kept as a hold too, with `members` ([receiver, amount], ...) in
    place of the receiver and no deadline, until every receiver has confirmed.
    """

    sender: str
    receiver: str
    amount: int
    deadline: int                 # ms since the epoch, by the log's clock (0: never expires)
    day: int                      # UTC day the hold counted toward the daily limit
    state: str = PENDING
    members: list[list[Any]] | None = None   # a linked transfer's [receiver, amount] pairs
    confirmed: int = 0                       # receivers that confirmed so far

    def to_json(self) -> list[Any]:
        row = [self.sender, self.receiver, self.amount, self.deadline, self.day, self.state]
        return row + [self.members, self.confirmed] if self.members is not None else row

    @classmethod
    def from_json(cls, raw: list[Any]) -> "Hold":
        return cls(*raw)


@dataclass(frozen=True, slots=True)
class Position:
    """Where an input record sits in the log: the `source` of the events it caused."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def request_key(account: str, request_id: str) -> str:
    """The idempotency key of a request: its id in the scope of its deciding account.

    Request ids are scoped per deciding account (the sender of a transfer, hold or linked
    transfer; the account of the others), as Stripe scopes idempotency keys to an account:
    alice's `t1` and bob's `t1` are two requests. Every applied-id marker, every message
    between partitions, the outcomes' record key and the status view use this key. The
    account's length comes first, so no two (account, id) pairs share a key whatever
    characters they hold."""
    return f"{len(account)}:{account}/{request_id}"


def split_request_key(key: str) -> tuple[str, str]:
    """(account, request_id) of a request_key."""
    length, rest = key.split(":", 1)
    n = int(length)
    return rest[:n], rest[n + 1:]


# events an account gets about a request decided on another account's partition: the
# request's scope is the event's counterparty (the sender)
RECEIVED_KINDS = frozenset({CREDITED, INCOMING_HELD, INCOMING_RELEASED})


def event_request_key(event: dict[str, Any], credits_topic_suffix: str = "transfers.credits") -> str:
    """The request_key of the request a ledger event belongs to."""
    kind = event["kind"]
    received = kind in RECEIVED_KINDS or (
        kind == REJECTED and event["source"]["topic"].endswith(credits_topic_suffix))
    return request_key(event["counterparty"] if received else event["account"],
                       event["request_id"])


def outcome_key(out: dict[str, Any]) -> str:
    """The request_key of an outcome (its record key on transfers.outcomes)."""
    return request_key(out.get("account") or "", out["request_id"])


def check_account(acct: "Account") -> None:
    """The invariants of an account state, asserted where the engine makes it (what
    `bank replay verify` checks afterwards)."""
    assert 0 <= acct.balance <= MAX_AMOUNT, acct
    assert 0 <= acct.held <= acct.balance, acct
    assert 0 <= acct.pending_in <= MAX_AMOUNT, acct
    assert 0 <= acct.spent <= MAX_AMOUNT and acct.seq >= 0, acct


def ledger_event(account: str, seq: int, request_id: str, kind: str, amount: int,
                 counterparty: str | None, balance: int, ts: int, source: Position,
                 reason: str | None = None, daily_limit: int | None = None,
                 held: int = 0, pending_in: int = 0, hold_id: str | None = None,
                 released: int | None = None) -> dict[str, Any]:
    """A ledger.events record, with a fixed key order so re-encodings are identical.

    An `opened` event also carries the account's daily_limit, so that the
    limits view can be derived from the ledger alone. Like `balance`, `held`
    and `pending_in` are the account's figures after the event (left out while
    both are 0); events of a hold name it (`hold_id`), and a `posted` event
    says how much of the hold it `released` back to the sender.
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
    if held or pending_in:
        event["held"], event["pending_in"] = held, pending_in
    if hold_id is not None:
        event["hold_id"] = hold_id
    if released is not None:
        event["released"] = released
    return event


def outcome(account: str, request_id: str, status: str, ts: int, reason: str | None = None,
            detail: str | None = None, hold: dict[str, Any] | None = None,
            retry: bool = False) -> dict[str, Any]:
    """A transfers.outcomes record (keyed by request_key(account, request_id)); a hold's
    outcomes carry what GET /holds/{id} shows; `retry` marks the answer to a re-sent id."""
    out: dict[str, Any] = {"request_id": request_id, "account": account, "status": status}
    if reason is not None:
        out["reason"] = reason
    if detail is not None:
        out["detail"] = detail
    if hold is not None:
        out["hold"] = hold
    if retry:
        out["retry"] = True
    out["ts"] = ts
    return out


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)

