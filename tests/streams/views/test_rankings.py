"""The rankings (largest balances, most active accounts of a day): folded into a bucketed
index as the ledger is, read top-down; the answer equals a full sort of the accounts."""
from __future__ import annotations

import random

from kbank.streams.model import Account, Position, ledger_event
from kbank.streams.views.fold import (BY_ACTIVITY, BY_BALANCE, AccountView, apply_to_account,
                                      magnitude_bucket, ranked_figure, ranking_moves, standing)
from kbank.streams.views.queries import top_ranked

DAY = 86_400_000
REQ = Position("transfers.requests", 0, 0)


def test_buckets_are_monotone_and_about_an_eighth_wide():
    values = list(range(1, 5000)) + [2**40 + i for i in range(0, 2**36, 2**31)] + [2**63 - 1]
    buckets = [magnitude_bucket(v) for v in values]
    assert buckets == sorted(buckets)
    for v in (9, 1000, 123_456_789, 2**62):
        same = [w for w in range(v // 2, v * 2, max(1, v // 64)) if magnitude_bucket(w) ==
                magnitude_bucket(v)]
        assert max(same) < min(same) * 1.15


class Index:
    """The views' ranking index as a sorted dict, written only through ranking_moves."""

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple[int, int, str]] = {}
        self.writes = 0

    def apply(self, account: str, deleted, written) -> None:
        for ranking, group, bucket in deleted:
            assert ranking == BY_BALANCE      # activity entries are left for readers to skip
            del self.entries[(ranking, group, -bucket, account)]
        for (ranking, group, bucket), figure in written:
            self.entries[(ranking, group, -bucket, account)] = (bucket, figure, account)
        self.writes += len(deleted) + len(written)

    def read(self, ranking: str, group: str):
        return [v for k, v in sorted(self.entries.items()) if k[:2] == (ranking, group)]


def test_the_top_read_from_the_index_equals_a_full_sort():
    rng = random.Random(7)
    views: dict[str, AccountView] = {}
    index = Index()
    active: dict[tuple[int, str], int] = {}      # (day, account) -> events that day
    events = 0
    for step in range(12000):
        account = f"a{int(rng.paretovariate(1.2)) % 20}"
        view = views.get(account)
        day = 10 + step // 4000
        ts = day * DAY + step
        seq = view.seq + 1 if view else 1
        # a first deposit of 10^5 to 10^8, then payments of up to 1,000 either way
        balance = 0 if not view else 10 ** rng.randrange(5, 9) if view.seq == 1 else \
            max(-50, view.balance + rng.randrange(-1_000, 1_000))
        event = ledger_event(account, seq, f"r{step}", "deposited" if view else "opened", 1,
                             None, balance, ts, REQ, None, Account())
        before = standing(view)
        views[account] = apply_to_account(view, event, step)
        index.apply(account, *ranking_moves(before, views[account]))
        active[(day, account)] = active.get((day, account), 0) + 1
        events += 1
    assert index.writes < events / 4, (index.writes, events)   # not a write per event

    def read_top(ranking, group, limit, budget=10_000):
        def figure_of(account, bucket, stored):
            return ranked_figure(views[account], ranking, group, bucket, stored)
        return top_ranked(index.read(ranking, group), figure_of, limit, budget)

    for limit in (1, 5, 20, 100):
        rows, complete = read_top(BY_BALANCE, "USD", limit)
        expected = sorted(((v.balance, a) for a, v in views.items() if v.balance > 0),
                          key=lambda r: (-r[0], r[1]))[:limit]
        assert complete and rows == expected
        for day in (10, 11, 12):                    # finished days and the current one
            rows, complete = read_top(BY_ACTIVITY, str(day), limit)
            expected = sorted(((n, a) for (d, a), n in active.items() if d == day),
                              key=lambda r: (-r[0], r[1]))[:limit]
            assert complete and rows == expected, day
    # a budget too small for the answer says so
    rows, complete = read_top(BY_BALANCE, "USD", 20, budget=3)
    assert not complete and len(rows) <= 3


def test_a_stale_entry_brought_back_is_skipped():
    view = AccountView(balance=1_000, active_day=12, active=40)
    assert ranked_figure(view, BY_BALANCE, "USD", magnitude_bucket(1_000), 1_000) == 1_000
    # a late changelog write brought back the entry of an earlier balance
    assert ranked_figure(view, BY_BALANCE, "USD", magnitude_bucket(50), 50) is None
    assert ranked_figure(view, BY_BALANCE, "EUR", magnitude_bucket(1_000), 1_000) is None
    # a finished day's entry carries its final count; a current day's is read live
    assert ranked_figure(view, BY_ACTIVITY, "11", magnitude_bucket(9), 9) == 9
    assert ranked_figure(view, BY_ACTIVITY, "12", magnitude_bucket(40), 3) == 40
    assert ranked_figure(view, BY_ACTIVITY, "13", magnitude_bucket(4), 4) is None
