"""The engine's link to the brokers made slow and lossy: 200 ms added to everything the
brokers send it (Toxiproxy, on its host) and 10% of the packets it sends them dropped (one
way, nftables), under load, while every 2nd commit's outcome is reported unknown (as a
commit whose answer is late or lost is). The engine settles each such commit with the
broker (a new producer, the committed offsets and its changelog) and never runs a committed
batch again: the ledger verifies exactly.

The negative control, a second deployment whose engine shares the host and the link and
re-runs a batch whose commit outcome is unknown from memory
(BANK_UNSAFE_RERUN_UNKNOWN_COMMIT), applies the committed ones twice.
"""
from __future__ import annotations

import threading

import pytest

from kbank.chaos.toxics import Toxiproxy, toxiproxy_binary
from kbank.streams.broker import PROXIED_PORT
from tests.hosts.conftest import BROKERS, ENGINES, two_deployments
from tests.workload import Workload, assert_invariants, log_count, verify_until

pytestmark = pytest.mark.slow

FAULTS = {"BANK_FAULT_UNKNOWN_COMMIT_EVERY": "2", "BANK_BATCH_MAX_RECORDS": "500"}
NAMES = [f"acct-{i}" for i in range(30)]


@pytest.fixture
def toxiproxy(healed, host_cluster, tmp_path):
    if toxiproxy_binary() is None:
        pytest.skip("toxiproxy-server is missing (make hosts installs it)")
    proxy = Toxiproxy(healed, ENGINES[0], str(tmp_path / "toxiproxy.log")).start(
        [healed.address(b) for b in BROKERS], PROXIED_PORT)
    yield proxy
    proxy.stop()


def test_a_slow_lossy_link_between_engine_and_brokers_changes_nothing(
        host_cluster, healed, toxiproxy, host_pools, tmp_path):
    protected, unprotected = two_deployments(host_cluster, tmp_path)
    through = {**FAULTS, "KAFKA_BOOTSTRAP_SERVERS": toxiproxy.bootstrap_servers(len(BROKERS))}
    engine = host_pools(protected, "worker", ENGINES[:1], through, label="protected")
    host_pools(unprotected, "worker", ENGINES[:1],
               {**through, "BANK_UNSAFE_RERUN_UNKNOWN_COMMIT": "true"}, label="unprotected")
    clients = [Workload(protected), Workload(unprotected)]
    try:
        for wl in clients:
            wl.open_accounts(NAMES, 100_000)
        toxiproxy.delay(200)
        for broker in BROKERS:
            healed.cut_one_way(ENGINES[0], broker, percent=10)
        senders = [threading.Thread(target=wl.random_transfers, args=(NAMES, 500, "slow", 100),
                                    kwargs={"duplicate_every": 40, "rate_per_s": 200})
                   for wl in clients]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        assert clients[0].wait(240), "every request was decided over the slow, lossy link"
        assert_invariants(protected, clients[0], drained_by=engine)
        logs = tmp_path / "logs"
        assert log_count(logs / "protected" / "worker-0.log", "injected unknown outcome") >= 3
        # the negative control, over the same link: a batch applied twice shows once it lands
        verify_until(unprotected, lambda r: r.applied_twice or r.violations, 120,
                     "a committed batch re-run")
    finally:
        for wl in clients:
            wl.close()
