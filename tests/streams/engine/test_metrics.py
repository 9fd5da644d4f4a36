"""An engine worker's Prometheus metrics, scraped over HTTP while it works."""
from __future__ import annotations

import re
from dataclasses import replace

from kbank.streams.broker import free_port
from tests.http import request
from tests.workload import Workload, wait_until


def scrape(port: int) -> dict[str, float]:
    body = request("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(bank_engine_[^ ]+) ([0-9.e+-]+)$", body, re.M)}


def test_engine_metrics_count_batches_decisions_lag_and_restores(settings, pool_factory):
    settings = replace(settings, engine_metrics_port=free_port())
    pool_factory(settings, 1)
    names = [f"acct-{i}" for i in range(10)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 10_000)
        wl.random_transfers(names, 300, "t", 100)
        assert wl.wait(120)
    finally:
        wl.close()
    port = settings.engine_metrics_port
    wait_until(lambda: scrape(port).get('bank_engine_records_decided_total{kind="requests"}', 0) >= 320,
               30, "the worker's decisions to be counted")
    lag_rows = 2 * settings.partitions   # requests and credits of every owned partition
    wait_until(lambda: sum(k.startswith("bank_engine_consumer_lag{") for k in scrape(port)) == lag_rows,
               30, "the lag of every owned partition (read by the poll loop once a second)")
    figures = scrape(port)
    assert figures["bank_engine_batches_total"] > 0
    assert figures['bank_engine_records_decided_total{kind="credits"}'] > 0
    assert figures["bank_engine_owned_partitions"] == settings.partitions
    assert figures["bank_engine_restored_partitions_total"] == settings.partitions
    assert "bank_engine_restore_records_total" in figures
    assert figures["bank_engine_restoring_partitions"] == 0
    lags = {k: v for k, v in figures.items() if k.startswith("bank_engine_consumer_lag{")}
    assert len(lags) == lag_rows
    wait_until(lambda: sum(v for k, v in scrape(port).items() if k.startswith("bank_engine_consumer_lag{")) == 0,
               30, "an idle worker's lag to read 0 (commit markers are not records behind)")
    assert figures["bank_engine_batch_seconds_count"] == figures["bank_engine_batches_total"]
