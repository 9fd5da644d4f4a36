"""Queries over one account's ledger history, as the views store it: filtered transfers
with a cursor, the balance at a point of the log, and statements.

Pure functions over `read(seq) -> (event, ledger offset) | None`, so the web endpoint runs
them over its table and the tests over a list. Every query has a budget of history entries
it may read (`scan_budget`): a filtered page that runs out of budget comes back short, with
a cursor to go on from, and a statement over more events than the budget is refused, so no
one request can keep a views worker busy for long.

Time here is the ledger's `ts` (the broker's clock when the request was logged). Per
account it follows seq, so the balance at a time and a statement's window are found by
binary search over seq; an exact point is a ledger offset (`as_of_offset`).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import orjson

from kbank.streams.model import DAY_MS

Entry = tuple[dict[str, Any], "int | None"]
Reader = Callable[[int], "Entry | None"]
SCAN_BUDGET = 10_000          # history entries one query may read (BANK_WEB_QUERY_BUDGET)
MAX_PAGE = 200


class QueryError(ValueError):
    """A query that cannot be answered as asked (a bad cursor, a window past the budget)."""


MAX_TIME_MS = 253_402_300_799_999   # 9999-12-31T23:59:59.999Z, what ISO-8601 can say


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from an ISO-8601 time or a number of milliseconds (ASCII
    digits, at most MAX_TIME_MS: a `²` or 5,000 digits is refused, never an error)."""
    if text.isascii() and text.isdigit():
        if len(text) > len(str(MAX_TIME_MS)) or int(text) > MAX_TIME_MS:
            raise QueryError(f"a time in milliseconds is at most {MAX_TIME_MS}")
        return int(text)
    if len(text) > 64:
        raise QueryError(f"not a time: {text[:40]!r}... (ISO-8601 or epoch milliseconds)")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"not a time: {text[:40]!r} (ISO-8601 or epoch milliseconds)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def parse_day(text: str) -> int:
    """Milliseconds since the epoch at the start of a UTC day given as YYYY-MM-DD."""
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise QueryError(f"not a day: {text[:40]!r} (YYYY-MM-DD, UTC)") from None
    return int(day.timestamp() * 1000)


def format_day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class TransferFilter:
    """What GET /accounts/{id}/transfers keeps; None and empty mean any."""

    since_ts: int | None = None
    until_ts: int | None = None
    kinds: frozenset[str] = frozenset()
    counterparty: str | None = None
    min_amount: int | None = None
    max_amount: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def keeps(self, event: dict[str, Any]) -> bool:
        ts, amount = event["ts"], event["amount"]
        if (self.since_ts is not None and ts < self.since_ts) or \
                (self.until_ts is not None and ts > self.until_ts):
            return False
        if self.kinds and event["kind"] not in self.kinds:
            return False
        if self.counterparty is not None and event.get("counterparty") != self.counterparty:
            return False
        if (self.min_amount is not None and amount < self.min_amount) or \
                (self.max_amount is not None and amount > self.max_amount):
            return False
        labels = event.get("metadata") or {}
        return all(labels.get(k) == v for k, v in self.metadata.items())


def encode_cursor(next_seq: int, newest_first: bool) -> str:
    """An opaque cursor: where the next page starts. It names a seq, so it stays valid
    while new events arrive (they get higher seqs)."""
    return base64.urlsafe_b64encode(orjson.dumps([next_seq, newest_first])).decode().rstrip("=")


def decode_cursor(cursor: str, newest_first: bool) -> int:
    try:
        seq, order = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise QueryError("cursor is not one this endpoint made") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or order is not newest_first:
        raise QueryError("cursor is not one this endpoint made for this order")
    return seq


@dataclass
class Page:
    entries: list[Entry]
    next_cursor: str | None     # None: nothing further
    scanned: int                # history entries read to make it


def transfers_page(read: Reader, last_seq: int, keep: TransferFilter, newest_first: bool,
                   limit: int, cursor: str | None, scan_budget: int = SCAN_BUDGET) -> Page:
    """The next `limit` events that `keep` keeps, in the order asked, reading at most
    `scan_budget` entries (then a shorter page, with a cursor to go on)."""
    assert 1 <= limit <= MAX_PAGE and scan_budget >= 1
    seq = decode_cursor(cursor, newest_first) if cursor else (last_seq if newest_first else 1)
    step, end = (-1, 0) if newest_first else (1, last_seq + 1)
    found: list[Entry] = []
    scanned = 0
    while seq != end and (seq <= last_seq if not newest_first else seq >= 1) \
            and len(found) < limit and scanned < scan_budget:
        entry = read(seq)
        scanned += 1
        seq += step
        if entry is not None and keep.keeps(entry[0]):
            found.append(entry)
    more = seq >= 1 if newest_first else seq <= last_seq
    return Page(found, encode_cursor(seq, newest_first) if more else None, scanned)


def seq_at(read: Reader, last_seq: int, ts: int | None = None, offset: int | None = None) -> int:
    """The last seq whose event is at or before `ts` (its ledger time) or before `offset`
    (its ledger position); 0 if none is. A binary search: about log2(seqs) reads."""
    assert (ts is None) != (offset is None)
    low, high = 0, last_seq            # seq `low` qualifies (0: before the first event)
    while low < high:
        mid = (low + high + 1) // 2
        entry = read(mid)
        if entry is None:
            raise QueryError(f"history entry {mid} is missing")
        event, at = entry
        fits = event["ts"] <= ts if ts is not None else at is not None and at < offset
        low, high = (mid, high) if fits else (low, mid - 1)
    return low


