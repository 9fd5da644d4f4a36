"""The rules for a message between partitions, decided on its account's partition: a credit,
a refund, a hold's notices, and a linked transfer's check, answer, reservation and decision."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from kbank.streams.decisions.contract import _labels
from kbank.streams.decisions.decision import Decision, _event, _spend, _stamp, _unspend
from kbank.streams.decisions.markers import credit_marker
from kbank.streams.decisions.messages import BadMessage
from kbank.streams.decisions.request_rules import _inflow_problem, _refusal, expire_hold

from kbank.streams.model import (CLOSED_STATE, COMPLETED, CREDIT, CREDITED, DAY_MS, DEBITED_STATUS,
                                 HELD, HOLD_NOTICE, HOLD_POSTED, HOLD_RELEASED, HOLD_VOIDED,
                                 INCOMING_HELD, INCOMING_RELEASED, INVALID, LINK_ABORT, LINK_ACK,
                                 LINK_CHECK, LINK_COMMIT, LINK_RESERVE, MAX_AMOUNT, PENDING, POSTED,
                                 REFUND, REFUNDED, REJECT_NOTICE, REJECTED, REJECTED_STATUS,
                                 RELEASE_NOTICE, UNKNOWN_ACCOUNT, Account, Hold, Position,
                                 link_hold_key, outcome, request_key)
from kbank.streams.storekeys import EXPIRE


def decide_credit(msg: dict[str, Any], acct: Account | None, already_applied: bool,
                  ts: int, pos: Position, incoming_recorded: bool = False,
                  hold: Hold | None = None) -> Decision:
    """Apply a message from transfers.credits (validated by parse_message) to its account.

    A hold's notice reaches its receiver before the hold's settlement does: both go from
    the sender's partition to the receiver's, in transactions committed one after another.

    `incoming_recorded`: for a message about a hold (a post's credit, a release), whether
    this account counted the hold as pending-in (its incoming_marker is applied).
    `hold`: for a linked transfer's answer (link_ack) or an expiry, the sender's record of it.

    Raises BadMessage for a message the engine could not have written (a refund to an
    account that was never debited, an amount past the 64-bit range): in an honest ledger
    the partitions' supply caps bound every sum, so only a forged record gets here."""
    return _stamp(_decide_credit(msg, acct, already_applied, ts, pos, incoming_recorded, hold),
                  _labels(msg))


def _decide_credit(msg: dict[str, Any], acct: Account | None, already_applied: bool,
                   ts: int, pos: Position, incoming_recorded: bool, hold: Hold | None) -> Decision:
    d = Decision()
    if already_applied:
        return d  # a re-delivered credit: applied once already
    kind, request_id, name = msg["kind"], msg["request_id"], msg["account"]
    amount, other = msg["amount"], msg["counterparty"]
    if kind == EXPIRE:
        d = expire_hold(msg, acct, hold, ts, pos)
        if d.event is not None:   # an early or late expiry leaves no mark: the next one may act
            d.marker = credit_marker(msg)
        return d
    if kind == HOLD_NOTICE:
        # a receiver that cannot take the money counts nothing: the post's credit goes back
        if acct is not None and acct.state != CLOSED_STATE and acct.currency == msg["currency"]:
            if acct.pending_in + amount > MAX_AMOUNT:
                raise BadMessage("pending_in would pass the 64-bit range")
            d.marker = credit_marker(msg)
            new = acct.copy()
            new.pending_in += amount
            _event(d, name, new, request_id, INCOMING_HELD, amount, other, ts, pos,
                   hold_id=msg["hold_id"])
        return d
    d.marker = credit_marker(msg)
    if kind == LINK_CHECK:
        problem = _inflow_problem(acct, amount, msg["currency"])
        reason = problem[0] if problem is not None else None
        answer = {"kind": LINK_ACK, "request_id": request_id, "account": other,
                  "counterparty": name, "amount": amount, "index": msg["index"],
                  "ok": reason is None}
        if reason is not None:
            answer["reason"] = reason
        d.messages.append((other, answer))
        return d
    if kind == LINK_ACK:
        return _linked_answer(d, msg, acct, hold, ts, pos)
    if kind in (LINK_RESERVE, LINK_COMMIT, LINK_ABORT):
        return _debtor_step(d, msg, acct, hold, ts, pos)
    incoming = msg.get("held", amount) if incoming_recorded and acct is not None else 0
    if incoming and incoming > acct.pending_in:
        raise BadMessage("releases more than the account has pending in")
    if kind == RELEASE_NOTICE:
        if incoming:
            new = acct.copy()
            new.pending_in -= incoming
            _event(d, name, new, request_id, INCOMING_RELEASED, amount, other, ts, pos,
                   hold_id=msg["hold_id"])
        return d
    if kind == REJECT_NOTICE:
        if acct is not None:
            _event(d, name, acct.copy(), request_id, REJECTED, amount, other, ts, pos, msg["reason"])
        return d
    if kind == REFUND:
        if acct is None or acct.balance + amount > MAX_AMOUNT:
            raise BadMessage("a refund to an account that does not exist or cannot hold it")
        new = acct.copy()
        new.balance += amount
        _unspend(new, amount, ts // DAY_MS)
        _event(d, name, new, request_id, REFUNDED, amount, other, ts, pos, msg["reason"])
        _link_field(d, msg)
        d.outcomes.append(outcome(msg.get("link", name), request_id, REJECTED_STATUS, ts,
                                  msg["reason"]))
        return d
    assert kind == CREDIT, kind
    if (problem := _inflow_problem(acct, amount, msg["currency"])) is not None:
        reason = problem[0]
        refund = {"kind": REFUND, "request_id": request_id, "account": other,
                  "counterparty": name, "amount": amount, "reason": reason}
        for field_name in ("index", "link"):
            if field_name in msg:
                refund[field_name] = msg[field_name]
        d.messages.append((other, refund))
        if incoming:   # the posted hold is no longer pending here, though the money goes back
            new = acct.copy()
            new.pending_in -= incoming
            _event(d, name, new, request_id, INCOMING_RELEASED, incoming, other, ts, pos,
                   hold_id=msg["hold_id"])
        return d
    new = acct.copy()
    new.balance += amount
    new.pending_in -= incoming
    _event(d, name, new, request_id, CREDITED, amount, other, ts, pos, hold_id=msg.get("hold_id"))
    _link_field(d, msg)
    d.outcomes.append(outcome(msg.get("link", other), request_id, COMPLETED, ts))
    return d


def _link_field(d: Decision, msg: dict[str, Any]) -> None:
    """A member paid by another account: its events name the linked transfer's sender."""
    if "link" in msg:
        assert d.event is not None
        d.event["link"] = msg["link"]


def _debtor_step(d: Decision, msg: dict[str, Any], acct: Account | None, hold: Hold | None,
                 ts: int, pos: Position) -> Decision:
    """On the account that pays a linked transfer's member for its sender (the
    coordinator): reserve it and ask its receiver (link_reserve), move it (link_commit) or
    release it (link_abort). `hold`: the reservation, if this account made it."""
    kind, rid, name = msg["kind"], msg["request_id"], msg["account"]
    coordinator, amount, index = msg["counterparty"], msg["amount"], msg["index"]
    key = link_hold_key(index, coordinator, rid)
    if kind == LINK_RESERVE:
        to = msg["to"]
        refused = (UNKNOWN_ACCOUNT, "") if acct is None else _refusal(LINK_RESERVE, acct, {})
        new = acct.copy() if acct is not None else None
        reason = refused[0] if refused else _spend(new, amount, ts)
        if reason is not None:
            d.messages.append((coordinator, {
                "kind": LINK_ACK, "request_id": rid, "account": coordinator,
                "counterparty": name, "amount": amount, "index": index, "ok": False,
                "reason": reason}))
            return d
        assert new is not None
        new.held += amount
        _event(d, name, new, rid, HELD, amount, to, ts, pos, hold_id=rid)
        d.event["link"] = coordinator
        d.hold = (key, Hold(name, to, amount, 0, new.day, PENDING, []))
        d.messages.append((to, {"kind": LINK_CHECK, "request_id": rid, "account": to,
                                "counterparty": coordinator, "amount": amount, "index": index,
                                "currency": new.currency}))
        return d
    if acct is None or hold is None or hold.state != PENDING:
        return d   # refused when asked to reserve, so nothing to move or release
    if hold.amount != amount or hold.members != []:
        raise BadMessage("a commit or abort that does not match the reservation")
    new = acct.copy()
    new.held -= amount
    if kind == LINK_ABORT:
        _unspend(new, amount, hold.day)
        _event(d, name, new, rid, HOLD_RELEASED, amount, hold.receiver, ts, pos, hold_id=rid)
        d.hold = (key, replace(hold, state=HOLD_VOIDED))
    else:
        new.balance -= amount
        _event(d, name, new, rid, POSTED, amount, hold.receiver, ts, pos, hold_id=rid,
               released=0)
        d.hold = (key, replace(hold, state=HOLD_POSTED))
        d.messages.append((hold.receiver, {
            "kind": CREDIT, "request_id": rid, "account": hold.receiver, "counterparty": name,
            "amount": amount, "currency": acct.currency, "index": index, "link": coordinator}))
    d.event["link"] = coordinator
    return d


def _linked_answer(d: Decision, msg: dict[str, Any], acct: Account | None, hold: Hold | None,
                   ts: int, pos: Position) -> Decision:
    """A receiver's answer to a linked transfer: the first refusal releases it all, the last
    confirmation debits the total and sends every member's credit."""
    rid, name, index = msg["request_id"], msg["account"], msg["index"]
    if hold is None or hold.members is None or hold.state != PENDING or acct is None:
        return d   # decided already (a refusal came first)
    if index >= len(hold.members):
        raise BadMessage("an answer for a member the linked transfer does not have")
    new = acct.copy()
    key = request_key(name, rid)
    if not msg["ok"]:
        to = hold.members[index][0]
        reason = msg.get("reason") or INVALID
        new.held -= hold.amount
        _unspend(new, hold.amount, hold.day)
        _event(d, name, new, rid, HOLD_RELEASED, hold.amount, None, ts, pos, reason,
               hold_id=rid)
        d.hold = (key, replace(hold, state=HOLD_VOIDED))
        d.outcomes.append(outcome(name, rid, REJECTED_STATUS, ts, reason,
                                  f"transfers[{index}] to {to!r}: {reason}"))
        _to_debtors(d, LINK_ABORT, name, rid, hold)
        return d
    confirmed = hold.confirmed + 1
    if confirmed < len(hold.members):
        d.hold = (key, replace(hold, confirmed=confirmed))
        return d
    new.held -= hold.amount
    new.balance -= hold.amount
    _event(d, name, new, rid, POSTED, hold.amount, None, ts, pos, hold_id=rid, released=0)
    d.hold = (key, replace(hold, state=HOLD_POSTED, confirmed=confirmed))
    for i, (to, amount, *debtor) in enumerate(hold.members):
        if not debtor:
            d.messages.append((to, {"kind": CREDIT, "request_id": rid, "account": to,
                                    "counterparty": name, "amount": amount,
                                    "currency": acct.currency, "index": i}))
    _to_debtors(d, LINK_COMMIT, name, rid, hold)
    d.outcomes.append(outcome(name, rid, DEBITED_STATUS, ts))
    return d


def _to_debtors(d: Decision, kind: str, name: str, rid: str, hold: Hold) -> None:
    """Tell every account that reserved a member for this linked transfer to move it or to
    release it (one that refused, or never reserved, ignores it)."""
    assert hold.members is not None
    for i, (_, amount, *debtor) in enumerate(hold.members):
        if debtor:
            d.messages.append((debtor[0], {"kind": kind, "request_id": rid, "account": debtor[0],
                                           "counterparty": name, "amount": amount, "index": i}))
