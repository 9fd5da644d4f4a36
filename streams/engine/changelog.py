"""The engine changelog's records: what a restore and `bank replay recompute` read.

engine.changelog is compacted and written only inside the engine's
transactions, so a read_committed reader sees whole batches or nothing:

    a:<account>        -> the account's state after the batch (Account json); compaction
                          keeps the latest per account, so a restore is bounded by the
                          number of accounts, not by the length of the history
    h:<hold_id>        -> a hold's state (Hold json), written when it is made and when it
                          is settled; compaction keeps the latest
    b:<c0>:<r0>        -> one record per batch (BatchRecord): the exact input ranges
                          [c0, c1) of transfers.credits and [r0, r1) of transfers.requests
                          it processed, and the ids it applied. The key is unique, so
                          compaction keeps every one: they are the applied-id set, and
                          the processing order that recompute re-runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

ACCOUNT_PREFIX = b"a:"
HOLD_PREFIX = b"h:"
BATCH_PREFIX = b"b:"


def account_key(name: str) -> bytes:
    return ACCOUNT_PREFIX + name.encode()


def hold_key(hold_id: str) -> bytes:
    return HOLD_PREFIX + hold_id.encode()


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One engine batch of one partition: its input ranges and the ids it applied."""

    credits: tuple[int, int]
    requests: tuple[int, int]
    applied: tuple[str, ...]

    @property
    def key(self) -> bytes:
        return BATCH_PREFIX + f"{self.credits[0]}:{self.requests[0]}".encode()

    def encode(self) -> bytes:
        return orjson.dumps({"in": [*self.credits, *self.requests], "ids": sorted(self.applied)})

    @classmethod
    def decode(cls, value: bytes) -> "BatchRecord":
        body = orjson.loads(value)
        c0, c1, r0, r1 = body["in"]
        return cls((c0, c1), (r0, r1), tuple(body["ids"]))
