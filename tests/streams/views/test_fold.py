"""The views' fold: re-deliveries, copies and restores never change the result."""
from __future__ import annotations

from kbank.streams.model import Account, Position, ledger_event
from kbank.streams.views.fold import (AccountView, Applied, PartitionTotals, apply_to_account, classify,
                                global_figures, merge_status, status_expired)

REQ = Position("transfers.requests", 0, 0)
CRED = Position("transfers.credits", 0, 0)
DAY = 86_400_000


def ev(seq, kind, amount, balance, ts=5 * DAY + 1, counterparty=None, source=REQ, limit=None):
    return ledger_event("alice", seq, f"r{seq}", kind, amount, counterparty, balance, ts, source,
                        None, Account(daily_limit=limit))


def fold(records):
    """Apply (offset, event) records like the views app; return the view and the totals."""
    view, totals = None, PartitionTotals()
    for offset, event in records:
        verdict = classify(view, event["seq"], offset)
        if verdict is Applied.NEW:
            view = apply_to_account(view, event, offset)
        if verdict in (Applied.NEW, Applied.REDELIVERED):
            totals.count(event, offset, "transfers.requests", view.currency)
    return view, totals


EVENTS = [ev(1, "opened", 0, 0, limit=1_000), ev(2, "deposited", 5_000, 5_000),
          ev(3, "debited", 700, 4_300, counterparty="bob"),
          ev(4, "rejected", 900, 4_300, counterparty="bob"),
          ev(5, "refunded", 200, 4_500, counterparty="bob", source=CRED),
          ev(6, "withdrawn", 100, 4_400, ts=6 * DAY + 5)]


def test_fold_follows_the_ledger():
    view, totals = fold(list(enumerate(EVENTS)))
    assert (view.balance, view.seq, view.daily_limit) == (4_400, 6, 1_000)
    assert (view.day, view.outflow) == (6, 100)  # a new day: yesterday's 700 - 200 no longer counts
    usd = {"total_balance": 4_400, "money_in_flight": 500, "deposits": 5_000,
           "withdrawals": 100, "money_held": 0}
    assert global_figures([totals]) == {
        "accounts": 1, **usd, "transfers_completed": 0, "transfers_rejected": 2,
        "ledger_events": 6, "partitions": 1, "default_currency": "USD",
        "currencies": {"USD": {**usd, "decimals": 2}}}


def test_redelivery_and_copies_change_nothing():
    once = fold(list(enumerate(EVENTS)))
    # the whole log delivered again (a restart from an old offset), and a copy of
    # every event at a later offset (an aborted transaction the broker shows)
    records = list(enumerate(EVENTS))
    records += [(o, e) for o, e in enumerate(EVENTS)]
    records += [(100 + o, e) for o, e in enumerate(EVENTS)]
    assert fold(records) == once


def test_a_redelivered_record_is_told_from_a_copy_and_a_gap():
    view = apply_to_account(None, EVENTS[0], 10)
    assert classify(view, 1, 10) is Applied.REDELIVERED
    assert classify(view, 1, 11) is Applied.DUPLICATE
    assert classify(view, 2, 12) is Applied.NEW
    assert classify(view, 3, 12) is Applied.GAP
    assert AccountView.from_bytes(view.to_bytes()) == view


WINDOW_MS = 1_000


def test_status_only_moves_forward_and_a_duplicate_never_overrides():
    s = merge_status(None, {"request_id": "r", "status": "debited", "ts": 1}, WINDOW_MS)
    s = merge_status(s, {"request_id": "r", "status": "completed", "ts": 2}, WINDOW_MS) or s
    assert s["status"] == "completed"
    assert merge_status(s, {"request_id": "r", "status": "debited", "ts": 3}, WINDOW_MS) is None
    assert merge_status(s, {"request_id": "r", "status": "rejected", "reason": "duplicate"},
                        WINDOW_MS) is None
    first = merge_status(None, {"request_id": "q", "status": "rejected", "reason": "duplicate"},
                         WINDOW_MS)
    assert first["reason"] == "duplicate"


def test_an_id_re_used_after_the_window_starts_its_status_over():
    s = merge_status(None, {"request_id": "r", "status": "debited", "ts": 1,
                            "metadata": {"a": "1"}}, WINDOW_MS)
    s = merge_status(s, {"request_id": "r", "status": "completed", "ts": 1}, WINDOW_MS)
    assert s["since"] == 1 and s["metadata"] == {"a": "1"}
    # within the window a decision cannot move a final status (nor can a retry, ever)
    assert merge_status(s, {"request_id": "r", "status": "debited", "ts": WINDOW_MS}, WINDOW_MS) is None
    assert merge_status(s, {"request_id": "r", "status": "debited", "ts": 5 * WINDOW_MS,
                            "retry": True}, WINDOW_MS) is None
    again = merge_status(s, {"request_id": "r", "status": "debited", "ts": 1 + WINDOW_MS}, WINDOW_MS)
    assert again["status"] == "debited" and again["since"] == 1 + WINDOW_MS
    assert "metadata" not in again, "the new request's labels, not the old one's"
    done = merge_status(again, {"request_id": "r", "status": "completed", "ts": 1 + WINDOW_MS},
                        WINDOW_MS)
    assert done["status"] == "completed" and done["since"] == 1 + WINDOW_MS


def test_a_final_status_is_forgotten_a_window_and_a_seventh_after_its_first_decision():
    margin = WINDOW_MS // 7
    done = {"request_id": "r", "status": "completed", "ts": 5, "since": 1}
    assert not status_expired(done, 1 + WINDOW_MS + margin - 1, WINDOW_MS)
    assert status_expired(done, 1 + WINDOW_MS + margin, WINDOW_MS)
    in_flight = {**done, "status": "debited"}
    assert not status_expired(in_flight, 10 * WINDOW_MS, WINDOW_MS), "only final statuses"
    assert status_expired({"request_id": "r", "status": "rejected", "ts": 1}, 10 * WINDOW_MS,
                          WINDOW_MS), "a status written before `since` existed: its ts"
