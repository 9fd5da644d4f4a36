"""The matcher's rules, pure (kbank.books.matching): no broker, every rule with a case that
fails without it."""
from __future__ import annotations

import pytest

from kbank.books.matching import (MATCHED, MISMATCHED, UNMATCHED, LedgerItem, Rules,
                                  differences, reconcile)
from kbank.books.statements import StatementLine


def line(n: int, day: str, amount: int, ref: str | None = None, party: str | None = None) -> StatementLine:
    return StatementLine("bank", "s", n, day, amount, "EUR", ref, party, "", f"{n:032x}")


def item(seq: int, day: str, amount: int, ref: str | None = None, party: str | None = None,
         kind: str = "credited") -> LedgerItem:
    return LedgerItem(seq, day, amount, "EUR", ref, party, kind)


def statuses(results: dict) -> dict[str, tuple]:
    return {k: (r["status"], r["field"], r["events"]) for k, r in results.items()}


def test_a_reference_matches_one_event_or_several_that_sum_to_the_line():
    lines = [line(1, "2026-12-01", 100, "a"), line(2, "2026-12-01", 60, "batch")]
    items = [item(1, "2026-12-01", 100, "a"), item(2, "2026-12-01", 25, "batch"),
             item(3, "2026-12-01", 35, "batch")]
    got = statuses(reconcile(lines, items, Rules()))
    assert got == {f"line:{1:032x}": (MATCHED, None, [1]), f"line:{2:032x}": (MATCHED, None, [2, 3])}
    single = statuses(reconcile(lines, items, Rules(many_to_one=False)))
    assert single[f"line:{2:032x}"] == (MISMATCHED, "amount", [2])


def test_a_reference_found_with_another_date_or_counterparty_is_a_mismatch_naming_it():
    lines = [line(1, "2026-12-10", 100, "a", "alice"), line(2, "2026-12-10", 50, "b", "bob")]
    items = [item(1, "2026-12-01", 100, "a", "alice"), item(2, "2026-12-10", 50, "b", "eve")]
    got = statuses(reconcile(lines, items, Rules()))
    assert got[f"line:{1:032x}"] == (MISMATCHED, "value_date", [1])
    assert got[f"line:{2:032x}"] == (MATCHED, None, [2])
    strict = statuses(reconcile(lines, items, Rules(counterparty=True)))
    assert strict[f"line:{2:032x}"] == (MISMATCHED, "counterparty", [2])


def test_amount_and_date_within_the_window_and_a_batched_settlement_of_one_day():
    lines = [line(1, "2026-12-03", 70), line(2, "2026-12-05", 30)]
    items = [item(1, "2026-12-01", 70), item(2, "2026-12-05", 10), item(3, "2026-12-05", 20)]
    got = statuses(reconcile(lines, items, Rules(date_window_days=2)))
    assert got == {f"line:{1:032x}": (MATCHED, None, [1]), f"line:{2:032x}": (MATCHED, None, [2, 3])}
    narrow = statuses(reconcile(lines, items, Rules(date_window_days=1, grace_days=0)))
    assert narrow[f"line:{1:032x}"][0] == UNMATCHED and narrow["event:1"][0] == UNMATCHED
    only_refs = reconcile(lines, items, Rules(by=("reference",), grace_days=0))
    assert {r["status"] for r in only_refs.values()} == {UNMATCHED}


def test_the_unmatched_wait_for_the_statements_to_pass_their_grace_and_say_why():
    lines = [line(1, "2026-12-01", 100, "x"), line(2, "2026-12-01", 100, "x"),
             line(3, "2026-12-01", -40, "no"), line(4, "2026-12-04", 5, "later")]
    items = [item(1, "2026-12-01", 100, "x"), item(2, "2026-12-01", 0, "no", kind="rejected"),
             item(3, "2026-12-02", -9, "lost")]
    rules = Rules(grace_days=3, by=("reference",))
    got = reconcile(lines, items, rules)
    assert got[f"line:{2:032x}"]["reason"] == f"a duplicate of line:{1:032x}"
    assert got[f"line:{3:032x}"]["reason"] == "the ledger refused the request of this reference"
    assert f"line:{4:032x}" not in got and "event:3" not in got    # within the grace: pending
    later = reconcile(lines + [line(5, "2026-12-05", 1, "z")], items, rules)
    assert later["event:3"]["reason"] == "missing from the statement"
    assert differences(got, later) == {"event:3": later["event:3"]}
    assert differences(later, got) == {"event:3": None}


@pytest.mark.parametrize("bad", [{"by": ["guess"]}, {"grace_days": -1}, {"grace_days": "3"},
                                 {"many_to_one": 1}, {"tolerance": 5}, []])
def test_rules_that_are_not_rules_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        Rules.from_json(bad)


def test_a_daily_cut_off_in_a_zone_and_a_close_named_by_instant_and_currency():
    from kbank.books.__main__ import cut_offs
    from kbank.streams.books.closes import close_id, split_close_name

    now = 1_796_619_600_000                       # 2026-12-07T05:00:00Z
    assert close_id(now) == "2026-12-07T05:00:00.000Z"
    latest, upcoming = cut_offs("17:00", "+01:00", now)
    assert (close_id(latest), close_id(upcoming)) == ("2026-12-06T16:00:00.000Z",
                                                      "2026-12-07T16:00:00.000Z")
    latest, _ = cut_offs("04:30", "+00:00", now)
    assert close_id(latest, "EUR") == "2026-12-07T04:30:00.000Z-EUR"
    assert split_close_name("2026-12-07T04:30:00.000Z-EUR") == ("2026-12-07T04:30:00.000Z", "EUR")
    assert split_close_name("2026-12-07") == ("2026-12-07", None)
