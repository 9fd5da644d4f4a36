"""`bank replay recompute`: unchanged rules reproduce the live ledger; a changed rule names exactly
the requests and accounts it changes."""
from __future__ import annotations

import random
import time
from dataclasses import replace

import orjson

from kbank.chaos.holds import HoldMix
from kbank.streams.model import split_request_key
from kbank.replay.ledger import LedgerFold
from kbank.replay.recompute import (diff, events_by_account, shares_agree, simulate,
                                    simulate_in_parallel, simulate_share, write_generation)
from kbank.streams import topics
from kbank.streams.client import read_topic
from kbank.streams.decisions import Rules
from tests.workload import Workload, assert_invariants, ledger

CAP = 3_000


def test_recompute_reproduces_the_live_ledger_and_names_what_a_rule_changes(settings, pool_factory):
    # the live engine crashes itself every 6th batch, so batches are cut short and re-run
    engine = pool_factory(replace(settings, fault_crash_every=6, fault_commit_delay_ms=10), 2)
    names = [f"acct-{i}" for i in range(20)]
    wl = Workload(settings)
    rng = random.Random(9)
    transfers: dict[str, tuple[str, str, int]] = {}
    try:
        for name in names:
            wl.send({"type": "open_account", "request_id": f"open-{name}", "account": name})
            wl.send({"type": "deposit", "request_id": f"dep-{name}", "account": name, "amount": 10**7})
            wl.deposits += 10**7
        wl.sender.flush()
        deadline = time.monotonic() + 120
        while wl.watcher.finished(wl.request_ids) < len(wl.request_ids):
            engine.restart_dead()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for i in range(400):
            src, dst = rng.sample(names, 2)
            amount = rng.randint(1, 5_000)
            transfers[f"t-{i}"] = (src, dst, amount)
            wl.send({"type": "transfer", "request_id": f"t-{i}", "from": src, "to": dst, "amount": amount},
                    duplicate=i % 25 == 0)
        # holds posted, voided, raced and expired (below the cap: the changed rule spares them)
        mix = HoldMix(names, "h", CAP, random.Random(4))
        for _ in range(60):
            for request in mix.step():
                wl.send(request)
        # and one to an account that does not exist: debited, then refunded
        wl.send({"type": "transfer", "request_id": "t-ghost", "from": names[0], "to": "ghost", "amount": 4_000})
        wl.sender.flush()
        deadline = time.monotonic() + 180
        while wl.watcher.finished(wl.request_ids) < len(wl.request_ids):
            engine.restart_dead()
            assert time.monotonic() < deadline, "workload did not finish"
            time.sleep(0.2)
    finally:
        wl.close()
    assert sum(engine.crashes.values()) >= 1, "the live engine's batches were cut short"
    assert_invariants(settings, wl, drained_by=engine)
    live = ledger(settings)

    # the rules as they are: the same decisions, byte for byte
    same = simulate(settings, Rules.from_settings(settings, settings.partitions), settings.partitions,
                    show_progress=False)
    assert diff(settings, same).accounts == {} and diff(settings, same).requests == {}
    new_fold = LedgerFold()
    for _, raw in same.events:
        assert new_fold.apply(raw) is not None
    assert {n: a.events for n, a in new_fold.accounts.items()} == \
        {n: a.events for n, a in live.accounts.items()}, _first_difference(new_fold, live)

    # the same in shares of the partitions, each slot filled with the live message: the
    # shares agree with each other, and their decisions are the one-process ones
    rules = Rules.from_settings(settings, settings.partitions)
    halves = [list(range(0, settings.partitions, 2)), list(range(1, settings.partitions, 2))]
    runs = [simulate_share(settings, rules, half, settings.partitions) for half in halves]
    assert shares_agree(runs)
    assert events_by_account(e for run in runs for e in run.gen.events) == events_by_account(same.events)
    assert sorted(o for run in runs for o in run.gen.outcomes) == sorted(same.outcomes)
    in_two = simulate_in_parallel(settings, rules, settings.partitions, 2)   # spawned processes
    assert events_by_account(in_two.events) == events_by_account(same.events)

    # a cap on single transfers: exactly the transfers above it, and the accounts they moved
    capped_rules = replace(rules, max_transfer_amount=CAP)
    capped = simulate(settings, capped_rules, settings.partitions, show_progress=False)
    # it sends fewer credits, so shares filled with the live messages disagree: the parallel
    # recompute must notice and decide in one process
    assert not shares_agree([simulate_share(settings, capped_rules, half, settings.partitions) for half in halves])
    capped_in_two = simulate_in_parallel(settings, capped_rules, settings.partitions, 2)
    assert events_by_account(capped_in_two.events) == events_by_account(capped.events)
    report = diff(settings, capped)
    by_rid = {split_request_key(key)[1]: v for key, v in report.requests.items()}
    over = {rid for rid, (_, _, amount) in transfers.items() if amount > CAP} | {"t-ghost"}
    assert set(by_rid) == over
    assert all(by_rid[rid] == (("completed", None), ("rejected", "limit_exceeded"))
               for rid in over - {"t-ghost"})
    assert by_rid["t-ghost"] == (("rejected", "unknown_account"), ("rejected", "limit_exceeded"))
    delta = {n: 0 for n in names}
    for rid in over - {"t-ghost"}:
        src, dst, amount = transfers[rid]
        delta[src] += amount
        delta[dst] -= amount
    assert report.accounts == {n: (live.accounts[n].balance, live.accounts[n].balance + d)
                               for n, d in delta.items() if d}

    # the new generation is written beside the live one, which is untouched
    target = write_generation(settings, "cap3000", capped)
    new_ledger = LedgerFold()
    for msg in read_topic(target, target.topic(topics.LEDGER)):
        new_ledger.apply(msg.value())
    assert new_ledger.violations == []
    assert {n: a.balance for n, a in new_ledger.accounts.items() if n in delta} == \
        {n: live.accounts[n].balance + delta[n] for n in delta}
    assert ledger(settings).applied == live.applied
    rejected = [orjson.loads(r) for r in new_ledger.accounts[names[0]].events]
    assert any(e["kind"] == "rejected" and e.get("reason") == "limit_exceeded" for e in rejected)


def _first_difference(a: LedgerFold, b: LedgerFold) -> str:
    for name in a.accounts:
        ours, theirs = a.accounts[name].events, b.accounts[name].events
        for x, y in zip(ours, theirs):
            if x != y:
                return f"{x!r}\n{y!r}"
        if len(ours) != len(theirs):
            longer = ours if len(ours) > len(theirs) else theirs
            return f"{name}: {len(ours)} events vs {len(theirs)}; next {longer[min(len(ours), len(theirs))]!r}"
    return ""
