"""The transfer rules: pure functions of (account state, input) -> Decision.

No I/O and no clocks: time comes from the input record's timestamp, so the
same inputs always give the same decisions (and byte-identical outputs). The
engine, the replay tool's recompute and the property tests all call these.

Semantics, per account (the one owned by the partition the record is on):
  open_account  creates the account (balance 0, optional daily_limit).
  deposit       adds amount.                      -> deposited, outcome completed
  withdraw      removes amount if funds and limit -> withdrawn, outcome completed
  transfer      debits the sender if funds and limit -> debited, outcome debited,
                and queues a credit for the receiver; the receiver's partition
                then credits it (-> credited, outcome completed) or, if the
                receiver does not exist, refunds the sender (-> refunded,
                outcome rejected unknown_account).
A rejection changes no balance; it is a `rejected` event on every involved
account that exists. Balances never go below 0. A request_id already decided
on this partition is a duplicate: nothing changes.

Rules that operators may change (Rules, from settings) are parameters, so
`bank replay recompute` can show what a change would have decided.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.model import (
    ACCOUNT_EXISTS, CREDIT, CREDITED, COMPLETED, DAY_MS, DEBITED, DEBITED_STATUS, DEPOSITED,
    DUPLICATE, INSUFFICIENT_FUNDS, INVALID, LIMIT_EXCEEDED, MAX_AMOUNT, OPENED, REFUND,
    REFUNDED, REJECT_NOTICE, REJECTED, REJECTED_STATUS, UNKNOWN_ACCOUNT, WITHDRAWN, Account,
    Position, ledger_event, outcome,
)

MAX_NAME = 128
_FIELDS = {
    "open_account": {"type", "request_id", "account", "daily_limit"},
    "deposit": {"type", "request_id", "account", "amount"},
    "withdraw": {"type", "request_id", "account", "amount"},
    "transfer": {"type", "request_id", "from", "to", "amount"},
}
_REQUIRED = {
    "open_account": {"type", "request_id", "account"},
    "deposit": {"type", "request_id", "account", "amount"},
    "withdraw": {"type", "request_id", "account", "amount"},
    "transfer": {"type", "request_id", "from", "to", "amount"},
}


@dataclass(frozen=True, slots=True)
class Rules:
    """Decision rules an operator can change (BANK_MAX_TRANSFER_AMOUNT)."""

    max_transfer_amount: int = 0   # 0: no cap; above it a transfer is rejected limit_exceeded

    @classmethod
    def from_settings(cls, settings: Any) -> "Rules":
        return cls(max_transfer_amount=settings.max_transfer_amount)


@dataclass(slots=True)
class Request:
    """A request that parsed; `problem` is set when it must be rejected as invalid."""

    body: dict[str, Any]
    request_id: str
    account: str | None          # the deciding account (sender of a transfer)
    problem: str | None = None


class Undecodable(ValueError):
    """A record with no usable request_id: it goes to the dead-letter topic."""


@dataclass(slots=True)
class Decision:
    """What one input does: at most one account changes and gets one event."""

    account: str | None = None
    state: Account | None = None          # the account's new state, None if unchanged
    event: dict[str, Any] | None = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, credit msg)
    marker: str | None = None             # id to remember as applied


def _valid_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _amount_problem(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return "amount must be an integer number of minor units"
    if value <= 0:
        return "amount must be positive"
    if value > MAX_AMOUNT:
        return "amount exceeds the 64-bit range"
    return None


def parse_json(raw: bytes) -> Any:
    """Decode JSON, accepting integers beyond 64 bits so they can be rejected with a reason."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits; the stdlib parses them so the
        # request can be rejected with a reason instead of dead-lettered.
        try:
            body = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        try:
            orjson.dumps(body)   # the stdlib accepts lone UTF-16 surrogates ("\ud800"): refuse them
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"not valid Unicode: {exc}") from None
        return body


