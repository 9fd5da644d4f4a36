"""The benchmark's own measures: percentiles from the histogram, per-minute throughput and
memory growth from the timeline (pure; the benchmark itself is run by `make bench`)."""
from __future__ import annotations

import math
import random

from kbank.bench.driver import per_cpu_second
from kbank.bench.histogram import LatencyHistogram
from kbank.bench.procs import Timeline, reference_work_ms


def test_histogram_percentiles_are_within_one_percent_of_the_exact_ones():
    rng = random.Random(3)
    samples = [rng.lognormvariate(2, 1.2) for _ in range(50_000)] + [0.001, 3_600_000.0]
    hist = LatencyHistogram()
    for ms in samples:
        hist.add(ms)
    ordered = sorted(samples)
    assert hist.count == len(samples)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        assert exact <= hist.percentile(q) <= exact * 1.0101, q
    assert LatencyHistogram().percentile(0.5) != LatencyHistogram().percentile(0.5)  # nan


def test_timeline_per_minute_throughput_and_memory_growth():
    tl = Timeline()
    rates = [100] * 60 + [200] * 60 + [150] * 60     # transfers/s in three minutes
    done = 0
    for t, rate in enumerate(rates + [150]):
        tl.t.append(float(t))
        tl.finished.append(done)
        done += rate
        tl.rss_mb.setdefault("engine 1", []).append(100.0 if t < 150 else 104.0)
        tl.rss_mb.setdefault("engine 2", []).append(50.0 + t)   # keeps growing
    assert tl.per_minute() == [100.0, 200.0, 150.0]
    growth = tl.memory_growth(warmup_s=120)
    assert growth["engine 1"] == 4.0
    assert growth["engine 2"] == round(100 * (230 / 170 - 1), 1)


def test_timeline_cpu_per_transfer_in_the_last_minute():
    tl = Timeline()
    for t in range(121):
        tl.t.append(float(t))
        tl.finished.append(1000 * t)                       # 1,000 transfers/s
        tl.cpu_s.setdefault("engine", []).append(0.5 * t if t < 60 else 30 + 0.2 * (t - 60))
    assert tl.last_minute_cpu_us() == {"engine": 200.0}    # 0.2 core / 1,000 per s
    assert tl.cores("engine", 60) == [0.5, 0.2]
    assert tl.minute_cpu_us() == {"engine": [500.0, 200.0]}


def test_the_machine_speed_is_the_median_reference_work_of_each_minute():
    tl = Timeline()
    for t in range(121):
        tl.t.append(float(t))
        tl.finished.append(0)
        # minute 1: mostly 4 ms with two outliers; minute 2: mostly 8 ms
        tl.reference_ms.append(30.0 if t in (5, 6) else 4.0 if t < 60 else 8.0)
    assert tl.minute_reference_ms() == [4.0, 8.0]
    assert 0 < reference_work_ms() < 1000        # real CPU time of real work


def test_the_last_sample_a_moment_short_of_the_minute_still_ends_it():
    tl = Timeline(t=[0.0, 30.0, 59.8], finished=[0, 3000, 5980])
    assert tl.per_minute() == [100.0]


def test_transfers_per_cpu_second_with_and_without_the_load_generator():
    cpu = {"engine": 50.0, "broker": 30.0, "broker JIT": 10.0, "load generator": 20.0}
    assert per_cpu_second(cpu) == (1e6 / 100, 1e6 / 80)   # the JIT is inside the broker's 30
    assert per_cpu_second({}) == (0.0, 0.0)


def test_the_views_hot_path_folds_five_records_a_transfer_and_times_them():
    from kbank.bench.views_hotpath import views_hot_path_speed

    result = views_hot_path_speed(300, accounts=50)
    assert result["transfers"] == 300 and result["records"] == 5 * 300
    assert result["cpu_us_per_transfer"] > 0
    assert math.isclose(result["cpu_us_per_record"] * 5, result["cpu_us_per_transfer"], rel_tol=0.05)
