"""Producing requests to transfers.requests and reading topics back.

Used by `bank send`, the demo, the tests and the benchmark.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import orjson
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException,
                             Message, TopicPartition)

from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.decisions import deciding_account


def routing_key(request: dict[str, Any]) -> str | None:
    """The account whose partition decides the request (the sender of a transfer or hold)."""
    key = deciding_account(request)
    return key if isinstance(key, str) and key else None


class RequestSender:
    """Produces requests keyed by their deciding account, with acknowledgements."""

    def __init__(self, settings: Settings, **extra: object) -> None:
        self.topic = settings.topic(topics.REQUESTS)
        self.producer = kafka.producer(settings, kafka.OPERATOR, **{"linger.ms": 5, "acks": "all",
                                                    "queue.buffering.max.messages": 1_000_000,
                                                    **extra})

    def send(self, request: dict[str, Any],
             on_ack: Callable[[str | None, Message], None] | None = None) -> str:
        """Queue one request; on_ack(error or None, message) runs once the broker answers.
        Returns its request key (what OutcomeWatcher keys its status by)."""
        from kbank.streams.model import request_key

        key = routing_key(request)
        if key is None:
            raise ValueError("request has no account (or from) to key it by")
        self.send_raw(key.encode(), orjson.dumps(request), on_ack)
        return request_key(key, request["request_id"])

    def send_raw(self, key: bytes | None, value: bytes,
                 on_ack: Callable[[str | None, Message], None] | None = None) -> None:
        """Queue raw bytes (for tests of hostile input)."""
        def delivered(err, msg):  # noqa: ANN001 - confluent-kafka callback signature
            if on_ack is not None:
                on_ack(None if err is None else str(err), msg)
        kafka.produce_waiting(self.producer, self.topic, key=key, value=value,
                              on_delivery=delivered)
        self.producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        if self.producer.flush(timeout_s) > 0:
            raise TimeoutError("requests were not acknowledged in time")


# whole-log reads (replay, verify): big fetches, short fetch waits
BULK_READ: dict[str, object] = {
    "enable.partition.eof": True, "max.partition.fetch.bytes": 10 * 1024 * 1024,
    "fetch.max.bytes": 100 * 1024 * 1024, "queued.min.messages": 1_000_000, "fetch.wait.max.ms": 5}


def read_to_end(consumer: Consumer, assignment: list[TopicPartition],
                timeout_s: float = 120.0) -> Iterator[Message]:
    """Every record from the given offsets up to the end, per partition.

    The end is found by the fetch response's partition-EOF event (the consumer
    needs enable.partition.eof): for a read_committed reader that is the last
    stable offset, and transaction markers take offsets, so "the last record
    seen" is not the test.
    """
    if not assignment:
        return
    consumer.assign(assignment)
    remaining = {(tp.topic, tp.partition) for tp in assignment}
    deadline = time.monotonic() + timeout_s
    try:
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {sorted(remaining)} to the end: nothing "
                                   f"came for {timeout_s:.0f} s")
            msgs = consumer.consume(10000, 0.1)
            if msgs:   # the timeout is for a read that stalls, not for a long log
                deadline = time.monotonic() + timeout_s
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        remaining.discard((msg.topic(), msg.partition()))
                    continue
                yield msg
    finally:
        consumer.unassign()


def read_topic(settings: Settings, topic: str, timeout_s: float = 120.0,
               isolation: str = "read_committed", role: str = kafka.TOOLS,
               group: str = "bank-reader", partitions: list[int] | None = None,
               start: dict[int, int] | None = None,
               prefetch: int | None = None) -> Iterator[Message]:
    """Every record of a topic (or of some of its `partitions`), from the start (or the
    offsets `start` gives per partition) to its end at the time of reading, read as `role`
    (the tools by default) under one of its groups (it joins none, commits nothing);
    `prefetch`: at most about this many records, 4 MB per partition, fetched ahead, in
    fetches of 16 MB (BULK_READ's million records, 100 MB fetches and librdkafka's 64 MB
    queue per partition held about 300 MB reading a ledger of a million events)."""
    ahead = {} if prefetch is None else {
        "queued.min.messages": prefetch, "queued.max.messages.kbytes": 4096,
        "fetch.max.bytes": 16 * 1024 * 1024, "max.partition.fetch.bytes": 2 * 1024 * 1024}
    consumer = kafka.consumer(settings, role, settings.topic(group),
                              **{**BULK_READ, "isolation.level": isolation, **ahead})
    try:
        parts = partitions if partitions is not None else \
            sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        yield from read_to_end(consumer, [TopicPartition(topic, p, (start or {}).get(
            p, OFFSET_BEGINNING)) for p in parts], timeout_s)
    finally:
        consumer.close()


def read_json(settings: Settings, logical_topic: str, timeout_s: float = 60.0) -> Iterable[dict]:
    """The decoded JSON values of a topic (records that do not decode are skipped)."""
    for msg in read_topic(settings, settings.topic(logical_topic), timeout_s):
        try:
            yield orjson.loads(msg.value())
        except (orjson.JSONDecodeError, TypeError):
            continue


_LEADER_MOVING = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                  KafkaError.REQUEST_TIMED_OUT)


def end_offset(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> int:
    """A partition's end as its leader says it now; a leader that moves or is not known yet
    (a topic just made, a broker failing over) is asked again until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.retriable() or err.code() in _LEADER_MOVING) \
                    or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


