"""`bank bench --replay-events N`: how fast replay reads the ledger.

Writes a synthetic but valid ledger (accounts opened and funded, then
transfers as debit/credit pairs with exact balances, gap-free seqs and each
partition's hash chain) to fresh topics, then times `replay views` (the rebuild into a fresh RocksDB
store) and `replay verify` over it.
"""
from __future__ import annotations

import os
import random
import tempfile
import time

from kbank.streams.progress import progress_bar
from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.model import (CREDITED, DEBITED, DEPOSITED, GENESIS_HASH, OPENED, Position,
                                 chain_event, dumps, ledger_event)
from kbank.streams.partitioning import partition_for
from kbank.streams.topics import ensure_topics


def write_synthetic_ledger(settings: Settings, events: int, accounts: int, seed: int = 5) -> int:
    """Produce about `events` ledger events; returns the number written."""
    rng = random.Random(seed)
    producer = kafka.producer(settings, kafka.ADMIN, **{"linger.ms": 20, "batch.num.messages": 10000,
                                           "queue.buffering.max.messages": 2_000_000,
                                           "compression.type": "lz4"})
    topic = settings.topic(topics.LEDGER)
    names = [f"acct-{i:07d}" for i in range(accounts)]
    balance = dict.fromkeys(names, 0)
    seq = dict.fromkeys(names, 0)
    src = Position(settings.topic(topics.REQUESTS), 0, 0)
    written = 0
    ts = int(time.time() * 1000)
    partition = {name: partition_for(name, settings.partitions) for name in names}
    heads = [GENESIS_HASH] * settings.partitions
    bar = progress_bar("synthetic ledger", total=events)

    def emit(name: str, rid: str, kind: str, amount: int, other: str | None) -> None:
        nonlocal written
        seq[name] += 1
        p = partition[name]
        heads[p], value = chain_event(heads[p], dumps(ledger_event(
            name, seq[name], rid, kind, amount, other, balance[name], ts, src)))
        kafka.produce_waiting(producer, topic, key=name.encode(), value=value, partition=p)
        written += 1
        if written % 10_000 == 0:
            bar.update(10_000)

    for name in names:
        emit(name, f"open-{name}", OPENED, 0, None)
        balance[name] = 1_000_000
        emit(name, f"dep-{name}", DEPOSITED, 1_000_000, None)
    i = 0
    while written < events:
        a, b = rng.sample(names, 2)
        amount = rng.randint(1, 1_000)
        balance[a] -= amount
        emit(a, f"t-{i}", DEBITED, amount, b)
        balance[b] += amount
        emit(b, f"t-{i}", CREDITED, amount, a)
        i += 1
    producer.flush(300)
    bar.update(written - bar.n)
    bar.close()
    return written


def replay_speed(settings: Settings, events: int, accounts: int) -> dict[str, float]:
    from kbank.replay.verify import verify
    from kbank.replay.views import rebuild

    ensure_topics(settings)
    written = write_synthetic_ledger(settings, events, accounts)
    start = time.perf_counter()
    views = rebuild(settings, tempfile.mkdtemp(prefix="bank-bench-replay-"))
    rebuild_s = time.perf_counter() - start
    start = time.perf_counter()
    report = verify(settings, show_progress=True)
    verify_s = time.perf_counter() - start
    processes = os.cpu_count() or 1
    start = time.perf_counter()
    parallel = verify(settings, processes=processes)
    parallel_s = time.perf_counter() - start
    return {"ledger_events": written, "rebuilt_events": views.events,
            "rebuild_events_per_s": written / rebuild_s, "verified_events": report.events,
            "verify_events_per_s": written / verify_s, "verify_ok": report.ok,
            "verify_processes": processes, "verify_parallel_events_per_s": written / parallel_s,
            "verify_parallel_ok": parallel.ok and parallel.events == report.events}
