"""Each verify check owns its state (kbank/replay/checks.py): a verify that stops at a
checkpoint and goes on from it, or folds partitions apart and merges them, finds what one
pass finds. Pure: the rules' in-memory ledger, no broker."""
from __future__ import annotations

from dataclasses import asdict

import orjson

from kbank.replay.checkpoint import Checkpoint
from kbank.replay.checks import LedgerChecks
from kbank.replay.ledger import LedgerFold
from kbank.replay.report import VerifyReport
from tests.rules_ledger import opened

WINDOW_MS = 7 * 86_400_000


def _busy_ledger():
    """Deposits, withdrawals, transfers credited and in flight, holds posted, voided and open."""
    led = opened(("alice", 1_000), ("bob", 500), ("carol", 0))
    led.send({"type": "withdraw", "request_id": "w1", "account": "alice", "amount": 10})
    led.send({"type": "transfer", "request_id": "t1", "from": "alice", "to": "bob", "amount": 30})
    led.deliver_all()
    for n, kind in enumerate(("post", "void", None)):
        led.send({"type": "hold", "request_id": f"h{n}", "from": "bob", "to": "carol",
                  "amount": 20, "timeout_s": 3600})
        led.deliver_all()
        if kind is not None:
            led.send({"type": kind, "request_id": f"{kind}{n}", "from": "bob", "hold_id": f"h{n}"})
    led.send({"type": "transfer", "request_id": "t2", "from": "bob", "to": "carol", "amount": 7})
    return led       # t2's credit and the last post's are still in flight


def _report(checks: LedgerChecks, fold: LedgerFold) -> dict:
    report = VerifyReport()
    checks.finish(fold, report)
    found = {k: v for k, v in vars(report).items() if k not in ("heads", "read_from", "read_to")}
    return {**found, "holds": dict(report.holds),
            "currencies": {cur: asdict(money) for cur, money in report.currencies.items()}}


def _fold(events: list[bytes], fold: LedgerFold, checks: LedgerChecks) -> None:
    for offset, raw in enumerate(events):
        ev = fold.apply(raw, f"event {offset}", 0, offset)
        if ev is not None:
            checks.add(ev, fold.accounts[ev["account"]])


def test_a_checkpoint_carries_what_each_check_needs_to_go_on():
    events = _busy_ledger().events
    whole_fold, whole = LedgerFold(), LedgerChecks(WINDOW_MS)
    _fold(events, whole_fold, whole)
    expected = _report(whole, whole_fold)
    assert expected["in_flight_transfers"] >= 1 and expected["holds"]["pending"] == 1
    assert expected["violations"] == [] and expected["currencies"]["USD"]["in_flight"] > 0
    for cut in range(1, len(events)):
        fold, checks = LedgerFold(), LedgerChecks(WINDOW_MS)
        _fold(events[:cut], fold, checks)
        saved = Checkpoint(ledger_topic="ledger", ledger_next={}, heads={}, accounts={},
                           **checks.save())
        again = LedgerChecks.restored(Checkpoint.from_bytes(saved.to_bytes()), WINDOW_MS)
        _fold(events[cut:], fold, again)
        got = _report(again, fold)
        assert got["currencies"] == expected["currencies"], cut
        assert (got["holds"], got["in_flight_transfers"], got["violations"]) == \
            (expected["holds"], expected["in_flight_transfers"], expected["violations"]), cut


def test_checks_folded_apart_and_merged_find_what_one_pass_finds():
    led = _busy_ledger()
    whole_fold, whole = LedgerFold(), LedgerChecks(WINDOW_MS)
    _fold(led.events, whole_fold, whole)
    by_account: dict[str, list[bytes]] = {}
    for raw in led.events:        # one account per "partition", each folded alone
        by_account.setdefault(orjson.loads(raw)["account"], []).append(raw)
    merged = LedgerChecks(WINDOW_MS)
    for events in by_account.values():
        part = LedgerChecks(WINDOW_MS)
        _fold(events, LedgerFold(), part)
        merged.merge(part)
    for name in ("currencies", "holds", "in_flight_transfers", "violations", "applied_twice"):
        assert _report(merged, whole_fold)[name] == _report(whole, whole_fold)[name], name
