"""The engine changelog's batch structure, and how a restore follows it.

Each engine transaction writes to its partition of engine.changelog:

    MANIFEST [c0, c1, r0, r1]   the exact input ranges of the batch
    state records ...           new account states (b"a:<name>"), then APPLIED_IDS: the
                                ids the batch applied, as one JSON list
    END      [c1, r1]           written after every output of the batch was acknowledged

A batch counts once its END is in the log: from then on every one of its
outputs is durable, so on a broker that shows aborted records (the embedded
one does) the batch has happened for every reader, committed or not; on a
broker that hides them, an aborted batch is simply not seen. A batch without
END was cut short: its outputs may be partly visible, so the next owner must
re-run exactly its ranges (the engine is deterministic, the re-run writes the
same records again and readers drop the copies).

The input offsets at which the engine resumes come from here, not from the
consumer group: the embedded broker loses transactional offset commits when
several producers commit for one group (measured), and a log of batches
needs no second source of truth.
"""
from __future__ import annotations

import orjson

MANIFEST = b"m"
END = b"e"
APPLIED_IDS = b"ids"

Manifest = tuple[int, int, int, int]   # c0, c1, r0, r1


class ChangelogChain:
    """Follows one changelog partition's batches from a known input position."""

    def __init__(self, position: tuple[int, int]) -> None:
        self.position = position                     # (credits, requests) offsets reached
        self.records: list[tuple[bytes, bytes]] = []  # state records of applied batches
        self.checkpoint: int | None = None           # changelog offset after the last applied batch
        self.replay: Manifest | None = None          # a cut-short batch that must be re-run
        self._open: Manifest | None = None
        self._pending: list[tuple[bytes, bytes]] = []

    def add(self, offset: int, key: bytes | None, value: bytes) -> None:
        if key == MANIFEST:
            c0, c1, r0, r1 = orjson.loads(value)
            self._pending = []   # a batch still open here was cut short: drop its records
            if (c0, r0) == self.position:
                self._open = (c0, c1, r0, r1)
                self.replay = self.replay or self._open
            else:
                self._open = None  # a re-run of a batch already applied, or not ours
        elif key == END:
            if self._open is not None and tuple(orjson.loads(value)) == (self._open[1], self._open[3]):
                self.records += self._pending
                self.position = (self._open[1], self._open[3])
                self.checkpoint = offset + 1
                self.replay = None
            self._open = None
            self._pending = []
        elif self._open is not None and key is not None:
            self._pending.append((key, value))
