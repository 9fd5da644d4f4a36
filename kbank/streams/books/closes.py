"""A close of the books: every account at an instant, the books per currency, where each
ledger partition's share ends (kbank.books.cut says which events belong to it and folds
them). One encoding, sorted and without the time of making, so a close of the same instant
made later is the same bytes; a stored close is decoded only if its sums follow from its
rows."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

VERSION = 1
_CURRENCY = re.compile(r"[A-Z][A-Z0-9]{2,11}")     # a code: never the tail of an ISO time


class CloseError(ValueError):
    """A stored close that is not one: refused, never half-believed."""


def close_id(at_ms: int, currency: str | None = None) -> str:
    """A close's name: its instant in ISO-8601 UTC to the millisecond, and the currency if it
    closes one currency's books only (one close per instant and currency)."""
    moment = datetime.fromtimestamp(at_ms / 1000, timezone.utc)
    instant = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"
    return instant if currency is None else f"{instant}-{currency}"


def split_close_name(text: str) -> tuple[str, str | None]:
    """(the instant's text, the currency or None) of a close's name as a caller gives it."""
    instant, dash, tail = text.rpartition("-")
    if dash and _CURRENCY.fullmatch(tail):
        return instant, tail
    return text, None


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
    currency: str | None = None                  # one currency's books only

    @property
    def id(self) -> str:
        return close_id(self.at_ms, self.currency)

    def anchor(self) -> list[dict[str, Any]]:
        """The heads the close stops at, as `bank replay verify --against` reads them."""
        return [{"partition": c.partition, "offset": c.offset, "hash": c.hash,
                 "events": c.events} for c in self.partitions if c.offset >= 0]

    def summary(self) -> dict[str, Any]:
        """Everything but the accounts and the transfers in flight."""
        return {"id": self.id, "at_ms": self.at_ms, "currency": self.currency,
                "ledger": self.ledger, "accounts": len(self.accounts), "in_flight_transfers": len(self.in_flight),
                "partitions": [c.__dict__ for c in self.partitions],
                "currencies": {cur: {**m.__dict__, "conserved": m.conserved}
                               for cur, m in sorted(self.currencies.items())}}

    def to_bytes(self) -> bytes:
        """The close's one encoding (sorted keys, no time of making): equal closes, equal bytes."""
        return orjson.dumps({
            "v": VERSION, "id": self.id, "at_ms": self.at_ms, "currency": self.currency,
            "ledger": self.ledger, "partitions": [[c.partition, c.offset, c.hash, c.events] for c in self.partitions],
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
                          for n, c, b, h, p, s, st, md in d["accounts"]],
                currency=None if d["currency"] is None else str(d["currency"]))
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
        if self.currency is not None and set(self.currencies) - {self.currency}:
            return f"a close of {self.currency} holds other currencies"
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
