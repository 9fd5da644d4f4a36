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
import time
import uuid
from dataclasses import asdict, dataclass, field, replace

import orjson
from confluent_kafka import TopicPartition

from kbank.bench.histogram import LatencyHistogram
from kbank.bench.procs import CpuMeter, Sampler, Timeline
from kbank.streams.progress import progress_bar
from kbank.streams import kafka
from kbank.streams.broker import free_port
from kbank.streams.client import OutcomeTail, RequestSender
from kbank.streams.config import Settings
from kbank.streams.model import request_key
from kbank.streams.partitioning import partition_for
from kbank.streams.principals import secure_deployment
from kbank.streams.supervisor import WorkerPool, wait_for_views
from kbank.streams.topics import ensure_topics


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
    views: int = 0
    auth: str = ""   # the broker's authentication: on, off, or as configured (a user's cluster)
    cpu_us_per_transfer: dict[str, float] = field(default_factory=dict)
    minute_transfers_per_s: list[float] = field(default_factory=list)
    first_minute_transfers_per_s: float | None = None
    second_minute_transfers_per_s: float | None = None
    last_minute_transfers_per_s: float | None = None
    last_minute_cpu_us_per_transfer: dict[str, float] = field(default_factory=dict)
    minute_cpu_us_per_transfer: dict[str, list[float]] = field(default_factory=dict)
    rss_growth_pct: dict[str, float] = field(default_factory=dict)   # per process, after warm-up
    # offsets appended per finished transfer in the window, by topic (transaction markers
    # included: they take offsets too), and their sum: what the system wrote to Kafka
    records_per_transfer: dict[str, float] = field(default_factory=dict)
    # the machine's speed: median CPU ms of a fixed piece of work each minute (procs.reference_work_ms)
    minute_reference_cpu_ms: list[float] = field(default_factory=list)
    initiation: LatencyHistogram = field(default_factory=LatencyHistogram, repr=False)
    completion: LatencyHistogram = field(default_factory=LatencyHistogram, repr=False)
    timeline: Timeline = field(default_factory=Timeline, repr=False)

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        for name in ("initiation", "completion", "timeline"):
            out.pop(name)
        out["transfers_per_cpu_s"], out["transfers_per_cpu_s_without_load_generator"] = \
            (round(x, 1) for x in per_cpu_second(self.cpu_us_per_transfer))
        return out


def per_cpu_second(cpu_us: dict[str, float]) -> tuple[float, float]:
    """Transfers per second of CPU the processes used, with and without the load generator
    (the broker's JIT is a part of the broker's figure, so it is not added again)."""
    def per(kinds: list[str]) -> float:
        used = sum(cpu_us[k] for k in kinds)
        return 1e6 / used if used > 0 else 0.0
    kinds = [k for k in cpu_us if k != "broker JIT"]
    return per(kinds), per([k for k in kinds if k != "load generator"])


# the load generator shares the broker: fewer, fuller fetches and produce requests (linger 5
# ms above) cost it less (measured at 10,000/s: broker 105 -> 86 us per transfer)
_FEWER_FETCHES = {"fetch.wait.max.ms": 20, "fetch.min.bytes": 50_000}


class OutcomeClock:
    """Tails transfers.outcomes: each request's first final status ends it. Memory stays flat
    over a long run: only unfinished requests are kept (`sent_at`), latencies go to a
    histogram."""

    def __init__(self, settings: Settings) -> None:
        self.sent_at: dict[bytes, float] = {}    # unfinished request id -> when it was sent
        self.finished = 0
        self.rejected = 0
        self.window = (float("inf"), float("inf"))   # completions of requests sent in it count
        self.completion = LatencyHistogram()
        self._tail = OutcomeTail(settings, kafka.ADMIN, "bench-clock", self._clock, batch=20000,
                                 wait_s=0.05, **_FEWER_FETCHES)

    def _clock(self, msgs: list) -> None:
        sent_at, add = self.sent_at, self.completion.add
        now = time.perf_counter()
        start, end = self.window
        for msg in msgs:
            value = msg.value()
            if msg.error() or value is None or b'"status":"debited"' in value:
                continue
            sent = sent_at.pop(msg.key(), None)
            if sent is None:
                continue   # not ours, or a second final status
            self.finished += 1
            if b'"status":"rejected"' in value:
                self.rejected += 1
            if start <= sent < end:
                add(1000 * (now - sent))

    def close(self) -> None:
        self._tail.close()


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


