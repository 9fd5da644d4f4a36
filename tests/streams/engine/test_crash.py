"""Crash safety: SIGKILL engine workers at random points under a steady load.

The same scenario runs three ways: as shipped (every invariant must hold),
and with the idempotency guard or the transactions switched off, where the
checks must catch the damage; that shows the checks can fail and that the
guarantee rests on those two mechanisms.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import orjson
import pytest

from kbank.replay.verify import verify
from kbank.streams import topics
from kbank.streams.config import Settings
from tests.workload import (Workload, assert_invariants, hidden_records, ledger,
                            verify_until)

pytestmark = pytest.mark.slow


def crash_loop(settings: Settings, pool_factory, *, accounts: int, transfers: int, kills: int,
               rate_per_s: float, seed: int = 11, holds: int = 0, crash_every: int = 6) -> Workload:
    """Run transfers with duplicates (and holds posted, voided, raced or left to expire)
    while killing and restarting workers; wait for the end."""
    rng = random.Random(seed)
    # outputs reach the broker 30 ms before each commit, so most kills land mid-batch,
    # and every 6th batch a worker kills itself between account states and its batch record
    settings = replace(settings, fault_commit_delay_ms=30, fault_crash_every=crash_every)
    pool = pool_factory(settings, 2)
    names = [f"acct-{i}" for i in range(accounts)]
    wl = Workload(settings, rng=random.Random(seed + 1))
    # the workers kill themselves from their first batches on: restart them while waiting
    wl.open_accounts(names, 5_000, wait=lambda timeout_s: wait_restarting(pool, wl, timeout_s))
    sender = threading.Thread(target=wl.random_transfers, args=(names, transfers, "t", 3_000),
                              kwargs={"duplicate_every": 40, "rate_per_s": rate_per_s})
    holder = threading.Thread(target=wl.random_holds, args=(names, holds, "h", 500),
                              kwargs={"rate_per_s": holds * rate_per_s / max(transfers, 1)})
    sender.start()
    holder.start()
    done = 0
    while done < kills or sender.is_alive() or holder.is_alive():
        time.sleep(rng.uniform(0.5, 3.0))
        pool.restart_dead()        # the ones that killed themselves
        if done < kills:
            victim = rng.choice(sorted(pool.procs))
            pool.kill(victim)      # SIGKILL: no clean-up, mid-batch more often than not
            pool.start(victim)
            done += 1
    sender.join()
    holder.join()
    return wl, pool


def wait_restarting(pool, wl: Workload, timeout_s: float) -> bool:
    """Wait for every outcome, restarting workers that killed themselves meanwhile."""
    deadline = time.monotonic() + timeout_s
    while wl.watcher.finished(wl.request_ids) < len(wl.request_ids):
        if time.monotonic() > deadline:
            return False
        pool.restart_dead()
        wl.watcher.wait(wl.request_ids, 0.5)
    return True


def test_sigkill_loop_keeps_every_invariant(settings, pool_factory, tmp_path):
    wl, pool = crash_loop(settings, pool_factory, accounts=1_000, transfers=14_000, kills=10,
                          rate_per_s=600, holds=1_500)
    try:
        assert wait_restarting(pool, wl, 300), "requests left unfinished after the crashes"
        report = assert_invariants(settings, wl, drained_by=pool)
        statuses = {rid: wl.watcher.status[rid] for rid in wl.request_ids}
    finally:
        wl.close()
    assert report.duplicates_dropped == 0, "a read_committed reader never sees a copy of an event"
    assert report.requests == len(set(wl.request_ids)) > 2 * 1_000 + 14_000
    assert report.holds["made"] > 1_000 and report.holds["pending"] == 0   # the rest: no funds
    assert min(report.holds[k] for k in ("posted", "hold_released", "expired")) > 50, report.render()
    # every completed transfer: exactly one debit and one credit in the ledger
    kinds: dict[str, list[str]] = {}
    for acct in ledger(settings).accounts.values():
        for raw in acct.events:
            ev = orjson.loads(raw)
            kinds.setdefault(ev["request_id"], []).append(ev["kind"])
    for rid, status in statuses.items():
        if rid.startswith("t-") and status == "completed":
            assert sorted(kinds[rid]) == ["credited", "debited"], rid
    assert wl.duplicates_sent >= 14_000 // 40
    # kills left produced, uncommitted batches: their records exist, and only
    # read_uncommitted readers see them
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert logs.count("injected crash mid-batch") >= 1
    assert hidden_records(settings, topics.LEDGER) > 0


@pytest.mark.parametrize("unsafe", ["unsafe_no_dedupe", "unsafe_no_transactions"])
def test_checks_fail_without_the_guard(settings, pool_factory, unsafe):
    # no dedupe: the clients' duplicate deliveries are applied twice; no transactions: a batch
    # killed after its outputs (every 2nd batch of a worker kills itself so, whatever the timing
    # of the test's own kills) is run again, its offsets not committed: its events reach the
    # ledger twice, as copies or, if the re-run's batch differs, as conflicting seqs
    unsafe_settings = replace(settings, **{unsafe: True})
    wl, pool = crash_loop(unsafe_settings, pool_factory, accounts=300, transfers=3_000, kills=6,
                          rate_per_s=600, seed=5,
                          crash_every=2 if unsafe == "unsafe_no_transactions" else 6)
    try:
        if unsafe == "unsafe_no_dedupe":   # every request finishes, some applied twice
            wait_restarting(pool, wl, 120)
            report = verify(settings, require_final=False)
            assert report.applied_twice > 0, report.render()
        else:   # some never may (a re-run batch is refused seqs): verify until the damage shows
            verify_until(settings, lambda r: r.duplicates_dropped or r.applied_twice
                         or any("seq" in v for v in r.violations), 60,
                         "the re-run batches' copies in the ledger", poll_s=1,
                         between=pool.restart_dead)
    finally:
        wl.close()
