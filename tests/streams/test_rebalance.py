"""Two and three workers in one group: partitions move during load."""
from __future__ import annotations

import re
import threading
import time

import pytest

from tests.workload import Workload, assert_invariants

pytestmark = pytest.mark.slow


def test_workers_join_and_leave_during_load(settings, pool_factory, tmp_path):
    pool = pool_factory(settings, 2)
    names = [f"acct-{i}" for i in range(500)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 5_000)
        sender = threading.Thread(target=wl.random_transfers, args=(names, 12_000, "t", 2_000),
                                  kwargs={"duplicate_every": 100, "rate_per_s": 500})
        sender.start()
        time.sleep(3)
        pool.start("2")            # a third worker joins
        time.sleep(8)
        pool.stop("0")             # one leaves cleanly (SIGTERM)
        time.sleep(8)
        pool.start("0")            # and comes back
        time.sleep(4)
        pool.stop("2")
        sender.join()
        assert wl.wait(240)
        assert_invariants(settings, wl)
    finally:
        wl.close()
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    owners = {name for name, text in logs.items() if re.search(r"assigned partitions \[\d", text)}
    assert owners == {"worker-0.log", "worker-1.log", "worker-2.log"}
    # partitions really moved: some worker was assigned a partition it did not start with
    assert sum(text.count("assigned partitions") for text in logs.values()) >= 6
