"""Where closes are kept: books.closes, each close as chunks and a manifest naming them with
the SHA-256 of the close's bytes (kbank.streams.chunked), under keys of its own
(`<id>/chunk-<n>`, `<id>`), so a torn or altered close is refused when read. Making a close
that exists checks the new one has the same bytes and writes nothing."""
from __future__ import annotations

import getpass
import hashlib
import time
from typing import Any

import orjson

from kbank.streams import kafka, topics
from kbank.streams.books.closes import Close, CloseError
from kbank.streams.chunked import assemble_chunked, write_chunked
from kbank.streams.client import read_topic
from kbank.streams.config import Settings

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
    user = kafka.client_config(settings, kafka.TOOLS).get("sasl.username") or kafka.TOOLS
    written = write_chunked(
        settings, kafka.TOOLS, settings.topic(topics.CLOSES), body,
        lambda i: f"{close.id}/chunk-{i}".encode(), close.id.encode(),
        {"id": close.id, "made_ms": int(time.time() * 1000),
         "made_by": f"{user} ({getpass.getuser()})", **close.summary()}, CloseError)
    assert written == digest, (written, digest)
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
    """A close from its manifest and stored chunks; CloseError if one is missing, of another
    close, or the whole does not match its digest."""
    body = assemble_chunked(manifest["sha256"], manifest["chunks"], chunks.get,
                            f"close {manifest['id']}", CloseError)
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
