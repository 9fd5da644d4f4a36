"""`bank bench --backlog N`: how fast the engine drains a backlog, the way stream processors
are usually compared.

The accounts are opened, the engine is stopped, N transfers are produced while no engine
runs, then the engine workers (and views workers, if asked) are started. The drain rate is
N over the time from the first transfer decided (its first outcome, the debit's) to the last
completed (its final outcome), both read off the outcomes' LogAppendTime, so neither the
load generator nor the workers' start-up is in it. The CPU
each process kind used while draining is reported per transfer.
"""
from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator

from kbank.bench.driver import fresh_deployment, opened_by_engine
from kbank.bench.procs import cpu_by_kind
from kbank.streams import kafka
from kbank.streams.client import OutcomeTail, RequestSender
from kbank.streams.config import Settings
from kbank.streams.model import request_key
from kbank.streams.progress import progress_bar, wait_with_progress
from kbank.streams.supervisor import WorkerPool, wait_for_views, wait_for_views_caught_up
from kbank.streams.broker import free_port


def backlog_transfers(accounts: int, backlog: int, seed: int) -> Iterator[tuple[str, str, str]]:
    """The backlog (request id, payer, receiver) of one unit each: the engine's, and the
    same for the peer it is compared with (kbank/bench/peer.py)."""
    rng = random.Random(seed)
    for i in range(backlog):
        a, b = rng.sample(range(accounts), 2)
        yield f"b{i}", f"a{a}", f"a{b}"


class DrainClock:
    """Counts the backlog's final outcomes; `first` is the earliest append time of any of
    its outcomes (a debit's, written as the transfer is first decided), `last` the latest of
    the final ones: the drain from the first transfer decided to the last completed."""

    def __init__(self, settings: Settings, keys: set[bytes]) -> None:
        self.keys, self.backlog, self.done = keys, frozenset(keys), 0
        self.first = self.last = self.first_completed = None
        self._lock = threading.Lock()
        self._tail = OutcomeTail(settings, kafka.ADMIN, "bench-drain", self._count, batch=20000,
                                 wait_s=0.05)

    def _count(self, msgs: list) -> None:
        with self._lock:
            for msg in msgs:
                value = msg.value()
                if msg.error() or value is None or msg.key() not in self.backlog:
                    continue
                appended = msg.timestamp()[1]
                self.first = appended if self.first is None else min(self.first, appended)
                if b'"status":"debited"' in value or msg.key() not in self.keys:
                    continue
                self.keys.discard(msg.key())
                self.done += 1
                self.last = appended if self.last is None else max(self.last, appended)
                self.first_completed = appended if self.first_completed is None \
                    else min(self.first_completed, appended)

    def close(self) -> None:
        self._tail.close()


def recompute_speed(settings: Settings, processes: int) -> dict[str, object]:
    """`bank replay recompute`'s re-decision of the drained log, unchanged rules, in one
    process and in `processes`: decided events/s, and whether the two agree byte for byte."""
    from kbank.replay.recompute import events_by_account, simulate, simulate_in_parallel
    from kbank.streams.decisions import Rules

    rules = Rules.from_settings(settings, settings.partitions)
    started = time.monotonic()
    alone = simulate(settings, rules, settings.partitions, show_progress=False)
    alone_s = time.monotonic() - started
    started = time.monotonic()
    shared = simulate_in_parallel(settings, rules, settings.partitions, processes)
    shared_s = time.monotonic() - started

    return {"recompute_events": len(alone.events),
            "recompute_events_per_s": round(len(alone.events) / alone_s),
            "recompute_processes": processes,
            "recompute_parallel_events_per_s": round(len(shared.events) / shared_s),
            "recompute_parallel_same": events_by_account(alone.events) ==
            events_by_account(shared.events)}


def drain_speed(settings: Settings, *, workers: int, views: int, accounts: int, backlog: int,
                broker_pids: list[int], seed: int = 3, recompute: bool = False) -> dict[str, object]:
    settings = fresh_deployment(settings, "backlog")
    opened_by_engine(settings, accounts, deposit=10_000_000, workers=workers)
    sender = RequestSender(settings)
    keys = set()
    bar = progress_bar("backlog (no engine running)", "transfers", total=backlog)
    for i, (rid, payer, receiver) in enumerate(backlog_transfers(accounts, backlog, seed)):
        keys.add(request_key(payer, rid).encode())
        sender.send({"type": "transfer", "request_id": rid, "from": payer, "to": receiver,
                     "amount": 1})
        if i % 10_000 == 0:
            bar.update(i - bar.n)
    sender.flush()
    bar.close()
    drain = DrainClock(settings, keys)
    pools = []
    try:
        if views:
            pools.append(WorkerPool(settings, views, command="views",
                                    web_ports=[free_port() for _ in range(views)]))
            if not wait_for_views([pools[-1].url(str(i)) for i in range(views)],
                                  settings.partitions):
                raise TimeoutError("the views workers did not become ready in 120 s")
        pools.append(WorkerPool(settings, workers))
        pids = {"engine": [p.pid for p in pools[-1].procs.values()], "broker": broker_pids}
        if views:
            pids["views"] = [p.pid for p in pools[0].procs.values()]
        before = cpu_by_kind(pids)
        started = time.monotonic()
        wait_with_progress(lambda: drain.done, backlog, "draining", "transfers")
        after = cpu_by_kind(pids)
        if views:   # the views' cost is all of their fold, not what they did by the last outcome
            caught_up = wait_for_views_caught_up([pools[0].url(str(i)) for i in range(views)])
            views_s = time.monotonic() - started
            after["views"] = cpu_by_kind({"views": pids["views"]})["views"]
    finally:
        drain.close()
        for pool in pools:
            pool.stop_all()
    seconds = max(1e-3, (drain.last - drain.first) / 1000)
    recomputed = recompute_speed(settings, os.cpu_count() or 1) if recompute else {}
    return {**recomputed, "mode": "backlog", "backlog": backlog, "workers": workers, "views": views,
            "accounts": accounts, "drain_s": round(seconds, 2),
            "drain_transfers_per_s": round(backlog / seconds, 1),
            "first_completed_after_s": round((drain.first_completed - drain.first) / 1000, 2),
            **({"views_caught_up": caught_up, "views_folded_in_s": round(views_s, 2)}
               if views else {}),
            "cpu_us_per_transfer": {kind: round((after[kind] - before[kind]) / backlog * 1e6, 1)
                                    for kind in after}}
