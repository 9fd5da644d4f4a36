"""Prometheus metrics of a views worker (GET /metrics)."""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info,
                               ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kbank.streams.health import read_crashes
from kbank.streams.model import REASONS

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kbank")
    except PackageNotFoundError:
        return "source"

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                   0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)

LagSource = Callable[[], Iterable[tuple[str, int, int]]]  # (topic, partition, lag)


class LagUnavailable(RuntimeError):
    """The consumer's position or the partitions' ends cannot be read right now."""


class _LagCollector(Collector):
    """Consumer lag per partition, read when scraped."""

    def __init__(self, source: LagSource) -> None:
        self._source = source

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        family = GaugeMetricFamily("bank_views_consumer_lag",
                                   "records between the views' position and the partition's end",
                                   labels=["topic", "partition"])
        try:
            rows = list(self._source())
        except LagUnavailable:   # no figures rather than zeros
            rows = []
        for topic, partition, lag in rows:
            family.add_metric([topic, str(partition)], lag)
        yield family


class _CrashCollector(Collector):
    """Worker exits that the supervisor restarted, read when scraped."""

    def __init__(self, state_dir: str) -> None:
        self._state_dir = state_dir

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        family = CounterMetricFamily("bank_worker_crashes", "exits of workers that bank up restarted",
                                     labels=["kind", "worker"])
        for kind, workers in read_crashes(self._state_dir).items():
            for wid, info in workers.items():
                family.add_metric([kind, wid], info.get("crashes", 0))
        yield family


class ViewsMetrics:
    def __init__(self, lag_source: LagSource, state_dir: str = ".state",
                 stalled_partitions: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        if stalled_partitions is not None:
            Gauge("bank_engine_stalled_partitions", "engine partitions with records waiting and "
                  "no transaction committed for BANK_ENGINE_STALL_AFTER_S (0: progressing)",
                  registry=self.registry).set_function(stalled_partitions)
        self.ledger_events = Counter(
            "bank_views_ledger_events", "ledger events consumed, by what the views did with them",
            ["result"], registry=self.registry)
        self.outcomes = Counter("bank_views_outcomes", "transfers.outcomes records consumed, by "
                                "status and rejection reason", ["status", "reason"],
                                registry=self.registry)
        ProcessCollector(registry=self.registry)      # process_cpu_seconds_total, memory, fds
        Info("bank_build", "the running code", registry=self.registry).info(
            {"version": _version()})
        self.http_latency = Histogram(
            "bank_http_request_duration_seconds", "HTTP request latency", ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        # from the request's timestamp to the outcome's append time (transfers.outcomes is
        # LogAppendTime): to its first decision, and to its final status
        self.initiation = Histogram(
            "bank_request_initiation_seconds", "request timestamp to its first outcome",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.completion = Histogram(
            "bank_request_completion_seconds", "request timestamp to its final outcome",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_LagCollector(lag_source))
        self.registry.register(_CrashCollector(state_dir))
        self._ledger_pending: dict[str, int] = {}
        self._outcome_pending: dict[tuple[str, str], int] = {}

    def count_ledger_event(self, result: str) -> None:
        """One ledger event, by what the views did with it (Applied, malformed or healed);
        counted in a dict, added to the Prometheus counter when it is read (an inc() per
        event cost 3% of a busy worker)."""
        self._ledger_pending[result] = self._ledger_pending.get(result, 0) + 1

    def count_outcome(self, status: str, reason: str) -> None:
        """One outcome, by its status and reason (an unknown reason counts as "other", so a
        record cannot grow the label set)."""
        label = (status, reason if reason in REASONS or not reason else "other")
        self._outcome_pending[label] = self._outcome_pending.get(label, 0) + 1

    def _add_pending(self) -> None:
        """The counts since the last read, into the counters (labels() once per label)."""
        pending, self._ledger_pending = self._ledger_pending, {}
        for result, count in pending.items():
            self.ledger_events.labels(result).inc(count)
        outcomes, self._outcome_pending = self._outcome_pending, {}
        for label, count in outcomes.items():
            self.outcomes.labels(*label).inc(count)

    def status_moved(self, took_s: float, first: bool, final: bool) -> None:
        """A request's status moved, `took_s` after its timestamp: its first decision, its
        final one, or both."""
        if first:
            self.initiation.observe(took_s)
        if final:
            self.completion.observe(took_s)

    def render(self) -> bytes:
        """The text exposition format, served as CONTENT_TYPE (Prometheus 3 checks it)."""
        self._add_pending()
        return generate_latest(self.registry)

    @staticmethod
    def cumulative_buckets(histogram: Histogram) -> list[float]:
        """The histogram's cumulative counts, one per bucket of LATENCY_BUCKETS and +Inf."""
        return [sample.value for metric in histogram.collect() for sample in metric.samples
                if sample.name.endswith("_bucket")]
