"""Verify checkpoints: where a verify that passed ended, so the next one reads only what came
after (`bank replay verify --checkpoint`, `--since-checkpoint`).

A checkpoint is what verify's fold knows at the end of the logs it read: per ledger partition
the next offset and the hash chain's head; every account's balance, seq, currency, limits and
state; the money sums per currency; the transfers still in flight and the holds still open
(settled ones are left out: a later credit or settlement of one of them is then named as
"without a debit" / "never made", still a violation); the requests not yet final; and the
counts a report shows. It is kept in the compacted topic verify.checkpoints as a manifest
(the SHA-256 of its content; who signed it off and when) and zlib-compressed chunks that each
carry it (kbank.streams.chunked), so a torn or forged checkpoint is refused, never
half-believed.

A checkpoint names the log it was made on by its chain heads: a verify resuming from it first
checks that each ledger partition still holds, at the head's offset, an event with the head's
hash (`matches_log`); a rewritten or truncated log, or another topic, is refused.
"""
from __future__ import annotations

import getpass
import time
from dataclasses import dataclass, field

import orjson

from kbank.replay.ledger import AccountFold, ChainHead
from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.chunked import assemble_chunked, write_chunked
from kbank.streams.config import Settings

VERSION = 1
MANIFEST = b"manifest"


class CheckpointError(RuntimeError):
    """No usable checkpoint: missing, torn, forged, or not of this log."""


@dataclass
class Checkpoint:
    """What a verify that passed knew at the end of the logs it read (see the module doc)."""

    ledger_topic: str
    ledger_next: dict[int, int]                 # partition -> next offset to read
    heads: dict[int, ChainHead]
    accounts: dict[str, AccountFold]            # without raw events (base = seq)
    applied: int = 0
    duplicates: int = 0
    money: dict[str, list[int]] = field(default_factory=dict)        # currency -> [deposits, withdrawals]
    open_transfers: dict[str, list[int]] = field(default_factory=dict)  # "rid\0cur" -> [debited, returned, refunds]
    open_holds: dict[str, int] = field(default_factory=dict)          # hold id -> amount reserved
    held: dict[str, int] = field(default_factory=dict)                # account -> held by open holds
    holds_done: dict[str, int] = field(default_factory=dict)          # made, posted, voided, expired
    requests_next: dict[int, int] = field(default_factory=dict)
    outcomes_next: dict[int, int] = field(default_factory=dict)
    open_requests: dict[str, str | None] = field(default_factory=dict)  # key -> status, not final
    request_counts: dict[str, int] = field(default_factory=dict)
    made_ms: int = 0
    signed_off_by: str = ""

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "v": VERSION, "ledger_topic": self.ledger_topic,
            "ledger_next": self.ledger_next,
            "heads": {p: [h.offset, h.hash, h.events] for p, h in self.heads.items()},
            "accounts": {n: [a.balance, a.seq, a.currency, a.overdraft_limit, a.max_balance,
                             a.state] for n, a in self.accounts.items()},
            "applied": self.applied, "duplicates": self.duplicates, "money": self.money,
            "open_transfers": self.open_transfers, "open_holds": self.open_holds,
            "held": self.held, "holds_done": self.holds_done,
            "requests_next": self.requests_next, "outcomes_next": self.outcomes_next,
            "open_requests": self.open_requests, "request_counts": self.request_counts,
            "made_ms": self.made_ms, "signed_off_by": self.signed_off_by,
        }, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Checkpoint":
        d = orjson.loads(raw)
        if d.get("v") != VERSION:
            raise CheckpointError(f"checkpoint version {d.get('v')!r}, this verify reads {VERSION}")
        ints = lambda m: {int(k): v for k, v in m.items()}  # noqa: E731 - JSON keys are strings
        return cls(
            ledger_topic=d["ledger_topic"], ledger_next=ints(d["ledger_next"]),
            heads={int(p): ChainHead(o, h, e) for p, (o, h, e) in d["heads"].items()},
            accounts={n: AccountFold(balance=b, seq=s, currency=c, overdraft_limit=o,
                                     max_balance=m, state=st, base=s)
                      for n, (b, s, c, o, m, st) in d["accounts"].items()},
            applied=d["applied"], duplicates=d["duplicates"], money=d["money"],
            open_transfers=d["open_transfers"], open_holds=d["open_holds"], held=d["held"],
            holds_done=d["holds_done"], requests_next=ints(d["requests_next"]),
            outcomes_next=ints(d["outcomes_next"]), open_requests=d["open_requests"],
            request_counts=d["request_counts"], made_ms=d["made_ms"],
            signed_off_by=d["signed_off_by"])


def write(settings: Settings, checkpoint: Checkpoint) -> str:
    """Store a checkpoint (chunks first, the manifest naming them last); return its id."""
    checkpoint.made_ms = checkpoint.made_ms or int(time.time() * 1000)
    user = kafka.client_config(settings, kafka.TOOLS).get("sasl.username") or kafka.TOOLS
    checkpoint.signed_off_by = checkpoint.signed_off_by or f"{user} ({getpass.getuser()})"
    return write_chunked(settings, kafka.TOOLS, settings.topic(topics.CHECKPOINTS),
                         checkpoint.to_bytes(), lambda i: b"chunk-%d" % i, MANIFEST,
                         {"made_ms": checkpoint.made_ms,
                          "signed_off_by": checkpoint.signed_off_by}, CheckpointError)


def read(settings: Settings) -> Checkpoint:
    """The latest checkpoint, whole and as signed off; CheckpointError otherwise."""
    latest: dict[bytes, bytes] = {}
    for msg in read_topic(settings, settings.topic(topics.CHECKPOINTS)):
        if msg.value() is not None:
            latest[msg.key() or b""] = msg.value()
    if MANIFEST not in latest:
        raise CheckpointError("there is no checkpoint yet: run bank replay verify --checkpoint")
    try:
        manifest = orjson.loads(latest[MANIFEST])
        digest, count = str(manifest["sha256"]), int(manifest["chunks"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's manifest is unreadable: {exc}") from None
    body = assemble_chunked(digest, count, lambda i: latest.get(b"chunk-%d" % i),
                            f"checkpoint {digest[:16]}...", CheckpointError)
    try:
        return Checkpoint.from_bytes(body)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {digest[:16]}... is unreadable: {exc}") from None


def matches_log(settings: Settings, topic: str, checkpoint: Checkpoint) -> None:
    """Raise CheckpointError unless every ledger partition of `topic` still holds, at the
    offset of the checkpoint's chain head, the event with that head's hash."""
    for partition, head in sorted(checkpoint.heads.items()):
        if head.offset < 0:
            continue
        found = None
        for msg in read_topic(settings, topic, partitions=[partition],
                              start={partition: head.offset}):
            found = msg
            break
        stated = None
        if found is not None and found.offset() == head.offset:
            try:
                stated = orjson.loads(found.value()).get("hash")
            except (orjson.JSONDecodeError, AttributeError):
                stated = None
        if stated != head.hash:
            raise CheckpointError(
                f"the checkpoint does not match {topic}: partition {partition} offset "
                f"{head.offset} should hold the event hashed {head.hash[:16]}..., it holds "
                f"{'nothing' if found is None else (stated or 'no hash')[:16] + '...'}")
