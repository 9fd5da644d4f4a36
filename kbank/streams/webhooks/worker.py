"""The webhook worker (`bank webhooks`): delivers the ledger's events to registered URLs
(`bank break-webhooks`: the reconciliation's breaks, the same way, from recon.results).

Plumbing only; kbank.streams.webhooks.rules decides what is wanted, how it is signed and
what an attempt's result does to a delivery.

- A consumer group over ledger.events (read_committed) shares the ledger's partitions
  among the webhook workers. Each event a registration wants becomes a pending Delivery
  record on webhooks.deliveries, in the partition of the event's ledger partition. The
  group's offset of a ledger partition is committed only once the broker acknowledged the
  records of every event before it: from then on the delivery log, not the ledger
  position, holds what is left to do, so an event is never dropped by a crash between
  reading and delivering it.
- When it is assigned ledger partition p, a worker reads deliveries partition p from its
  start (compacted: the latest state of each delivery) and takes over its pending
  deliveries; the keys of deliveries of events at or past p's committed offset are kept,
  so an event read again after a crash gets no second record.
- A dispatcher tries due deliveries, at most BANK_WEBHOOK_CONCURRENCY per webhook at once,
  each call bounded by BANK_WEBHOOK_TIMEOUT_S, never following a redirect; each attempt's
  result is written as the delivery's new state (delivered, pending with its next time,
  or failed). A slow receiver holds only its own calls; the engine never waits for any.

Delivery is at least once: a crash after a 2xx but before its record lands repeats that
call, with the same event id and body, which the receiver deduplicates by.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import random
import signal
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import aiohttp
import orjson
from confluent_kafka import Message, TopicPartition

from kbank.streams import kafka, topics
from kbank.streams.books.recon import split_result_key
from kbank.streams.client import read_topic
from kbank.streams.config import Settings
from kbank.streams.keystore import KeyRing
from kbank.streams.model import parse_ledger_event
from kbank.streams.webhooks.registry import Registrations, allowed_hosts, read_delivery
from kbank.streams.webhooks.rules import (EVENT_ID_HEADER, FAILED, PAUSED, PENDING,
                                          REDRIVE_MARK, SIGNATURE_HEADER, WEBHOOK_ID_HEADER,
                                          Delivery, InvalidWebhook, Webhook, after_attempt,
                                          break_event, break_payload, check_url, delivery_key,
                                          event_id, parked, payload, redriven, sign, suspension)

log = logging.getLogger("bank.webhooks")
_TICK_S = 0.02


@dataclass(frozen=True)
class Source:
    """What a webhook worker delivers: the records of `topic` (its group shares the
    partitions), each made an event by `parse` (None: nothing to deliver) with a stable id,
    its deliveries logged in `deliveries`, partition for partition."""

    topic: str
    deliveries: str
    group: str
    parse: Callable[[Message], dict[str, Any] | None]
    event_id: Callable[[dict[str, Any]], str]
    body: Callable[[str, dict[str, Any], int, int], bytes]


def _break(msg: Message) -> dict[str, Any] | None:
    if msg.value() is None:
        return None
    account, item = split_result_key(msg.key() or b"")
    try:
        return break_event(account, item, orjson.loads(msg.value()))
    except orjson.JSONDecodeError:
        return None


LEDGER = Source(topics.LEDGER, topics.DELIVERIES, topics.WEBHOOKS_GROUP,
                lambda msg: parse_ledger_event(msg.value()),
                lambda event: event_id(event["account"], event["seq"]), payload)
BREAKS = Source(topics.RECON_RESULTS, topics.BREAK_DELIVERIES, f"{topics.WEBHOOKS_GROUP}-breaks",
                _break, lambda event: event["id"], break_payload)


class WebhookWorker:
    def __init__(self, settings: Settings, worker_id: str, source: Source = LEDGER) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.source = source
        self.ledger = settings.topic(source.topic)      # the source: the ledger, or the breaks
        self.deliveries = settings.topic(source.deliveries)
        self.allowed = allowed_hosts(settings)
        self.registrations = Registrations(settings, kafka.WEBHOOKS,
                                           f"{topics.WEBHOOKS_GROUP}-registrations")
        # whose key still works: a revoked or expired key's webhooks get nothing more
        self.keys = KeyRing(settings, kafka.WEBHOOKS, f"{topics.WEBHOOKS_GROUP}-keys")
        self.consumer = kafka.consumer(settings, kafka.WEBHOOKS, settings.topic(source.group))
        self.producer = kafka.producer(settings, kafka.WEBHOOKS, **{"acks": "all",
                                                                     "linger.ms": 5})
        self.rng = random.Random()
        self.owned: set[int] = set()
        self.pending: dict[bytes, Delivery] = {}
        self.due: dict[str, list[tuple[int, int, bytes]]] = {}   # hook -> heap of (next_ms, n, key)
        # partition -> delivery key -> its event's offset, for the events past the committed
        # position (what a re-read after a crash brings again); pruned at each commit
        self.known: dict[int, dict[bytes, int]] = {}
        self.waiting: dict[str, int] = {}                  # hook id -> pending deliveries
        self.calls: dict[str, int] = {}                    # hook id -> calls in flight
        self.in_flight: set[bytes] = set()
        self.redrives: dict[int, dict[str, int]] = {}      # partition -> hook id -> applied
        self._tiebreak = 0
        self._produce_error: str | None = None
        self._bug: BaseException | None = None
        self._stopping = False

    # -- assignment: the delivery log of each ledger partition is restored before its events --

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        committed = {tp.partition: tp.offset for tp in
                     consumer.committed([TopicPartition(self.ledger, tp.partition)
                                         for tp in partitions], timeout=30)}
        for tp in partitions:
            self.restore(tp.partition, max(0, committed.get(tp.partition, 0)))
        log.info("webhooks worker %s owns ledger partitions %s", self.worker_id, sorted(self.owned))

    def on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.owned.discard(tp.partition)
            self.known.pop(tp.partition, None)
            self.redrives.pop(tp.partition, None)
            for key, delivery in list(self.pending.items()):
                if delivery.partition == tp.partition:
                    self._forget(key)

    def restore(self, partition: int, committed: int) -> None:
        """Take over ledger partition `partition`'s deliveries from the log."""
        latest, applied = self.delivery_log(partition)
        self.owned.add(partition)
        self.redrives[partition] = applied
        self.known[partition] = {k: d.offset for k, d in latest.items() if d.offset >= committed}
        now = _now_ms()
        for key, delivery in latest.items():
            if delivery.status == PENDING and delivery.webhook_id in self.registrations.hooks:
                self._queue(key, delivery, min(delivery.next_ms, now))

    def delivery_log(self, partition: int) -> tuple[dict[bytes, Delivery], dict[str, int]]:
        """Deliveries partition `partition` as it stands: the latest state of each delivery,
        and the redrive count each webhook had applied there."""
        latest: dict[bytes, Delivery] = {}
        applied: dict[str, int] = {}
        for msg in read_topic(self.settings, self.deliveries, role=kafka.WEBHOOKS,
                              group=f"{topics.WEBHOOKS_GROUP}-restore", partitions=[partition]):
            key = msg.key() or b""
            if key.startswith(REDRIVE_MARK):
                if (msg.value() or b"").isdigit():
                    applied[key[len(REDRIVE_MARK):].decode("utf-8", "replace")] = int(msg.value())
            elif msg.value() is not None and (delivery := read_delivery(msg)) is not None:
                latest[key] = delivery
        return latest, applied

    # -- the ledger: one pending delivery per wanted event --

    def fold_ledger(self, msg: Message) -> None:
        event = self.source.parse(msg)
        partition = msg.partition()
        if event is None or partition not in self.owned:
            return   # the views count malformed events; nothing to deliver
        wanted = [h for h in self.registrations.hooks.values() if h.wants(event)]
        if not wanted:
            return
        ev_id = self.source.event_id(event)
        now = _now_ms()
        for hook in wanted:
            key = delivery_key(hook.id, ev_id)
            if key in self.known[partition]:
                continue     # a copy of the event, or one read again after a crash
            self.known[partition][key] = msg.offset()
            delivery = Delivery(hook.id, ev_id, partition, msg.offset(),
                                self.source.body(hook.id, event, partition, msg.offset()).decode(),
                                next_ms=now, updated_ms=now)
            if self.waiting.get(hook.id, 0) >= self.settings.webhook_max_pending:
                self._write(parked(delivery, f"backlog full: {self.settings.webhook_max_pending} "
                                             "deliveries pending"))
                continue
            if not self.settings.unsafe_webhooks_commit_first:
                self._write(delivery)
            self._queue(key, delivery, now)

    # -- delivery --

    async def attempt(self, session: aiohttp.ClientSession, key: bytes, delivery: Delivery,
                      hook: Webhook) -> None:
        outcome: str | None
        try:
            check_url(hook.url, self.allowed)    # the list may have changed since it registered
            body = delivery.body.encode()
            headers = {"Content-Type": "application/json", EVENT_ID_HEADER: delivery.event_id,
                       WEBHOOK_ID_HEADER: hook.id,
                       SIGNATURE_HEADER: sign(hook.secret, int(time.time()), body)}
            async with session.post(hook.url, data=body, headers=headers,
                                    allow_redirects=False) as resp:
                await resp.content.read(4096)
                outcome = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except InvalidWebhook as exc:
            outcome = f"refused: {exc}"
        except asyncio.TimeoutError:
            outcome = f"timeout after {self.settings.webhook_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            outcome = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.calls[hook.id] -= 1
            self.in_flight.discard(key)
        if delivery.partition not in self.owned or self.pending.get(key) is not delivery:
            return   # revoked meanwhile: the new owner has it from the log
        s = self.settings
        after = after_attempt(delivery, outcome, _now_ms(), s.webhook_max_attempts,
                              s.webhook_backoff_ms, s.webhook_backoff_cap_ms, self.rng)
        self._write(after)
        if after.status == PENDING:
            self._queue(key, after, after.next_ms)
        else:
            self._forget(key)

    def dispatch(self, session: aiohttp.ClientSession) -> int:
        """Start the calls that are due, up to each webhook's free places; return how many
        started. Each webhook has its own queue, so one that is full, paused or slow costs
        the others nothing."""
        started, now = 0, _now_ms()
        for hook_id, due in list(self.due.items()):
            hook = self.registrations.hooks.get(hook_id)
            if hook is None:                  # deleted: its deliveries stop
                for _, _, key in due:
                    self._forget(key)
                del self.due[hook_id]
                continue
            if hook.state == PAUSED or suspension(hook, self.keys.get(hook.owner), now):
                continue
            free = self.settings.webhook_concurrency - self.calls.get(hook_id, 0)
            while free > 0 and due and due[0][0] <= now:
                next_ms, _, key = due[0]
                delivery = self.pending.get(key)
                if delivery is None or delivery.next_ms != next_ms or key in self.in_flight:
                    heapq.heappop(due)
                    continue      # delivered, revoked or rescheduled since
                if not self.keys.fresh_since(delivery.updated_ms):
                    break         # a revocation written before this event may be unread yet
                heapq.heappop(due)
                self.calls[hook_id] = self.calls.get(hook_id, 0) + 1
                self.in_flight.add(key)
                task = asyncio.ensure_future(self.attempt(session, key, delivery, hook))
                task.add_done_callback(self._check_attempt)
                free -= 1
                started += 1
        return started

    def apply_redrives(self) -> None:
        """Failed deliveries of a webhook whose redrive count went up, queued again (once per
        count per partition: the count applied is recorded in the partition's log)."""
        for hook in list(self.registrations.hooks.values()):
            for partition in sorted(self.owned):
                if hook.redrive <= self.redrives[partition].get(hook.id, 0):
                    continue
                latest, _ = self.delivery_log(partition)
                now = _now_ms()
                for key, delivery in latest.items():
                    if delivery.webhook_id == hook.id and delivery.status == FAILED \
                            and key not in self.pending:
                        again = redriven(delivery, now)
                        self._write(again)
                        self._queue(key, again, now)
                self.redrives[partition][hook.id] = hook.redrive
                kafka.produce_waiting(self.producer, self.deliveries,
                                      key=REDRIVE_MARK + hook.id.encode(),
                                      value=b"%d" % hook.redrive, partition=partition,
                                      on_delivery=self._acked)

    # -- state and records --

    def _queue(self, key: bytes, delivery: Delivery, when: int) -> None:
        if key not in self.pending:
            self.waiting[delivery.webhook_id] = self.waiting.get(delivery.webhook_id, 0) + 1
        if delivery.next_ms != when:
            delivery = replace(delivery, next_ms=when)
        self.pending[key] = delivery
        self._tiebreak += 1
        heapq.heappush(self.due.setdefault(delivery.webhook_id, []), (when, self._tiebreak, key))

    def _forget(self, key: bytes) -> None:
        delivery = self.pending.pop(key, None)
        if delivery is not None:
            self.waiting[delivery.webhook_id] -= 1

    def _write(self, delivery: Delivery) -> None:
        kafka.produce_waiting(self.producer, self.deliveries, key=delivery.key,
                              value=delivery.to_bytes(), partition=delivery.partition,
                              on_delivery=self._acked)

    def _acked(self, err: Any, msg: Message) -> None:
        if err is not None:
            self._produce_error = str(err)

    # -- the loop --

    async def run_async(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        await loop.run_in_executor(None, self.registrations.ready.wait)
        await loop.run_in_executor(None, self.keys.ready.wait)
        self.consumer.subscribe([self.ledger], on_assign=self.on_assign, on_revoke=self.on_revoke)
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            while not self._stopping:
                msgs = self.consumer.consume(500, 0)
                ends: dict[int, int] = {}
                for msg in msgs:
                    if msg.error() is None:
                        self.fold_ledger(msg)
                        ends[msg.partition()] = msg.offset() + 1
                if ends:   # the deliveries' records first, then the ledger position
                    await loop.run_in_executor(None, self.producer.flush, 60)
                    self._check_produced()
                    owned = [TopicPartition(self.ledger, p, o) for p, o in ends.items()
                             if p in self.owned]
                    if owned:
                        await loop.run_in_executor(
                            None, lambda: self.consumer.commit(offsets=owned, asynchronous=False))
                        self._forget_committed(owned)
                self.apply_redrives()
                started = self.dispatch(session)
                self.producer.poll(0)
                self._check_produced()
                if not msgs and not started:
                    await asyncio.sleep(_TICK_S)
        await loop.run_in_executor(None, self.producer.flush, 30)
        self.consumer.close()

    def _forget_committed(self, committed: list[TopicPartition]) -> None:
        """A committed event is never read again: its delivery keys need not be kept."""
        for tp in committed:
            known = self.known.get(tp.partition)
            if known:
                self.known[tp.partition] = {k: o for k, o in known.items() if o >= tp.offset}

    def _check_attempt(self, task: asyncio.Future) -> None:
        """An attempt that raised is a bug here (a receiver's failures are caught): stop
        the worker, loudly, rather than leave its delivery in flight for ever."""
        if not task.cancelled() and task.exception() is not None:
            self._bug = task.exception()

    def _check_produced(self) -> None:
        if self._bug is not None:
            raise RuntimeError("a delivery attempt failed") from self._bug
        if self._produce_error is not None:   # a delivery record was lost: start over
            raise RuntimeError(f"writing a delivery record failed: {self._produce_error}")

    def _stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        asyncio.run(self.run_async())


def _now_ms() -> int:
    return int(time.time() * 1000)
