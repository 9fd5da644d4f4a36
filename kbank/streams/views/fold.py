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

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from kbank.streams.model import (BALANCE_SIGN, CREDITED, CURRENCY_DECIMALS, DAY_MS, DEBITED,
                                 DEFAULT_CURRENCY, DEPOSITED, EXPIRED, HELD, HOLD_RELEASED,
                                 LIMITS_SET, MAX_AMOUNT, OPEN, OPENED, POSTED, REFUNDED, REJECTED,
                                 REJECTED_STATUS, STATE_AFTER, STATUS_RANK, WITHDRAWN,
                                 id_margin_ms, int_in, is_final, is_name, labels_ok, renews,
                                 status_moves)

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
    currency: str = DEFAULT_CURRENCY
    overdraft_limit: int = 0
    max_balance: int | None = None
    state: str = OPEN                # open, frozen or closed
    metadata: dict[str, str] | None = None   # given when it was opened
    active_day: int = 0              # UTC day number that `active` counts
    active: int = 0                  # ledger events of the account on `active_day`
    # since it opened: [money in, money out, {event kind: count}], so a statement over any
    # window is two reads, however many events anyone caused in it (issue 41)
    totals: list[Any] = field(default_factory=lambda: [0, 0, {}])

    def to_bytes(self) -> bytes:
        return orjson.dumps([self.balance, self.seq, self.offset, self.daily_limit, self.day,
                             self.outflow, self.opened_ts, self.updated_ts, self.held,
                             self.pending_in, self.currency, self.overdraft_limit,
                             self.max_balance, self.state, self.metadata, self.active_day,
                             self.active, self.totals])

    @classmethod
    def from_bytes(cls, raw: bytes) -> "AccountView":
        return cls(*orjson.loads(raw))

    def public(self, account: str) -> dict[str, Any]:
        """The JSON body of GET /accounts/{id} (no store internals)."""
        limit = self.daily_limit
        return {
            "account": account, "balance": self.balance, "seq": self.seq,
            "currency": self.currency, "decimals": decimals(self.currency), "state": self.state,
            "available": max(0, self.balance + self.overdraft_limit - self.held),
            "pending_out": self.held, "pending_in": self.pending_in,
            "limits": {"daily_limit": limit, "day": self.day, "outflow": self.outflow,
                       "remaining": None if limit is None else max(0, limit - self.outflow),
                       "overdraft_limit": self.overdraft_limit,
                       "max_balance": self.max_balance},
            "metadata": self.metadata or {},
            "opened_ts": self.opened_ts, "updated_ts": self.updated_ts,
        }


def add_to_totals(totals: list[Any], kind: str, amount: int) -> list[Any]:
    """An account's running totals after one more event, changed in place (and returned):
    each history entry encodes them as they are after its own event, at once."""
    moved = BALANCE_SIGN[kind] * amount
    if moved > 0:
        totals[0] += moved
    elif moved < 0:
        totals[1] -= moved
    counts = totals[2]
    counts[kind] = counts.get(kind, 0) + 1
    return totals


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
    new.totals = add_to_totals(new.totals, kind, amount)
    new.balance, new.seq, new.offset, new.updated_ts = event["balance"], event["seq"], offset, ts
    new.held, new.pending_in = event.get("held", 0), event.get("pending_in", 0)
    if ts // DAY_MS != new.active_day:
        new.active_day, new.active = ts // DAY_MS, 0
    new.active += 1
    if kind == OPENED:
        new.daily_limit, new.opened_ts, new.day = event.get("daily_limit"), ts, ts // DAY_MS
        new.currency = event.get("currency", DEFAULT_CURRENCY)
        new.overdraft_limit, new.max_balance = event.get("overdraft_limit", 0), event.get("max_balance")
        new.metadata = event.get("metadata")
    elif kind == LIMITS_SET:
        new.daily_limit = event.get("daily_limit")
        new.overdraft_limit, new.max_balance = event.get("overdraft_limit", 0), event.get("max_balance")
    elif kind in STATE_AFTER:
        new.state = STATE_AFTER[kind]
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


