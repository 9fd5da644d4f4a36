"""The rules for a client request, decided on its deciding account's partition: open,
deposit, withdraw, transfer, hold, post, void, linked and the account's rules and life; and a
hold's expiry (the engine's own request)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from kbank.streams.decisions.contract import (_ACCOUNT_RULES, _LIMITS, _OUTGOING, _SETTLING,
                                              _TO_ANOTHER, REQUESTED_BY, Request, _labels, _quote,
                                              fingerprint)
from kbank.streams.decisions.decision import (Decision, FirstDecision, Rules, _event, _reject,
                                              _spend, _stamp, _unspend)
from kbank.streams.decisions.markers import external_ref_marker, request_marker

from kbank.streams.model import (ACCEPTED, ACCOUNT_CLOSED, ACCOUNT_EXISTS, ACCOUNT_FROZEN,
                                 ACCOUNT_NOT_EMPTY, CLOSED, CLOSED_STATE, COMPLETED, CREDIT,
                                 CURRENCY_MISMATCH, DAY_MS, DEBITED, DEBITED_STATUS,
                                 DEFAULT_CURRENCY, DEPOSITED, DUPLICATE_EXTERNAL_REF, EXPIRED,
                                 EXPIRED_STATUS, FROZEN, FROZEN_STATE, HELD, HELD_STATUS,
                                 HOLD_CLOSED, HOLD_EXCEEDED, HOLD_EXPIRED, HOLD_NOTICE, HOLD_POSTED,
                                 HOLD_RELEASED, HOLD_VOIDED, IDEMPOTENCY_CONFLICT, INVALID,
                                 LIMIT_EXCEEDED, LIMITS_SET, LINK_CHECK, LINK_RESERVE, MAX_AMOUNT,
                                 MAX_BALANCE_EXCEEDED, OPEN, OPENED, OVERFLOW, PENDING, POSTED,
                                 POSTED_STATUS, REJECTED_STATUS, RELEASE_NOTICE, UNFROZEN,
                                 UNKNOWN_ACCOUNT, UNKNOWN_HOLD, VOIDED_STATUS, WITHDRAWN, Account,
                                 Hold, Position, is_currency, outcome, request_key)
from kbank.streams.storekeys import EXPIRE


def decide_request(req: Request, acct: Account | None, first: FirstDecision | None,
                   ts: int, pos: Position, rules: Rules = Rules(),
                   hold: Hold | None = None, supply: int = 0,
                   ref_owner: str | None = None) -> Decision:
    """Decide a client request against the deciding account's state (and, for post and void,
    the state of the hold it names, as the sender's partition keeps it).

    `first`: what an earlier request with this id in this account's scope decided (its
    marker), if any. `supply`: the money the partition has brought in so far.
    `ref_owner`: the id of the request that used this request's external_ref already, if any.

    Idempotency: the same id with the same body again is answered with the first decision
    (`retry`, nothing changes); with another body, idempotency_conflict (nothing changes).
    A request with no valid deciding account, or keyed to another account, is rejected in
    no account's scope and marks nothing, so no one can take another account's ids.
    An external_ref is unique per sender the same way: the first valid transfer, hold or
    linked transfer that names it claims it, whatever it is decided; a later request with
    another id naming it is rejected duplicate_external_ref."""
    if req.problem is None and (problem := rules.hold_problem(req.body)) is not None:
        req = replace(req, problem=problem)
    labels = _labels(req.body) if req.problem is None else _labels(
        {REQUESTED_BY: req.body.get(REQUESTED_BY)})
    if first is not None:
        d = Decision()
        if first.fingerprint == fingerprint(req.body):
            d.outcomes.append(outcome(req.account, req.request_id, first.status, ts,
                                      first.reason, "the original decision of this request id",
                                      retry=True))
        else:
            d.outcomes.append(outcome(req.account, req.request_id, REJECTED_STATUS, ts,
                                      IDEMPOTENCY_CONFLICT,
                                      f"request id already used by another request, which "
                                      f"was {first.status}", retry=True))
        return _stamp(d, labels)
    ref = req.body.get("external_ref") if req.problem is None else None
    if ref is not None and ref_owner is not None:
        d = _reject(Decision(), req, acct, DUPLICATE_EXTERNAL_REF, ts, pos,
                    f"external_ref {_quote(ref)} was used by request {_quote(ref_owner)}")
    else:
        d = _decide_new(req, acct, ts, pos, rules, hold, supply)
        if ref is not None:
            assert req.account is not None
            d.ref_marker = (external_ref_marker(req.account, ref), req.request_id)
    _stamp(d, labels)
    if req.account is not None:
        d.marker = request_marker(req.account, req.request_id)
        own = [o for o in d.outcomes if o["request_id"] == req.request_id]
        status, reason = (own[0]["status"], own[0].get("reason")) if own else (ACCEPTED, None)
        d.marker_value = FirstDecision(fingerprint(req.body), status, reason).encode()
    return d


def _refusal(kind: str, acct: Account, body: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) if the account's state or currency refuses this kind of request."""
    if acct.state == CLOSED_STATE:
        return ACCOUNT_CLOSED, "the account is closed"
    if acct.state == FROZEN_STATE and kind in _OUTGOING:
        return ACCOUNT_FROZEN, "the account is frozen: it takes credits, not debits or holds"
    if body.get("currency", acct.currency) != acct.currency:
        return CURRENCY_MISMATCH, f"the account is in {acct.currency}, not {body['currency']}"
    return None


