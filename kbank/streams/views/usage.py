"""An API key's rate, held across every views worker (issue 41).

Each worker keeps a token bucket per key (access.RateLimiter). Alone, a bucket per worker
lets a client that spreads its requests over N workers make N times its rate. So every
BANK_WEB_RATE_SHARE_S each worker writes what each key used at it since its last record to
the topic `views.usage`, and every worker takes what the others used out of its own buckets:
a key's rate is then held across the cluster, overshot by at most what it can make in one
share interval (plus the topic's delivery time) at each worker.

A record: {"w": the writer's id, "t": ms, "used": {key id: requests}}; any other shape is
skipped (one bad record must not lock everyone out), and records older than a few intervals
(read again after a restart) are not charged.
"""
from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Message

from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.tail import TopicTail
from kbank.streams.views.rate import RateLimiter, read_usage, usage_records

log = logging.getLogger("bank.views.usage")
_STALE_AFTER_MS = 5_000


class UsageShare:
    """This worker's side of the shared rate: publish() what its keys used, and charge what
    the other workers' keys used (read on a tail's thread)."""

    def __init__(self, settings: Settings, limiter: RateLimiter) -> None:
        self.writer = uuid.uuid4().hex       # this process (a restart is a new writer)
        self.limiter = limiter
        self.topic = settings.topic(topics.USAGE)
        self.producer = kafka.producer(settings, kafka.VIEWS, **{"linger.ms": 0})
        self.skipped = 0
        self._tail = TopicTail(settings, kafka.VIEWS, "bank-views-usage", self.topic,
                               self._fold, "rate-usage")

    def publish(self) -> None:
        used = self.limiter.take_used()
        if used:
            for value in usage_records(self.writer, used, int(time.time() * 1000)):
                kafka.produce_waiting(self.producer, self.topic, value=value)
        self.producer.poll(0)

    def _fold(self, msg: Message) -> None:
        record = read_usage(msg.value())
        if record is None:
            self.skipped += 1
            return
        writer, at, used = record
        if writer == self.writer or at < time.time() * 1000 - _STALE_AFTER_MS:
            return
        now = time.monotonic()
        for key_id, count in used.items():
            self.limiter.charge(key_id, count, now)
