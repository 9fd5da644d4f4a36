"""The closes a views worker serves (GET /closes): the manifests of books.closes, tailed from
its start, and the closes themselves read when asked for (their chunks by offset, the last
few kept decoded), so a year of daily closes costs the worker its manifests, not its memory."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import orjson
from confluent_kafka import Message

from kbank.streams.books.store import assemble, is_manifest
from kbank.streams.books.closes import Close, CloseError
from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.config import Settings
from kbank.streams.tail import TopicTail

KEPT_DECODED = 2          # the closes kept decoded: a console paging one close reads it once


class ClosesShelf:
    def __init__(self, settings: Settings, role: str = kafka.VIEWS,
                 group: str = "bank-views-closes") -> None:
        self.settings = settings
        self._manifests: dict[str, dict[str, Any]] = {}
        self._chunks: dict[str, dict[int, int]] = {}     # close id -> chunk number -> offset
        self._decoded: OrderedDict[str, Close] = OrderedDict()
        self._lock = threading.Lock()
        self._tail = TopicTail(settings, role, group, settings.topic(topics.CLOSES), self._fold,
                               "closes-shelf")
        self.ready = self._tail.ready

    def _fold(self, msg: Message) -> None:
        key = msg.key() or b""
        name, slash, rest = key.decode("utf-8", "replace").partition("/")
        if msg.value() is None:
            return
        if slash and rest.startswith("chunk-") and rest[6:].isdigit():
            self._chunks.setdefault(name, {})[int(rest[6:])] = msg.offset()
            return
        try:
            manifest = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            return
        if is_manifest(key, manifest):
            self._manifests[name] = manifest

    def manifests(self) -> list[dict[str, Any]]:
        """Every close's manifest, oldest instant first."""
        found = list(self._manifests.values())
        return sorted(found, key=lambda m: (m.get("at_ms", 0), m["id"]))

    def manifest(self, close_id: str) -> dict[str, Any] | None:
        return self._manifests.get(close_id)

    def close(self, close_id: str) -> Close:
        """The close itself (blocking: its chunks are read from the topic); CloseError if it
        is not there or not whole."""
        with self._lock:
            if close_id in self._decoded:
                self._decoded.move_to_end(close_id)
                return self._decoded[close_id]
        manifest = self._manifests.get(close_id)
        if manifest is None:
            raise CloseError(f"there is no close {close_id}")
        offsets = self._chunks.get(close_id, {})
        chunks: dict[int, bytes] = {}
        if offsets:
            wanted = {offset: number for number, offset in offsets.items()}
            for msg in read_topic(self.settings, self.settings.topic(topics.CLOSES),
                                  role=kafka.VIEWS, group="bank-views-closes",
                                  start={0: min(wanted)}):
                if msg.offset() in wanted:
                    chunks[wanted[msg.offset()]] = msg.value()
                if msg.offset() >= max(wanted):
                    break
        made = assemble(manifest, chunks)
        with self._lock:
            self._decoded[close_id] = made
            while len(self._decoded) > KEPT_DECODED:
                self._decoded.popitem(last=False)
        return made

    def stop(self) -> None:
        self._tail.close()