def _inflow_problem(acct: Account | None, amount: int, currency: str) -> tuple[str, str] | None:
    """(reason, detail) if the account cannot take this money in (a credit, a linked
    transfer's member, a deposit); None if it can."""
    if acct is None:
        return UNKNOWN_ACCOUNT, "no such account"
    if acct.state == CLOSED_STATE:
        return ACCOUNT_CLOSED, "the account is closed"
    if currency != acct.currency:
        return CURRENCY_MISMATCH, f"the account is in {acct.currency}, not {currency}"
    if acct.balance + amount > MAX_AMOUNT:
        return OVERFLOW, "the balance would leave the 64-bit range"
    if acct.max_balance is not None and acct.balance + amount > acct.max_balance:
        return MAX_BALANCE_EXCEEDED, f"the balance may not go above {acct.max_balance}"
    return None


def _decide_new(req: Request, acct: Account | None, ts: int, pos: Position, rules: Rules,
                hold: Hold | None, supply: int) -> Decision:
    d = Decision()
    if req.problem is not None:
        return _reject(d, req, acct, INVALID, ts, pos, req.problem)
    body, name = req.body, req.account
    assert name is not None
    kind = body["type"]
    if kind == "open_account":
        return _open(d, req, acct, ts, pos, rules, supply)
    if acct is None:
        return _reject(d, req, None, UNKNOWN_ACCOUNT, ts, pos)
    if kind == "void" and acct.state == FROZEN_STATE:
        pass   # releasing a hold moves nothing out
    elif (refused := _refusal(kind, acct, body)) is not None:
        return _reject(d, req, acct, refused[0], ts, pos, refused[1])
    if kind in _ACCOUNT_RULES:
        return _account_rule(d, req, acct, ts, pos, rules, supply)
    if kind in _SETTLING:
        return _settle(d, req, acct, hold, ts, pos)
    if kind == "linked":
        return _link(d, req, acct, ts, pos, rules)
    amount: int = body["amount"]
    new = acct.copy()
    if kind == "deposit":
        if supply + amount > rules.supply_cap:
            return _reject(d, req, acct, OVERFLOW, ts, pos,
                           f"the partition's money would exceed its share of the 64-bit "
                           f"range ({rules.supply_cap})")
        if (problem := _inflow_problem(acct, amount, acct.currency)) is not None:
            return _reject(d, req, acct, problem[0], ts, pos, problem[1])
        new.balance += amount
        d.supply = amount
        _event(d, name, new, req.request_id, DEPOSITED, amount, None, ts, pos)
        d.outcomes.append(outcome(name, req.request_id, COMPLETED, ts))
        return d
    if kind in _TO_ANOTHER and rules.max_transfer_amount and amount > rules.max_transfer_amount:
        return _reject(d, req, acct, LIMIT_EXCEEDED, ts, pos,
                       f"above the single-transfer cap of {rules.max_transfer_amount}")
    if (reason := _spend(new, amount, ts)) is not None:
        return _reject(d, req, acct, reason, ts, pos, _spend_detail(acct, reason))
    if kind == "hold":
        return _hold(d, req, new, ts, pos)
    new.balance -= amount
    if kind == "withdraw":
        d.supply = -amount
        _event(d, name, new, req.request_id, WITHDRAWN, amount, None, ts, pos)
        d.outcomes.append(outcome(name, req.request_id, COMPLETED, ts))
        return d
    to = body["to"]
    _event(d, name, new, req.request_id, DEBITED, amount, to, ts, pos)
    d.messages.append((to, {"kind": CREDIT, "request_id": req.request_id, "account": to,
                            "counterparty": name, "amount": amount, "currency": acct.currency}))
    d.outcomes.append(outcome(name, req.request_id, DEBITED_STATUS, ts))
    return d