def open_accounts(sender: RequestSender, clock: OutcomeClock, accounts: int, deposit: int) -> None:
    bar = progress_bar("opening accounts", "requests", total=2 * accounts)
    for kind, fields in (("open_account", {}), ("deposit", {"amount": deposit})):
        for i in range(accounts):
            rid = f"{kind[0]}{i}"
            clock.sent_at[request_key(f"a{i}", rid).encode()] = time.perf_counter()
            sender.send({"type": kind, "request_id": rid, "account": f"a{i}", **fields})
        sender.flush()
    deadline = time.monotonic() + 600
    while clock.sent_at:
        bar.update(2 * accounts - len(clock.sent_at) - bar.n)
        if time.monotonic() > deadline:
            raise TimeoutError("accounts were not opened in 600 s")
        time.sleep(0.2)
    bar.update(2 * accounts - bar.n)
    bar.close()


def fresh_deployment(settings: Settings, label: str) -> Settings:
    """Settings of a deployment of its own (a new topic prefix; on a secured cluster, its own
    principals and ACLs), its topics made."""
    settings = replace(settings, topic_prefix=f"bench-{label}-{uuid.uuid4().hex[:8]}-")
    if settings.kafka_credentials:
        credentials = os.path.join(settings.state_dir, f"{settings.topic_prefix}credentials")
        settings = secure_deployment(settings, kafka.client_config(settings, kafka.ADMIN),
                                     credentials)
    ensure_topics(settings)
    return settings


def opened_by_engine(settings: Settings, accounts: int, deposit: int, workers: int = 1) -> None:
    """Open and fund accounts a0.. with engine workers started for it and stopped after."""
    engine = WorkerPool(settings, workers)
    clock = OutcomeClock(settings)
    try:
        open_accounts(RequestSender(settings), clock, accounts, deposit=deposit)
    finally:
        clock.close()
        engine.stop_all()


def log_ends(settings: Settings) -> dict[str, int]:
    """The sum of every partition's end offset, per topic of this deployment."""
    consumer = kafka.consumer(settings, kafka.ADMIN)
    try:
        ends: dict[str, int] = {}
        for name, meta in consumer.list_topics(timeout=30).topics.items():
            if name.startswith(settings.topic_prefix) and not name.startswith("__"):
                ends[name[len(settings.topic_prefix):]] = sum(
                    consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                    for p in meta.partitions)
        return ends
    finally:
        consumer.close()


def per_transfer(before: dict[str, int], after: dict[str, int], transfers: int) -> dict[str, float]:
    grown = {t: after[t] - before.get(t, 0) for t in after if after[t] > before.get(t, 0)}
    out = {t: round(n / max(1, transfers), 2) for t, n in sorted(grown.items())}
    out["all topics"] = round(sum(grown.values()) / max(1, transfers), 2)
    return out


def _drain(sent_at: dict[bytes, float], sent: int, timeout_s: float = 120) -> None:
    """Wait (showing progress) until every request sent reached a final outcome."""
    bar = progress_bar("waiting for the last outcomes", "transfers", total=sent)
    deadline = time.monotonic() + timeout_s
    while sent_at and time.monotonic() < deadline:
        bar.update(sent - len(sent_at) - bar.n)
        time.sleep(0.2)
    bar.update(sent - len(sent_at) - bar.n)
    bar.close()


