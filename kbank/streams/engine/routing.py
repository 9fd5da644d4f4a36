"""Requests on a partition their key does not map to: where they go and how they come back.

A client's partitioner decides only where a request lands first (librdkafka's default
`consistent_random` is CRC32, a hand-picked partition anything). The engine decides a
request on the partition that owns its key (murmur2, as the Java client), so a request that
landed elsewhere is forwarded, unchanged and inside the transaction that consumes it, to the
owning partition of transfers.credits: the engine's own internal topic, co-partitioned with
the requests, written by no principal but the engine (as Kafka Streams' `-repartition`
topics), so forwarding needs no write access to the clients' topic. A header names the
original record; the request is decided there with that record as its `source`, so the
audit log points at what the client wrote, whichever partition it chose.

The live engine (processor) and recompute both ask this module, so they route alike.
"""
from __future__ import annotations

from confluent_kafka import Message

from kbank.streams.decisions import BadMessage
from kbank.streams.model import Position
from kbank.streams.partitioning import partition_for

FORWARDED_FROM = "bank-forwarded-from"   # header of a forwarded request: "topic/partition/offset"
MAX_FORWARD_BYTES = 65_536     # a larger misrouted record is dead-lettered, not copied
_MAX_HEADER_BYTES = 512


def owner(key: bytes | None, partitions: int) -> int | None:
    """The partition that decides a request with this key (None: no key, nowhere to route
    it; the request parser rejects it with a reason)."""
    return None if key is None else partition_for(key, partitions)


def is_misrouted(key: bytes | None, partition: int, partitions: int) -> bool:
    """Whether a transfers.requests record on `partition` belongs to another partition."""
    home = owner(key, partitions)
    return home is not None and home != partition


def forward_headers(msg: Message) -> list[tuple[str, bytes]]:
    """The header a forwarded copy carries: where the original record is."""
    return [(FORWARDED_FROM, f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode())]


def is_forwarded(msg: Message) -> bool:
    """Whether a record carries the forward header (a request, not money in flight)."""
    return any(name == FORWARDED_FROM for name, _ in msg.headers() or [])


def forwarded_from(msg: Message) -> Position | None:
    """The original request's position if this transfers.credits record is a forwarded
    request, else None. Only the engine writes that topic, but a malformed header is still
    refused (BadMessage: dead-lettered), never trusted."""
    headers = msg.headers()
    if not headers:
        return None
    found = [value for name, value in headers if name == FORWARDED_FROM]
    if not found:
        return None
    if len(found) != 1 or not isinstance(found[0], bytes) or len(found[0]) > _MAX_HEADER_BYTES:
        raise BadMessage(f"malformed {FORWARDED_FROM} header")
    topic, _, rest = found[0].decode("utf-8", "replace").rpartition("/")
    topic, _, partition = topic.rpartition("/")
    if not topic or not partition.isdigit() or not rest.isdigit() \
            or int(partition) >= 2**31 or int(rest) >= 2**63:
        raise BadMessage(f"malformed {FORWARDED_FROM} header: {found[0][:80]!r}")
    return Position(topic, int(partition), int(rest))
