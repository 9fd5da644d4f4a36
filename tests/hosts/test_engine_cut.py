"""An engine worker cut from every broker for longer than its session and transaction
timeouts, then healed, under load. Its partitions move to the other worker while it is cut;
when the network heals it must be fenced (its open transaction was aborted by the
coordinator, its group generation is gone) and commit nothing its successor also did: the
ledger verifies with nothing lost and nothing applied twice, and it rejoins.

Each batch's outputs are held unsent for 2 s before its commit (a long linger and
BANK_FAULT_COMMIT_DELAY_MS), so the cut certainly finds a batch produced and not committed.
The negative control, a second deployment whose engine runs without transactions
(BANK_UNSAFE_NO_TRANSACTIONS), goes through the same cut beside it: that batch's outputs
reach the brokers when the cut heals, after the successor re-did the same inputs, and verify
finds the copies.
"""
from __future__ import annotations

import threading
import time

import pytest

from tests.hosts.conftest import BROKERS, ENGINES, two_deployments
from tests.workload import Workload, assert_invariants, log_count, verify_until, wait_until

pytestmark = pytest.mark.slow

CUT_S = 12    # past the session (6 s, the brokers' least) and transaction (5 s) timeouts
WINDOW = {"BANK_ENGINE_LINGER_MS": "4000", "BANK_FAULT_COMMIT_DELAY_MS": "2000"}


class _Deployment:
    """Two engine workers, one per engine host, and a load of transfers among 20 accounts."""

    def __init__(self, settings, host_pools, label: str, env: dict[str, str]) -> None:
        self.settings, self.label = settings, label
        self.pool = host_pools(settings, "worker", ENGINES, {**WINDOW, **env}, label=label)
        self.names = [f"acct-{i}" for i in range(20)]
        self.wl = Workload(settings)

    def load(self) -> threading.Thread:
        self.wl.open_accounts(self.names, 10_000)
        sender = threading.Thread(target=self.wl.random_transfers,
                                  args=(self.names, 6_000, "cut", 500),
                                  kwargs={"duplicate_every": 50, "rate_per_s": 300})
        sender.start()
        return sender

    def taken_over(self, tmp_path) -> bool:
        full = f"assigned partitions {list(range(self.settings.partitions))}"
        return log_count(tmp_path / "logs" / self.label / "worker-0.log", full) > 0


def test_an_engine_worker_cut_from_the_brokers_is_fenced_when_the_cut_heals(
        host_cluster, healed, host_pools, tmp_path):
    protected_settings, unprotected_settings = two_deployments(host_cluster, tmp_path,
                                                               transaction_timeout_ms=5000)
    protected = _Deployment(protected_settings, host_pools, "protected", {})
    unprotected = _Deployment(unprotected_settings, host_pools, "unprotected",
                              {"BANK_UNSAFE_NO_TRANSACTIONS": "true"})
    try:
        senders = [protected.load(), unprotected.load()]
        time.sleep(3)   # load flowing through both workers before the cut
        for broker in BROKERS:
            healed.cut(ENGINES[1], broker)
        cut_at = time.monotonic()
        wait_until(lambda: protected.taken_over(tmp_path) and unprotected.taken_over(tmp_path),
                   60, "worker 0 of each deployment to take over every partition")
        time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
        healed.heal()
        for sender in senders:
            sender.join()
        assert protected.wl.wait(240), "every request was decided"
        report = assert_invariants(protected_settings, protected.wl, drained_by=protected.pool)
        assert report.duplicates_dropped == 0, report.render()
        assert protected.pool.procs["1"].poll() is None, "the cut worker rejoins, not exits"
        log1 = (tmp_path / "logs" / "protected" / "worker-1.log").read_text()
        assert "fenced" in log1 or "aborting transaction" in log1, log1[-3000:]
        _assert_applied_twice(unprotected)
    finally:
        protected.wl.close()
        unprotected.wl.close()


def _assert_applied_twice(unprotected: _Deployment) -> None:
    """The negative control: the healed worker's stale batch lands once its TCP retries do."""
    unprotected.wl.wait(120)
    verify_until(unprotected.settings, lambda r: r.violations or r.applied_twice
                 or r.duplicates_dropped, 120, "the healed worker's stale outputs")
