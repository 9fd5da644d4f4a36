"""Prometheus metrics of an engine worker, served on BANK_ENGINE_METRICS_PORT (0: off)."""
from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

class _WorkerCollector(Collector):
    """Figures read when scraped: records decided by kind (`stats`: the processor's counts),
    and the lag of each owned input partition that the poll loop last read (`lag`; the
    consumer is not asked from this thread: a call beside a running consume() blocked until
    the scrape timed out)."""

    def __init__(self, stats: Callable[[], Any], lag: Callable[[], dict[tuple[str, int], int]]) -> None:
        self.stats, self.lag = stats, lag

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        stats = self.stats()
        decided = CounterMetricFamily("bank_engine_records_decided",
                                      "input records decided (committed or not), by kind", labels=["kind"])
        for kind in ("requests", "credits", "forwarded", "deadletters", "expiries", "contained"):
            decided.add_metric([kind], getattr(stats, kind))
        yield decided
        lag = GaugeMetricFamily("bank_engine_consumer_lag", "records between the engine's position "
                                "and the partition's end (read by the poll loop, at most 1 s old)",
                                labels=["topic", "partition"])
        for (topic, p), behind in sorted(self.lag().items()):
            lag.add_metric([topic, str(p)], behind)
        yield lag


class EngineMetrics:
    """The worker's sensors: it records into them (committed, aborted, restored, ...); the
    figures it keeps itself are read through the callables when scraped."""

    def __init__(self, port: int | None, bind: str, stats: Callable[[], Any],
                 lag: Callable[[], dict[tuple[str, int], int]], owned: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches = Counter("bank_engine_batches", "transactions committed", registry=r)
        self.records = Counter("bank_engine_input_records", "input records committed", registry=r)
        self.aborts = Counter("bank_engine_aborts", "transactions aborted, by cause", ["cause"],
                              registry=r)
        self.commit_seconds = Histogram(
            "bank_engine_batch_seconds", "time from a batch's first record to its commit",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)
        self.consume_errors = Counter("bank_engine_consume_errors", "consumer errors", registry=r)
        self.restores = Counter("bank_engine_restored_partitions", "partitions restored", registry=r)
        self.restore_seconds = Counter("bank_engine_restore_seconds", "time spent restoring", registry=r)
        self.restore_records = Counter("bank_engine_restore_records",
                                       "changelog records applied while restoring", registry=r)
        self.restoring = Gauge("bank_engine_restoring_partitions", "partitions being restored now",
                               registry=r)
        r.register(_WorkerCollector(stats, lag))
        Gauge("bank_engine_owned_partitions", "partitions this worker owns",
              registry=r).set_function(owned)
        if port:
            start_http_server(port, addr=bind, registry=r)

    def committed(self, records: int, seconds: float) -> None:
        self.batches.inc()
        self.records.inc(records)
        self.commit_seconds.observe(seconds)

    def aborted(self, cause: str) -> None:
        self.aborts.labels(cause).inc()

    def restored(self, seconds: float) -> None:
        self.restores.inc()
        self.restore_seconds.inc(seconds)
