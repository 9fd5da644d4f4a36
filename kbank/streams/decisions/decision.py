"""What deciding one input produces (Decision), what an applied id remembers (FirstDecision),
the rules an operator may change (Rules), and the steps every rule shares: an event on the
account (its invariants asserted where the state is made), a rejection, an outflow counted
toward the day, a request's labels copied into all it causes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kbank.streams.decisions.contract import Request, _is_int

from kbank.streams.model import (DAY_MS, INSUFFICIENT_FUNDS, LIMIT_EXCEEDED, MAX_AMOUNT, REJECTED,
                                 REJECTED_STATUS, Account, Hold, Position, check_account, is_name,
                                 ledger_event, outcome)


def _stamp(d: "Decision", labels: dict[str, Any]) -> "Decision":
    """Copy a request's labels (its metadata, external_ref and who asked, see `_labels`) into
    everything its decision writes: both sides' ledger events, its outcomes and messages."""
    if labels:
        if d.event is not None:
            d.event.update(labels)
        for out in d.outcomes:
            out.update(labels)
        for _, msg in d.messages:
            msg.update(labels)
    return d


@dataclass(frozen=True, slots=True)
class FirstDecision:
    """What the engine remembers of an applied request id (the value of its marker): the
    body's fingerprint and the first status the request got, so a retry with the same
    body is told the original decision and one with another body is refused."""

    fingerprint: str
    status: str
    reason: str | None = None

    def encode(self) -> str:
        return " ".join((self.fingerprint, self.status, self.reason or ""))

    @classmethod
    def decode(cls, value: str) -> "FirstDecision":
        fp, status, reason = value.split(" ", 2)
        return cls(fp, status, reason or None)


@dataclass(frozen=True, slots=True)
class Rules:
    """Decision rules an operator can change (BANK_MAX_TRANSFER_AMOUNT), and the partition's
    share of the 64-bit money supply.

    `supply_cap`: the most money (deposits - withdrawals) one partition may bring into the
    ledger. The shares of all partitions sum to at most 2^63-1, so no balance, held or
    pending-in amount, refund or credit of an honest ledger can ever pass the 64-bit range:
    every one of them is bounded by the money in the ledger."""

    max_transfer_amount: int = 0   # 0: no cap; above it a transfer is rejected limit_exceeded
    supply_cap: int = MAX_AMOUNT
    id_window_ms: int = 7 * DAY_MS  # how long an applied id is remembered (engine/apply.py)
    # the longest a hold may reserve money (BANK_MAX_HOLD_TIMEOUT_S): a 1-unit hold to
    # another account with a one-year timeout blocked that account's close for a year
    max_hold_timeout_s: int = 30 * 86_400

    @classmethod
    def from_settings(cls, settings: Any, partitions: int) -> "Rules":
        return cls(max_transfer_amount=settings.max_transfer_amount,
                   supply_cap=MAX_AMOUNT // max(1, partitions),
                   id_window_ms=settings.id_window_ms,
                   max_hold_timeout_s=settings.max_hold_timeout_s)

    def hold_problem(self, body: dict[str, Any]) -> str | None:
        """What is wrong with a (parsed, valid) hold under these rules, if anything."""
        if body.get("type") == "hold" and body["timeout_s"] > self.max_hold_timeout_s:
            return (f"timeout_s must be at most {self.max_hold_timeout_s} "
                    f"(BANK_MAX_HOLD_TIMEOUT_S)")
        return None


@dataclass(slots=True)
class Decision:
    """What one input does: at most one account changes and gets one event."""

    account: str | None = None
    state: Account | None = None          # the account's new state, None if unchanged
    event: dict[str, Any] | None = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, credit msg)
    marker: str | None = None             # id to remember as applied
    marker_value: str = "1"               # for a request: its FirstDecision
    ref_marker: tuple[str, str] | None = None  # (the sender's external_ref marker, the
                                               # id of the request that claims it)
    hold: tuple[str, Hold] | None = None  # (hold key, its new state) on the sender's partition
    supply: int = 0                       # money brought into the partition (- taken out)


def _spend(acct: Account, amount: int, ts: int) -> str | None:
    """Check the available balance and the daily limit for an outflow (a withdrawal, a
    debit or a hold) and count it toward the day; the caller moves or reserves it. With
    no limit the day's count saturates at 2^63-1 (it is only ever compared with a limit)."""
    if acct.available < amount:
        return INSUFFICIENT_FUNDS
    day = ts // DAY_MS
    spent = acct.spent if acct.day == day else 0
    if acct.daily_limit is not None and spent + amount > acct.daily_limit:
        return LIMIT_EXCEEDED
    acct.day, acct.spent = day, min(MAX_AMOUNT, spent + amount)
    return None


def _unspend(acct: Account, amount: int, day: int) -> None:
    """An outflow counted on `day` did not happen after all (refund, released hold)."""
    if acct.day == day:
        acct.spent = max(0, acct.spent - amount)


def _event(d: Decision, name: str, acct: Account, request_id: str, kind: str, amount: int,
           counterparty: str | None, ts: int, pos: Position, reason: str | None = None,
           hold_id: str | None = None, released: int | None = None) -> None:
    """Advance the account's sequence and attach its ledger event to the decision; the
    account's invariants are asserted here, where the state is made."""
    acct.seq += 1
    check_account(acct)
    assert 0 <= amount <= MAX_AMOUNT, (kind, amount)
    d.account, d.state = name, acct
    d.event = ledger_event(name, acct.seq, request_id, kind, amount, counterparty,
                           acct.balance, ts, pos, reason, acct, acct.held,
                           acct.pending_in, hold_id, released)


def _reject(d: Decision, req: Request, acct: Account | None, reason: str, ts: int,
            pos: Position, detail: str | None = None) -> Decision:
    """A rejected event on the deciding account (if it exists) and the request's outcome:
    rejected with the reason. Nothing reaches the receiver: a refusal on the sender's side
    is the sender's history only, so nobody can fill another account's history with
    refusals at no cost (issue 41; until then a `reject_notice` put a `rejected` event in
    the receiver's ledger, which decide_credit still applies for such records in flight)."""
    body = req.body
    amount = body.get("amount")
    amount = amount if _is_int(amount) and 0 <= amount <= MAX_AMOUNT else 0
    to = body.get("to") if body.get("type") == "transfer" else None
    to = to if is_name(to) and to != req.account else None
    if acct is not None and req.account is not None:
        _event(d, req.account, acct.copy(), req.request_id, REJECTED, amount, to, ts, pos, reason)
    d.outcomes.append(outcome(req.account, req.request_id, REJECTED_STATUS, ts, reason, detail))
    return d
