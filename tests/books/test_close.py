"""Closing the books against the real broker, the engine running as `bank up` runs it."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

import jsonschema
import orjson
import pytest

from kbank.books.close import fold_close, wait_settled
from kbank.replay.verify import verify
from kbank.streams.books.store import list_closes, read_close, write_close
from kbank.streams.books.closes import Close, CloseError
from kbank.streams.books.trial import trial_balance
from kbank.streams import topics
from kbank.streams.apikeys import AUDITOR, CLIENT
from kbank.streams.keystore import create_key
from kbank.streams.client import read_topic
from kbank.streams.model import CREDITED, DEBITED, split_request_key
from tests import http
from tests.workload import Workload, wait_until

CURRENCIES = {"EUR": 12, "USD": 12}      # currency -> accounts
SCHEMA = orjson.loads((Path(__file__).resolve().parents[2] / "kbank" / "schemas" /
                       "books.closes.v1.json").read_bytes())


def open_books(work: Workload) -> dict[str, list[str]]:
    """Accounts in two currencies, each with a chart-of-accounts code, funded."""
    names: dict[str, list[str]] = {}
    for cur, count in CURRENCIES.items():
        names[cur] = [f"{cur.lower()}-{i}" for i in range(count)]
        for i, name in enumerate(names[cur]):
            work.send({"type": "open_account", "request_id": f"open-{name}", "account": name,
                       "currency": cur, "metadata": {"coa": "1000" if i % 3 else "2000"}})
        for name in names[cur]:
            work.send({"type": "deposit", "request_id": f"dep-{name}", "account": name,
                       "amount": 100_000, "currency": cur})
    work.sender.flush()
    assert work.wait(120), "the accounts were not opened in time"
    return names


def load(work: Workload, names: dict[str, list[str]], count: int, rate_per_s: float) -> None:
    """Transfers within each currency, across partitions, at a steady rate."""
    import time

    start = time.monotonic()
    for i in range(count):
        cur = "EUR" if i % 2 else "USD"
        src, dst = work.rng.sample(names[cur], 2)
        work.send({"type": "transfer", "request_id": f"t-{i}", "from": src, "to": dst,
                   "amount": work.rng.randint(1, 500), "currency": cur})
        if i % 50 == 0:
            work.sender.flush()
            ahead = start + i / rate_per_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    work.sender.flush()


def ledger_so_far(settings) -> list[tuple[int, dict]]:  # noqa: ANN001
    return [(m.partition(), orjson.loads(m.value()))
            for m in read_topic(settings, settings.topic(topics.LEDGER))]


def in_the_cut(events: list[tuple[int, dict]], at_ms: int) -> list[dict]:
    """The oracle, written apart from the fold: each partition up to its first event past T."""
    passed: set[int] = set()
    kept = []
    for partition, event in events:
        if partition in passed or event["ts"] > at_ms:
            passed.add(partition)
            continue
        kept.append(event)
    return kept


def owed_at(events: list[tuple[int, dict]], at_ms: int) -> dict[str, int]:
    """Request id -> amount debited in the cut and not yet credited in it."""
    owed: dict[str, int] = {}
    for event in in_the_cut(events, at_ms):
        if event["kind"] == DEBITED:
            owed[event["request_id"]] = owed.get(event["request_id"], 0) + event["amount"]
        elif event["kind"] == CREDITED:
            owed[event["request_id"]] = owed.get(event["request_id"], 0) - event["amount"]
    return {rid: amount for rid, amount in owed.items() if amount}


def a_cut_with_money_in_flight(events: list[tuple[int, dict]]) -> int | None:
    """An instant of the ledger so far at which some transfer is debited and not credited."""
    stamps = sorted({e["ts"] for _, e in events if e["kind"] == DEBITED})
    for at_ms in stamps[len(stamps) // 2::max(1, len(stamps) // 40)]:
        if owed_at(events, at_ms):
            return at_ms
    return None


def test_a_close_during_load_adds_up_to_the_unit_and_a_later_one_is_the_same_bytes(
        settings, pool_factory, views_factory):
    settings = dataclasses.replace(settings, close_settle_margin_ms=1000)
    pool_factory(settings, 2)
    views = views_factory(settings, 1)
    work = Workload(settings)
    try:
        names = open_books(work)
        sender = threading.Thread(target=load, args=(work, names, 9_000, 300), daemon=True)
        sender.start()
        cut = None
        while cut is None and sender.is_alive():
            cut = a_cut_with_money_in_flight(ledger_so_far(settings))
        assert cut is not None, "no instant had a transfer debited and not credited"
        at_ms = cut

        wait_settled(settings, at_ms, 120, say=lambda _: None)
        assert sender.is_alive(), "the close was to be made while transfers flow"
        close, report = fold_close(settings, at_ms)
        assert report.violations == [], report.violations
        digest, written = write_close(settings, close)
        assert written

        jsonschema.Draft202012Validator(SCHEMA).validate(orjson.loads(close.to_bytes()))
        assert set(close.currencies) == set(CURRENCIES)
        for cur, money in close.currencies.items():
            assert money.accounts == CURRENCIES[cur]
            assert money.balances + money.in_flight == money.deposits - money.withdrawals, cur
            assert money.deposits == 100_000 * CURRENCIES[cur] and money.withdrawals == 0
        events = ledger_so_far(settings)
        owed = {split_request_key(key)[1]: amount for key, _, amount in close.in_flight}
        assert owed == owed_at(events, at_ms) != {}
        assert {a.name: a.balance for a in close.accounts} == \
            {e["account"]: e["balance"] for e in in_the_cut(events, at_ms)}
        assert {a.name: a.metadata["coa"] for a in close.accounts}["eur-0"] == "2000"
        tb = trial_balance(close, "coa")
        assert all(c["totals"]["balanced"] for c in tb["currencies"].values())
        assert [line["group"] for line in tb["currencies"]["EUR"]["lines"]] == ["1000", "2000"]
        sender.join(120)
        assert work.wait(180), "the load did not complete"
    finally:
        work.close()

    # made again once the load is over: the same instant gives the same bytes
    again, report = fold_close(settings, at_ms)
    assert report.violations == []
    assert again.to_bytes() == close.to_bytes()
    assert write_close(settings, again) == (digest, False)
    assert read_close(settings, close.id).to_bytes() == close.to_bytes()
    assert [m["id"] for m in list_closes(settings)] == [close.id]
    # the chain heads it stops at prove the log later, as bank replay verify --against does
    assert verify(settings, anchor=close.anchor()).ok
    forged = [{**close.anchor()[0], "hash": "f" * 64}]
    assert any("no longer passes" in v for v in verify(settings, anchor=forged).violations)
    # one currency's books at the same instant: its part of the whole, stored beside it
    eur, report = fold_close(settings, at_ms, currency="EUR")
    assert report.violations == [] and eur.id == f"{close.id}-EUR"
    assert eur.currencies == {"EUR": close.currencies["EUR"]}
    jsonschema.Draft202012Validator(SCHEMA).validate(orjson.loads(eur.to_bytes()))
    assert eur.accounts == [a for a in close.accounts if a.currency == "EUR"]
    assert write_close(settings, eur)[1] and read_close(settings, eur.id) == eur
    # a later instant, after every transfer completed: nothing in flight
    later, _ = fold_close(settings, at_ms + 10**9)
    assert later.in_flight == [] and all(m.conserved for m in later.currencies.values())
    served_over_http(settings, views.url("0"), close)


def served_over_http(settings, url: str, close: Close) -> None:  # noqa: ANN001
    """GET /closes and its pages: the operator's and the auditor's, never a client's."""
    auditor = http.known_key(url, create_key(settings, AUDITOR).token)
    client = http.known_key(url, create_key(settings, CLIENT, account_prefix="eur-").token)
    wait_until(lambda: http.request("GET", f"{url}/closes").status == 200 and
               len(http.get_json(f"{url}/closes")["closes"]) == 2, 30, "the views to read the closes")
    for key in (http.current_key(), auditor):
        listed = http.get_json(f"{url}/closes", key=key)["closes"]
        assert [(m["id"], m["sha256"]) for m in listed] == \
            [(close.id, hashlib.sha256(close.to_bytes()).hexdigest()),
             (f"{close.id}-EUR", listed[1]["sha256"])]
        assert http.get_json(f"{url}/closes/{close.at_ms}", key=key)["currencies"]["EUR"][
            "conserved"] is True
        assert list(http.get_json(f"{url}/closes/{close.at_ms}-EUR", key=key)["currencies"]) \
            == ["EUR"]
    pages, after = [], ""
    while after is not None:
        body = http.get_json(f"{url}/closes/{close.id}/accounts?limit=7&after={after}")
        pages += body["accounts"]
        after = body["next"]
    assert [a["name"] for a in pages] == [a.name for a in close.accounts]
    assert [a["balance"] for a in pages] == [a.balance for a in close.accounts]
    tb = http.get_json(f"{url}/closes/{close.id}/trial-balance?by=coa", key=auditor)
    assert tb == orjson.loads(orjson.dumps(trial_balance(close, "coa")))
    for path in ("/closes", f"/closes/{close.id}", f"/closes/{close.id}/accounts",
                 f"/closes/{close.id}/trial-balance"):
        refused = http.request("GET", f"{url}{path}", key=client)
        assert refused.status == 403, (path, refused.status)
    assert http.request("GET", f"{url}/closes/2001-01-01").status == 404
    assert http.request("GET", f"{url}/closes/yesterday").status == 400


def test_a_stored_close_whose_sums_do_not_follow_from_its_rows_is_refused():
    close = Close.from_bytes(Close(0, topics.LEDGER, [], {}, [], []).to_bytes())
    assert close.accounts == []
    forged = orjson.loads(close.to_bytes())
    forged["currencies"] = {"EUR": [1, 10, 0, 0, 0, 10, 0]}
    forged["accounts"] = [["a", "EUR", 11, 0, 0, 1, "open", {}]]
    with pytest.raises(CloseError, match="do not add up"):
        Close.from_bytes(orjson.dumps(forged))
    forged["accounts"][0][2] = 10
    assert Close.from_bytes(orjson.dumps(forged)).currencies["EUR"].balances == 10
    forged["currencies"]["EUR"][1] = forged["accounts"][0][2] = 9
    with pytest.raises(CloseError, match="not conserved"):
        Close.from_bytes(orjson.dumps(forged))
