"""kbank.client against a real engine, views workers and HTTP: every call, its refusals as
typed exceptions, idempotent retries, pagination, and the asyncio client."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from urllib.parse import quote

import orjson

import pytest

from kbank.client import (AccountFrozen, AsyncBank, Bank, CurrencyMismatch, Forbidden,
                          IdempotencyConflict, InsufficientFunds, Unauthorized, UnknownAccount,
                          UnknownHold)
from kbank.streams.apikeys import CLIENT
from kbank.streams.keystore import create_key
from tests.http import current_key, get_json, request
from tests.workload import wait_until


@pytest.fixture
def bank(settings, pool_factory, views_factory):
    pool_factory(settings, 1)
    settings = replace(settings, web_query_budget=12)   # queries read at most 12 entries
    url = views_factory(settings, 2).url("0")
    return settings, url, Bank(url, current_key(), wait_s=10)


def test_the_client_moves_money_and_raises_each_refusal(bank):
    settings, url, b = bank
    b.open_account("alice", metadata={"kyc": "ok"})
    b.open_account("bob")
    b.open_account("eve", currency="EUR")
    assert b.deposit("alice", 10_000).status == "completed"
    done = b.transfer("alice", "bob", 1_250, request_id="t1", external_ref="inv-1",
                      metadata={"invoice": "1"})
    assert (done.status, done.account, done.retry) == ("completed", "alice", False)
    again = b.transfer("alice", "bob", 1_250, request_id="t1", external_ref="inv-1",
                       metadata={"invoice": "1"})
    assert again.retry and again.status == "completed"           # the same request: once
    with pytest.raises(IdempotencyConflict):
        b.transfer("alice", "bob", 1, request_id="t1")
    with pytest.raises(InsufficientFunds) as refused:
        b.transfer("bob", "alice", 10**9)
    assert "below 0" in refused.value.detail
    with pytest.raises(CurrencyMismatch):
        b.transfer("alice", "eve", 5)
    assert b.hold("alice", "bob", 500, 600, request_id="h1").status == "held"
    assert b.post("alice", "h1", 200).status == "completed"
    with pytest.raises(UnknownHold):
        b.void("alice", "nope")
    b.hold("alice", "bob", 100, 600, request_id="h2")
    assert b.void("alice", "h2").status == "completed"
    with pytest.raises(UnknownAccount) as refused:
        b.linked("alice", [{"to": "bob", "amount": 10}, {"to": "fees", "amount": 1}])
    assert "transfers[1]" in refused.value.detail
    b.open_account("fees")
    assert b.linked("alice", [{"to": "bob", "amount": 10}, {"to": "fees", "amount": 1}]
                    ).status == "completed"
    wait_until(lambda: b.balance("bob")["balance"] == 1_250 + 200 + 10, 30, "bob's credits")
    wait_until(lambda: b.balance("alice")["balance"] == 10_000 - 1_250 - 200 - 11, 30,
               "alice's debits folded")
    assert b.balance("alice")["metadata"] == {"kyc": "ok"}
    assert b.wait("alice", "t1").status == "completed"     # once the views folded it
    assert b.status("alice", "t1").raw["external_ref"] == "inv-1"
    b.freeze("alice")                                          # an operator's request
    with pytest.raises(AccountFrozen):
        b.withdraw("alice", 1)

    # history: every event, newest first, across pages of 3
    events = list(b.history("alice", page_size=3))
    assert [e["seq"] for e in events] == list(range(len(events), 0, -1))
    assert events[-1]["kind"] == "opened" and len(events) > 6

    # keys: none, or one that does not cover the account
    with pytest.raises(Unauthorized):
        Bank(url, "bk_0123456789abcdef_" + "A" * 43, retries=0).balance("alice")
    shop = create_key(settings, CLIENT, accounts=("bob",))
    wait_until(lambda: request("GET", f"{url}/accounts/bob", key=shop.token).status == 200,
               10, "the new key at the views")
    with pytest.raises(Forbidden):
        Bank(url, shop.token).balance("alice")


def test_the_asyncio_client(bank):
    _, url, b = bank

    async def run() -> list[int]:
        async with AsyncBank(url, current_key()) as ab:
            await ab.open_account("a1")
            await ab.open_account("a2")
            await ab.deposit("a1", 100)
            done = await asyncio.gather(*(ab.transfer("a1", "a2", 10, request_id=f"t{i}")
                                          for i in range(5)))
            assert {o.status for o in done} == {"completed"}
            with pytest.raises(InsufficientFunds):
                await ab.transfer("a1", "a2", 51)
            while (await ab.balance("a1"))["seq"] < 8:   # the views fold the refusal too
                await asyncio.sleep(0.05)
            return [e["seq"] async for e in ab.history("a1", page_size=2)]

    seqs = asyncio.run(run())    # opened, deposited, 5 debits, the refusal
    assert seqs == list(range(8, 0, -1))
    wait_until(lambda: get_json(f"{url}/accounts/a2")["balance"] == 50, 30, "a2's credits")


def test_queries_over_http_and_the_cli(bank):
    settings, url, b = bank
    b.open_account("q", metadata={"team": "ops"})
    b.open_account("r")
    b.deposit("q", 10_000)
    for i in range(8):
        b.transfer("q", "r", 100 + i, request_id=f"q{i}",
                   metadata={"invoice": f"inv-{i % 2}"})
    wait_until(lambda: b.balance("r")["seq"] == 9 and b.balance("q")["seq"] == 10, 30,
               "q's debits and r's credits folded")
    # filters with a cursor, across workers (the key routes to the owner)
    seen, cursor = [], None
    while True:
        page = get_json(f"{url}/accounts/q/transfers?kind=debited&metadata.invoice=inv-1"
                        f"&limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert page["scanned"] <= 12
        seen += [e["request_id"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["q7", "q5", "q3", "q1"]
    oldest = get_json(f"{url}/accounts/r/transfers?order=oldest&min_amount=105&limit=3")
    assert [e["amount"] for e in oldest["entries"]] == [105, 106, 107]
    # an expensive filter is paged by the budget rather than read to the end
    few = get_json(f"{url}/accounts/q/transfers?kind=expired")
    assert few["entries"] == [] and few["scanned"] == 10 and few["next_cursor"] is None
    # the balance at a point of the log, and statements
    events = list(b.history("q"))
    third = events[-3]    # opened, deposited, the first debit
    at = get_json(f"{url}/accounts/q/balance?as_of={third['ts']}")
    assert at["balance"] <= 10_000 and at["seq"] >= 3
    pos = get_json(f"{url}/accounts/q/history?limit=100")["positions"][-3]["offset"]
    assert get_json(f"{url}/accounts/q/balance?as_of_offset={pos}")["seq"] == 2
    first, last = events[-1]["ts"], events[0]["ts"]
    st = get_json(f"{url}/accounts/q/statement?from={first}&to={last}&daily=true")
    assert (st["opening_balance"], st["closing_balance"]) == (0, events[0]["balance"])
    # without `to`, to now: the same events (issue 41)
    assert get_json(f"{url}/accounts/q/statement?from={first}")["counts"] == \
        {"opened": 1, "deposited": 1, "debited": 8}
    assert st["money_in"] == 10_000 and st["money_out"] == sum(100 + i for i in range(8))
    assert st["counts"] == {"opened": 1, "deposited": 1, "debited": 8}
    resp = request("GET", f"{url}/accounts/r/statement?from=0&to={quote('2100-01-01T00:00:00')}")
    assert resp.status == 200
    for i in range(4):   # r gets to 13 events, more than the budget of 12: its statement
        b.transfer("q", "r", 1, request_id=f"more{i}")    # still answers (issue 41)
    wait_until(lambda: b.balance("r")["seq"] == 13 and b.balance("q")["seq"] == 14, 30,
               "the last transfers folded")
    whole = get_json(f"{url}/accounts/r/statement?from=0&to=9999999999999&daily=true")
    assert whole["events"] == 13 and whole["counts"]["credited"] == 12, whole
    assert request("GET", f"{url}/accounts/r/balance").status == 400
    assert request("GET", f"{url}/accounts/r/transfers?cursor=nope").status == 400

    # accounts across workers, by currency and by metadata, paged by name
    for i in range(5):
        b.open_account(f"eu-{i}", currency="EUR", metadata={"team": "ops" if i % 2 else "dev"})
    wait_until(lambda: len(get_json(f"{url}/accounts?currency=EUR")["accounts"]) == 5,
               30, "the EUR accounts indexed")
    first = get_json(f"{url}/accounts?currency=EUR&limit=4")
    rest = get_json(f"{url}/accounts?currency=EUR&limit=4&after={first['next_after']}")
    assert first["accounts"] + rest["accounts"] == [f"eu-{i}" for i in range(5)]
    assert rest["next_after"] is None
    ops = get_json(f"{url}/accounts?metadata.team=ops")["accounts"]
    assert ops == ["eu-1", "eu-3", "q"]
    assert request("GET", f"{url}/accounts").status == 400

    # the rankings, across workers: the largest EUR balances, the most active accounts today
    for i in range(5):
        b.deposit(f"eu-{i}", 1_000 * (i + 1) ** 2)
    largest = f"{url}/aggregates/largest-balances?currency=EUR&limit=3"
    wait_until(lambda: get_json(largest)["accounts"] == [
        {"account": "eu-4", "balance": 25_000}, {"account": "eu-3", "balance": 16_000},
        {"account": "eu-2", "balance": 9_000}], 30, "the EUR deposits ranked")
    assert get_json(largest)["complete"]
    day = datetime.fromtimestamp(events[0]["ts"] / 1000, timezone.utc).strftime("%Y-%m-%d")
    active = get_json(f"{url}/aggregates/most-active?day={day}&limit=2")
    assert active["accounts"] == [{"account": "q", "events": 14}, {"account": "r", "events": 13}]
    assert get_json(f"{url}/aggregates/most-active?day=2001-01-01")["accounts"] == []
    assert request("GET", f"{url}/aggregates/most-active?day=yesterday").status == 400
    assert request("GET", f"{url}/aggregates/largest-balances?limit=101").status == 400
    assert request("GET", f"{url}/accounts?currency=EUR&metadata.team=ops").status == 400

    # the operator's commands
    env = {**os.environ, "BANK_API_KEY": current_key(), "KAFKA_BOOTSTRAP_SERVERS":
           settings.bootstrap_servers}

    def bank_cli(*args: str) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "kbank.streams.cli", *args, "--url", url],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [orjson.loads(line) for line in out.stdout.splitlines()]

    assert bank_cli("balance", "q")[0]["metadata"] == {"team": "ops"}
    b.wait("q", "q3")                                          # the views folded its outcome
    assert bank_cli("status", "q", "q3")[0]["status"] == "completed"
    assert [e["seq"] for e in bank_cli("history", "q", "--limit", "4")] == [14, 13, 12, 11]

    # the status of each event's request (q's last two events: a transfer refunded)
    with pytest.raises(UnknownAccount):           # debited, then refunded: rejected
        b.transfer("q", "ghost", 5, request_id="q-ghost")
    wait_until(lambda: [e["request_id"] for e in get_json(
        f"{url}/accounts/q/transfers?kind=debited&status=rejected")["entries"]] == ["q-ghost"],
        30, "the refused transfer's events and status folded")
    newest = ["more3", "more2", "more1", "more0", "q7"]
    wait_until(lambda: [e["request_id"] for e in get_json(
        f"{url}/accounts/q/transfers?kind=debited&status=completed&limit=5")["entries"]]
        == newest, 30, "every outcome folded by the views")
    completed = get_json(f"{url}/accounts/q/transfers?kind=debited&status=completed&limit=5")
    rest = get_json(f"{url}/accounts/q/transfers?kind=debited&status=completed&limit=5"
                    f"&cursor={completed['next_cursor']}")
    assert [e["request_id"] for e in rest["entries"]] == ["q6", "q5", "q4", "q3", "q2"]
    shop = create_key(settings, CLIENT, accounts=("q",))
    wait_until(lambda: request("GET", f"{url}/accounts/q", key=shop.token).status == 200,
               10, "the client key at the views")
    assert request("GET", f"{url}/accounts/q/transfers?status=completed",
                   key=shop.token).status == 403