def _spend_detail(acct: Account, reason: str) -> str:
    """Which rule refused an outflow."""
    if reason == LIMIT_EXCEEDED:
        return f"over the daily limit of {acct.daily_limit}"
    floor = f"-{acct.overdraft_limit}" if acct.overdraft_limit else "0"
    return f"the balance may not go below {floor} (available {acct.available})"


def _open(d: Decision, req: Request, acct: Account | None, ts: int, pos: Position,
          rules: Rules, supply: int) -> Decision:
    """Open an account with its currency and rules. An overdraft lets money be created on
    credit, so it counts toward the partition's share of the 64-bit range like a deposit."""
    body, name = req.body, req.account
    assert name is not None
    if acct is not None:
        return _reject(d, req, acct, ACCOUNT_EXISTS, ts, pos)
    overdraft = body.get("overdraft_limit", 0)
    if supply + overdraft > rules.supply_cap:
        return _reject(d, req, None, OVERFLOW, ts, pos,
                       "the overdraft would exceed the partition's share of the 64-bit range")
    new = Account(daily_limit=body.get("daily_limit"), day=ts // DAY_MS,
                  currency=body.get("currency", DEFAULT_CURRENCY), overdraft_limit=overdraft,
                  max_balance=body.get("max_balance"))
    assert is_currency(new.currency), new   # kept for good: checked here, where it is set
    d.supply = overdraft
    _event(d, name, new, req.request_id, OPENED, 0, None, ts, pos)
    d.outcomes.append(outcome(name, req.request_id, COMPLETED, ts))
    return d


