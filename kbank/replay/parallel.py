"""Replay across processes: the logs are co-partitioned by account, so a replay splits the
partitions among processes (spawned: no state shared with the parent) and merges what
they return."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, TypeVar

from confluent_kafka.admin import AdminClient

from kbank.streams import kafka
from kbank.streams.config import Settings

T = TypeVar("T")


def partition_shares(settings: Settings, topic: str, processes: int) -> list[list[int]]:
    """`topic`'s partitions (a full name: a copy of the ledger is read too) dealt round-robin
    to at most `processes` shares, none empty."""
    found = AdminClient(kafka.client_config(settings, kafka.TOOLS)).list_topics(
        topic, timeout=30).topics[topic]
    count = len(found.partitions)
    return [list(range(i, count, processes)) for i in range(min(processes, count))]


def in_processes(work: Callable[..., T], calls: list[tuple[Any, ...]]) -> list[T]:
    """`work(*call)` for each call, each in a process of its own, results in call order."""
    with ProcessPoolExecutor(len(calls), mp_context=get_context("spawn")) as pool:
        return list(pool.map(work, *zip(*calls)))
