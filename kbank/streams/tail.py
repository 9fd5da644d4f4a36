"""A thread that reads a topic from its start and keeps reading: the views' API keys, the
webhook registrations and the delivery log are each a fold of one such tail.

`ready` is set once every partition was read to the end it had when the tail started
(partition EOF): before that a reader could miss a record, so callers answer 503 or wait,
never a wrong answer. `fresh_since(ms)` says whether the fold holds every record the topic
had at wall time `ms` (a high-watermark check made after `ms` and reached): a reader that must
not act on a stale fold (a webhook of a key revoked before the event it would deliver) waits
for it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from kbank.streams import kafka
from kbank.streams.config import Settings

log = logging.getLogger("bank.tail")


class TopicTail:
    """Hands every record of `topic` (each of its partitions, from the beginning) to `fold`,
    in order per partition, on a daemon thread that lives as long as the process (or until
    `close`)."""

    def __init__(self, settings: Settings, role: str, group: str, topic: str,
                 fold: Callable[[Message], None], name: str) -> None:
        self.ready = threading.Event()
        self._fold = fold
        self._consumer = kafka.consumer(settings, role, settings.topic(group),
                                        **{"enable.partition.eof": True, "fetch.wait.max.ms": 100})
        parts = sorted(self._consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        self._pending_eof = set(parts)
        self._topic, self._parts = topic, parts
        self._fresh_ms = 0                    # every record the topic had then is folded
        self._wanted = threading.Event()      # a reader waits for a newer fresh_ms
        self._closing = threading.Event()
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def fresh_since(self, wall_ms: int) -> bool:
        """Whether everything the topic held at `wall_ms` has been folded; if not, a check
        is asked for and made within one poll (about 50 ms)."""
        if self._fresh_ms >= wall_ms:
            return True
        self._wanted.set()
        return False

    def _run(self) -> None:
        last_error = None
        check: tuple[int, dict[int, tuple[int, int]]] | None = None
        while not self._closing.is_set():   # a daemon thread: it lives as long as the worker
            if check is None and self._wanted.is_set():     # asked for: no idle round trips
                self._wanted.clear()
                check = self._ends()
            for msg in self._consumer.consume(500, 0.05):
                error = msg.error()
                if error is None:
                    self._fold(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    self._pending_eof.discard(msg.partition())
                    if not self._pending_eof:
                        self.ready.set()
                elif error.code() != last_error:    # once per kind, not every poll
                    log.warning("reading %s: %s", msg.topic(), error)
                    last_error = error.code()
            if check is not None and self._reached(check[1]):
                self._fresh_ms, check = check[0], None
        self._consumer.close()

    def close(self) -> None:
        """Stop reading and close the consumer (the fold keeps what it has)."""
        self._closing.set()
        self._thread.join(10)

    def _ends(self) -> tuple[int, dict[int, tuple[int, int]]] | None:
        """The wall time now and each partition's (low, high) watermark read after it from
        the broker, or None when the broker did not answer (the next loop asks again)."""
        started = int(time.time() * 1000)
        try:
            return started, {p: self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, p), timeout=5, cached=False) for p in self._parts}
        except KafkaException as exc:
            log.warning("reading %s's end: %s", self._topic, exc)
            return None

    def _reached(self, ends: dict[int, tuple[int, int]]) -> bool:
        positions = self._consumer.position([TopicPartition(self._topic, p) for p in self._parts])
        return all(max(tp.offset, ends[tp.partition][0]) >= ends[tp.partition][1]
                   for tp in positions)
