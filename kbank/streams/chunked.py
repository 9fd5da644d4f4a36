"""A document too large for one record, kept on a compacted topic: zlib-compressed chunks,
each carrying the SHA-256 of the whole (`<digest>\n<bytes>`), then a manifest naming them,
written last, so a torn write or a chunk of another document is refused when read, never
half-believed (verify's checkpoints, the closes of the books)."""
from __future__ import annotations

import hashlib
import zlib
from typing import Any, Callable

import orjson

from kbank.streams import kafka
from kbank.streams.config import Settings

CHUNK_BYTES = 900_000          # under the broker's default largest record (1 MiB)


def write_chunked(settings: Settings, role: str, topic: str, body: bytes,
                  chunk_key: Callable[[int], bytes], manifest_key: bytes,
                  manifest: dict[str, Any], error: type[Exception]) -> str:
    """Store `body` as chunks, then `manifest` (with the digest and the chunks' count added)
    under `manifest_key`; returns the digest. `error` is raised if the broker does not
    acknowledge a write within a minute."""
    digest = hashlib.sha256(body).hexdigest()
    packed = zlib.compress(body, 6)
    chunks = [packed[i:i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
    producer = kafka.producer(settings, role, **{"acks": "all",
                                                 "message.max.bytes": 2 * CHUNK_BYTES})
    for i, chunk in enumerate(chunks):
        producer.produce(topic, key=chunk_key(i), value=digest.encode() + b"\n" + chunk)
    if producer.flush(60):
        raise error("the chunks were not acknowledged in 60 s")
    producer.produce(topic, key=manifest_key, value=orjson.dumps(
        {**manifest, "sha256": digest, "chunks": len(chunks), "bytes": len(body)}))
    if producer.flush(60):
        raise error("the manifest was not acknowledged in 60 s")
    return digest


def assemble_chunked(digest: str, count: int, stored: Callable[[int], bytes | None], what: str,
                     error: type[Exception]) -> bytes:
    """The body a manifest names: its `count` chunks (`stored(i)`: chunk i's record or None),
    each of this digest, decompressed and checked against it; `error` otherwise."""
    parts = []
    for i in range(count):
        chunk_id, _, chunk = (stored(i) or b"").partition(b"\n")
        if chunk_id.decode(errors="replace") != digest:
            raise error(f"chunk {i} of {what} is missing or of another one (torn write?)")
        parts.append(chunk)
    try:
        body = zlib.decompress(b"".join(parts))
    except zlib.error as exc:
        raise error(f"{what} does not decompress: {exc}") from None
    if hashlib.sha256(body).hexdigest() != digest:
        raise error(f"{what}'s content does not match its digest: altered after it was written")
    return body
