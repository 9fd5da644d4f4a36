"""The overview's latency figures: quantiles of merged cumulative histograms."""
from __future__ import annotations

import pytest

from kbank.streams.views.console import histogram_quantile, latency_summary, merge_cumulative
from kbank.streams.views.metrics import LATENCY_BUCKETS


def cumulative(counts_per_bucket: dict[float, int]) -> list[float]:
    """Cumulative counts over LATENCY_BUCKETS (+Inf last) from counts per upper bound."""
    out, running = [], 0
    for bound in (*LATENCY_BUCKETS, float("inf")):
        running += counts_per_bucket.get(bound, 0)
        out.append(running)
    return out


def test_a_quantile_interpolates_inside_its_bucket():
    h = cumulative({0.1: 50, 0.15: 50})          # half up to 100 ms, half in (100, 150] ms
    assert histogram_quantile(0.5, h) == pytest.approx(0.1)
    assert histogram_quantile(0.75, h) == pytest.approx(0.125)
    assert histogram_quantile(1.0, h) == pytest.approx(0.15)


def test_empty_and_overflowing_histograms():
    assert histogram_quantile(0.5, cumulative({})) is None
    assert latency_summary(cumulative({})) == {"p50_ms": None, "p99_ms": None, "count": 0}
    assert histogram_quantile(0.99, cumulative({float("inf"): 3})) == LATENCY_BUCKETS[-1]


def test_workers_histograms_merge_bucket_by_bucket():
    a, b = cumulative({0.01: 99}), cumulative({1: 1})
    merged = merge_cumulative([a, b])
    assert merged[-1] == 100
    # rank 50 of the 99 in (5, 10] ms; rank 99 is that bucket's top
    assert latency_summary(merged)["p50_ms"] == pytest.approx(5 + 5 * 50 / 99, abs=0.1)
    assert latency_summary(merged)["p99_ms"] == pytest.approx(10.0)
