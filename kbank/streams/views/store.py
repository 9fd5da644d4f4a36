"""The views table's layout (ViewKeys) and its store: recovery keeps the value furthest along.

Every value of the views table only moves forward: an account view by seq, a
partition's totals and the outcomes position by offset, a request's status by
rank, and a history entry never changes. A Faust changelog is last-writer-wins,
so one late write (a revoked worker's agent still folding a buffered record after
the new owner took over the partition) lands after fresher values and comes back
at the next recovery: a status stuck at `debited`, an account one seq behind.
MonotoneRocksDBStore applies changelog records during recovery and on standbys
by keeping, per key, whichever value is further along (`recovered_value`), so
the order in which the writes reached the changelog no longer matters.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import orjson
from faust import stores
from faust.stores.rocksdb import RocksDBOptions, Store as RocksDBStore
from rocksdict import Options, WriteBatch

from kbank.streams.model import STATUS_RANK
from kbank.streams.storage import StoreBudget
from kbank.streams.views.fold import history_key

STORE_URL = "bank-views-rocksdb://"


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


def _progress(prefix: bytes, value: bytes) -> tuple[int, ...]:
    """How far along a value is; higher is newer (see the module docstring)."""
    if prefix == ViewKeys.ACCOUNT:
        fields = orjson.loads(value)          # AccountView: [balance, seq, offset, ...]
        return (fields[1], fields[2])
    if prefix == ViewKeys.TOTALS:
        return (orjson.loads(value)[0],)      # PartitionTotals: [offset, ...]
    if prefix == ViewKeys.STATUS:     # a later use of the id (fold.merge_status), then rank
        status = orjson.loads(value)
        return (status.get("since") or status.get("ts") or 0, STATUS_RANK[status["status"]])
    if prefix == ViewKeys.OUTCOMES_POSITION:
        return (int(value),)
    return ()                                 # history: immutable, any copy will do


def recovered_value(key: bytes, stored: bytes | None, incoming: bytes | None) -> bytes | None:
    """The value recovery keeps when the changelog brings `incoming` for a key holding `stored`.

    The one further along wins; on a tie (or a value this version cannot read) the
    later write wins, as in a plain changelog. The views never delete: a tombstone is
    applied as it is."""
    if incoming is None or stored is None:
        return incoming
    prefix = key[:2]
    try:
        return stored if _progress(prefix, stored) > _progress(prefix, incoming) else incoming
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return incoming


class _BudgetedOptions(RocksDBOptions):
    """Faust's opener of a partition's RocksDB, with the process's StoreBudget for options
    (Faust's own give each partition a 2 GB block cache and up to three 64 MB memtables)."""

    def __init__(self, budget: StoreBudget) -> None:
        super().__init__(use_rocksdict=True)
        self.budget = budget

    def as_options(self) -> Options:
        return self.budget.options()


class MonotoneRocksDBStore(RocksDBStore):
    """Faust's RocksDB store whose changelog recovery keeps the furthest value per key."""

    last_write_wins = False  # testing only (BANK_UNSAFE_VIEWS_LAST_WRITE_WINS)
    budget: StoreBudget | None = None  # the process's, set by the views app before any store opens

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.budget is not None, "the views app sets MonotoneRocksDBStore.budget"
        self.rocksdb_options = _BudgetedOptions(self.budget)

    def scan(self, partition: int, prefix: bytes, after: bytes, limit: int) -> list[bytes]:
        """The values of scan_items."""
        return [value for _, value in self.scan_items(partition, prefix, after, limit)]

    def scan_items(self, partition: int, prefix: bytes, after: bytes,
                   limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) of keys that start with `prefix` and sort after
        prefix + `after`, in key order, from one partition's local store."""
        out: list[tuple[bytes, bytes]] = []
        for key, value in self._db_for_partition(partition).items(from_key=prefix + after):
            if not key.startswith(prefix) or len(out) >= limit:
                break
            if key != prefix + after or not after:
                out.append((key, value))
        return out

    def values(self, partition: int, prefix: bytes) -> Iterator[bytes]:
        """The values of keys that start with `prefix`, in key order, read lazily."""
        for key, value in self._db_for_partition(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield value

    def write_values(self, values: dict[tuple[int, bytes], bytes | None]) -> None:
        """Write (partition, key) -> value (None: delete), one WriteBatch per partition."""
        batches: dict[int, WriteBatch] = {}
        for (partition, key), value in values.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, batch in batches.items():
            self._db_for_partition(partition).write(batch)

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Callable[[Any], Any],
                              to_value: Callable[[Any], Any]) -> None:
        if self.last_write_wins:
            return super().apply_changelog_batch(batch, to_key, to_value)
        merged: dict[tuple[int, bytes], bytes | None] = {}
        offsets: dict[Any, int] = {}
        for event in batch:
            msg = event.message
            offsets[msg.tp] = max(msg.offset, offsets.get(msg.tp, -1))
            slot = (msg.partition, msg.key)
            stored = merged[slot] if slot in merged else self._db_for_partition(msg.partition).get(msg.key)
            merged[slot] = recovered_value(msg.key, stored, msg.value)
        self.write_values(merged)
        for tp, offset in offsets.items():
            self.set_persisted_offset(tp, offset)


stores.STORES.aliases["bank-views-rocksdb"] = f"{__name__}:MonotoneRocksDBStore"
