"""Which ledger events belong to the close at an instant T, and the close they make (pure).

The rule is the engine's clock. A partition's clock is the largest input timestamp its
engine had applied (the broker's append time of a request, the engine's time of a credit);
an event belongs to the close at T when that clock had not passed T when the event was
decided: the event and every event before it in its partition have ts <= T. So each
partition's share of a close is a prefix of it, each account's events in the close are a
prefix of its seqs, and the cut is fixed by the log alone: a close of the same instant made
later reads the same prefixes and encodes to the same bytes (kbank.books.close makes sure
no event of a prefix is still to come before it reads).

Money debited before the cut and credited after it is in flight at the cut; per currency,
balances + in flight = deposits - withdrawals, to the unit, checked here by the same checks
as `bank replay verify` (kbank.replay.checks) over the events of the cut. Held amounts are
part of the balances and are reported beside them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from kbank.replay.checks import LedgerChecks
from kbank.replay.ledger import AccountFold, LedgerFold
from kbank.replay.report import VerifyReport
from kbank.streams.books.closes import (AccountAtClose, Close, CurrencyAtClose, PartitionCut)
from kbank.streams.model import (CREDITED, DEBITED, GENESIS_HASH, OPENED, POSTED, REFUNDED,
                                 event_request_key)


class _NotCounted:
    """In place of verify's check that each request was applied once: it needs every request
    id ever decided, and it is verify's to make (a close is made of the same ledger)."""

    def add(self, request: str, kind: str, account: str, ts: int) -> None:
        pass

    def merge(self, other: "_NotCounted") -> None:
        pass

    def save(self) -> dict[str, Any]:
        return {}

    def restore(self, cp: Any) -> None:  # noqa: ANN401 - a Checkpoint, never given
        pass

    def finish(self, report: VerifyReport) -> None:
        pass


class CloseChecks(LedgerChecks):
    """Verify's checks that a close needs (money per currency, each transfer's legs, the
    holds), in the memory of what is still open: a transfer whose legs are settled is
    forgotten (a later second credit of it is still named, "without a debit")."""

    def __init__(self, window_ms: int) -> None:
        super().__init__(window_ms)
        self.applied = _NotCounted()   # type: ignore[assignment]

    def add(self, ev: dict, acct: AccountFold) -> None:
        super().add(ev, acct)
        if ev["kind"] in (DEBITED, POSTED, CREDITED, REFUNDED):
            key = (event_request_key(ev), acct.currency)
            legs = self.transfers
            if key in legs.debits and legs.returned.get(key) == legs.debits[key]:
                del legs.debits[key], legs.returned[key]
                legs.refunds.pop(key, None)


def _event_ts(raw: bytes) -> int | None:
    """The ts of a raw ledger event; None if it has none (the fold names it malformed)."""
    try:
        ts = orjson.loads(raw).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return ts if type(ts) is int else None


@dataclass
class CloseFold:
    """Folds ledger records, partition by partition in offset order, into the close at
    `at_ms`: each partition's records up to its first event past the cut."""

    at_ms: int
    partitions: int
    window_ms: int
    fold: LedgerFold = field(default_factory=LedgerFold)
    passed: dict[int, int] = field(default_factory=dict)   # partition -> first offset past the cut
    figures: dict[str, tuple[int, int]] = field(default_factory=dict)   # account -> held, pending_in
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.partitions >= 1 and self.at_ms >= 0, (self.partitions, self.at_ms)
        self.checks = CloseChecks(self.window_ms)

    def add(self, partition: int, offset: int, raw: bytes) -> bool:
        """Fold one record; False once its partition's cut is complete (the caller may stop
        reading that partition)."""
        assert 0 <= partition < self.partitions, partition
        if partition in self.passed:
            return False
        ts = _event_ts(raw)
        if ts is not None and ts > self.at_ms:
            self.passed[partition] = offset
            return False
        event = self.fold.apply(raw, f"ledger[{partition}]@{offset}", partition, offset)
        if event is None:
            return True
        name = event["account"]
        account = self.fold.accounts[name]
        account.events.clear()          # a close keeps no history: memory is per account
        account.base = account.seq
        self.checks.add(event, account)
        self.figures[name] = (event.get("held", 0), event.get("pending_in", 0))
        if event["kind"] == OPENED:
            metadata = event.get("metadata")
            self.metadata[name] = dict(metadata) if isinstance(metadata, dict) else {}
        return True

    def close(self, ledger: str, currency: str | None = None) -> tuple[Close, VerifyReport]:
        """The close and the checks' report over its events (report.violations: refuse it);
        with `currency`, that currency's books only (every check still ran over them all)."""
        report = VerifyReport()
        self.checks.finish(self.fold, report)
        accounts = [AccountAtClose(name, a.currency, a.balance, *self.figures.get(name, (0, 0)),
                                   a.seq, a.state, self.metadata.get(name, {}))
                    for name, a in sorted(self.fold.accounts.items())]
        legs = self.checks.transfers
        in_flight = sorted((rid, cur, debited - legs.returned[(rid, cur)])
                           for (rid, cur), debited in legs.debits.items()
                           if legs.returned[(rid, cur)] < debited)
        currencies = {}
        for cur, money in sorted(report.currencies.items()):
            mine = [a for a in accounts if a.currency == cur]
            currencies[cur] = CurrencyAtClose(
                len(mine), money.balance, sum(a.held for a in mine),
                sum(a.pending_in for a in mine), money.in_flight, money.deposits,
                money.withdrawals)
        heads = [PartitionCut(p, h.offset, h.hash, h.events) if (h := self.fold.heads.get(p))
                 else PartitionCut(p, -1, GENESIS_HASH, 0) for p in range(self.partitions)]
        if currency is not None:
            accounts = [a for a in accounts if a.currency == currency]
            in_flight = [t for t in in_flight if t[1] == currency]
            currencies = {c: m for c, m in currencies.items() if c == currency}
        made = Close(self.at_ms, ledger, heads, currencies, in_flight, accounts, currency)
        problem = made.problem()
        if problem:
            report.violations.append(f"the close: {problem}")
        return made, report
