"""`bank close --at T`: when T is settled, and the fold of the ledger into the close at T.

A close of T is made only once T is settled: no event that belongs to it (kbank.books.cut)
is still to come. That takes two things. Every input with a timestamp at or before T must be
in its topic: requests are stamped by the broker when they land, and a credit is stamped by
the engine when it makes it, inside a transaction that commits or aborts within the engine's
transaction timeout; so once T + that timeout + a margin (BANK_CLOSE_SETTLE_MARGIN_MS) has
passed, both inputs' ends hold every one of them. And the engine must have decided
everything up to those ends: its committed offsets reach them (or only transaction markers
lie between, which are not records). Then the ledger, read to its end, holds every event of the close, and any event
written after it comes from a later input and is past the cut. A request on the wrong
partition is forwarded to its owner's credits with its own timestamp, so the credits' ends
are taken a second time once the requests are decided.

The close is stored by kbank.streams.books.store.
"""
from __future__ import annotations

import time
from typing import Callable

from confluent_kafka import Consumer, TopicPartition

from kbank.books.cut import CloseFold
from kbank.replay.report import VerifyReport
from kbank.streams import kafka, topics
from kbank.streams.books.closes import Close, close_id
from kbank.streams.client import end_offset, read_to_end, read_topic
from kbank.streams.config import Settings
from kbank.streams.progress import progress_bar


class NotSettled(RuntimeError):
    """The instant cannot be closed yet: the engine has not decided every input up to it."""


def settle_ms(settings: Settings) -> int:
    """How long after T every input stamped at or before T is in its topic."""
    return settings.transaction_timeout_ms + settings.close_settle_margin_ms


def _ends(consumer: Consumer, topic: str, partitions: int) -> dict[TopicPartition, int]:
    return {TopicPartition(topic, p): end_offset(consumer, TopicPartition(topic, p))
            for p in range(partitions)}


def _undecided(engine: Consumer, reader: Consumer,
               ends: dict[TopicPartition, int]) -> list[str]:
    """The input partitions with a record below its end the engine has not committed past
    (a transaction marker is not a record: the committed offset may stop before one)."""
    committed = {(tp.topic, tp.partition): tp.offset
                 for tp in engine.committed(list(ends), timeout=10)}
    behind = {tp: committed.get((tp.topic, tp.partition), -1) for tp, end in ends.items()}
    behind = {tp: max(at, 0) for tp, at in behind.items() if max(at, 0) < ends[tp]}
    waiting = []
    for tp, start in behind.items():
        for msg in read_to_end(reader, [TopicPartition(tp.topic, tp.partition, start)], 30):
            if msg.offset() < ends[tp]:
                waiting.append(f"{tp.topic}[{tp.partition}] from offset {start}")
            break
    return waiting


def wait_settled(settings: Settings, at_ms: int, timeout_s: float,
                 say: Callable[[str], None] = print) -> None:
    """Return once no event of the close at `at_ms` is still to come; NotSettled after
    `timeout_s` of waiting for the engine."""
    ready_ms = at_ms + settle_ms(settings)
    now_ms = int(time.time() * 1000)
    if ready_ms > now_ms:
        say(f"close {close_id(at_ms)}: waiting {(ready_ms - now_ms) / 1000:.1f} s until every "
            f"input stamped by then is in its topic")
        time.sleep((ready_ms - now_ms) / 1000)
    engine = kafka.consumer(settings, kafka.TOOLS, settings.topic(topics.ENGINE_GROUP))
    reader = kafka.consumer(settings, kafka.TOOLS, settings.topic("bank-reader-close"),
                            **{"enable.partition.eof": True})
    deadline = time.monotonic() + timeout_s
    try:
        requests, credits = settings.topic(topics.REQUESTS), settings.topic(topics.CREDITS)
        rounds = [lambda: {**_ends(engine, requests, settings.partitions),
                           **_ends(engine, credits, settings.partitions)},
                  lambda: _ends(engine, credits, settings.partitions)]   # forwarded requests
        for take_ends in rounds:
            ends = take_ends()
            while waiting := _undecided(engine, reader, ends):
                if time.monotonic() > deadline:
                    raise NotSettled(f"the engine has not decided every input up to "
                                     f"{close_id(at_ms)} after {timeout_s:.0f} s (is it running?): "
                                     f"records wait in {', '.join(waiting[:4])}")
                time.sleep(0.5)
    finally:
        reader.close()
        engine.close()


def fold_close(settings: Settings, at_ms: int, show_progress: bool = False,
               currency: str | None = None) -> tuple[Close, VerifyReport]:
    """Read the ledger (every partition from its start, up to its first event past the cut)
    and fold the close. Call once the instant is settled (wait_settled)."""
    fold = CloseFold(at_ms, settings.partitions, settings.id_window_ms)
    progress = progress_bar(f"close {close_id(at_ms, currency)}: ledger.events",
                            enabled=show_progress)
    for msg in read_topic(settings, settings.topic(topics.LEDGER), prefetch=100_000):
        progress.update()
        fold.add(msg.partition(), msg.offset(), msg.value())
        if len(fold.passed) == settings.partitions:
            break          # every partition's cut is complete: the rest is after it
    progress.close()
    return fold.close(topics.LEDGER, currency)
