"""The views' key layout: every view in one RocksDB store per ledger partition, told apart
by a key prefix (ViewKeys), and the encoding of a history entry.

The one place the layout is written down: the processor writes these keys, the routes and
queries read them, `bank replay views` rebuilds them.
"""
from __future__ import annotations

from typing import Any

import orjson


def history_key(account: str, seq: int) -> bytes:
    """Keys sort by account, then seq: a page of history is one key range."""
    return f"{account}\x00{seq:012d}".encode("utf-8", "surrogatepass")


class ViewKeys:
    """Keys of the one views table: a prefix per view, so the views cannot collide."""

    ACCOUNT, HISTORY, TOTALS, STATUS, OUTCOMES_POSITION = b"a\x00", b"h\x00", b"t\x00", b"s\x00", b"o\x00"
    INDEX = b"i\x00"   # accounts by currency or by a metadata pair (written when opened)
    RANK = b"r\x00"    # the rankings: accounts by balance bucket, by activity bucket per day

    @staticmethod
    def rank_prefix(ranking: str, group: str) -> bytes:
        label = f"{len(ranking)}:{ranking}{len(group)}:{group}\x00"
        return ViewKeys.RANK + label.encode("utf-8", "surrogatepass")

    @staticmethod
    def rank(ranking: str, group: str, bucket: int, account: str) -> bytes:
        """Highest bucket first in key order; the value is `<bucket> <figure> <account>`."""
        return ViewKeys.rank_prefix(ranking, group) + (0xFFFF - bucket).to_bytes(2, "big") + \
            account.encode("utf-8", "surrogatepass")

    @staticmethod
    def index_prefix(name: str, value: str) -> bytes:
        """Keys of the accounts whose `name` (currency, or metadata.<key>) is `value`; the
        lengths come first, so no two (name, value) pairs share a prefix."""
        label = f"{len(name)}:{name}{len(value)}:{value}\x00"
        return ViewKeys.INDEX + label.encode("utf-8", "surrogatepass")

    @staticmethod
    def index(name: str, value: str, account: str) -> bytes:
        return ViewKeys.index_prefix(name, value) + account.encode("utf-8", "surrogatepass")

    @staticmethod
    def account(account: str) -> bytes:
        return ViewKeys.ACCOUNT + account.encode("utf-8", "surrogatepass")

    @staticmethod
    def history(account: str, seq: int) -> bytes:
        return ViewKeys.HISTORY + history_key(account, seq)

    @staticmethod
    def totals(partition: int) -> bytes:
        return ViewKeys.TOTALS + b"%d" % partition

    @staticmethod
    def status(request_id: str) -> bytes:
        return ViewKeys.STATUS + request_id.encode("utf-8", "surrogatepass")

    @staticmethod
    def outcomes_position(partition: int) -> bytes:
        return ViewKeys.OUTCOMES_POSITION + b"%d" % partition


def history_value(offset: int, totals: list[Any], raw: bytes) -> bytes:
    """`<ledger offset> <the account's totals after it> <event JSON>` (orjson's encoding
    has no spaces)."""
    return b"%d %s %s" % (offset, orjson.dumps(totals), raw)


def split_history_value(stored: bytes) -> tuple[int, bytes]:
    """(ledger offset, event JSON) of a history value."""
    offset, _, rest = stored.partition(b" ")
    return int(offset), rest.partition(b" ")[2]


def history_totals(stored: bytes) -> list[Any]:
    """The account's totals after the event of a history value."""
    return orjson.loads(stored.split(b" ", 2)[1])
