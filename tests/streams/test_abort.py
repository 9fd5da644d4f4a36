"""Aborted transactions: outputs produced, then abort. No effect on balances.

The embedded broker shows aborted records to every reader, so the aborted
outputs are really seen downstream; the test checks that they were (copies
dropped by seq) and that balances are still exact.
"""
from __future__ import annotations

import random
import time
from dataclasses import replace

import pytest

from tests.workload import Workload, assert_invariants, ledger


def transfers_with_aborts(settings, pool_factory, **unsafe):
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
                duplicate=i % 50 == 0)
        expected[src] -= amount
        expected[dst] += amount
        if i % 100 == 99:
            time.sleep(0.1)   # spread the load over many transactions
    wl.sender.flush()
    return wl, expected


def test_aborted_transactions_change_no_balance(settings, pool_factory, tmp_path):
    wl, expected = transfers_with_aborts(settings, pool_factory)
    try:
        assert wl.wait(180)
        report = assert_invariants(settings, wl)
    finally:
        wl.close()
    assert {n: a.balance for n, a in ledger(settings).accounts.items()} == expected
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert logs.count("injected abort") >= 6
    assert "before END" in logs and "after END" in logs
    # aborted outputs were visible and their copies were recognised, not applied
    assert report.duplicates_dropped > 0


def test_aborts_without_idempotency_are_caught(settings, pool_factory):
    wl, expected = transfers_with_aborts(settings, pool_factory, unsafe_no_dedupe=True)
    try:
        wl.wait(120)
        with pytest.raises(AssertionError):
            assert_invariants(settings, wl)
            assert {n: a.balance for n, a in ledger(settings).accounts.items()} == expected
    finally:
        wl.close()
