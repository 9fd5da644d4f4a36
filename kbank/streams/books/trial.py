"""A close's trial balance (pure): per currency, the accounts' balances grouped by a
metadata key (a chart-of-accounts code, say), debit balances (below zero) and credit
balances apart, and the line that proves the books add up at the cut:
credit - debit + in flight = deposits - withdrawals."""
from __future__ import annotations

from typing import Any

from kbank.streams.books.closes import Close

MAX_GROUPS = 10_000        # an answer's bound: a key with more values is refused, not truncated


class TooManyGroups(ValueError):
    """The metadata key has more distinct values than one answer holds."""


def trial_balance(close: Close, by: str | None = None) -> dict[str, Any]:
    """Per currency: its groups (by metadata key `by`; one group without it) and its totals."""
    currencies: dict[str, Any] = {}
    groups_seen = 0
    for cur, money in sorted(close.currencies.items()):
        groups: dict[str | None, list[int]] = {}
        for account in close.accounts:
            if account.currency != cur:
                continue
            value = account.metadata.get(by) if by is not None else None
            row = groups.get(value)
            if row is None:
                groups_seen += 1
                if groups_seen > MAX_GROUPS:
                    raise TooManyGroups(f"metadata key {by!r} has more than {MAX_GROUPS} values")
                row = groups[value] = [0, 0, 0, 0]
            row[0] += 1
            row[1 if account.balance < 0 else 2] += abs(account.balance)
            row[3] += account.held
        lines = [{"group": value, "accounts": n, "debit": debit, "credit": credit, "held": held}
                 for value, (n, debit, credit, held) in
                 sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or ""))]
        debit = sum(line["debit"] for line in lines)
        credit = sum(line["credit"] for line in lines)
        assert credit - debit == money.balances, (cur, credit, debit, money.balances)
        currencies[cur] = {
            "lines": lines,
            "totals": {"accounts": money.accounts, "debit": debit, "credit": credit,
                       "held": money.held, "in_flight": money.in_flight,
                       "deposits": money.deposits, "withdrawals": money.withdrawals,
                       "balanced": credit - debit + money.in_flight
                       == money.deposits - money.withdrawals}}
    return {"close": close.id, "at_ms": close.at_ms, "by": by, "currencies": currencies}