def balance_at(read: Reader, last_seq: int, ts: int | None = None,
               offset: int | None = None) -> dict[str, Any]:
    """The account's balance after its last event at or before the point asked."""
    seq = seq_at(read, last_seq, ts, offset)
    if seq == 0:
        return {"seq": 0, "balance": 0, "ts": None, "offset": None}
    event, at = read(seq)  # type: ignore[misc]
    return {"seq": seq, "balance": event["balance"], "ts": event["ts"], "offset": at}


TotalsReader = Callable[[int], "list[Any] | None"]   # seq -> the account's totals after it


MAX_STATEMENT_DAYS = 366     # days with events a daily breakdown may list


def statement(read: Reader, totals: TotalsReader, last_seq: int, since_ts: int,
              until_ts: int, daily: bool, partition: int) -> dict[str, Any]:
    """Opening and closing balance, money in and out, counts by kind over [since, until],
    per UTC day if asked; each figure names the seqs and ledger offsets it comes from.

    Every history entry keeps the account's running totals, so a window's figures are the
    difference of two of them: a few binary searches, however many events are in the window
    (issue 41: others crediting an account, or holding money for it, must not make its
    owner's statement too large to answer). A daily breakdown costs that per day with
    events, for at most MAX_STATEMENT_DAYS of them."""
    if until_ts < since_ts:
        raise QueryError("to is before from")

    def entry(seq: int) -> Entry:
        found = read(seq)
        if found is None:
            raise QueryError(f"history entry {seq} is missing")
        return found

    def after(seq: int) -> list[Any]:
        found = totals(seq)
        if found is None:
            raise QueryError(f"history entry {seq} is missing")
        return found

    def window(first: int, last: int) -> dict[str, Any]:
        opening = entry(first - 1)[0]["balance"] if first > 1 else 0
        if last < first:
            return _figures(opening, opening, 0, 0, {}, None, None)
        (in_0, out_0, counts_0), (in_1, out_1, counts_1) = after(first - 1), after(last)
        counts = {k: n - counts_0.get(k, 0) for k, n in counts_1.items() if n - counts_0.get(k, 0)}
        closing = entry(last)[0]["balance"]
        assert opening + (in_1 - in_0) - (out_1 - out_0) == closing, (first, last)
        return _figures(opening, closing, in_1 - in_0, out_1 - out_0, counts, first, last)

    first = seq_at(entry, last_seq, ts=since_ts - 1) + 1
    last = seq_at(entry, last_seq, ts=until_ts)
    out = {"from": since_ts, "to": until_ts, **window(first, last),
           "positions": {"partition": partition,
                         "first_offset": entry(first)[1] if last >= first else None,
                         "last_offset": entry(last)[1] if last >= first else None}}
    if daily:
        days: list[dict[str, Any]] = []
        start = first
        while start <= last:           # one day with events at a time
            if len(days) == MAX_STATEMENT_DAYS:
                raise QueryError(f"a daily statement lists at most {MAX_STATEMENT_DAYS} days "
                                 f"with events: ask for fewer days")
            day = entry(start)[0]["ts"] // DAY_MS
            end = seq_at(entry, last, ts=(day + 1) * DAY_MS - 1)
            days.append({"day": day, **window(start, end)})
            start = end + 1
        out["days"] = days
    return out


def _figures(opening: int, closing: int, money_in: int, money_out: int, counts: dict[str, int],
             first_seq: int | None, last_seq: int | None) -> dict[str, Any]:
    return {"opening_balance": opening, "closing_balance": closing, "money_in": money_in,
            "money_out": money_out, "events": sum(counts.values()), "counts": counts,
            "first_seq": first_seq, "last_seq": last_seq}


RankedEntry = tuple[int, int, str]      # (bucket, stored figure, account), highest bucket first
MAX_TOP = 100


def rank_value(bucket: int, figure: int, account: str) -> bytes:
    """A ranking index entry's value (its key: store.ViewKeys.rank)."""
    return f"{bucket} {figure} {account}".encode("utf-8", "surrogatepass")


def parse_rank_value(value: bytes) -> RankedEntry:
    bucket, figure, account = value.split(b" ", 2)
    return int(bucket), int(figure), account.decode("utf-8", "surrogatepass")


def top_ranked(entries: Iterable[RankedEntry], figure_of: Callable[[str, int, int], "int | None"],
               limit: int, scan_budget: int = SCAN_BUDGET) -> tuple[list[tuple[int, str]], bool]:
    """The `limit` highest figures of a ranking index read in bucket order (highest first):
    every entry of a bucket is read before a lower one, so once `limit` live entries are
    found, the rest of their last bucket is read and nothing below. `figure_of(account,
    bucket, stored)` is the entry's figure or None if stale. Returns ([(figure, account)],
    complete): not complete if the budget ran out first."""
    assert 1 <= limit <= MAX_TOP and scan_budget >= 1
    found: dict[str, int] = {}
    cutoff: int | None = None
    for read, (bucket, stored, account) in enumerate(entries):
        if cutoff is not None and bucket < cutoff:
            break
        if read >= scan_budget:
            return _best(found, limit), False
        figure = figure_of(account, bucket, stored)
        if figure is not None:
            found[account] = max(figure, found.get(account, 0))
            if cutoff is None and len(found) >= limit:
                cutoff = bucket
    return _best(found, limit), True


def _best(found: dict[str, int], limit: int) -> list[tuple[int, str]]:
    return highest([(figure, account) for account, figure in found.items()], limit)


def highest(rows: list[tuple[int, str]], limit: int) -> list[tuple[int, str]]:
    """The `limit` (figure, account) rows of a ranking's answer: highest figure first, ties
    by account name (the order of a partition's, a worker's and the merged answer)."""
    return sorted(rows, key=lambda row: (-row[0], row[1]))[:limit]
