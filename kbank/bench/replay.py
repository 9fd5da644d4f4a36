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


class SyntheticLedger:
    """A valid ledger written straight to the topic: accounts opened and funded, then
    transfers as debit/credit pairs with exact balances, gap-free seqs and each partition's
    hash chain; `extend` goes on where it stopped."""

    def __init__(self, settings: Settings, accounts: int, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.producer = kafka.producer(settings, kafka.ADMIN, **{
            "linger.ms": 20, "batch.num.messages": 10000,
            "queue.buffering.max.messages": 2_000_000, "compression.type": "lz4"})
        self.topic = settings.topic(topics.LEDGER)
        self.names = [f"acct-{i:07d}" for i in range(accounts)]
        self.balance = dict.fromkeys(self.names, 0)
        self.seq = dict.fromkeys(self.names, 0)
        self.partition = {name: partition_for(name, settings.partitions) for name in self.names}
        self.heads = [GENESIS_HASH] * settings.partitions
        self.src = Position(settings.topic(topics.REQUESTS), 0, 0)
        self.ts = int(time.time() * 1000)
        self.written = self.transfers = 0

    def _emit(self, name: str, rid: str, kind: str, amount: int, other: str | None) -> None:
        self.seq[name] += 1
        p = self.partition[name]
        self.heads[p], value = chain_event(self.heads[p], dumps(ledger_event(
            name, self.seq[name], rid, kind, amount, other, self.balance[name], self.ts,
            self.src)))
        kafka.produce_waiting(self.producer, self.topic, key=name.encode(), value=value,
                              partition=p)
        self.written += 1

    def extend(self, events: int, label: str = "synthetic ledger") -> int:
        """Write about `events` more events (the accounts first, if not yet); return how many."""
        before = self.written
        bar = progress_bar(label, total=events)
        if before == 0:
            for name in self.names:
                self._emit(name, f"open-{name}", OPENED, 0, None)
                self.balance[name] = 1_000_000
                self._emit(name, f"dep-{name}", DEPOSITED, 1_000_000, None)
        while self.written - before < events:
            a, b = self.rng.sample(self.names, 2)
            amount = self.rng.randint(1, 1_000)
            i = self.transfers = self.transfers + 1
            self.balance[a] -= amount
            self._emit(a, f"t-{i}", DEBITED, amount, b)
            self.balance[b] += amount
            self._emit(b, f"t-{i}", CREDITED, amount, a)
            if i % 5_000 == 0:
                bar.update(self.written - before - bar.n)
        self.producer.flush(300)
        bar.update(self.written - before - bar.n)
        bar.close()
        return self.written - before


def replay_speed(settings: Settings, events: int, accounts: int) -> dict[str, float]:
    from kbank.replay.verify import verify
    from kbank.replay.views import rebuild

    ensure_topics(settings)
    ledger = SyntheticLedger(settings, accounts)
    written = ledger.extend(events)
    start = time.perf_counter()
    views = rebuild(settings, tempfile.mkdtemp(prefix="bank-bench-replay-"))
    rebuild_s = time.perf_counter() - start
    processes = os.cpu_count() or 1
    start = time.perf_counter()
    in_parallel = rebuild(settings, tempfile.mkdtemp(prefix="bank-bench-replay-"),
                          show_progress=False, processes=processes)
    rebuild_parallel_s = time.perf_counter() - start
    start = time.perf_counter()
    report = verify(settings, show_progress=True)
    verify_s = time.perf_counter() - start
    start = time.perf_counter()
    parallel = verify(settings, processes=processes)
    parallel_s = time.perf_counter() - start
    # a daily verify: a checkpoint where the full one ended, 100,000 new events, then
    # only those verified (the checkpoint read and the log's match with it included)
    from kbank.replay import checkpoint as checkpoints

    checkpoints.write(settings, report.checkpoint)
    added = ledger.extend(min(100_000, max(1, events // 10)), "events after the checkpoint")
    start = time.perf_counter()
    incremental = verify(settings, since=checkpoints.read(settings))
    incremental_s = time.perf_counter() - start
    return {"incremental_new_events": added, "incremental_verify_s": round(incremental_s, 2),
            "incremental_ok": incremental.ok and incremental.events == written + added,
            "ledger_events": written, "rebuilt_events": views.events,
            "rebuild_parallel_events_per_s": written / rebuild_parallel_s,
            "rebuild_parallel_ok": in_parallel.events == views.events,
            "rebuild_events_per_s": written / rebuild_s, "verified_events": report.events,
            "verify_events_per_s": written / verify_s, "verify_ok": report.ok,
            "verify_processes": processes, "verify_parallel_events_per_s": written / parallel_s,
            "verify_parallel_ok": parallel.ok and parallel.events == report.events}