def drive(settings: Settings, clock: OutcomeClock, accounts: int, seconds: float, warmup: float,
          rate: float | None, inflight: int, zipf: float | None, seed: int = 1,
          pids_by_kind: dict[str, list[int]] | None = None,
          misrouted: float = 0.0) -> BenchResult:
    """Send transfers for warmup + seconds; measure the window after the warm-up: latencies,
    throughput (per minute too), and the CPU and memory of each kind of process in it.
    `misrouted`: the share sent on a partition the sender's key does not map to (as a client
    with another partitioner would), which the engine forwards."""
    rng = random.Random(seed)
    pick = _account_picker(accounts, zipf, rng)
    sender = RequestSender(settings, **{"linger.ms": 5, "acks": "all"})
    producer, topic = sender.producer, sender.topic
    initiation = LatencyHistogram()
    meter = CpuMeter(pids_by_kind or {})
    sent_at, finished_before = clock.sent_at, clock.finished
    total = warmup + seconds
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + total
    clock.window = (window_start, window_end)

    def on_ack(err, msg) -> None:  # noqa: ANN001 - confluent-kafka's delivery report
        if err is None:
            latency = msg.latency()   # produce() to acknowledgement, measured by librdkafka
            if window_start <= time.perf_counter() - latency < window_end:
                initiation.add(1000 * latency)

    bar = progress_bar("driving transfers", "s", total=int(total))
    sampler: Sampler | None = None
    window_finished = 0
    i = 0
    while True:
        now = time.perf_counter()
        if sampler is None and now >= window_start:
            ends_before = log_ends(settings)
            meter.start()
            window_finished = clock.finished
            sampler = Sampler(pids_by_kind or {}, lambda: clock.finished, now)
        if now >= window_end:
            meter.stop()
            window_finished = clock.finished - window_finished
            written = per_transfer(ends_before, log_ends(settings), window_finished)
            break
        if rate:
            due = int((now - start) * rate)
            if i >= due:
                time.sleep(min(0.001, (i + 1) / rate - (now - start)))
                producer.poll(0)
                continue
        elif len(sent_at) > inflight:
            producer.poll(0.0005)
            continue
        src, dst = pick()
        rid, sender_name = b"x%d" % i, b"a%d" % src
        value = orjson.dumps({"type": "transfer", "request_id": rid.decode(), "from": f"a{src}",
                              "to": f"a{dst}", "amount": rng.randint(1, 1000)})
        # the outcome's record key: model.request_key(sender, request_id)
        sent_at[b"%d:%s/%s" % (len(sender_name), sender_name, rid)] = time.perf_counter()
        wrong = misrouted and rng.random() < misrouted
        kafka.produce_waiting(producer, topic, 0.001, value=value, key=sender_name,
                              on_delivery=on_ack, **({"partition": (partition_for(
                                  sender_name, settings.partitions) + 1) % settings.partitions}
                                  if wrong else {}))
        i += 1
        if i % 256 == 0:
            producer.poll(0)
            bar.update(int(now - start) - bar.n)
            bar.set_postfix_str(f"{i:,} sent", refresh=False)
    timeline = sampler.stop() if sampler else Timeline()
    producer.flush(60)
    bar.update(int(total) - bar.n)
    bar.close()
    _drain(sent_at, i)
    minutes = timeline.per_minute()
    long_run = len(minutes) >= 2
    return BenchResult(
        transfers_per_s=window_finished / seconds,
        initiation_p50_ms=initiation.percentile(0.50), initiation_p99_ms=initiation.percentile(0.99),
        completion_p50_ms=clock.completion.percentile(0.50),
        completion_p99_ms=clock.completion.percentile(0.99),
        broker_raw_msgs_per_s=0.0, workers=0, partitions=settings.partitions, accounts=accounts,
        duration_s=seconds, rejected=clock.rejected, sent=i,
        completed=clock.finished - finished_before - clock.rejected, unfinished=len(sent_at),
        mode=f"open-loop {rate:,.0f}/s" if rate else f"closed-loop, {inflight:,} in flight",
        cpu_us_per_transfer=meter.per_transfer_us(window_finished),
        minute_transfers_per_s=[round(m, 1) for m in minutes],
        first_minute_transfers_per_s=round(minutes[0], 1) if long_run else None,
        second_minute_transfers_per_s=round(minutes[1], 1) if long_run else None,
        last_minute_transfers_per_s=round(minutes[-1], 1) if long_run else None,
        last_minute_cpu_us_per_transfer=timeline.last_minute_cpu_us() if minutes else {},
        minute_cpu_us_per_transfer=timeline.minute_cpu_us(),
        # the first two minutes are warm-up for memory (caches and RocksDB memtables fill)
        rss_growth_pct=timeline.memory_growth(120 if seconds >= 240 else 0),
        minute_reference_cpu_ms=timeline.minute_reference_ms(),
        records_per_transfer=written,
        initiation=initiation, completion=clock.completion, timeline=timeline)


def run_bench(settings: Settings, *, workers: int, accounts: int, seconds: float, warmup: float,
              rate: float | None, inflight: int, zipf: float | None, raw_msgs_per_s: float,
              views: int = 0, log_dir: str | None = None,
              broker_pids: list[int] | None = None, misrouted: float = 0.0) -> BenchResult:
    """One benchmark run on fresh topics with `workers` engine processes (and `views` views
    workers folding the ledger meanwhile, their CPU measured too)."""
    settings = fresh_deployment(settings, "run")
    pools = [WorkerPool(settings, workers, log_dir)]
    if views:
        pools.append(WorkerPool(settings, views, log_dir, command="views",
                                web_ports=[free_port() for _ in range(views)]))
    clock = OutcomeClock(settings)
    try:
        if views and not wait_for_views([pools[1].url(str(i)) for i in range(views)],
                                        settings.partitions):
            raise TimeoutError("the views workers did not become ready in 120 s")
        open_accounts(RequestSender(settings), clock, accounts, deposit=10_000_000)
        # the opening requests are not part of the measurement
        clock.rejected = 0
        pids = {"engine": [p.pid for p in pools[0].procs.values()], "broker": broker_pids or [],
                "load generator": [os.getpid()]}
        if views:
            pids["views"] = [p.pid for p in pools[1].procs.values()]
        result = drive(settings, clock, accounts, seconds, warmup, rate, inflight, zipf,
                       pids_by_kind=pids, misrouted=misrouted)
    finally:
        clock.close()
        for pool in pools:
            pool.stop_all()
    result.workers = workers
    result.views = views
    result.broker_raw_msgs_per_s = raw_msgs_per_s
    return result
