"""The engine changelog's records: what a restore and `bank replay recompute` read.

engine.changelog is compacted and written only inside the engine's
transactions, so a read_committed reader sees whole batches or nothing:

    (the key layout: kbank/streams/storekeys.py, the one place every prefix is named)

Per batch, the changed accounts (a:), holds (h:), the supply (s:), the chain head (l:) and
the clock (t:) as they are after it, a hold notice's marker (i:) under its own key, and one
batch record (b:<c0>:<r0>): the exact input ranges [c0, c1) of transfers.credits and
[r0, r1) of transfers.requests it processed, its clock, and the ids it applied with their
stamped values. The key is unique: the records are the applied-id set. Once the window rule
(engine/apply.py) lets none of a batch's ids count again, the engine writes the record's
tombstone (and its parts'), so the changelog, and a restore, stay bounded by the window.
(The processing order recompute re-runs is kept apart, for good, in engine.batches.) A batch
whose ids would make the record too large writes the excess first as parts, b:<c0>:<r0>:<n>,
with the same ranges; the record without a part comes last.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from kbank.streams.storekeys import ACCOUNT_PREFIX, BATCH_PREFIX, HOLD_PREFIX


def account_key(name: str) -> bytes:
    return ACCOUNT_PREFIX + name.encode()


def hold_key(key: str) -> bytes:
    """A hold is kept under its request_key (sender, hold_id)."""
    return HOLD_PREFIX + key.encode()


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One engine batch of one partition: its input ranges and the ids it applied."""

    credits: tuple[int, int]
    requests: tuple[int, int]
    applied: dict[str, str]          # marker -> its stamped value
    part: int | None = None          # a continuation part of the batch's ids
    clock: int = 0                   # the partition's clock after the batch

    @property
    def key(self) -> bytes:
        suffix = "" if self.part is None else f":{self.part}"
        return BATCH_PREFIX + f"{self.credits[0]}:{self.requests[0]}{suffix}".encode()

    def encode(self) -> bytes:
        body = {"in": [*self.credits, *self.requests], "ids": self.applied, "t": self.clock}
        if self.part is not None:
            body["part"] = self.part
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    def split(self, max_bytes: int) -> list["BatchRecord"]:
        """Records of at most about max_bytes each: parts, then the batch's own record."""
        records, chunk, size = [], {}, 0
        for marker in sorted(self.applied):
            value = self.applied[marker]
            item = len(marker.encode()) + len(value.encode()) + 16   # quotes, escapes, comma
            if chunk and size + item > max_bytes // 2:   # an escaped character may double
                records.append(BatchRecord(self.credits, self.requests, chunk, len(records),
                                           self.clock))
                chunk, size = {}, 0
            chunk[marker] = value
            size += item
        records.append(BatchRecord(self.credits, self.requests, chunk, None, self.clock))
        return records

    @classmethod
    def decode(cls, value: bytes) -> "BatchRecord":
        body = orjson.loads(value)
        c0, c1, r0, r1 = body["in"]
        return cls((c0, c1), (r0, r1), body["ids"], body.get("part"), body.get("t", 0))

    @property
    def range_record(self) -> bytes:
        """The batch's input ranges alone: its engine.batches record (recompute's order)."""
        return orjson.dumps({"in": [*self.credits, *self.requests]})
