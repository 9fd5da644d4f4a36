"""The benchmark: open accounts, drive transfers, measure latency and throughput.

initiation latency: just before produce -> the broker acknowledged the request.
completion latency: just before produce -> the final outcome (completed or
rejected) is readable on transfers.outcomes, i.e. the credit (or the
rejection) was written by the engine.
"""
from __future__ import annotations

import itertools
import os
import random
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import orjson
from confluent_kafka import OFFSET_END, TopicPartition

from bench.cpu import CpuMeter
from streams import kafka, topics
from streams.client import RequestSender
from streams.config import Settings
from streams.supervisor import WorkerPool
from streams.topics import ensure_topics


@dataclass
class BenchResult:
    transfers_per_s: float
    initiation_p50_ms: float
    initiation_p99_ms: float
    completion_p50_ms: float
    completion_p99_ms: float
    broker_raw_msgs_per_s: float
    workers: int
    partitions: int
    accounts: int
    duration_s: float
    rejected: int
    sent: int = 0
    completed: int = 0
    unfinished: int = 0
    mode: str = ""
    cpu_us_per_transfer: dict[str, float] = field(default_factory=dict)
    initiation_ms: list[float] = field(default_factory=list, repr=False)
    completion_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("initiation_ms")
        out.pop("completion_ms")
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Progress:
    """A one-line progress display on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self._last = label, total, 0.0

    def show(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.5:
            self._last = now
            pct = 100 * done / self.total if self.total else 100
            sys.stderr.write(f"\r  {self.label}: {done:,}/{self.total:,} ({pct:3.0f}%) {extra}   ")
            sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


class OutcomeClock:
    """Tails transfers.outcomes and stamps the first final status of each request."""

    def __init__(self, settings: Settings) -> None:
        self.final_at: dict[bytes, float] = {}
        self.rejected = 0
        self._stop = threading.Event()
        self._consumer = kafka.consumer(settings, settings.topic("bench-clock"),
                                        **{"fetch.wait.max.ms": 5})
        topic = settings.topic(topics.OUTCOMES)
        parts = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        final_at = self.final_at
        while not self._stop.is_set():
            msgs = self._consumer.consume(20000, 0.05)
            now = time.perf_counter()
            for msg in msgs:
                value = msg.value()
                if msg.error() or value is None or b'"status":"debited"' in value:
                    continue
                rid = msg.key()
                if rid not in final_at:
                    final_at[rid] = now
                    if b'"status":"rejected"' in value:
                        self.rejected += 1
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _account_picker(accounts: int, zipf: float | None, rng: random.Random):
    """A function returning two distinct random account indexes."""
    if not zipf:
        return lambda: rng.sample(range(accounts), 2)
    weights = list(itertools.accumulate(1 / (i + 1) ** zipf for i in range(accounts)))
    pool = rng.choices(range(accounts), cum_weights=weights, k=1_000_000)
    it = itertools.cycle(pool)

    def pick() -> list[int]:
        a = next(it)
        b = next(it)
        while b == a:
            b = next(it)
        return [a, b]
    return pick


def open_accounts(settings: Settings, sender: RequestSender, clock: OutcomeClock, accounts: int,
                  deposit: int) -> None:
    ids = []
    bar = Progress("opening accounts", 2 * accounts)
    for i in range(accounts):
        sender.send({"type": "open_account", "request_id": f"o{i}", "account": f"a{i}"})
        ids.append(f"o{i}".encode())
    sender.flush()
    for i in range(accounts):
        sender.send({"type": "deposit", "request_id": f"d{i}", "account": f"a{i}", "amount": deposit})
        ids.append(f"d{i}".encode())
    sender.flush()
    deadline = time.monotonic() + 600
    while True:
        done = sum(1 for r in ids if r in clock.final_at)
        bar.show(done)
        if done == len(ids):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("accounts were not opened in 600 s")
        time.sleep(0.2)
    bar.show(len(ids), force=True)
    bar.done()


def drive(settings: Settings, clock: OutcomeClock, accounts: int, seconds: float, warmup: float,
          rate: float | None, inflight: int, zipf: float | None, seed: int = 1,
          meter: CpuMeter | None = None) -> BenchResult:
    """Send transfers for warmup + seconds; measure the window after the warm-up (and the
    CPU each kind of process used in it, with `meter`)."""
    rng = random.Random(seed)
    pick = _account_picker(accounts, zipf, rng)
    sender = RequestSender(settings, **{"linger.ms": 2, "acks": "all"})
    producer, topic = sender.producer, sender.topic
    sent_at: dict[bytes, float] = {}
    acked_at: dict[bytes, float] = {}

    def on_ack(rid: bytes, err, msg) -> None:  # noqa: ANN001
        if err is None:
            acked_at[rid] = time.perf_counter()

    total = warmup + seconds
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + total
    bar = Progress("driving transfers", int(total))
    finished_before = len(clock.final_at)  # the opening requests
    i = 0
    metering = False
    while True:
        now = time.perf_counter()
        if meter is not None and not metering and now >= window_start:
            meter.start()
            metering = True
        if now >= window_end:
            if meter is not None:
                meter.stop()
            break
        if rate:
            due = int((now - start) * rate)
            if i >= due:
                time.sleep(min(0.001, (i + 1) / rate - (now - start)))
                producer.poll(0)
                continue
        elif i - (len(clock.final_at) - finished_before) > inflight:
            producer.poll(0.0005)
            continue
        src, dst = pick()
        rid = b"x%d" % i
        value = orjson.dumps({"type": "transfer", "request_id": rid.decode(), "from": f"a{src}",
                              "to": f"a{dst}", "amount": rng.randint(1, 1000)})
        sent_at[rid] = time.perf_counter()
        while True:
            try:
                producer.produce(topic, key=b"a%d" % src, value=value, on_delivery=partial(on_ack, rid))
                break
            except BufferError:
                producer.poll(0.001)
        i += 1
        if i % 256 == 0:
            producer.poll(0)
            bar.show(int(now - start), f"{i:,} sent")
    producer.flush(60)
    bar.show(int(total), f"{i:,} sent", force=True)
    bar.done()
    # drain: every request must reach a final outcome
    bar = Progress("waiting for the last outcomes", i)
    deadline = time.monotonic() + 120
    while True:
        done = sum(1 for r in sent_at if r in clock.final_at)
        bar.show(done)
        if done == len(sent_at) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    bar.show(done, force=True)
    bar.done()
    finals_in_window = sum(1 for r, t in clock.final_at.items() if window_start <= t < window_end
                           and r in sent_at)
    in_window = [r for r, t in sent_at.items() if window_start <= t < window_end]
    init = [1000 * (acked_at[r] - sent_at[r]) for r in in_window if r in acked_at]
    comp = [1000 * (clock.final_at[r] - sent_at[r]) for r in in_window if r in clock.final_at]
    finished = sum(1 for r in sent_at if r in clock.final_at)
    return BenchResult(
        transfers_per_s=finals_in_window / seconds,
        initiation_p50_ms=percentile(init, 0.50), initiation_p99_ms=percentile(init, 0.99),
        completion_p50_ms=percentile(comp, 0.50), completion_p99_ms=percentile(comp, 0.99),
        broker_raw_msgs_per_s=0.0, workers=0, partitions=settings.partitions, accounts=accounts,
        duration_s=seconds, rejected=clock.rejected, sent=len(sent_at),
        completed=finished - clock.rejected, unfinished=len(sent_at) - finished,
        mode=f"open-loop {rate:,.0f}/s" if rate else f"closed-loop, {inflight:,} in flight",
        cpu_us_per_transfer=meter.per_transfer_us(finals_in_window) if meter else {},
        initiation_ms=init, completion_ms=comp)


def run_bench(settings: Settings, *, workers: int, accounts: int, seconds: float, warmup: float,
              rate: float | None, inflight: int, zipf: float | None, raw_msgs_per_s: float,
              log_dir: str | None = None, broker_pids: list[int] | None = None) -> BenchResult:
    """One benchmark run on fresh topics with `workers` engine processes."""
    settings = replace(settings, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}-")
    ensure_topics(settings)
    pool = WorkerPool(settings, workers, log_dir)
    clock = OutcomeClock(settings)
    try:
        sender = RequestSender(settings)
        open_accounts(settings, sender, clock, accounts, deposit=10_000_000)
        # the opening requests are not part of the measurement
        clock.rejected = 0
        meter = CpuMeter({"engine": [p.pid for p in pool.procs.values()],
                          "broker": broker_pids or [],
                          "load generator": [os.getpid()]})
        result = drive(settings, clock, accounts, seconds, warmup, rate, inflight, zipf, meter=meter)
    finally:
        clock.close()
        pool.stop_all()
    result.workers = workers
    result.broker_raw_msgs_per_s = raw_msgs_per_s
    return result
