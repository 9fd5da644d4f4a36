"""The web endpoint's way into Kafka: producing requests and waiting for outcomes.

Both sit on confluent-kafka clients driven by a thread each, bridged to the
event loop with futures. The producer's queue is bounded: when it is full the
caller gets `Overloaded` (HTTP 503 + Retry-After) instead of an unbounded
backlog in memory.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson

from kbank.streams import kafka, topics
from kbank.streams.client import OutcomeTail
from kbank.streams.config import Settings
from kbank.streams.model import DECIDED_STATUSES, IDEMPOTENCY_CONFLICT, outcome_key


class Overloaded(Exception):
    """The producer's queue is full; the client should retry later."""


class RequestProducer:
    """Produces raw requests keyed by their deciding account; awaitable acknowledgements."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.REQUESTS)
        self._producer = kafka.producer(settings, kafka.INTAKE, **{
            "acks": "all", "linger.ms": 1,
            "queue.buffering.max.messages": settings.web_max_queued_requests})
        self._thread = threading.Thread(target=self._poll, name="request-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:   # a daemon thread: it lives as long as the worker
            self._producer.poll(0.05)

    async def send(self, key: bytes, value: bytes | None,
                   topic: str | None = None) -> tuple[int, int]:
        """Produce one request (or a record on another topic the intake principal writes);
        return (partition, offset) once the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, int]] = loop.create_future()

        def delivered(err, msg) -> None:  # noqa: ANN001 - confluent-kafka callback, producer thread
            def settle() -> None:
                if done.cancelled():
                    return
                if err is not None:
                    done.set_exception(RuntimeError(str(err)))
                else:
                    done.set_result((msg.partition(), msg.offset()))
            loop.call_soon_threadsafe(settle)

        try:
            self._producer.produce(topic or self.topic, key=key, value=value,
                                   on_delivery=delivered)
        except BufferError:
            raise Overloaded() from None
        return await done


class OutcomeWaiter:
    """Settles the futures of waiting requests from transfers.outcomes, which it reads only
    while someone waits (issue 42: every views worker tailed every outcome from boot, four
    reads per transfer with two workers, whether anyone waited or not).

    The tail starts with the first wait, at the outcomes' ends as the broker says them then
    (before the request is produced, so its outcome cannot be missed), and stops once no one
    has waited for IDLE_S. Only requests someone waits for are remembered (by request key),
    so memory is bounded by the number of open `?wait=completed` calls. A record it cannot
    read is counted (`malformed`) and skipped.
    """

    IDLE_S = 30.0

    def __init__(self, settings: Settings) -> None:
        self.malformed = 0
        self.starts = 0
        self._settings = settings
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._lock = threading.Lock()
        self._tail: OutcomeTail | None = None
        self._changing = asyncio.Lock()
        self._last_wait = 0.0

    async def register(self, key: str) -> asyncio.Future:
        """Call before producing the request, so its outcome cannot be missed."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        async with self._changing:     # never while the tail is being stopped
            self._last_wait = loop.time()
            if self._tail is None:
                self._tail = await loop.run_in_executor(None, self._start_tail)
            with self._lock:
                self._waiting.setdefault(key, []).append((loop, fut))
        return fut

    def _start_tail(self) -> OutcomeTail:
        self.starts += 1
        return OutcomeTail(self._settings, kafka.INTAKE, "bank-web-outcomes",
                           self._settle_waiting, batch=1000, exact_end=True)

    async def stop_when_idle(self) -> None:
        """Run for ever: stop the tail once no one has waited for IDLE_S."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.IDLE_S / 2))
            async with self._changing:
                if self._tail is None or self._waiting or \
                        loop.time() - self._last_wait < self.IDLE_S:
                    continue
                tail, self._tail = self._tail, None
                await loop.run_in_executor(None, tail.close)

    @property
    def reading(self) -> bool:
        return self._tail is not None

    def forget(self, key: str, fut: asyncio.Future) -> None:
        with self._lock:
            waiters = self._waiting.get(key, [])
            self._waiting[key] = [w for w in waiters if w[1] is not fut]
            if not self._waiting[key]:
                del self._waiting[key]

    def _settle_waiting(self, msgs: list) -> None:
        if not self._waiting:
            return
        for msg in msgs:
            if msg.error():
                continue
            try:
                out: dict[str, Any] = orjson.loads(msg.value())
                # the request's own decision, or the answer to its re-sent id
                final = out["status"] in DECIDED_STATUSES or bool(out.get("retry"))
                rid = outcome_key(out)
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
                self.malformed += 1   # counted, skipped: the reader must outlive bad records
                continue
            if not final:
                continue
            with self._lock:
                waiters = self._waiting.pop(rid, [])
            for loop, fut in waiters:
                loop.call_soon_threadsafe(_settle, fut, out)


def _settle(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def is_conflict(outcome: dict[str, Any]) -> bool:
    """The answer to a request id re-sent with another body."""
    return bool(outcome.get("retry")) and outcome.get("reason") == IDEMPOTENCY_CONFLICT
