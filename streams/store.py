"""A partition's state store: RocksDB (rocksdict) plus the open batch's changes.

Like a Kafka Streams state store with its changelog: the engine reads and
writes through this class during a batch; the changes stay in memory until
the batch's Kafka transaction has committed, then go to RocksDB in one atomic
write together with the checkpoint: the changelog offset of the last applied
batch's MANIFEST, from which a restore reads (it meets that batch again, which
rewrites identical state, and follows whoever really continued it). A crash
before that write loses nothing.

Keys: b"a:<account>" -> Account json; b"<k>:<id>" -> b"1" for applied ids;
b"__checkpoint" -> the changelog offset of the last applied batch's manifest,
and b"__position" -> the input offsets [credits, requests] that batch started at.
"""
from __future__ import annotations

import os
import shutil

import orjson
from rocksdict import Options, Rdict, WriteBatch

from streams.changelog import APPLIED_IDS
from streams.model import Account

_CHECKPOINT = b"__checkpoint"
_POSITION = b"__position"


class PartitionStore:
    """State of one engine partition, with write-behind of the open batch."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._db = Rdict(path, Options(raw_mode=True))
        self._cache: dict[str, Account] = {}       # committed accounts, decoded
        self._dirty: dict[str, Account] = {}       # accounts changed by the open batch
        self._dirty_marks: set[str] = set()        # ids applied by the open batch

    # -- reads and writes of the open batch --------------------------------
    def account(self, name: str) -> Account | None:
        acct = self._dirty.get(name) or self._cache.get(name)
        if acct is None:
            raw = self._db.get(b"a:" + name.encode())
            if raw is None:
                return None
            acct = self._cache[name] = Account.from_json(orjson.loads(raw))
        return acct

    def put_account(self, name: str, acct: Account) -> None:
        self._dirty[name] = acct

    def is_applied(self, marker: str) -> bool:
        return marker in self._dirty_marks or self._db.get(marker.encode()) is not None

    def mark_applied(self, marker: str) -> None:
        self._dirty_marks.add(marker)

    def changes(self) -> tuple[dict[str, Account], set[str]]:
        """The open batch's changed accounts and applied ids (for the changelog)."""
        return self._dirty, self._dirty_marks

    # -- batch boundaries ----------------------------------------------------
    def commit(self, checkpoint: int | None, position: tuple[int, int]) -> None:
        """The batch's transaction committed: persist its changes atomically."""
        wb = WriteBatch(raw_mode=True)
        for name, acct in self._dirty.items():
            wb.put(b"a:" + name.encode(), orjson.dumps(acct.to_json()))
        for marker in self._dirty_marks:
            wb.put(marker.encode(), b"1")
        if checkpoint is not None:
            wb.put(_CHECKPOINT, str(checkpoint).encode())
            wb.put(_POSITION, orjson.dumps(position))
        self._db.write(wb)
        self._cache.update(self._dirty)
        self._dirty = {}
        self._dirty_marks = set()

    def discard(self) -> None:
        """The batch's transaction aborted: forget its changes."""
        self._dirty = {}
        self._dirty_marks = set()

    # -- restore from the changelog -----------------------------------------
    @property
    def checkpoint(self) -> int:
        raw = self._db.get(_CHECKPOINT)
        return int(raw) if raw is not None else 0

    @property
    def position(self) -> tuple[int, int]:
        raw = self._db.get(_POSITION)
        return tuple(orjson.loads(raw)) if raw is not None else (0, 0)  # type: ignore[return-value]

    def restore(self, records: list[tuple[bytes, bytes]], checkpoint: int,
                position: tuple[int, int]) -> None:
        """Write changelog records (store key and value, or APPLIED_IDS and its list),
        checkpoint and position."""
        wb = WriteBatch(raw_mode=True)
        for key, value in records:
            if key == APPLIED_IDS:
                for marker in orjson.loads(value):
                    wb.put(marker.encode(), b"1")
            else:
                wb.put(key, value)
        wb.put(_CHECKPOINT, str(checkpoint).encode())
        wb.put(_POSITION, orjson.dumps(position))
        self._db.write(wb)
        self._cache.clear()
        self.discard()

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def wipe(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
