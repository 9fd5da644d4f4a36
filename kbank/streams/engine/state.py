"""A partition's state store: RocksDB (rocksdict), with the open batch buffered in memory.

As in Kafka Streams and Quix Streams, RocksDB never holds uncommitted data:
reads during a batch see its buffered writes, and only after the batch's
transaction has committed are they written, in one WriteBatch together with
the changelog offset they reflect (which never moves backwards). A crash
before that write loses nothing: the restore reads the changelog from that
offset and finds the batch there.

Keys: kbank/streams/storekeys.py (accounts, holds, markers, supply, chain head, clock, the
expiry index, the changelog offset and the input position the state reflects, which a
restore compares with the group's committed offsets).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterator

import orjson
from rocksdict import Rdict, WriteBatch

from kbank.streams.files import private_dir
from kbank.streams.engine.apply import NEVER_EXPIRES, holds_open, unstamp
from kbank.streams.engine.changelog import BatchRecord, account_key, hold_key
from kbank.streams.decisions import marked_request
from kbank.streams.model import ACCEPTED, GENESIS_HASH, HELD_STATUS, PENDING, Account, Hold
from kbank.streams.storage import StoreBudget
from kbank.streams.storekeys import (ACCOUNT_PREFIX, BATCH_PREFIX, CHAIN_KEY,
                                     CHANGELOG_OFFSET_KEY, CLOCK_KEY, EXPIRY_PREFIX, HOLD_PREFIX,
                                     INCOMING_PREFIX, POSITION_KEY, SUPPLY_KEY)

_CHANGELOG_OFFSET = CHANGELOG_OFFSET_KEY
_POSITION = POSITION_KEY
_CACHE_ACCOUNTS = 200_000  # decoded accounts kept in memory, most recently used
_EXPIRY_PREFIX = EXPIRY_PREFIX
# a request marker's value (FirstDecision) with one of these first statuses may have made a
# hold (a linked transfer is first `accepted`): only then is the hold looked up on expiry
_MAY_HOLD = (f" {HELD_STATUS} ", f" {ACCEPTED} ")


def _expiry_entry(clock: int, key: str) -> bytes:
    return f"z:{clock:015d}:{key}".encode()


def _max_position(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (max(a[0], b[0]), max(a[1], b[1]))


class PartitionStore:
    """State of one engine partition."""

    def __init__(self, path: str, budget: StoreBudget) -> None:
        private_dir(os.path.dirname(path) or ".")
        self.path = path
        self._db = Rdict(path, budget.options())
        self._cache: OrderedDict[str, Account] = OrderedDict()  # committed accounts, decoded
        self._dirty: dict[str, Account] = {}       # accounts changed by the open batch
        self._dirty_marks: dict[str, str] = {}     # ids applied by the open batch -> value
        self._dirty_holds: dict[str, Hold] = {}    # holds made or settled by the open batch
        self._supply: int | None = None            # the open batch's supply, if it changed
        self._committed_supply: int | None = None  # the committed supply, once read
        self._head: str | None = None              # the open batch's chain head, if it moved
        self._committed_head: str | None = None    # the committed chain head, once read
        self._clock: int | None = None             # the open batch's clock, if it moved
        self._committed_clock: int | None = None   # the committed clock, once read
        self._expired: list[bytes] = []            # keys the open batch deletes (expiry)
        self._batch_keys: list[bytes] = []         # the open batch's changelog batch records

    # -- reads and writes of the open batch --------------------------------
    def account(self, name: str) -> Account | None:
        acct = self._dirty.get(name)
        if acct is not None:
            return acct
        acct = self._cache.get(name)
        if acct is None:
            raw = self._db.get(account_key(name))
            if raw is None:
                return None
            acct = self._cache[name] = Account.from_json(orjson.loads(raw))
            if len(self._cache) > _CACHE_ACCOUNTS:
                self._cache.popitem(last=False)
        return acct

    def put_account(self, name: str, acct: Account) -> None:
        self._dirty[name] = acct

    def applied(self, marker: str) -> str | None:
        """The value of an applied-id marker, None if the id was never applied."""
        value = self._dirty_marks.get(marker)
        if value is not None:
            return value
        raw = self._db.get(marker.encode())
        return raw.decode() if raw is not None else None

    def mark_applied(self, marker: str, value: str) -> None:
        self._dirty_marks[marker] = value

    def supply(self) -> int:
        """The partition's money supply (deposits - withdrawals), as of the open batch."""
        if self._supply is not None:
            return self._supply
        if self._committed_supply is None:
            raw = self._db.get(SUPPLY_KEY)
            self._committed_supply = orjson.loads(raw) if raw is not None else 0
        return self._committed_supply

    def add_supply(self, amount: int) -> None:
        self._supply = self.supply() + amount

    def supply_changed(self) -> bool:
        return self._supply is not None

    def chain_head(self) -> str:
        """The hash of the partition's last ledger event, as of the open batch."""
        if self._head is not None:
            return self._head
        if self._committed_head is None:
            raw = self._db.get(CHAIN_KEY)
            self._committed_head = raw.decode() if raw is not None else GENESIS_HASH
        return self._committed_head

    def set_chain_head(self, head: str) -> None:
        self._head = head

    def chain_moved(self) -> bool:
        return self._head is not None

    def clock(self) -> int:
        """The latest input timestamp the partition applied, as of the open batch."""
        if self._clock is not None:
            return self._clock
        if self._committed_clock is None:
            raw = self._db.get(CLOCK_KEY)
            self._committed_clock = int(raw) if raw is not None else 0
        return self._committed_clock

    def advance_clock(self, ts: int) -> None:
        if ts > self.clock():
            self._clock = ts

    def clock_moved(self) -> bool:
        return self._clock is not None

    def expire(self, horizon: int, limit: int) -> list[bytes]:
        """Forget, in the open batch, the index entries of batches committed with a clock at
        or before `horizon` (apply.expiry_horizon), whole entries until `limit` markers and
        holds are done: delete their markers, but carry a marker forward (re-applied in
        this batch, so its record has it) while the hold its request made is pending;
        delete settled holds. Returns the changelog keys whose tombstones to write (the
        entries' batch records, the settled holds)."""
        tombstones: list[bytes] = []
        end, done = _expiry_entry(horizon + 1, ""), 0
        for key, value in self._db.items(from_key=_EXPIRY_PREFIX):
            if done >= limit or key >= end:
                break
            self._expired.append(key)
            markers, holds, records = orjson.loads(value)
            done += 1 + len(markers) + len(holds)
            tombstones += [record.encode() for record in records]
            for hold_id in holds:
                hold = self.hold(hold_id)
                if hold is not None and hold.settled_at and hold.settled_at <= horizon \
                        and hold_id not in self._dirty_holds:
                    self._expired.append(hold_key(hold_id))
                    tombstones.append(hold_key(hold_id))
                # else made again since: its own entry comes later
            for marker in markers:
                raw = self._db.get(marker.encode())
                if raw is None or marker in self._dirty_marks:
                    continue
                stamped, value = unstamp(raw.decode())
                if stamped > horizon:
                    continue      # re-applied since (a new request): its own entry comes later
                if value.startswith(_MAY_HOLD, value.find(" ")) \
                        and holds_open(self.hold(marked_request(marker) or "")):
                    self._dirty_marks[marker] = raw.decode()   # its hold is still pending
                else:
                    self._expired.append(marker.encode())
        return tombstones

    def note_batch_records(self, keys: list[bytes]) -> None:
        """The changelog records carrying the open batch's ids (expired with them)."""
        self._batch_keys = keys

    def hold(self, hold_id: str) -> Hold | None:
        hold = self._dirty_holds.get(hold_id)
        if hold is not None:
            return hold
        raw = self._db.get(hold_key(hold_id))
        return Hold.from_json(orjson.loads(raw)) if raw is not None else None

    def put_hold(self, hold_id: str, hold: Hold) -> None:
        self._dirty_holds[hold_id] = hold

    def changes(self) -> tuple[dict[str, Account], dict[str, str], dict[str, Hold]]:
        """The open batch's changed accounts, applied ids and holds (for the changelog)."""
        return self._dirty, self._dirty_marks, self._dirty_holds

    def pending_holds(self) -> Iterator[tuple[int, str]]:
        """(deadline, hold_id) of every committed pending hold: what may have to expire."""
        for key, raw in self._db.items(from_key=HOLD_PREFIX):
            if not key.startswith(HOLD_PREFIX):
                break
            hold = Hold.from_json(orjson.loads(raw))
            if hold.state == PENDING and hold.members is None:   # linked ones never expire
                yield hold.deadline, key[len(HOLD_PREFIX):].decode()

    # -- batch boundaries ----------------------------------------------------
    def commit(self, changelog_offset: int, position: tuple[int, int]) -> None:
        """The batch's transaction committed: persist its changes with the changelog offset
        and the input position it reached."""
        wb = WriteBatch(raw_mode=True)
        wb.put(_POSITION, orjson.dumps(_max_position(self.position, position)))
        for name, acct in self._dirty.items():
            wb.put(account_key(name), orjson.dumps(acct.to_json()))
        for marker, value in self._dirty_marks.items():
            wb.put(marker.encode(), value.encode())
        if self._batch_keys:
            wb.put(_expiry_entry(self.clock(), self._batch_keys[-1].decode()), orjson.dumps([
                [m for m in self._dirty_marks if not m.startswith(NEVER_EXPIRES)],
                [key for key, hold in self._dirty_holds.items() if hold.settled_at],
                [key.decode() for key in self._batch_keys]]))
        for key in self._expired:
            wb.delete(key)
        if self._clock is not None:
            wb.put(CLOCK_KEY, str(self._clock).encode())
            self._committed_clock = self._clock
        for key, hold in self._dirty_holds.items():
            wb.put(hold_key(key), orjson.dumps(hold.to_json()))
        if self._supply is not None:
            wb.put(SUPPLY_KEY, orjson.dumps(self._supply))
            self._committed_supply = self._supply
        if self._head is not None:
            wb.put(CHAIN_KEY, self._head.encode())
            self._committed_head = self._head
        wb.put(_CHANGELOG_OFFSET, str(max(changelog_offset, self.changelog_offset)).encode())
        self._db.write(wb)
        self._cache.update(self._dirty)
        self.discard()

    def discard(self) -> None:
        """The batch's transaction aborted: forget its changes."""
        self._dirty = {}
        self._dirty_marks = {}
        self._dirty_holds = {}
        self._supply = None
        self._head = None
        self._clock = None
        self._expired = []
        self._batch_keys = []

    # -- restore from the changelog -----------------------------------------
    @property
    def changelog_offset(self) -> int:
        """The next changelog offset this store has not applied."""
        raw = self._db.get(_CHANGELOG_OFFSET)
        return int(raw) if raw is not None else 0

    @property
    def position(self) -> tuple[int, int]:
        """The input offsets (credits, requests) the stored state reflects."""
        raw = self._db.get(_POSITION)
        return tuple(orjson.loads(raw)) if raw is not None else (0, 0)  # type: ignore[return-value]

    def apply_changelog(self, records: list[tuple[bytes, bytes]], next_offset: int) -> None:
        """Write committed changelog records (key, value) read up to next_offset."""
        assert next_offset >= self.changelog_offset, \
            f"changelog records up to {next_offset} applied over a store at {self.changelog_offset}"
        wb = WriteBatch(raw_mode=True)
        position = self.position
        for key, value in records:
            if key.startswith(BATCH_PREFIX):
                if value is None:
                    continue   # an expired batch: its ids are gone (or go) from the store too
                batch = BatchRecord.decode(value)
                for marker, marker_value in batch.applied.items():
                    wb.put(marker.encode(), marker_value.encode())
                if batch.clock:   # else written before the id window: its ids never expire
                    wb.put(_expiry_entry(batch.clock, key.decode()),
                           orjson.dumps([list(batch.applied), [], [key.decode()]]))
                position = _max_position(position, (batch.credits[1], batch.requests[1]))
            elif value is None:
                wb.delete(key)
            elif key.startswith(HOLD_PREFIX):
                wb.put(key, value)
                settled_at = Hold.from_json(orjson.loads(value)).settled_at
                if settled_at:
                    hold_id = key[len(HOLD_PREFIX):].decode()
                    wb.put(_expiry_entry(settled_at, key.decode()), orjson.dumps([[], [hold_id], []]))
            elif key.startswith((ACCOUNT_PREFIX, INCOMING_PREFIX)) \
                    or key in (SUPPLY_KEY, CHAIN_KEY, CLOCK_KEY):
                wb.put(key, value)
        wb.put(_CHANGELOG_OFFSET, str(next_offset).encode())
        wb.put(_POSITION, orjson.dumps(position))
        self._db.write(wb)
        self._cache.clear()
        self._committed_supply = None
        self._committed_head = None
        self._committed_clock = None
        self.discard()

    def flush(self) -> None:
        """Write the memtables to files (how `bank bench --retention-days` sizes a store)."""
        self._db.flush()

    def close(self) -> None:
        self._db.close()
