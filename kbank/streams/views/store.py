"""The views table's layout (ViewKeys) and its store.

Every view lives in one RocksDB store per ledger partition, told apart by a key prefix. The
store is resumable on its own: it holds, with the state, how far the state has folded each
source partition (kbank.streams.views.writes), so the ledger and the outcomes are its
changelog (issue 42): nothing of it is written to Kafka.
"""
from __future__ import annotations

from typing import Any, Iterator

import orjson
from faust import stores
from faust.stores.rocksdb import RocksDBOptions, Store as RocksDBStore
from rocksdict import Options, WriteBatch

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


class _BudgetedOptions(RocksDBOptions):
    """Faust's opener of a partition's RocksDB, with the process's StoreBudget for options
    (Faust's own give each partition a 2 GB block cache and up to three 64 MB memtables)."""

    def __init__(self, budget: StoreBudget) -> None:
        super().__init__(use_rocksdict=True)
        self.budget = budget

    def as_options(self) -> Options:
        return self.budget.options()


class ViewsStore(RocksDBStore):
    """Faust's RocksDB store under the process's memory budget, with the scans and the
    batched writes the views need."""

    budget: StoreBudget | None = None  # the process's, set by the views app before any store opens

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.budget is not None, "the views app sets ViewsStore.budget"
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


stores.STORES.aliases["bank-views-rocksdb"] = f"{__name__}:ViewsStore"
