"""The engine's link to the brokers made slow and lossy: 200 ms added to everything the
brokers send it (Toxiproxy, on its host) and 10% of the packets it sends them dropped (one
way, nftables), under load, while every 2nd commit's outcome is reported unknown (as a
commit whose answer is late or lost is). The engine settles each such commit with the
broker (a new producer, the committed offsets and its changelog) and never runs a committed
batch again: the ledger verifies exactly.

The negative control re-runs a batch whose commit outcome is unknown from memory
(BANK_UNSAFE_RERUN_UNKNOWN_COMMIT): the committed ones are applied twice.
"""
from __future__ import annotations

import threading

import pytest

from kbank.chaos.toxics import Toxiproxy, toxiproxy_binary
from kbank.replay.verify import verify
from kbank.streams.broker import PROXIED_PORT
from tests.hosts.conftest import BROKERS, ENGINES
from tests.workload import Workload, assert_invariants, log_count

pytestmark = pytest.mark.slow

FAULTS = {"BANK_FAULT_UNKNOWN_COMMIT_EVERY": "2", "BANK_BATCH_MAX_RECORDS": "500"}


@pytest.fixture
def toxiproxy(healed, host_cluster, tmp_path):
    if toxiproxy_binary() is None:
        pytest.skip("toxiproxy-server is missing (make hosts installs it)")
    proxy = Toxiproxy(healed, ENGINES[0], str(tmp_path / "toxiproxy.log")).start(
        [healed.address(b) for b in BROKERS], PROXIED_PORT)
    yield proxy
    proxy.stop()


def _load_over_a_slow_lossy_link(settings, hosts, proxy, host_pools, env=None) -> tuple:
    engine = host_pools(settings, "worker", ENGINES[:1], {
        **FAULTS, **(env or {}), "KAFKA_BOOTSTRAP_SERVERS": proxy.bootstrap_servers(len(BROKERS))})
    names = [f"acct-{i}" for i in range(30)]
    wl = Workload(settings)
    wl.open_accounts(names, 100_000)
    proxy.delay(200)
    for broker in BROKERS:
        hosts.cut_one_way(ENGINES[0], broker, percent=10)
    sender = threading.Thread(target=wl.random_transfers, args=(names, 1_000, "slow", 100),
                              kwargs={"duplicate_every": 40, "rate_per_s": 200})
    sender.start()
    sender.join()
    return engine, wl


def test_a_slow_lossy_link_between_engine_and_brokers_changes_nothing(
        host_settings, healed, toxiproxy, host_pools, tmp_path):
    engine, wl = _load_over_a_slow_lossy_link(host_settings, healed, toxiproxy, host_pools)
    try:
        assert wl.wait(240), "every request was decided over the slow, lossy link"
        assert_invariants(host_settings, wl, drained_by=engine)
    finally:
        wl.close()
    assert log_count(tmp_path / "logs" / "worker-0.log", "injected unknown outcome") >= 3


def test_negative_control_rerunning_unknown_commits_over_the_link_applies_twice(
        host_settings, healed, toxiproxy, host_pools):
    _, wl = _load_over_a_slow_lossy_link(host_settings, healed, toxiproxy, host_pools,
                                         {"BANK_UNSAFE_RERUN_UNKNOWN_COMMIT": "true"})
    try:
        wl.wait(120)
        report = verify(host_settings, require_final=False)
        assert report.applied_twice > 0 or report.violations, report.render()
    finally:
        wl.close()
