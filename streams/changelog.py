"""The engine changelog's batch structure, and how a restore follows it.

Each engine transaction writes to its partition of engine.changelog:

    MANIFEST [c0, c1, r0, r1]   the exact input ranges of the batch
    state records ...           new account states (b"a:<name>"), then APPLIED_IDS: the
                                ids the batch applied, as one JSON list
    END      [c1, r1]           written after every output of the batch was acknowledged

Every record of a batch carries the same BATCH_HEADER, unique to that
attempt (worker, process, transaction number), because two writers can
interleave on one partition: a worker frozen mid-batch (SIGSTOP, a long GC
or VM pause) can wake after its partitions moved and finish writing its
batch between the new owner's records. Records are attributed to their own
batch by that header, never by their place in the log.

A batch counts once its END is in the log and it continues the position
reached so far: from then on every one of its outputs is durable, so on a
broker that shows aborted records (the embedded one does) the batch has
happened for every reader, committed or not; on a broker that hides them,
an aborted batch is simply not seen. A batch without END was cut short: its
outputs may be partly visible, so the next owner must re-run exactly its
ranges (the engine is deterministic, the re-run writes the same records
again and readers drop the copies). An END of a batch that does not start
at the position reached (a zombie's late copy of a batch the new owner has
re-run, or a batch that is not ours) changes nothing.

The input offsets at which the engine resumes come from here, not from the
consumer group: the embedded broker loses transactional offset commits when
several producers commit for one group (measured), and a log of batches
needs no second source of truth.
"""
from __future__ import annotations

import orjson
from confluent_kafka import Message

MANIFEST = b"m"
END = b"e"
APPLIED_IDS = b"ids"
BATCH_HEADER = "batch"

Manifest = tuple[int, int, int, int]   # c0, c1, r0, r1


def batch_id(msg: Message) -> bytes | None:
    """The BATCH_HEADER of a changelog record (None for a record written without one)."""
    return next((v for k, v in msg.headers() or () if k == BATCH_HEADER), None)


class ChangelogChain:
    """Follows one changelog partition's batches from a known input position."""

    def __init__(self, position: tuple[int, int], keep_records: bool = True) -> None:
        self.position = position                     # (credits, requests) offsets reached
        self.records: list[tuple[bytes, bytes]] = []  # state records of applied batches
        self.applied: list[Manifest] = []            # the applied batches, in order
        self.checkpoint: int | None = None           # changelog offset of the last applied batch's manifest
        self.checkpoint_position = position          # input position at that manifest
        self._keep_records = keep_records
        # batches begun and not ended, by batch id: manifest, its offset, state records so far
        self._open: dict[bytes | None, tuple[Manifest, int, list[tuple[bytes, bytes]]]] = {}

    @property
    def replay(self) -> Manifest | None:
        """A cut-short batch that continues the position: the next owner must re-run exactly it."""
        return next((m for m, _, _ in self._open.values() if (m[0], m[2]) == self.position), None)

    def add(self, offset: int, key: bytes | None, value: bytes, batch: bytes | None = None) -> None:
        """Follow one changelog record; `batch` is its BATCH_HEADER (None: written without one)."""
        if key == MANIFEST:
            c0, c1, r0, r1 = orjson.loads(value)
            # a batch still open under this id was cut short: its records go
            self._open[batch] = ((c0, c1, r0, r1), offset, [])
        elif key == END:
            opened = self._open.pop(batch, None)
            if opened is None:
                return
            (c0, c1, r0, r1), manifest_offset, pending = opened
            if (c0, r0) == self.position and tuple(orjson.loads(value)) == (c1, r1):
                if self._keep_records:
                    self.records += pending
                self.applied.append((c0, c1, r0, r1))
                self.checkpoint, self.checkpoint_position = manifest_offset, (c0, r0)
                self.position = (c1, r1)
        elif key is not None and batch in self._open:
            self._open[batch][2].append((key, value))
