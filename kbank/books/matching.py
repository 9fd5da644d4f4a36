"""Reconciliation (pure): an account's statement lines against its ledger events, by rules
the user sets, into one result per item.

Results are a function of the lines, the events and the rules alone, never of the wall
clock, so the worker's output can be checked by running this again (and a change of rules
re-run over the same log, with the difference shown). Time is the statements' own: an item
is judged unmatched once the account's statements reach its date plus the grace period (the
horizon: the latest value date of its lines); before that it is pending and has no result.

The rules, in order: lines with a reference are matched to the events with that reference
(one or, with `many_to_one`, several summing to the line); a reference found with another
amount, a date outside the window or another counterparty is a mismatch naming the field.
Lines left are matched by amount and date (within `date_window_days`, the counterparty too
when `counterparty` is set), and with `many_to_one` to every event left on one value date
that sums to them (a batched settlement). What is left past the horizon is unmatched: a line
is named a duplicate when a matched line says the same, refused when the ledger refused a
request of that reference, else missing from the ledger; an event is missing from the
statement.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson

from kbank.books.statements import StatementLine
from kbank.streams.model import BALANCE_SIGN, REJECTED

MATCHED, MISMATCHED, UNMATCHED = "matched", "mismatched", "unmatched"
STRATEGIES = ("reference", "amount_date")
LEDGER_REFERENCES = ("external_ref", "request_id")


@dataclass(frozen=True)
class Rules:
    by: tuple[str, ...] = STRATEGIES
    date_window_days: int = 2
    counterparty: bool = False
    many_to_one: bool = True
    grace_days: int = 3
    # which of an event's fields is its reference, the first one present
    ledger_reference: tuple[str, ...] = LEDGER_REFERENCES

    def __post_init__(self) -> None:
        problems = [f"by: {b!r} is not one of {STRATEGIES}" for b in self.by if b not in STRATEGIES]
        problems += [f"ledger_reference: {r!r} is not one of {LEDGER_REFERENCES}"
                     for r in self.ledger_reference if r not in LEDGER_REFERENCES]
        if not 0 <= self.date_window_days <= 366 or not 0 <= self.grace_days <= 366:
            problems.append("date_window_days and grace_days are 0 to 366")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_json(cls, raw: bytes | dict) -> "Rules":
        d = orjson.loads(raw) if isinstance(raw, (bytes, str)) else raw
        if not isinstance(d, dict) or set(d) - set(cls.__dataclass_fields__):
            raise ValueError(f"rules are an object of {sorted(cls.__dataclass_fields__)}")
        for name in ("by", "ledger_reference"):
            if name in d:
                if not isinstance(d[name], list) or not all(isinstance(x, str) for x in d[name]):
                    raise ValueError(f"{name} is a list of strings")
                d = {**d, name: tuple(d[name])}
        for name in ("date_window_days", "grace_days"):
            if name in d and type(d[name]) is not int:
                raise ValueError(f"{name} is an integer")
        for name in ("counterparty", "many_to_one"):
            if name in d and type(d[name]) is not bool:
                raise ValueError(f"{name} is true or false")
        return cls(**d)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "by": list(self.by), "ledger_reference": list(self.ledger_reference)}

    @property
    def digest(self) -> str:
        return hashlib.sha256(orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(frozen=True)
class LedgerItem:
    """A ledger event that moved the account's money (or a refusal, kept to name breaks)."""

    seq: int
    value_date: str
    amount: int          # signed: money into the account positive
    currency: str
    reference: str | None
    counterparty: str | None
    kind: str

    @classmethod
    def from_event(cls, event: dict[str, Any], currency: str, rules: Rules) -> "LedgerItem | None":
        sign = BALANCE_SIGN.get(event["kind"], 0)
        if sign == 0 and event["kind"] != REJECTED:
            return None
        day = datetime.fromtimestamp(event["ts"] / 1000, timezone.utc).date().isoformat()
        reference = next((event[f] for f in rules.ledger_reference
                          if isinstance(event.get(f), str)), None)
        return cls(event["seq"], day, sign * event["amount"], currency, reference,
                   event.get("counterparty"), event["kind"])


def _days(a: str, b: str) -> int:
    return abs((date.fromisoformat(a) - date.fromisoformat(b)).days)


def _result(status: str, side: str, lines: list[StatementLine], items: list[LedgerItem],
            reason: str | None = None, field: str | None = None) -> dict[str, Any]:
    return {"status": status, "side": side, "reason": reason, "field": field,
            "lines": [ln.line_id for ln in lines], "events": [i.seq for i in items],
            "amount": lines[0].amount if lines else sum(i.amount for i in items),
            "currency": (lines or items)[0].currency,
            "value_date": lines[0].value_date if lines else items[0].value_date,
            "reference": lines[0].reference if lines else items[0].reference}