def parse_request(key: bytes | None, value: bytes | None) -> Request:
    """Validate a transfers.requests record. Raises Undecodable if no request_id."""
    if value is None:
        raise Undecodable("empty record")
    try:
        body = parse_json(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Undecodable(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Undecodable("not a JSON object")
    request_id = body.get("request_id")
    if not _valid_name(request_id):
        raise Undecodable("request_id must be a string of 1 to 128 characters")
    kind = body.get("type")
    account = body.get("from") if kind == "transfer" else body.get("account")
    account = account if _valid_name(account) else None
    req = Request(body, request_id, account)
    if kind not in _FIELDS:
        req.problem = f"unknown type {kind!r}"
    elif extra := set(body) - _FIELDS[kind]:
        req.problem = f"unknown fields: {sorted(extra)}"
    elif missing := _REQUIRED[kind] - set(body):
        req.problem = f"missing fields: {sorted(missing)}"
    elif account is None:
        req.problem = "account names must be strings of 1 to 128 characters"
    elif kind == "transfer" and not _valid_name(body["to"]):
        req.problem = "account names must be strings of 1 to 128 characters"
    elif kind == "transfer" and body["from"] == body["to"]:
        req.problem = "from and to are the same account"
    elif kind == "open_account":
        limit = body.get("daily_limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or not 0 <= limit <= MAX_AMOUNT):
            req.problem = "daily_limit must be null or an integer from 0 to 2^63-1"
    else:
        req.problem = _amount_problem(body["amount"])
    if req.problem is None and (key is None or key != account.encode()):
        req.problem = "record key must equal the deciding account"
        req.account = None  # its state lives on another partition: touch nothing here
    return req


def _spend(acct: Account, amount: int, ts: int) -> str | None:
    """Check funds and the daily limit for an outflow; apply it if allowed."""
    if acct.balance < amount:
        return INSUFFICIENT_FUNDS
    day = ts // DAY_MS
    spent = acct.spent if acct.day == day else 0
    if acct.daily_limit is not None and spent + amount > acct.daily_limit:
        return LIMIT_EXCEEDED
    acct.balance -= amount
    acct.day, acct.spent = day, spent + amount
    return None


def _event(d: Decision, name: str, acct: Account, request_id: str, kind: str, amount: int,
           counterparty: str | None, ts: int, pos: Position, reason: str | None = None) -> None:
    """Advance the account's sequence and attach its ledger event to the decision."""
    acct.seq += 1
    d.account, d.state = name, acct
    d.event = ledger_event(name, acct.seq, request_id, kind, amount, counterparty,
                           acct.balance, ts, pos, reason, acct.daily_limit)


def _reject(d: Decision, req: Request, acct: Account | None, reason: str, ts: int,
            pos: Position, detail: str | None = None) -> Decision:
    body = req.body
    amount = body.get("amount")
    amount = amount if isinstance(amount, int) and not isinstance(amount, bool) \
        and 0 <= amount <= MAX_AMOUNT else 0
    to = body.get("to") if body.get("type") == "transfer" else None
    to = to if _valid_name(to) and to != req.account else None
    if acct is not None and req.account is not None:
        _event(d, req.account, acct.copy(), req.request_id, REJECTED, amount, to, ts, pos, reason)
    if to is not None and req.account is not None:
        d.messages.append((to, {"kind": REJECT_NOTICE, "request_id": req.request_id,
                                "account": to, "counterparty": req.account,
                                "amount": amount, "reason": reason}))
    d.outcomes.append(outcome(req.request_id, REJECTED_STATUS, ts, reason, detail))
    return d


def decide_request(req: Request, acct: Account | None, already_applied: bool,
                   ts: int, pos: Position, rules: Rules = Rules()) -> Decision:
    """Decide a client request against the deciding account's state."""
    d = Decision()
    if already_applied:
        d.outcomes.append(outcome(req.request_id, REJECTED_STATUS, ts, DUPLICATE))
        return d
    d.marker = "r:" + req.request_id
    if req.problem is not None:
        return _reject(d, req, acct, INVALID, ts, pos, req.problem)
    body, name = req.body, req.account
    assert name is not None
    kind = body["type"]
    if kind == "open_account":
        if acct is not None:
            return _reject(d, req, acct, ACCOUNT_EXISTS, ts, pos)
        new = Account(daily_limit=body.get("daily_limit"), day=ts // DAY_MS)
        _event(d, name, new, req.request_id, OPENED, 0, None, ts, pos)
        d.outcomes.append(outcome(req.request_id, COMPLETED, ts))
        return d
    if acct is None:
        return _reject(d, req, None, UNKNOWN_ACCOUNT, ts, pos)
    amount: int = body["amount"]
    new = acct.copy()
    if kind == "deposit":
        if new.balance + amount > MAX_AMOUNT:
            return _reject(d, req, acct, INVALID, ts, pos, "balance would exceed the 64-bit range")
        new.balance += amount
        _event(d, name, new, req.request_id, DEPOSITED, amount, None, ts, pos)
        d.outcomes.append(outcome(req.request_id, COMPLETED, ts))
        return d
    if kind == "transfer" and rules.max_transfer_amount and amount > rules.max_transfer_amount:
        return _reject(d, req, acct, LIMIT_EXCEEDED, ts, pos,
                       f"above the single-transfer cap of {rules.max_transfer_amount}")
    if (reason := _spend(new, amount, ts)) is not None:
        return _reject(d, req, acct, reason, ts, pos)
    if kind == "withdraw":
        _event(d, name, new, req.request_id, WITHDRAWN, amount, None, ts, pos)
        d.outcomes.append(outcome(req.request_id, COMPLETED, ts))
        return d
    to = body["to"]
    _event(d, name, new, req.request_id, DEBITED, amount, to, ts, pos)
    d.messages.append((to, {"kind": CREDIT, "request_id": req.request_id, "account": to,
                            "counterparty": name, "amount": amount}))
    d.outcomes.append(outcome(req.request_id, DEBITED_STATUS, ts))
    return d


_MARKER_PREFIX = {CREDIT: "c:", REFUND: "f:", REJECT_NOTICE: "n:"}  # requests use "r:"


def credit_marker(msg: dict[str, Any]) -> str:
    """The applied-id of a transfers.credits message (one per kind and request)."""
    return _MARKER_PREFIX[msg["kind"]] + msg["request_id"]


def decide_credit(msg: dict[str, Any], acct: Account | None, already_applied: bool,
                  ts: int, pos: Position) -> Decision:
    """Apply a message from transfers.credits to the receiving account."""
    d = Decision()
    if already_applied:
        return d  # a re-delivered credit: applied once already
    d.marker = credit_marker(msg)
    kind, request_id, name = msg["kind"], msg["request_id"], msg["account"]
    amount, other = msg["amount"], msg["counterparty"]
    if kind == REJECT_NOTICE:
        if acct is not None:
            _event(d, name, acct.copy(), request_id, REJECTED, amount, other, ts, pos, msg["reason"])
        return d
    if kind == REFUND:
        # the sender was debited by this request, so the account exists
        new = (acct or Account()).copy()
        new.balance += amount
        if new.day == ts // DAY_MS:
            new.spent = max(0, new.spent - amount)
        _event(d, name, new, request_id, REFUNDED, amount, other, ts, pos, msg["reason"])
        d.outcomes.append(outcome(request_id, REJECTED_STATUS, ts, msg["reason"]))
        return d
    if kind != CREDIT:
        raise ValueError(f"unknown credit message kind {kind!r}")
    if acct is None or acct.balance + amount > MAX_AMOUNT:
        reason = UNKNOWN_ACCOUNT if acct is None else INVALID
        d.messages.append((other, {"kind": REFUND, "request_id": request_id, "account": other,
                                   "counterparty": name, "amount": amount, "reason": reason}))
        return d
    new = acct.copy()
    new.balance += amount
    _event(d, name, new, request_id, CREDITED, amount, other, ts, pos)
    d.outcomes.append(outcome(request_id, COMPLETED, ts))
    return d
