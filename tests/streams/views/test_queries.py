"""The history queries, pure: filters and cursors, the balance at a point, statements, and
the budget that pages or refuses an expensive query."""
from __future__ import annotations

import copy

import pytest

from kbank.streams.model import DAY_MS, Account, Position, ledger_event
from kbank.streams.views import queries
from kbank.streams.views.fold import add_to_totals
from kbank.streams.views.queries import QueryError, TransferFilter

T0 = 20_000 * DAY_MS


def _history(n: int) -> dict[int, tuple[dict, int]]:
    """seq -> (event, ledger offset): opened, a deposit, then debits and credits, an hour apart."""
    out, balance = {}, 0
    for seq in range(1, n + 1):
        kind, amount, other = ("opened", 0, None) if seq == 1 else ("deposited", 1_000, None) \
            if seq == 2 else ("debited", seq, "bob") if seq % 2 else ("credited", 10 * seq, "carol")
        balance += {"opened": 0, "deposited": 1, "debited": -1, "credited": 1}[kind] * amount
        event = ledger_event("alice", seq, f"r{seq}", kind, amount, other, balance,
                             T0 + seq * 3_600_000, Position("transfers.requests", 0, seq),
                             acct=Account())
        if seq % 5 == 0:
            event["metadata"] = {"invoice": f"inv-{seq}"}
        out[seq] = (event, 100 + 3 * seq)
    return out


def _totals(history: dict[int, tuple[dict, int]]) -> dict[int, list]:
    """seq -> the running totals the views keep after it (fold.add_to_totals, which changes
    them in place: each is copied, as a history entry encodes it)."""
    out, running = {0: [0, 0, {}]}, [0, 0, {}]
    for seq in sorted(history):
        event = history[seq][0]
        running = add_to_totals(running, event["kind"], event["amount"])
        out[seq] = copy.deepcopy(running)
    return out


H = _history(60)
READ = H.get
TOTALS = _totals(H).get


def _all(keep: TransferFilter, newest_first: bool = True, limit: int = 7, budget: int = 10_000):
    seqs, cursor, pages = [], None, 0
    while True:
        page = queries.transfers_page(READ, 60, keep, newest_first, limit, cursor, budget)
        seqs += [e["seq"] for e, _ in page.entries]
        pages += 1
        assert page.scanned <= budget
        cursor = page.next_cursor
        if cursor is None:
            return seqs, pages


def test_filters_and_cursors_walk_every_match_once_in_either_order():
    debits = TransferFilter(kinds=frozenset({"debited"}), min_amount=20, max_amount=40)
    newest, _ = _all(debits)
    assert newest == [s for s in range(60, 0, -1) if s % 2 and 20 <= s <= 40 and s > 2]
    oldest, _ = _all(debits, newest_first=False)
    assert oldest == newest[::-1]
    assert _all(TransferFilter(metadata={"invoice": "inv-15"}))[0] == [15]
    assert _all(TransferFilter(counterparty="carol", since_ts=T0 + 50 * 3_600_000))[0] == \
        [60, 58, 56, 54, 52, 50]


def test_a_cursor_stays_valid_while_new_events_arrive():
    page = queries.transfers_page(READ, 40, TransferFilter(), True, 10, None)
    assert [e["seq"] for e, _ in page.entries] == list(range(40, 30, -1))
    later = queries.transfers_page(READ, 60, TransferFilter(), True, 10,
                                   page.next_cursor)   # 20 more events since
    assert [e["seq"] for e, _ in later.entries] == list(range(30, 20, -1))
    with pytest.raises(QueryError):
        queries.transfers_page(READ, 60, TransferFilter(), False, 10,
                               page.next_cursor)      # made for the other order
    with pytest.raises(QueryError):
        queries.transfers_page(READ, 60, TransferFilter(), True, 10, "bogus!")


def test_an_expensive_filter_is_paged_by_the_budget_not_run_to_the_end():
    nothing = TransferFilter(kinds=frozenset({"expired"}))
    page = queries.transfers_page(READ, 60, nothing, True, 10, None, 25)
    assert page.entries == [] and page.scanned == 25 and page.next_cursor is not None
    seqs, pages = _all(nothing, budget=25)
    assert seqs == [] and pages == 3        # 60 entries, 25 a call