class _Matcher:
    def __init__(self, lines: list[StatementLine], items: list[LedgerItem], rules: Rules) -> None:
        self.rules = rules
        self.lines = sorted(lines, key=lambda ln: (ln.value_date, ln.line_no, ln.line_id))
        self.moves = [i for i in sorted(items, key=lambda i: i.seq) if i.kind != REJECTED]
        self.refused = {i.reference for i in items if i.kind == REJECTED and i.reference}
        self.free = {i.seq: i for i in self.moves}      # not matched yet, by seq (in order)
        # indexes over the free events: by reference, by (currency, amount), by day
        self.free_by_reference: dict[str | None, dict[int, LedgerItem]] = {}
        self.free_by_amount: dict[tuple[str, int], dict[int, LedgerItem]] = {}
        self.free_by_day: dict[str, dict[int, LedgerItem]] = {}
        for item in self.moves:
            self.free_by_reference.setdefault(item.reference, {})[item.seq] = item
            self.free_by_amount.setdefault((item.currency, item.amount), {})[item.seq] = item
            self.free_by_day.setdefault(item.value_date, {})[item.seq] = item
        self.results: dict[str, dict[str, Any]] = {}
        self.open_lines: list[StatementLine] = []

    def take(self, line: StatementLine, items: list[LedgerItem], status: str = MATCHED,
             field: str | None = None) -> None:
        for item in items:
            del self.free[item.seq]
            del self.free_by_reference[item.reference][item.seq]
            del self.free_by_amount[(item.currency, item.amount)][item.seq]
            del self.free_by_day[item.value_date][item.seq]
        reason = None if field is None else f"the {field} differs from the ledger's"
        self.results[f"line:{line.line_id}"] = _result(status, "both", [line], items, reason, field)

    def by_reference(self, line: StatementLine) -> bool:
        found = [i for i in self.free_by_reference.get(line.reference, {}).values()
                 if i.currency == line.currency]
        if not found:
            return False
        exact = [i for i in found if i.amount == line.amount]
        chosen = exact[:1] if exact else found if self.rules.many_to_one else found[:1]
        field = None
        if sum(i.amount for i in chosen) != line.amount:
            field = "amount"
        elif any(_days(i.value_date, line.value_date) > self.rules.date_window_days for i in chosen):
            field = "value_date"
        elif self.rules.counterparty and any(i.counterparty != line.counterparty for i in chosen):
            field = "counterparty"
        self.take(line, chosen, MISMATCHED if field else MATCHED, field)
        return True

    def by_amount_date(self, line: StatementLine) -> bool:
        def fits(i: LedgerItem) -> bool:
            return i.currency == line.currency and \
                _days(i.value_date, line.value_date) <= self.rules.date_window_days and \
                (not self.rules.counterparty or i.counterparty == line.counterparty)

        same = self.free_by_amount.get((line.currency, line.amount), {})
        single = next((i for i in same.values() if fits(i)), None)
        if single is not None:
            self.take(line, [single])
            return True
        if self.rules.many_to_one:
            batch = [i for i in self.free_by_day.get(line.value_date, {}).values()
                     if fits(i) and (i.amount > 0) == (line.amount > 0)]
            if len(batch) > 1 and sum(i.amount for i in batch) == line.amount:
                self.take(line, batch)
                return True
        return False

    def run(self, horizon: str | None) -> dict[str, dict[str, Any]]:
        left = self.lines
        if "reference" in self.rules.by:
            left = [ln for ln in left if ln.reference is None or not self.by_reference(ln)]
        if "amount_date" in self.rules.by:
            left = [ln for ln in left if not self.by_amount_date(ln)]
        if horizon is None:
            return self.results
        last = (date.fromisoformat(horizon) - timedelta(days=self.rules.grace_days)).isoformat()
        said = {(r["reference"], r["amount"], r["value_date"]): key
                for key, r in self.results.items() if r["status"] == MATCHED}
        for line in left:
            if line.value_date > last:
                continue      # pending: the statements have not reached its grace yet
            twin = said.get((line.reference, line.amount, line.value_date))
            reason = f"a duplicate of {twin}" if twin else \
                "the ledger refused the request of this reference" if line.reference in \
                self.refused else "missing from the ledger"
            self.results[f"line:{line.line_id}"] = _result(UNMATCHED, "statement", [line], [], reason)
        for item in self.free.values():
            if item.value_date <= last:
                self.results[f"event:{item.seq}"] = _result(UNMATCHED, "ledger", [], [item],
                                                            "missing from the statement")
        return self.results


def reconcile(lines: list[StatementLine], items: list[LedgerItem],
              rules: Rules) -> dict[str, dict[str, Any]]:
    """Item key (`line:<id>` or `event:<seq>`) -> its result, for one account."""
    horizon = max((ln.value_date for ln in lines), default=None)
    return _Matcher(lines, items, rules).run(horizon)


def differences(before: dict[str, dict[str, Any]],
                after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """What changed from one set of results to another (None: the item has no result now)."""
    changed: dict[str, dict[str, Any] | None] = {k: v for k, v in after.items() if before.get(k) != v}
    changed.update({k: None for k in before if k not in after})
    return changed
