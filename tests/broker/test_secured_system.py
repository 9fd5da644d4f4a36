"""The whole system on the secured broker: each process connects as its role's principal,
with only the ACLs of kbank.streams.principals, and the ledger stays exact."""
from __future__ import annotations

from pathlib import Path

from kbank.replay.ledger import LedgerFold
from tests.http import get_json
from tests.workload import Workload, assert_invariants, ledger


def test_engine_views_clients_and_tools_run_with_least_privilege(settings, pool_factory,
                                                                 views_factory):
    engine = pool_factory(settings, 1)          # the engine principal
    views = views_factory(settings, 1)          # the views and intake principals
    wl = Workload(settings)                     # the client principal
    names = [f"acct-{i}" for i in range(6)]
    try:
        wl.open_accounts(names, 1_000)
        wl.random_transfers(names, 300, "t", 200)
        assert wl.wait(120), "every transfer finished"
    finally:
        wl.close()
    report = assert_invariants(settings, wl, drained_by=engine)   # the tools principal verifies
    assert report.total_balance == 6_000
    fold: LedgerFold = ledger(settings)
    url = views.url("0")
    for name, acct in fold.accounts.items():
        view = get_json(f"{url}/accounts/{name}?min_seq={acct.seq}&timeout=10")
        assert view["balance"] == acct.balance, (name, view)
    # the console reads the engine's lag with no more than the views' ACLs
    overview = get_json(f"{url}/overview")
    assert overview["engine_lag"] is not None, overview.get("engine_lag_reason")
    assert [r["partition"] for r in overview["engine_lag"]] == list(range(8))
    # drained: at most a transaction's commit marker after the engine's committed offset
    assert all(r["requests"] <= 1 and r["credits"] <= 1 for r in overview["engine_lag"]), overview
    # the stores and the workers' files are their owner's only (issue 41): the state
    # directory and each directory the workers made in it are 0700, so nothing below them
    # (RocksDB makes its own directories 0755) can be reached by another user
    state = Path(settings.state_dir)
    made = [state, *(p for p in state.iterdir() if p.is_dir())]
    assert len(made) >= 3 and [p for p in made if p.stat().st_mode & 0o077] == [], made