def _account_rule(d: Decision, req: Request, acct: Account, ts: int, pos: Position,
                  rules: Rules, supply: int) -> Decision:
    """set_limits, close_account, freeze, unfreeze (the account is not closed)."""
    body, name, kind = req.body, req.account, req.body["type"]
    assert name is not None
    new = acct.copy()
    if kind == "set_limits":
        raised = max(0, body.get("overdraft_limit", acct.overdraft_limit) - acct.overdraft_limit)
        if supply + raised > rules.supply_cap:
            return _reject(d, req, acct, OVERFLOW, ts, pos,
                           "the overdraft would exceed the partition's share of the 64-bit range")
        for limit in _LIMITS:
            if limit in body:
                setattr(new, limit, body[limit])
        d.supply = raised   # a lowered overdraft releases nothing: it may be in use
        event_kind = LIMITS_SET
    elif kind == "close_account":
        # money held for it by others (pending in) does not keep it open: another account's
        # hold must not block a close for its whole timeout (issue 41). Such a hold, once
        # posted, is refunded to its payer (a credit to a closed account is), and voided or
        # expired it is released as ever; either way pending_in goes back to 0.
        if acct.balance or acct.held:
            return _reject(d, req, acct, ACCOUNT_NOT_EMPTY, ts, pos,
                           f"balance {acct.balance}, held {acct.held}: both must be 0")
        new.state, event_kind = CLOSED_STATE, CLOSED
    elif kind == "freeze":
        if acct.state == FROZEN_STATE:
            return _reject(d, req, acct, ACCOUNT_FROZEN, ts, pos, "the account is frozen already")
        new.state, event_kind = FROZEN_STATE, FROZEN
    else:
        if acct.state != FROZEN_STATE:
            return _reject(d, req, acct, INVALID, ts, pos, "the account is not frozen")
        new.state, event_kind = OPEN, UNFROZEN
    _event(d, name, new, req.request_id, event_kind, 0, None, ts, pos)
    d.outcomes.append(outcome(name, req.request_id, COMPLETED, ts))
    return d


def _hold(d: Decision, req: Request, new: Account, ts: int, pos: Position) -> Decision:
    """Reserve the amount (funds and limit already checked and counted)."""
    body, name, hold_id = req.body, req.account, req.request_id
    assert name is not None
    amount, to = body["amount"], body["to"]
    new.held += amount
    hold = Hold(name, to, amount, ts + body["timeout_s"] * 1000, new.day)
    _event(d, name, new, hold_id, HELD, amount, to, ts, pos, hold_id=hold_id)
    d.hold = (request_key(name, hold_id), hold)
    d.messages.append((to, {"kind": HOLD_NOTICE, "request_id": hold_id, "account": to,
                            "counterparty": name, "amount": amount, "hold_id": hold_id,
                            "currency": new.currency}))
    d.outcomes.append(outcome(name, hold_id, HELD_STATUS, ts, hold={
        "from": name, "to": to, "amount": amount, "expires_at": hold.deadline}))
    return d


def _link(d: Decision, req: Request, acct: Account, ts: int, pos: Position,
          rules: Rules) -> Decision:
    """Reserve a linked transfer's members that the sender pays, member by member, ask each
    of their receivers to confirm (link_check), and ask each other paying account (a
    member's `from`) to reserve its member (link_reserve), which then asks its receiver."""
    name, rid = req.account, req.request_id
    assert name is not None
    new = acct.copy()
    members = [[m["to"], m["amount"]] + ([m["from"]] if "from" in m else [])
               for m in req.body["transfers"]]
    for i, (to, amount, *debtor) in enumerate(members):
        cap = rules.max_transfer_amount
        if cap and amount > cap:
            return _reject(d, req, acct, LIMIT_EXCEEDED, ts, pos,
                           f"transfers[{i}] to {to!r}: above the single-transfer cap of {cap}")
        if debtor:
            continue
        if (reason := _spend(new, amount, ts)) is not None:
            return _reject(d, req, acct, reason, ts, pos, f"transfers[{i}] to {to!r}: {reason}")
        new.held += amount
    total = sum(amount for _, amount, *debtor in members if not debtor)
    _event(d, name, new, rid, HELD, total, None, ts, pos, hold_id=rid)
    d.hold = (request_key(name, rid), Hold(name, "", total, 0, new.day, PENDING, members))
    for i, (to, amount, *debtor) in enumerate(members):
        if debtor:
            d.messages.append((debtor[0], {"kind": LINK_RESERVE, "request_id": rid,
                                           "account": debtor[0], "counterparty": name,
                                           "amount": amount, "index": i, "to": to}))
        else:
            d.messages.append((to, {"kind": LINK_CHECK, "request_id": rid, "account": to,
                                    "counterparty": name, "amount": amount, "index": i,
                                    "currency": acct.currency}))
    return d   # no outcome until every receiver has answered