def index_entries(opened: dict[str, Any]) -> list[tuple[str, str]]:
    """What an `opened` event indexes its account under: its currency, and each of its
    metadata pairs as metadata.<key> (GET /accounts?currency= or ?metadata.<key>=)."""
    return [("currency", opened.get("currency", DEFAULT_CURRENCY))] + \
        [(f"metadata.{k}", v) for k, v in (opened.get("metadata") or {}).items()]


BY_BALANCE, BY_ACTIVITY = "balance", "activity"   # the rankings (GET /aggregates/...)
_FINE = 8     # buckets per doubling: a bucket's figures are within 12.5% of each other


def magnitude_bucket(value: int) -> int:
    """A ranking's coarse sort key of a positive figure: exact below 8, then 8 buckets per
    power of two. Monotone (a higher bucket holds only higher figures), so a top-N read
    walks buckets from the top and stops once N are found and their last bucket is done;
    and a figure changes bucket only when it moves by about an eighth, so the rankings
    cost a table write now and then, not per event."""
    assert value > 0, value
    if value < _FINE:
        return value
    exponent = value.bit_length() - 1            # >= 3
    return _FINE * (exponent - 2) + ((value >> (exponent - 3)) - _FINE)


Ranked = tuple[str, str, int]            # (ranking, group, bucket)


def ranking_entries(view: AccountView) -> list[tuple[Ranked, int]]:
    """Where the account stands in the rankings now, each entry with its figure: its balance
    among its currency's positive balances, and its activity among the accounts active on
    its last active UTC day. The views write the entries that change when an event moves
    an account (ranking_moves), and all of them again for a re-delivered record."""
    entries = [((BY_BALANCE, view.currency, magnitude_bucket(view.balance)), view.balance)] \
        if view.balance > 0 else []
    if view.active > 0:
        entries.append(((BY_ACTIVITY, str(view.active_day), magnitude_bucket(view.active)),
                        view.active))
    return entries


Standing = tuple[int, str, int, int]     # (balance, currency, active_day, active) of a view


def standing(view: AccountView | None) -> Standing:
    """What an account's rankings depend on, taken before an event changes its view."""
    return (0, DEFAULT_CURRENCY, 0, 0) if view is None else \
        (view.balance, view.currency, view.active_day, view.active)


def ranking_moves(before: Standing, after: AccountView
                  ) -> tuple[list[Ranked], list[tuple[Ranked, int]]]:
    """The ranking index entries to delete and to write (with their figure) when an event
    takes an account from `before` to `after`; usually none (a figure moved within its
    bucket). A balance's old entry is deleted (a balance goes down as well as up). An
    activity count only grows within its day, so its old entries are left for readers to
    skip (ranked_figure: below the live one, never read by a top-N that stops above them),
    which halves the writes of the busiest index; when the day ends its entry is written
    once more with the day's final count, which readers take as it is."""
    balance, currency, day, active = before
    deleted: list[Ranked] = []
    written: list[tuple[Ranked, int]] = []
    old = magnitude_bucket(balance) if balance > 0 else None
    new = magnitude_bucket(after.balance) if after.balance > 0 else None
    if (old, currency) != (new, after.currency):
        if old is not None:
            deleted.append((BY_BALANCE, currency, old))
        if new is not None:
            written.append(((BY_BALANCE, after.currency, new), after.balance))
    if day != after.active_day:
        if active > 0:
            written.append(((BY_ACTIVITY, str(day), magnitude_bucket(active)), active))
        written.append(((BY_ACTIVITY, str(after.active_day), magnitude_bucket(after.active)),
                        after.active))
    elif active == 0 or magnitude_bucket(after.active) != magnitude_bucket(active):
        written.append(((BY_ACTIVITY, str(day), magnitude_bucket(after.active)), after.active))
    return deleted, written


