"""Two-phase transfers end to end over the real broker: holds posted, voided, raced and expired
across partitions, with the engine killed, checked by `bank replay verify`'s invariants and by
what the views serve over HTTP."""
from __future__ import annotations

import time

import orjson

from kbank.streams.client import read_json
from kbank.streams import topics
from tests.http import get_json, request
from tests.workload import Workload, assert_invariants, ledger, wait_until


def _hold(wl: Workload, hold_id: str, src: str, dst: str, amount: int, timeout_s: int) -> None:
    wl.send({"type": "hold", "request_id": hold_id, "from": src, "to": dst, "amount": amount,
             "timeout_s": timeout_s})


def test_holds_posted_voided_and_expired_show_in_the_views(settings, pool_factory, views_factory):
    engine = pool_factory(settings, 2)
    views = views_factory(settings, 1)
    url = views.url(next(iter(views.procs)))
    wl = Workload(settings)
    try:
        wl.open_accounts(["alice", "bob", "carol"], 1_000)
        _hold(wl, "h-post", "alice", "bob", 300, 600)
        _hold(wl, "h-void", "alice", "carol", 200, 600)
        _hold(wl, "h-expire", "bob", "carol", 100, 1)
        wl.sender.flush()
        wait_until(lambda: all(wl.status(h) in ("held", "expired")
                               for h in ("h-post", "h-void", "h-expire")), 60, "the holds")
        # the sender's funds are reserved; the receiver sees them coming (incoming_held)
        alice = get_json(f"{url}/accounts/alice?min_seq=4&timeout=10")
        assert (alice["balance"], alice["available"], alice["pending_out"]) == (1_000, 500, 500)
        bob = get_json(f"{url}/accounts/bob?min_seq=4&timeout=10")
        assert bob["pending_in"] == 300
        over = request("POST", f"{url}/requests?wait=completed", orjson.dumps(
            {"type": "withdraw", "request_id": "w-too-much", "account": "alice", "amount": 501}))
        assert over.json()["reason"] == "insufficient_funds", over.body
        held = request("POST", f"{url}/requests?wait=completed", orjson.dumps(
            {"type": "hold", "request_id": "h-http", "from": "carol", "to": "alice",
             "amount": 10, "timeout_s": 600}))
        assert held.json()["status"] == "held", held.body   # the wait ends at the hold's decision
        wl.request_ids += ["5:alice/w-too-much", "5:carol/h-http"]
        wl.send({"type": "post", "request_id": "p1", "hold_id": "h-post", "from": "alice",
                 "amount": 250})
        wl.send({"type": "void", "request_id": "v1", "hold_id": "h-void", "from": "alice"})
        wl.send({"type": "void", "request_id": "v2", "hold_id": "h-http", "from": "carol"})
        wl.send({"type": "post", "request_id": "p-again", "hold_id": "h-void", "from": "alice"})
        wl.sender.flush()
        assert wl.wait(120), wl.statuses()
        status = wl.statuses()
        assert [status[r] for r in ("h-post", "h-void", "h-expire", "p1", "v1")] == \
            ["posted", "voided", "expired", "completed", "completed"]
        assert status["p-again"] == "rejected"
        assert get_json(f"{url}/holds/h-post?account=alice") | {"ts": 0} == {
            "hold_id": "h-post", "state": "posted", "from": "alice", "to": "bob", "amount": 300,
            "expires_at": get_json(f"{url}/holds/h-post?account=alice")["expires_at"], "posted": 250,
            "released": 50, "by": "p1", "ts": 0}
        assert get_json(f"{url}/holds/h-expire?account=bob")["state"] == "expired"
        assert request("GET", f"{url}/holds/no-such-hold?account=alice&timeout=0").status == 404
    finally:
        wl.close()
    report = assert_invariants(settings, wl, drained_by=engine)
    assert report.holds["made"] == 4 and report.holds["expired"] == 1, report.render()
    balances = {n: a.balance for n, a in ledger(settings).accounts.items()}
    assert balances == {"alice": 750, "bob": 1_250, "carol": 1_000}
    for name, seq in (("alice", len(ledger(settings).accounts["alice"].events)),
                      ("bob", len(ledger(settings).accounts["bob"].events))):
        view = get_json(f"{url}/accounts/{name}?min_seq={seq}&timeout=10")
        assert view["pending_out"] == 0 and view["pending_in"] == 0 and \
            view["available"] == view["balance"] == balances[name], view
    rejected = [o for o in read_json(settings, topics.OUTCOMES) if o["request_id"] == "p-again"]
    assert rejected[0]["reason"] == "hold_closed" and rejected[0]["detail"] == "the hold is voided"


