"""A thread that reads a topic from its start and keeps reading: the views' API keys, the
webhook registrations and the delivery log are each a fold of one such tail.

`ready` is set once every partition was read to the end it had when the tail started
(partition EOF): before that a reader could miss a record, so callers answer 503 or wait,
never a wrong answer.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from kbank.streams import kafka
from kbank.streams.config import Settings

log = logging.getLogger("bank.tail")


class TopicTail:
    """Hands every record of `topic` (each of its partitions, from the beginning) to `fold`,
    in order per partition, on a daemon thread that lives as long as the process."""

    def __init__(self, settings: Settings, role: str, group: str, topic: str,
                 fold: Callable[[Message], None], name: str) -> None:
        self.ready = threading.Event()
        self._fold = fold
        self._consumer = kafka.consumer(settings, role, settings.topic(group),
                                        **{"enable.partition.eof": True, "fetch.wait.max.ms": 100})
        parts = sorted(self._consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        self._pending_eof = set(parts)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_error = None
        while True:   # a daemon thread: it lives as long as the worker
            for msg in self._consumer.consume(500, 0.2):
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
