"""A worker frozen (SIGSTOP) past the session timeout while its partitions move: the broker
fences it. When it wakes, its open transaction cannot commit (its group generation is stale,
or the coordinator already aborted it on timeout), so nothing it wrote becomes visible to
read_committed readers; it rejoins and goes on."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from kbank.streams import topics
from tests.workload import Workload, assert_invariants, hidden_records

pytestmark = pytest.mark.slow


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _full_assignments(log_path, partitions: int) -> int:
    """How often the worker was assigned every partition."""
    text = log_path.read_text() if log_path.exists() else ""
    return text.count(f"assigned partitions {list(range(partitions))}")


def _freeze_worker_1(settings, pool, wl, names, point: str, logs, transfers: int = 9_000):
    """Start worker 1 set to freeze at `point`, load both workers, and SIGCONT it once
    worker 0 owns every partition. Returns the load's thread and worker 1's process."""
    zombie = pool.start("1", {"BANK_FAULT_FREEZE_AT_BATCH": "30", "BANK_FAULT_FREEZE_POINT": point})
    sender = threading.Thread(target=wl.random_transfers, args=(names, transfers, "z", 500),
                              kwargs={"duplicate_every": 50, "rate_per_s": 600})
    sender.start()
    deadline = time.monotonic() + 60
    while not _stopped(zombie.pid):
        assert zombie.poll() is None and time.monotonic() < deadline, "the worker never froze"
        time.sleep(0.05)
    taken_over = _full_assignments(logs / "worker-0.log", settings.partitions)
    deadline = time.monotonic() + 60
    while _full_assignments(logs / "worker-0.log", settings.partitions) == taken_over:
        assert time.monotonic() < deadline, "worker 0 never took over the frozen worker's partitions"
        time.sleep(0.1)
    zombie.send_signal(signal.SIGCONT)
    return sender, zombie


@pytest.mark.parametrize("point", ["before-batch", "before-commit"])
def test_a_zombie_woken_after_its_partitions_moved_is_fenced(settings, pool_factory, tmp_path, point):
    pool = pool_factory(settings, 1)
    names = [f"acct-{i}" for i in range(20)]  # few accounts: credits and debits interleave on each
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 10_000)
        sender, zombie = _freeze_worker_1(settings, pool, wl, names, point, tmp_path / "logs")
        sender.join()
        assert wl.wait(240)
        report = assert_invariants(settings, wl)
        assert zombie.poll() is None, "the fenced worker should rejoin, not exit"
        # nothing the zombie wrote reached a read_committed reader: not even an identical copy
        assert report.duplicates_dropped == 0, report.render()
    finally:
        wl.close()
    log1 = (tmp_path / "logs" / "worker-1.log").read_text()
    assert "injected freeze" in log1
    if point == "before-commit":
        # its batch was produced and then fenced: the records exist, invisible when committed-read
        assert "aborting transaction" in log1
        assert hidden_records(settings, topics.LEDGER) > 0
