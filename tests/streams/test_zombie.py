"""A worker frozen mid-batch (SIGSTOP) while its partitions move: when it wakes it must not
write, or, frozen past its last fence check, what it writes must change nothing."""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import replace

import pytest

from replay.verify import verify
from streams.engine import RESTART_EXIT_CODE
from tests.workload import Workload, assert_invariants

pytestmark = pytest.mark.slow


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _freeze_worker_1(settings, pool, wl, names, point: str, fenced: bool = True, transfers: int = 9_000):
    """Start worker 1 set to freeze at `point`, load both workers, and SIGCONT it once its
    partitions have moved to worker 0. Returns the load's thread and worker 1's process."""
    zombie = pool.start("1", {"BANK_FAULT_FREEZE_AT_BATCH": "30", "BANK_FAULT_FREEZE_POINT": point,
                              "BANK_UNSAFE_NO_FREEZE_FENCE": "0" if fenced else "1"})
    sender = threading.Thread(target=wl.random_transfers, args=(names, transfers, "z", 500),
                              kwargs={"duplicate_every": 50, "rate_per_s": 600})
    sender.start()
    deadline = time.monotonic() + 60
    while not _stopped(zombie.pid):
        assert zombie.poll() is None and time.monotonic() < deadline, "the worker never froze"
        time.sleep(0.05)
    # frozen mid-batch; its partitions move to worker 0 meanwhile
    time.sleep(2 * settings.session_timeout_ms / 1000 + 2)
    zombie.send_signal(signal.SIGCONT)
    return sender, zombie


@pytest.mark.parametrize("point, fenced", [
    ("before-batch", True), ("after-manifest", True), ("before-batch", False)],
    ids=["before-batch", "after-manifest", "negative-control-unfenced"])
def test_a_zombie_woken_after_its_partitions_moved_writes_nothing(settings, pool_factory, point, fenced):
    pool = pool_factory(settings, 1)
    names = [f"acct-{i}" for i in range(20)]  # few accounts: credits and debits interleave on each
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 10_000)
        assert wl.wait(120)
        sender, zombie = _freeze_worker_1(settings, pool, wl, names, point, fenced)
        if fenced:
            assert zombie.wait(30) == RESTART_EXIT_CODE
        sender.join()
        assert wl.wait(240)
        if fenced:
            assert_invariants(settings, wl)
        else:
            report = verify(settings, require_final=True)
            assert report.applied_twice > 0 or report.violations, report.render()
    finally:
        wl.close()


def test_a_zombie_frozen_past_its_last_fence_check_ends_its_batch_late_and_changes_nothing(
        settings, pool_factory):
    # Frozen after its outputs and before END, it wakes and writes its batch's state and END
    # after the new owner re-ran that batch and went on: interleaved with the new owner's
    # batches. A fresh worker then restores every partition across that stretch of the changelog.
    # Every batch stays open 200 ms before its END, so the late records land inside one.
    settings = replace(settings, fault_commit_delay_ms=200)
    pool = pool_factory(settings, 1)
    names = [f"acct-{i}" for i in range(20)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 10_000)
        assert wl.wait(120)
        sender, zombie = _freeze_worker_1(settings, pool, wl, names, "before-end", transfers=24_000)
        time.sleep(3)   # it ends its batch, then exits (or rejoins the group)
        pool.kill("1")
        pool.kill("0")
        pool.start("2")  # a fresh store: restores all eight partitions from the changelog
        sender.join()
        assert wl.wait(240)
        assert_invariants(settings, wl)
    finally:
        wl.close()