def ranking_figure(view: AccountView, ranking: str, group: str) -> int | None:
    """The figure an account is ranked by in (ranking, group) now, or None if it is not in
    that group now."""
    if ranking == BY_BALANCE:
        return view.balance if view.currency == group and view.balance > 0 else None
    return view.active if str(view.active_day) == group and view.active > 0 else None


def ranked_figure(view: AccountView | None, ranking: str, group: str, bucket: int,
                  stored: int) -> int | None:
    """What a ranking index entry is worth, or None if it is stale (the account moved on and
    an old entry was left behind): a live entry must still be in the
    account's current bucket; a finished day's activity entry carries its final count."""
    if view is None:
        return None
    live = ranking_figure(view, ranking, group)
    if live is not None:
        return live if magnitude_bucket(live) == bucket else None
    if ranking == BY_ACTIVITY and group.isdigit() and int(group) < view.active_day \
            and stored > 0 and magnitude_bucket(stored) == bucket:
        return stored
    return None


MONEY_FIGURES = ("balance", "deposits", "withdrawals", "debited", "returned", "held")
_BALANCE, _DEPOSITS, _WITHDRAWALS, _DEBITED, _RETURNED, _HELD = range(len(MONEY_FIGURES))


@dataclass(slots=True)
class PartitionTotals:
    """Aggregates of one ledger partition; the global figures are their sum. Money is
    counted per currency (`money`: currency -> the MONEY_FIGURES): debited is what left
    senders in transfers, returned what arrived (credited or refunded), held what pending
    holds reserve."""

    offset: int = -1        # last ledger offset counted
    accounts: int = 0
    completed: int = 0      # transfers credited
    rejected: int = 0       # transfers rejected by the sender's side or refunded
    events: int = 0
    money: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> list[Any]:
        return [self.offset, self.accounts, self.completed, self.rejected, self.events, self.money]

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, raw: bytes) -> "PartitionTotals":
        return cls(*orjson.loads(raw))

    def count(self, event: dict[str, Any], offset: int, requests_topic: str,
              currency: str) -> bool:
        """Count an applied event of an account in `currency` once; False if this offset
        was counted already."""
        if offset <= self.offset:
            return False
        self.offset = offset
        kind, amount = event["kind"], event["amount"]
        self.events += 1
        money = self.money.get(currency)
        if money is None:
            money = self.money[currency] = [0] * len(MONEY_FIGURES)
        money[_BALANCE] += BALANCE_SIGN[kind] * amount
        if kind == OPENED:
            self.accounts += 1
        elif kind == DEPOSITED:
            money[_DEPOSITS] += amount
        elif kind == WITHDRAWN:
            money[_WITHDRAWALS] += amount
        elif kind in (DEBITED, POSTED):
            money[_DEBITED] += amount
        elif kind == CREDITED:
            money[_RETURNED] += amount
            self.completed += 1
        elif kind == REFUNDED:
            money[_RETURNED] += amount
            self.rejected += 1
        elif kind == REJECTED and event.get("counterparty") is not None \
                and event["source"]["topic"] == requests_topic:
            self.rejected += 1  # the sender's side of a rejected transfer
        if kind == HELD:
            money[_HELD] += amount
        elif kind == POSTED:
            money[_HELD] -= amount + event.get("released", 0)
        elif kind in (HOLD_RELEASED, EXPIRED):
            money[_HELD] -= amount
        return True


def _money_figures(sums: list[int]) -> dict[str, int]:
    balance, deposits, withdrawals, debited, returned, held = sums
    return {"total_balance": balance, "money_in_flight": debited - returned,
            "deposits": deposits, "withdrawals": withdrawals, "money_held": held}


def decimals(currency: str) -> int:
    """Minor-unit decimals to show a currency's amounts with (the console's catalogue)."""
    return CURRENCY_DECIMALS.get(currency, 2)