class OutcomeTail:
    """A thread that reads transfers.outcomes, from its end when started (or its start),
    and hands each fetched batch of records to `on_batch`: the one tail under the web
    intake's waiter, the clients' watcher and the benchmark's clock."""

    def __init__(self, settings: Settings, role: str, group: str,
                 on_batch: Callable[[list[Message]], None], from_beginning: bool = False,
                 batch: int = 10_000, wait_s: float = 0.1, exact_end: bool = False,
                 **consumer_extra: object) -> None:
        """`exact_end`: start at each partition's end as the broker says it now (a blocking
        round trip), so every record appended after the constructor returns is read; the
        default, OFFSET_END, is resolved later, at the first fetch."""
        import threading

        self._on_batch, self._batch, self._wait_s = on_batch, batch, wait_s
        self._stop = threading.Event()
        self._consumer = kafka.consumer(settings, role, settings.topic(group), **consumer_extra)
        topic = settings.topic(topics.OUTCOMES)
        parts = sorted(self._consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        if exact_end:
            starts = {p: end_offset(self._consumer, TopicPartition(topic, p)) for p in parts}
        else:
            starts = dict.fromkeys(parts, OFFSET_BEGINNING if from_beginning else OFFSET_END)
        self._consumer.assign([TopicPartition(topic, p, starts[p]) for p in parts])
        self._thread = threading.Thread(target=self._run, name="outcome-tail", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msgs = self._consumer.consume(self._batch, self._wait_s)
            if msgs:
                self._on_batch(msgs)
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class OutcomeWatcher:
    """Keeps the furthest-along status of every request it sees on transfers.outcomes (from
    the end it has when started), by request key (model.request_key: the deciding
    account's scope and the id), so callers can wait for requests to finish."""

    def __init__(self, settings: Settings, from_beginning: bool = False) -> None:
        import threading

        self.settings = settings
        self.status: dict[str, str] = {}
        self.final_ts: dict[str, float] = {}  # monotonic time a final status was seen
        self._lock = threading.Lock()
        self._tail = OutcomeTail(settings, kafka.OPERATOR, "operator-watcher", self._fold,
                                 from_beginning)

    def _fold(self, msgs: list[Message]) -> None:
        from kbank.streams.model import is_final, outcome_key, status_moves

        for msg in msgs:
            if msg.error():
                continue
            try:
                out = orjson.loads(msg.value())
                key = outcome_key(out)
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                continue
            with self._lock:
                if status_moves(self.status.get(key), out):
                    self.status[key] = out["status"]
                    if is_final(out["status"]):
                        self.final_ts[key] = time.monotonic()

    def status_of(self, account: str, request_id: str) -> str | None:
        from kbank.streams.model import request_key

        with self._lock:
            return self.status.get(request_key(account, request_id))

    def finished(self, request_ids: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for rid in request_ids if rid in self.final_ts)

    def wait(self, request_ids: list[str], timeout_s: float,
             progress: Callable[[int, int], None] | None = None) -> bool:
        """Wait until every request has a final status; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.finished(request_ids)
            if progress:
                progress(done, len(request_ids))
            if done == len(request_ids):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def close(self) -> None:
        self._tail.close()
