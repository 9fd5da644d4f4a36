"""Two and three workers in one group: partitions move during load.

Each step waits for its effect (the assignment in the workers' logs, more
requests finished), never for a fixed time."""
from __future__ import annotations

import threading

import pytest

from tests.workload import Workload, assert_invariants, log_count, wait_until

pytestmark = pytest.mark.slow

ASSIGNED = "assigned partitions ["


def test_workers_join_and_leave_during_load(settings, pool_factory, tmp_path):
    logs = tmp_path / "logs"
    pool = pool_factory(settings, 2)
    names = [f"acct-{i}" for i in range(500)]
    wl = Workload(settings)

    def assignments(*workers: str) -> int:
        return sum(log_count(logs / f"worker-{w}.log", ASSIGNED) for w in workers)

    def progress(more: int) -> None:
        """Wait until `more` further requests are finished: the group is processing."""
        target = wl.watcher.finished(list(wl.request_ids)) + more
        wait_until(lambda: wl.watcher.finished(list(wl.request_ids)) >= target, 120,
                   f"{more} more finished requests")

    try:
        wl.open_accounts(names, 5_000)
        sender = threading.Thread(target=wl.random_transfers, args=(names, 12_000, "t", 2_000),
                                  kwargs={"duplicate_every": 100, "rate_per_s": 500})
        sender.start()
        progress(500)
        pool.start("2")            # a third worker joins
        wait_until(lambda: assignments("2") >= 1, 60, "worker 2's first assignment")
        progress(500)
        before = assignments("1", "2")
        pool.stop("0")             # one leaves cleanly (SIGTERM)
        wait_until(lambda: assignments("1", "2") >= before + 2, 60, "the others taking worker 0's share")
        progress(500)
        pool.start("0")            # and comes back
        wait_until(lambda: assignments("0") >= 2, 60, "worker 0's assignment after its return")
        progress(500)
        pool.stop("2")
        sender.join()
        assert wl.wait(240)
        assert_invariants(settings, wl)
    finally:
        wl.close()
    texts = {p.name: p.read_text() for p in logs.glob("*.log")}
    owners = {name for name, text in texts.items() if "assigned partitions [0" in text
              or any(f"assigned partitions [{d}" in text for d in "1234567")}
    assert owners == {"worker-0.log", "worker-1.log", "worker-2.log"}
    # partitions really moved: some worker was assigned a partition it did not start with
    assert sum(text.count(ASSIGNED) for text in texts.values()) >= 6
