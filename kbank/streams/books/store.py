"""Where closes are kept: books.closes, each close as zlib-compressed chunks and a manifest
naming them with the SHA-256 of the close's bytes, each under keys of its own
(`<id>/chunk-<n>`, `<id>`), so a torn or altered close is refused when read. Making a close
that exists checks the new one has the same bytes and writes nothing."""
from __future__ import annotations

import getpass
import hashlib
import time
import zlib
from typing import Any

import orjson

from kbank.streams import kafka, topics
from kbank.streams.books.closes import Close, CloseError
from kbank.streams.client import read_topic
from kbank.streams.config import Settings

CHUNK_BYTES = 900_000          # under the broker's default largest record (1 MiB)


def write_close(settings: Settings, close: Close) -> tuple[str, bool]:
    """Store a close; returns its digest and whether it was written (False: it was there,
    with the same bytes). CloseError if a different close of that instant is stored."""
    body = close.to_bytes()
    digest = hashlib.sha256(body).hexdigest()
    stored = {m["id"]: m for m in list_closes(settings)}.get(close.id)
    if stored is not None:
        if stored["sha256"] != digest:
            raise CloseError(f"close {close.id} is stored with another content "
                             f"({stored['sha256'][:16]}..., this one {digest[:16]}...): the log "
                             "it was made from differs from this one")
        return digest, False
    packed = zlib.compress(body, 6)
    chunks = [packed[i:i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
    topic = settings.topic(topics.CLOSES)
    producer = kafka.producer(settings, kafka.TOOLS, **{"acks": "all",
                                                        "message.max.bytes": 2 * CHUNK_BYTES})
    for i, chunk in enumerate(chunks):
        producer.produce(topic, key=f"{close.id}/chunk-{i}".encode(),
                         value=digest.encode() + b"\n" + chunk)
    if producer.flush(60):
        raise CloseError("the close's chunks were not acknowledged in 60 s")
    user = kafka.client_config(settings, kafka.TOOLS).get("sasl.username") or kafka.TOOLS
    manifest = {"id": close.id, "sha256": digest, "chunks": len(chunks), "bytes": len(body),
                "made_ms": int(time.time() * 1000), "made_by": f"{user} ({getpass.getuser()})",
                **close.summary()}
    producer.produce(topic, key=close.id.encode(), value=orjson.dumps(manifest))
    if producer.flush(60):
        raise CloseError("the close's manifest was not acknowledged in 60 s")
    return digest, True


def is_manifest(key: bytes | None, manifest: Any) -> bool:
    return (isinstance(manifest, dict) and key is not None and b"/" not in key
            and manifest.get("id") == key.decode("utf-8", "replace")
            and isinstance(manifest.get("sha256"), str) and type(manifest.get("chunks")) is int)


def list_closes(settings: Settings) -> list[dict[str, Any]]:
    """Every stored close's manifest, oldest instant first."""
    found: dict[str, dict[str, Any]] = {}
    for msg in read_topic(settings, settings.topic(topics.CLOSES)):
        if msg.value() is None or b"/" in (msg.key() or b"/"):
            continue
        try:
            manifest = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            continue
        if is_manifest(msg.key(), manifest):
            found[manifest["id"]] = manifest
    return [found[k] for k in sorted(found, key=lambda k: found[k].get("at_ms", 0))]


def assemble(manifest: dict[str, Any], chunks: dict[int, bytes]) -> Close:
    """A close from its manifest and stored chunks (each `<sha256>\\n<bytes>`); CloseError
    if one is missing, of another close, or the whole does not match its digest."""
    digest, parts = manifest["sha256"], []
    for i in range(manifest["chunks"]):
        chunk_id, _, chunk = chunks.get(i, b"").partition(b"\n")
        if chunk_id.decode(errors="replace") != digest:
            raise CloseError(f"chunk {i} of close {manifest['id']} is missing or of another close")
        parts.append(chunk)
    try:
        body = zlib.decompress(b"".join(parts))
    except zlib.error as exc:
        raise CloseError(f"close {manifest['id']} does not decompress: {exc}") from None
    if hashlib.sha256(body).hexdigest() != digest:
        raise CloseError(f"close {manifest['id']}'s content does not match its digest: altered")
    close = Close.from_bytes(body)
    if close.id != manifest["id"]:
        raise CloseError(f"manifest {manifest['id']} holds close {close.id}")
    return close


def read_close(settings: Settings, wanted: str) -> Close:
    """The stored close of that id, whole and as made; CloseError otherwise."""
    manifest, chunks = None, {}
    prefix = f"{wanted}/chunk-".encode()
    for msg in read_topic(settings, settings.topic(topics.CLOSES)):
        key = msg.key() or b""
        if key == wanted.encode() and msg.value() is not None:
            manifest = orjson.loads(msg.value())
        elif key.startswith(prefix) and key[len(prefix):].isdigit() and msg.value() is not None:
            chunks[int(key[len(prefix):])] = msg.value()
    if not is_manifest(wanted.encode(), manifest):
        raise CloseError(f"there is no close {wanted} (bank close --list)")
    return assemble(manifest, chunks)
