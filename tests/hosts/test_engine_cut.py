"""An engine worker cut from every broker for longer than its session and transaction
timeouts, then healed, under load. Its partitions move to the other worker while it is cut;
when the network heals it must be fenced (its open transaction was aborted by the
coordinator, its group generation is gone) and commit nothing its successor also did: the
ledger verifies with nothing lost and nothing applied twice, and it rejoins.

Both runs hold each batch's outputs unsent for 2 s before its commit (a long linger and
BANK_FAULT_COMMIT_DELAY_MS), so the cut certainly finds a batch produced and not committed.
The negative control runs the engine without transactions (BANK_UNSAFE_NO_TRANSACTIONS):
that batch's outputs reach the brokers when the cut heals, after the successor re-did the
same inputs, and verify finds the copies.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from kbank.replay.verify import verify
from tests.hosts.conftest import BROKERS, ENGINES
from tests.workload import Workload, assert_invariants, log_count, wait_until

pytestmark = pytest.mark.slow

CUT_S = 12    # past the session (6 s, the brokers' least) and transaction (5 s) timeouts
WINDOW = {"BANK_ENGINE_LINGER_MS": "4000", "BANK_FAULT_COMMIT_DELAY_MS": "2000"}


def _cut_worker_1_under_load(settings, hosts, host_pools, tmp_path, env=None) -> tuple:
    settings = replace(settings, transaction_timeout_ms=5000)
    pool = host_pools(settings, "worker", ENGINES, {**WINDOW, **(env or {})})
    names = [f"acct-{i}" for i in range(20)]
    wl = Workload(settings)
    wl.open_accounts(names, 10_000)
    sender = threading.Thread(target=wl.random_transfers, args=(names, 6_000, "cut", 500),
                              kwargs={"duplicate_every": 50, "rate_per_s": 300})
    sender.start()
    log0 = tmp_path / "logs" / "worker-0.log"
    full = f"assigned partitions {list(range(settings.partitions))}"
    time.sleep(3)   # load flowing through both workers before the cut
    for broker in BROKERS:
        hosts.cut(ENGINES[1], broker)
    cut_at = time.monotonic()
    wait_until(lambda: log_count(log0, full) > 0, 60, "worker 0 to take over every partition")
    time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
    hosts.heal()
    sender.join()
    return pool, wl, settings


def test_an_engine_worker_cut_from_the_brokers_is_fenced_when_the_cut_heals(
        host_settings, healed, host_pools, tmp_path):
    pool, wl, settings = _cut_worker_1_under_load(host_settings, healed, host_pools, tmp_path)
    try:
        assert wl.wait(240), "every request was decided"
        report = assert_invariants(settings, wl, drained_by=pool)
        assert report.duplicates_dropped == 0, report.render()
    finally:
        wl.close()
    assert pool.procs["1"].poll() is None, "the cut worker rejoins after the heal, not exits"
    log1 = (tmp_path / "logs" / "worker-1.log").read_text()
    assert "fenced" in log1 or "aborting transaction" in log1, log1[-3000:]


def test_negative_control_without_transactions_the_healed_worker_applies_twice(
        host_settings, healed, host_pools, tmp_path):
    _, wl, settings = _cut_worker_1_under_load(host_settings, healed, host_pools, tmp_path,
                                               {"BANK_UNSAFE_NO_TRANSACTIONS": "true"})
    reports = []

    def twice() -> bool:   # the cut worker's queued outputs land once its TCP retries do
        reports.append(verify(settings, require_final=False))
        return bool(reports[-1].violations or reports[-1].applied_twice
                    or reports[-1].duplicates_dropped)
    try:
        wl.wait(120)
        wait_until(twice, 120, "the healed worker's stale outputs", poll_s=2)
    except AssertionError:
        raise AssertionError(reports[-1].render() if reports else "no verify ran") from None
    finally:
        wl.close()