def test_a_post_and_a_void_of_the_same_hold_racing_exactly_one_wins(settings, pool_factory):
    engine = pool_factory(settings, 2)
    names = [f"acct-{i}" for i in range(10)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 10_000)
        for i in range(200):
            src, dst = names[i % 10], names[(i * 3 + 1) % 10]
            _hold(wl, f"h{i}", src, dst, 1 + i, 600)
        wl.sender.flush()
        wait_until(lambda: all(wl.status(f"h{i}") == "held" for i in range(200)), 120,
                   "every hold held")
        for i in range(200):
            src = names[i % 10]
            post = {"type": "post", "request_id": f"p{i}", "hold_id": f"h{i}", "from": src}
            void = {"type": "void", "request_id": f"v{i}", "hold_id": f"h{i}", "from": src}
            for req in ((post, void) if i % 2 else (void, post)):
                wl.send(req)
        wl.sender.flush()
        assert wl.wait(120)
        status = wl.statuses()
    finally:
        wl.close()
    for i in range(200):
        winner = "p" if status[f"h{i}"] == "posted" else "v"
        assert status[f"h{i}"] == ("posted" if i % 2 else "voided")  # the first in the log wins
        loser = "v" if winner == "p" else "p"
        assert status[f"{winner}{i}"] == "completed" and status[f"{loser}{i}"] == "rejected"
    report = assert_invariants(settings, wl, drained_by=engine)
    assert report.holds["posted"] == 100 and report.holds["hold_released"] == 100


def test_a_hold_expires_once_when_its_engine_was_killed_past_the_deadline(settings, pool_factory):
    pool = pool_factory(settings, 1)
    wl = Workload(settings)
    try:
        wl.open_accounts(["dan", "eve"], 500)
        _hold(wl, "h-dead", "dan", "eve", 400, 2)
        wl.sender.flush()
        wait_until(lambda: wl.status("h-dead") == "held", 60, "the hold")
        worker = next(iter(pool.procs))
        pool.kill(worker)          # SIGKILL: the deadline passes while no engine runs
        deadline_ms = max(o.get("hold", {}).get("expires_at", 0)
                          for o in read_json(settings, topics.OUTCOMES) if o["request_id"] == "h-dead")
        wait_until(lambda: time.time() * 1000 > deadline_ms + 500, 30, "the hold's deadline")
        assert wl.status("h-dead") == "held"
        pool.start(worker)
        assert wl.wait(120), wl.status("h-dead")
        assert wl.status("h-dead") == "expired"
        # later cycles (and a second restart, which re-indexes the pending holds) add nothing
        pool.kill(worker)
        pool.start(worker)
        wl.send({"type": "deposit", "request_id": "after", "account": "dan", "amount": 1})
        wl.deposits += 1
        wl.sender.flush()
        assert wl.wait(120)
    finally:
        wl.close()
    report = assert_invariants(settings, wl, drained_by=pool)
    assert report.holds["expired"] == 1, report.render()
    dan = [orjson.loads(e) for e in ledger(settings).accounts["dan"].events]
    assert [e["kind"] for e in dan] == ["opened", "deposited", "held", "expired", "deposited"]


def test_linked_transfers_apply_all_or_none_across_partitions(settings, pool_factory):
    engine = pool_factory(settings, 2)
    names = [f"acct-{i}" for i in range(12)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 1_000)
        wl.send({"type": "linked", "request_id": "pay+fee", "from": "acct-0", "transfers": [
            {"to": "acct-5", "amount": 300}, {"to": "acct-9", "amount": 7}]})
        wl.send({"type": "linked", "request_id": "one-bad", "from": "acct-1", "transfers": [
            {"to": "acct-2", "amount": 100}, {"to": "acct-3", "amount": 100},
            {"to": "nobody", "amount": 1}, {"to": "acct-4", "amount": 100}]})
        wl.send({"type": "linked", "request_id": "too-much", "from": "acct-6", "transfers": [
            {"to": "acct-7", "amount": 600}, {"to": "acct-8", "amount": 401}]})
        wl.sender.flush()
        assert wl.wait(120), wl.statuses()
        status = wl.statuses()
    finally:
        wl.close()
    assert [status[r] for r in ("pay+fee", "one-bad", "too-much")] == ["completed", "rejected", "rejected"]
    outcomes = {o["request_id"]: o for o in read_json(settings, topics.OUTCOMES)
                if o.get("status") == "rejected"}
    assert outcomes["one-bad"]["detail"] == "transfers[2] to 'nobody': unknown_account"
    assert outcomes["too-much"]["detail"] == "transfers[1] to 'acct-8': insufficient_funds"
    report = assert_invariants(settings, wl, drained_by=engine)
    assert report.holds["posted"] == 1 and report.holds["hold_released"] == 1, report.render()
    balances = {n: a.balance for n, a in ledger(settings).accounts.items()}
    assert balances == {**{n: 1_000 for n in names}, "acct-0": 693, "acct-5": 1_300, "acct-9": 1_007}