_SETTLED = {"post": (POSTED, HOLD_POSTED, POSTED_STATUS),
            "void": (HOLD_RELEASED, HOLD_VOIDED, VOIDED_STATUS),
            EXPIRE: (EXPIRED, HOLD_EXPIRED, EXPIRED_STATUS)}


def _settle(d: Decision, req: Request, acct: Account, hold: Hold | None, ts: int,
            pos: Position) -> Decision:
    """Post or void a pending hold of the sender (a client's request)."""
    name, hold_id = req.account, req.body["hold_id"]
    assert name is not None
    if hold is None or hold.members is not None:   # a linked transfer is not a client's to settle
        return _reject(d, req, acct, UNKNOWN_HOLD, ts, pos,
                       f"no hold {_quote(hold_id)} from {_quote(name)}")
    assert hold.sender == name, (hold, name)       # holds are kept under the sender's scope
    if hold.state != PENDING:
        return _reject(d, req, acct, HOLD_CLOSED, ts, pos, f"the hold is {hold.state}")
    amount = req.body.get("amount")
    amount = hold.amount if req.body["type"] == "post" and amount is None else amount
    if req.body["type"] == "post" and amount > hold.amount:
        return _reject(d, req, acct, HOLD_EXCEEDED, ts, pos,
                       f"posting {amount} of a hold of {hold.amount}")
    return _close_hold(d, req.body["type"], req.request_id, name, acct, hold_id, hold,
                       amount or 0, ts, pos)


def _close_hold(d: Decision, kind: str, request_id: str, name: str, acct: Account,
                hold_id: str, hold: Hold, posted: int, ts: int, pos: Position) -> Decision:
    """Post (part of) a pending hold, void it or expire it; the rest is released."""
    event_kind, state, status = _SETTLED[kind]
    posted = posted if kind == "post" else 0
    released = hold.amount - posted
    new = acct.copy()
    new.held -= hold.amount
    new.balance -= posted
    _unspend(new, released, hold.day)
    d.hold = (request_key(name, hold_id), Hold(hold.sender, hold.receiver, hold.amount,
                                               hold.deadline, hold.day, state))
    to = hold.receiver
    if kind == "post":
        _event(d, name, new, request_id, POSTED, posted, to, ts, pos, hold_id=hold_id,
               released=released)
        d.messages.append((to, {"kind": CREDIT, "request_id": request_id, "account": to,
                                "counterparty": name, "amount": posted, "currency": acct.currency,
                                "hold_id": hold_id, "held": hold.amount}))
        d.outcomes.append(outcome(name, request_id, DEBITED_STATUS, ts))
    else:
        _event(d, name, new, request_id, event_kind, released, to, ts, pos, hold_id=hold_id)
        d.messages.append((to, {"kind": RELEASE_NOTICE, "request_id": request_id,
                                "account": to, "counterparty": name, "amount": hold.amount,
                                "hold_id": hold_id}))
        if kind != EXPIRE:
            d.outcomes.append(outcome(name, request_id, COMPLETED, ts))
    d.outcomes.append(outcome(name, hold_id, status, ts, hold={
        "posted": posted, "released": released, "by": request_id}))
    return d


def expire_hold(msg: dict[str, Any], acct: Account | None, hold: Hold | None, ts: int,
                pos: Position) -> Decision:
    """The engine's expiry of a hold (its message is stamped no earlier than the deadline):
    a hold posted or voided meanwhile, or not yet due, is left as it is."""
    d = Decision()
    if acct is None or hold is None or hold.members is not None or hold.state != PENDING \
            or ts < hold.deadline:
        return d
    hold_id = msg["request_id"]
    return _close_hold(d, EXPIRE, f"expire:{hold_id}", msg["account"], acct, hold_id, hold, 0,
                       ts, pos)