def global_figures(parts: list[PartitionTotals]) -> dict[str, Any]:
    """GET /stats: the sum over every partition. Money is per currency (`currencies`); the
    top-level money figures are those of the default currency, as before currencies."""
    sums: dict[str, list[int]] = {}
    for p in parts:
        for cur, figures in p.money.items():
            total = sums.setdefault(cur, [0] * len(MONEY_FIGURES))
            for i, value in enumerate(figures):
                total[i] += value
    default = _money_figures(sums.get(DEFAULT_CURRENCY, [0] * len(MONEY_FIGURES)))
    return {
        "accounts": sum(p.accounts for p in parts),
        **default,
        "transfers_completed": sum(p.completed for p in parts),
        "transfers_rejected": sum(p.rejected for p in parts),
        "ledger_events": sum(p.events for p in parts),
        "partitions": len(parts),
        "default_currency": DEFAULT_CURRENCY,
        "currencies": {cur: {**_money_figures(s), "decimals": decimals(cur)}
                       for cur, s in sorted(sums.items())},
    }


def merge_status(current: dict[str, Any] | None, outcome: dict[str, Any],
                 window_ms: int) -> dict[str, Any] | None:
    """The status of a request after an outcome; None if it changes nothing.

    Statuses only move forward (accepted -> debited -> completed | rejected), so
    re-deliveries and reordering cannot move one back, and the answer to a re-sent
    request id never overrides the first decision (model.status_moves). An id re-used
    after the engine's id window (window_ms) is a new request: its status starts over,
    `since` its first decision.
    """
    before = current["status"] if current is not None else None
    since = current.get("since", current.get("ts")) if current is not None else None
    if not status_moves(before, outcome, since, window_ms):
        return None
    if renews(before, outcome, since, window_ms):
        current = None
    status = outcome["status"]
    new = {"request_id": outcome["request_id"], "account": outcome.get("account"),
           "status": status, "ts": outcome.get("ts"),
           "since": outcome.get("ts") if current is None else since}
    if status == REJECTED_STATUS:
        new["reason"] = outcome.get("reason")
        if outcome.get("detail") is not None:
            new["detail"] = outcome["detail"]
    hold = {**(current or {}).get("hold", {}), **(outcome.get("hold") or {})}
    if hold:
        new["hold"] = hold
    for label in ("metadata", "external_ref", "requested_by"):   # the first outcome that says
        value = (current or {}).get(label) or outcome.get(label)
        if value is not None:
            new[label] = value
    return new


def status_expired(status: dict[str, Any], clock: int, window_ms: int) -> bool:
    """Whether the views may forget a request's status: it is final, and its first decision
    is a window and a seventh (the engine's margin) behind `clock`, the latest outcome
    timestamp folded. Its id, used again now, is a new request (model.renews), as the
    engine forgot it too; so statuses, like the engine's ids, are kept for the window."""
    expiry = status_expiry(status, window_ms)
    return is_final(status.get("status")) and expiry is not None and expiry <= clock


def status_expiry(status: dict[str, Any], window_ms: int) -> int | None:
    """The clock from which a status may be forgotten once final (None: never)."""
    since = status.get("since", status.get("ts"))
    return since + window_ms + id_margin_ms(window_ms) if type(since) is int else None


def parse_outcome(raw: bytes | None) -> dict[str, Any] | None:
    """A transfers.outcomes record whose fields the status view relies on, or None."""
    try:
        out = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(out, dict) or not is_name(out.get("request_id")) \
            or not (out.get("account") is None or is_name(out.get("account"))) \
            or out.get("status") not in STATUS_RANK \
            or not (out.get("ts") is None or int_in(out.get("ts"), 0, MAX_AMOUNT)) \
            or not isinstance(out.get("hold", {}), dict) \
            or not (out.get("requested_by") is None or is_name(out["requested_by"])) \
            or not labels_ok(out):
        return None
    return out


def hold_view(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """GET /holds/{id}: a hold's state, from the status of the request that made it."""
    if status is None or "hold" not in status:
        return None
    return {"hold_id": status["request_id"], "state": status["status"], **status["hold"],
            "ts": status["ts"]}
