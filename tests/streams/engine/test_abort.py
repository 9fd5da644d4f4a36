"""Aborted transactions: outputs produced, then abort. No effect on balances.

The aborted outputs really reached the broker (a read_uncommitted reader sees
them); read_committed readers, the engine itself among them, never do. The
negative control reads read_uncommitted with the idempotency guard off: the
engine then applies the credits of aborted batches and again their re-runs.
"""
from __future__ import annotations

import random
from dataclasses import replace

from kbank.streams import topics
from tests.workload import Workload, assert_invariants, hidden_records, ledger
from kbank.replay.verify import verify


def transfers_with_aborts(settings, pool_factory, client_duplicates: bool = True, **unsafe):
    settings = replace(settings, fault_abort_every=3, batch_max_records=200, **unsafe)
    pool_factory(settings, 2)
    names = [f"acct-{i}" for i in range(100)]
    wl = Workload(settings)
    wl.open_accounts(names, 100_000)
    rng = random.Random(9)
    expected = {n: 100_000 for n in names}
    for i in range(3_000):
        src, dst = rng.sample(names, 2)
        amount = rng.randint(1, 100)   # never more than a balance: no rejections
        wl.send({"type": "transfer", "request_id": f"t{i}", "from": src, "to": dst, "amount": amount},
                duplicate=client_duplicates and i % 50 == 0)
        expected[src] -= amount
        expected[dst] += amount
        if i % 100 == 99:
            wl.sender.flush()   # spread the load over many transactions
    wl.sender.flush()
    return wl, expected


def assert_exact_despite(settings, wl, expected: dict[str, int], tmp_path, injected: str) -> None:
    """Every request finished, the invariants hold and each balance is exactly the expected one,
    after at least six faults the workers' logs name `injected`."""
    try:
        assert wl.wait(180)
        assert_invariants(settings, wl)
    finally:
        wl.close()
    assert {n: a.balance for n, a in ledger(settings).accounts.items()} == expected
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert logs.count(injected) >= 6


def test_aborted_transactions_change_no_balance(settings, pool_factory, tmp_path):
    wl, expected = transfers_with_aborts(settings, pool_factory)
    assert_exact_despite(settings, wl, expected, tmp_path, "injected abort")
    # the aborted outputs were written, and are invisible to read_committed readers
    assert hidden_records(settings, topics.LEDGER) > 0
    assert hidden_records(settings, topics.CREDITS) > 0


def test_aborted_credits_read_uncommitted_without_dedupe_are_applied_twice(settings, pool_factory):
    wl, _ = transfers_with_aborts(settings, pool_factory, client_duplicates=False,
                                  unsafe_no_dedupe=True, unsafe_read_uncommitted=True)
    try:
        assert wl.wait(180)
        report = verify(settings, require_final=True)
    finally:
        wl.close()
    assert report.applied_twice > 0, report.render()


def transfers_with_unknown_commits(settings, pool_factory, **unsafe):
    """Transfers whose every 4th engine commit succeeds but is reported as of unknown outcome."""
    return transfers_with_aborts(replace(settings, fault_unknown_commit_every=4), pool_factory,
                                 client_duplicates=False, **unsafe)


def test_a_commit_of_unknown_outcome_is_settled_by_the_broker_not_rerun(settings, pool_factory,
                                                                         tmp_path):
    """A commit that times out may have happened: the worker takes a new producer and resumes
    from the committed offsets and its changelog, so a committed batch is never run again."""
    wl, expected = transfers_with_unknown_commits(settings, pool_factory)
    assert_exact_despite(settings, wl, expected, tmp_path, "injected unknown outcome")


def test_a_commit_of_unknown_outcome_rerun_from_memory_applies_batches_twice(settings, pool_factory):
    wl, _ = transfers_with_unknown_commits(settings, pool_factory, unsafe_rerun_unknown_commit=True)
    try:
        wl.wait(120)
        report = verify(settings, require_final=False)
    finally:
        wl.close()
    assert report.applied_twice > 0, report.render()
