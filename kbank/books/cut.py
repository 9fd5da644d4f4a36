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
from datetime import datetime, timezone
from typing import Any

import orjson

from kbank.replay.checks import LedgerChecks
from kbank.replay.ledger import LedgerFold
from kbank.replay.report import VerifyReport
from kbank.streams.model import GENESIS_HASH, OPENED

VERSION = 1


class CloseError(ValueError):
    """A stored close that is not one: refused, never half-believed."""


def close_id(at_ms: int) -> str:
    """A close's name: its instant in ISO-8601 UTC to the millisecond (one close per instant)."""
    moment = datetime.fromtimestamp(at_ms / 1000, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


@dataclass(frozen=True)
class PartitionCut:
    """Where a ledger partition's share of the close ends: its last event in the close
    (offset -1 and the genesis hash: none) and how many events came before."""

    partition: int
    offset: int
    hash: str
    events: int


@dataclass(frozen=True)
class AccountAtClose:
    name: str
    currency: str
    balance: int
    held: int           # reserved by its pending holds (part of the balance)
    pending_in: int     # held for it by others' pending holds (not yet its money)
    seq: int            # its last event in the close
    state: str
    metadata: dict[str, str]

    def row(self) -> list[Any]:
        return [self.name, self.currency, self.balance, self.held, self.pending_in, self.seq,
                self.state, self.metadata]


@dataclass(frozen=True)
class CurrencyAtClose:
    """One currency's books at the cut: balances + in_flight = deposits - withdrawals."""

    accounts: int
    balances: int
    held: int
    pending_in: int
    in_flight: int
    deposits: int
    withdrawals: int

    @property
    def conserved(self) -> bool:
        return self.balances + self.in_flight == self.deposits - self.withdrawals


@dataclass(frozen=True)
class Close:
    at_ms: int
    ledger: str                                  # the ledger topic's logical name
    partitions: list[PartitionCut]
    currencies: dict[str, CurrencyAtClose]
    in_flight: list[tuple[str, str, int]]        # (request key, currency, amount owed)
    accounts: list[AccountAtClose]               # sorted by name

    @property
    def id(self) -> str:
        return close_id(self.at_ms)

    def anchor(self) -> list[dict[str, Any]]:
        """The heads the close stops at, as `bank replay verify --against` reads them."""
        return [{"partition": c.partition, "offset": c.offset, "hash": c.hash,
                 "events": c.events} for c in self.partitions if c.offset >= 0]

    def summary(self) -> dict[str, Any]:
        """Everything but the accounts and the transfers in flight."""
        return {"id": self.id, "at_ms": self.at_ms, "ledger": self.ledger,
                "accounts": len(self.accounts), "in_flight_transfers": len(self.in_flight),
                "partitions": [c.__dict__ for c in self.partitions],
                "currencies": {cur: {**m.__dict__, "conserved": m.conserved}
                               for cur, m in sorted(self.currencies.items())}}

    def to_bytes(self) -> bytes:
        """The close's one encoding (sorted keys, no time of making): equal closes, equal bytes."""
        return orjson.dumps({
            "v": VERSION, "id": self.id, "at_ms": self.at_ms, "ledger": self.ledger,
            "partitions": [[c.partition, c.offset, c.hash, c.events] for c in self.partitions],
            "currencies": {cur: [m.accounts, m.balances, m.held, m.pending_in, m.in_flight,
                                 m.deposits, m.withdrawals]
                           for cur, m in self.currencies.items()},
            "in_flight": [list(t) for t in self.in_flight],
            "accounts": [a.row() for a in self.accounts],
        }, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Close":
        """Decode a stored close, checking its shape and its sums; CloseError if anything is off."""
        try:
            d = orjson.loads(raw)
            if d["v"] != VERSION:
                raise CloseError(f"close version {d['v']!r}, this reads {VERSION}")
            close = cls(
                at_ms=_int(d["at_ms"]), ledger=str(d["ledger"]),
                partitions=[PartitionCut(_int(p), _int(o), str(h), _int(n))
                            for p, o, h, n in d["partitions"]],
                currencies={str(cur): CurrencyAtClose(*(_int(x) for x in figures))
                            for cur, figures in d["currencies"].items()},
                in_flight=[(str(k), str(c), _int(a)) for k, c, a in d["in_flight"]],
                accounts=[AccountAtClose(str(n), str(c), _int(b), _int(h), _int(p), _int(s),
                                         str(st), _metadata(md))
                          for n, c, b, h, p, s, st, md in d["accounts"]])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CloseError(f"not a close: {exc}") from None
        if d["id"] != close.id:
            raise CloseError(f"close {d['id']!r} is stamped {close.id}")
        problem = close.problem()
        if problem:
            raise CloseError(problem)
        return close

    def problem(self) -> str | None:
        """What is wrong with this close, if anything: its sums must follow from its rows."""
        names = [a.name for a in self.accounts]
        if names != sorted(set(names)):
            return "its accounts are not sorted and unique"
        for cur, money in self.currencies.items():
            mine = [a for a in self.accounts if a.currency == cur]
            owed = sum(a for _, c, a in self.in_flight if c == cur)
            if (money.accounts, money.balances, money.held, money.pending_in, money.in_flight) \
                    != (len(mine), sum(a.balance for a in mine), sum(a.held for a in mine),
                        sum(a.pending_in for a in mine), owed):
                return f"its {cur} totals do not add up from its accounts and transfers"
            if not money.conserved:
                return (f"{cur} is not conserved: balances {money.balances} + in flight "
                        f"{money.in_flight} != deposits {money.deposits} - withdrawals "
                        f"{money.withdrawals}")
        if {a.currency for a in self.accounts} - self.currencies.keys():
            return "an account's currency has no totals"
        return None


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an integer")
    return value


def _metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise TypeError("metadata is an object of strings")
    return value


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
        self.checks = LedgerChecks(self.window_ms)

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

    def close(self, ledger: str) -> tuple[Close, VerifyReport]:
        """The close and the checks' report over its events (report.violations: refuse it)."""
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
        made = Close(self.at_ms, ledger, heads, currencies, in_flight, accounts)
        problem = made.problem()
        if problem:
            report.violations.append(f"the close: {problem}")
        return made, report