def test_the_balance_at_a_time_or_an_offset():
    assert queries.balance_at(READ, 60, ts=T0 + 10 * 3_600_000)["balance"] == H[10][0]["balance"]
    assert queries.balance_at(READ, 60, ts=T0 + 10 * 3_600_000 + 1)["seq"] == 10
    assert queries.balance_at(READ, 60, ts=T0)["seq"] == 0
    assert queries.balance_at(READ, 60, offset=100 + 3 * 10)["seq"] == 9   # before offset
    assert queries.balance_at(READ, 60, offset=10**9)["balance"] == H[60][0]["balance"]


def test_a_statement_adds_up_and_names_its_events():
    st = queries.statement(READ, TOTALS, 60, T0 + 10 * 3_600_000, T0 + 29 * 3_600_000, True, 3)
    assert (st["first_seq"], st["last_seq"], st["events"]) == (10, 29, 20)
    assert st["opening_balance"] == H[9][0]["balance"] and st["closing_balance"] == H[29][0]["balance"]
    assert st["opening_balance"] + st["money_in"] - st["money_out"] == st["closing_balance"]
    assert st["positions"] == {"partition": 3, "first_offset": 130, "last_offset": 187}
    assert sum(d["events"] for d in st["days"]) == 20 and len(st["days"]) == 2
    assert st["days"][0]["closing_balance"] == st["days"][1]["opening_balance"]
    empty = queries.statement(READ, TOTALS, 60, T0 + 100 * 3_600_000, T0 + 101 * 3_600_000, False, 3)
    assert empty["events"] == 0 and empty["opening_balance"] == empty["closing_balance"] == \
        H[60][0]["balance"]
    # a window's figures are two running totals apart: a few reads, however many events
    whole = queries.statement(READ, TOTALS, 60, T0, T0 + 60 * 3_600_000, False, 3)
    assert whole["events"] == 60 and whole["closing_balance"] == H[60][0]["balance"]
    with pytest.raises(QueryError):
        queries.statement(READ, TOTALS, 60, T0 + 5, T0, False, 3)
    with pytest.raises(QueryError):
        queries.parse_time("yesterday")


def test_a_statement_answers_whatever_others_put_in_the_window():
    """Issue 41: 10,050 events others caused in an account's history made its owner's
    statement over that window too large to answer (the budget is 10,000 reads)."""
    many = _history(20_000)
    reads = []

    def read(seq: int):  # noqa: ANN202
        reads.append(seq)
        return many.get(seq)
    st = queries.statement(read, _totals(many).get, 20_000, T0, T0 + 20_001 * 3_600_000, False, 3)
    assert len(reads) < 40, len(reads)           # two binary searches and the edges
    assert st["events"] == 20_000 and st["last_seq"] == 20_000
    assert st["closing_balance"] == many[20_000][0]["balance"]
    assert st["counts"] == {"opened": 1, "deposited": 1, "debited": 9_999, "credited": 9_999}
    daily = queries.statement(many.get, _totals(many).get, 20_000, T0, T0 + 3 * DAY_MS, True, 3)
    assert [d["events"] for d in daily["days"]] == [23, 24, 24, 1], daily["days"]
    assert sum(d["events"] for d in daily["days"]) == daily["events"] == 72
    assert all(a["closing_balance"] == b["opening_balance"]
               for a, b in zip(daily["days"], daily["days"][1:]))
    with pytest.raises(QueryError, match="fewer days"):    # 20,000 hours: 834 days with events
        queries.statement(many.get, _totals(many).get, 20_000, T0, T0 + 20_001 * 3_600_000, True, 3)


@pytest.mark.parametrize("text", ["²", "1" * 5_000, str(2**64), "9" * 16, "x" * 70])
def test_a_time_no_query_can_use_is_refused_with_a_reason(text):
    """Issue 41: `as_of=²`, 5,000 digits and a `to` past 64 bits answered 500."""
    with pytest.raises(queries.QueryError):
        queries.parse_time(text)
