"""Two-phase transfers in the pure decision logic: examples of each rule, then a property test
that drives random holds, posts, voids, expiries, transfers and re-deliveries through the
decisions and checks the invariants with the same checks as `bank replay verify`."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from kbank.streams.model import HOLD_CLOSED, HOLD_EXCEEDED, PENDING, UNKNOWN_HOLD, request_key
from kbank.streams.decisions import incoming_marker
from tests.rules_ledger import T0, Ledger, opened as _opened


def _hold(led: Ledger, rid: str, amount: int, sender: str = "a", to: str = "b",
          timeout_s: int = 60) -> list[dict]:
    return led.send({"type": "hold", "request_id": rid, "from": sender, "to": to,
                     "amount": amount, "timeout_s": timeout_s})


def test_a_hold_reserves_the_senders_funds_and_shows_the_receiver_the_pending_amount():
    led = _opened(("a", 100), ("b", 0))
    [out] = _hold(led, "h1", 70)
    assert out["status"] == "held" and out["hold"] == {"from": "a", "to": "b", "amount": 70,
                                                        "expires_at": T0 + 60_000}
    led.deliver_all()
    a, b = led.accounts["a"], led.accounts["b"]
    assert (a.balance, a.held, a.available) == (100, 70, 30)
    assert (b.balance, b.pending_in) == (0, 70)
    # the reserved money cannot be spent twice
    [out] = led.send({"type": "withdraw", "request_id": "w", "account": "a", "amount": 31})
    assert out["reason"] == "insufficient_funds"
    [out] = _hold(led, "h2", 31)
    assert out["reason"] == "insufficient_funds"


def test_a_partial_post_moves_part_and_releases_the_rest():
    led = _opened(("a", 100), ("b", 0))
    _hold(led, "h1", 70)
    outs = led.send({"type": "post", "request_id": "p1", "hold_id": "h1", "from": "a", "amount": 50})
    assert [(o["request_id"], o["status"]) for o in outs] == [("p1", "debited"), ("h1", "posted")]
    assert outs[1]["hold"] == {"posted": 50, "released": 20, "by": "p1"}
    led.deliver_all()
    a, b = led.accounts["a"], led.accounts["b"]
    assert (a.balance, a.held, b.balance, b.pending_in) == (50, 0, 50, 0)
    assert led.outcomes[-1] == {"request_id": "p1", "account": "a", "status": "completed", "ts": led.ts}
    report = led.verify()
    assert report.ok and report.holds["posted"] == 1, report.render()


def test_post_void_and_expire_reject_what_the_hold_does_not_allow():
    led = _opened(("a", 100), ("b", 0), ("c", 10))
    _hold(led, "h1", 40, timeout_s=10)

    def reason(body: dict) -> str:
        return led.send(body)[0].get("reason")

    assert reason({"type": "post", "request_id": "p0", "hold_id": "h1", "from": "a",
                   "amount": 41}) == HOLD_EXCEEDED
    assert reason({"type": "void", "request_id": "v0", "hold_id": "nope", "from": "a"}) == UNKNOWN_HOLD
    # holds live in their sender's scope: c has no hold h1
    assert reason({"type": "void", "request_id": "v1", "hold_id": "h1", "from": "c"}) == UNKNOWN_HOLD
    assert reason({"type": "expire", "request_id": "early", "hold_id": "h1", "from": "a"}) \
        == "invalid"   # the engine's own: no client expires a hold
    assert led.send({"type": "void", "request_id": "v2", "hold_id": "h1", "from": "a"})[1]["status"] \
        == "voided"
    assert reason({"type": "post", "request_id": "p1", "hold_id": "h1", "from": "a"}) == HOLD_CLOSED
    led.ts += 10_000
    before = len(led.events)
    led.expire_due()   # voided already: the expiry changes nothing
    assert len(led.events) == before
    led.deliver_all()
    assert (led.accounts["a"].available, led.accounts["b"].pending_in) == (100, 0)
    assert led.verify().ok


def test_a_hold_expires_only_once_its_deadline_has_passed_by_the_records_clock():
    from kbank.streams.decisions import expiry_message

    led = _opened(("a", 100), ("b", 0))
    _hold(led, "h1", 40, timeout_s=10)
    key = request_key("a", "h1")
    led.ts += 9_999
    led.deliver_message(expiry_message("h1", led.holds[key]))   # early: nothing happens
    assert led.holds[key].state == "pending" and led.accounts["a"].held == 40
    led.ts += 1
    before = len(led.outcomes)
    led.expire_due()
    assert [o["status"] for o in led.outcomes[before:]] == ["expired"]
    assert led.holds[key].state == "expired" and led.accounts["a"].held == 0
    led.expire_due()   # the hold is closed: a second expiry is a no-op
    assert len(led.outcomes) == before + 1


def test_a_held_amount_counts_toward_the_daily_limit_until_released():
    led = Ledger()
    led.send({"type": "open_account", "request_id": "o", "account": "a", "daily_limit": 100})
    led.send({"type": "open_account", "request_id": "ob", "account": "b"})
    led.send({"type": "deposit", "request_id": "d", "account": "a", "amount": 1_000})
    _hold(led, "h1", 80)
    assert _hold(led, "h2", 30)[0]["reason"] == "limit_exceeded"
    led.send({"type": "post", "request_id": "p", "hold_id": "h1", "from": "a", "amount": 60})
    assert _hold(led, "h3", 40)[0]["status"] == "held"   # 20 of h1 released: 60 + 40 <= 100


def test_a_receiver_opened_after_the_hold_never_had_it_pending():
    led = _opened(("a", 100))
    _hold(led, "h1", 30, to="late")
    led.deliver_all()           # the notice finds no account
    led.send({"type": "open_account", "request_id": "o-late", "account": "late"})
    led.send({"type": "post", "request_id": "p", "hold_id": "h1", "from": "a"})
    led.deliver_all()
    late = led.accounts["late"]
    assert (late.balance, late.pending_in) == (30, 0)
    assert led.verify().ok


def test_posting_to_an_account_that_does_not_exist_refunds_the_sender():
    led = _opened(("a", 100))
    _hold(led, "h1", 30, to="ghost")
    led.send({"type": "post", "request_id": "p", "hold_id": "h1", "from": "a"})
    led.deliver_all()
    assert (led.accounts["a"].balance, led.accounts["a"].held) == (100, 0)
    assert led.outcomes[-1]["status"] == "rejected" and led.outcomes[-1]["reason"] == "unknown_account"
    assert led.verify().ok


def _linked(led: Ledger, rid: str, sender: str, *members: tuple[str, int]) -> list[dict]:
    return led.send({"type": "linked", "request_id": rid, "from": sender,
                     "transfers": [{"to": to, "amount": amount} for to, amount in members]})


def test_a_linked_transfer_moves_every_member_once_all_receivers_confirmed():
    led = _opened(("a", 100), ("b", 0), ("c", 0))
    assert _linked(led, "l1", "a", ("b", 30), ("c", 20)) == []   # no outcome before the answers
    assert (led.accounts["a"].available, led.accounts["a"].balance) == (50, 100)
    led.deliver_all()
    assert {n: a.balance for n, a in led.accounts.items()} == {"a": 50, "b": 30, "c": 20}
    assert [o["status"] for o in led.outcomes if o["request_id"] == "l1"] == \
        ["debited", "completed", "completed"]
    report = led.verify()
    assert report.ok and report.in_flight == 0, report.render()


def test_a_linked_transfer_with_one_failing_member_applies_none():
    led = _opened(("a", 100), ("b", 0), ("c", 0))
    _linked(led, "l1", "a", ("b", 30), ("ghost", 20), ("c", 5))
    led.deliver_all()
    assert {n: (a.balance, a.held) for n, a in led.accounts.items()} == \
        {"a": (100, 0), "b": (0, 0), "c": (0, 0)}
    [out] = [o for o in led.outcomes if o["request_id"] == "l1"]
    assert (out["status"], out["reason"], out["detail"]) == \
        ("rejected", "unknown_account", "transfers[1] to 'ghost': unknown_account")
    assert led.verify().ok
    # the sender's own checks name the member too, and nothing is reserved
    [out] = _linked(led, "l2", "a", ("b", 60), ("c", 41))
    assert (out["reason"], out["detail"]) == ("insufficient_funds", "transfers[1] to 'c': insufficient_funds")
    assert led.accounts["a"].held == 0


def test_a_linked_transfer_cannot_be_posted_voided_or_expired_as_a_hold():
    led = _opened(("a", 100), ("b", 0), ("c", 0))
    _linked(led, "l1", "a", ("b", 30), ("c", 20))
    for kind in ("post", "void"):
        [out] = led.send({"type": kind, "request_id": f"{kind}-l1", "hold_id": "l1", "from": "a"})
        assert out["reason"] == UNKNOWN_HOLD, out
    led.ts += 86_400_000   # a day: past any deadline, within the id window
    led.expire_due()   # linked transfers never expire
    led.deliver_all()
    assert {n: a.balance for n, a in led.accounts.items()} == {"a": 50, "b": 30, "c": 20}


def test_linked_transfers_refuse_malformed_member_lists():
    led = _opened(("a", 100), ("b", 0))
    for members, detail in (([], "transfers must be a list of 1 to 16 transfers"),
                            ([("b", 1), ("b", 2)], "transfers[1]: each transfer goes to a different"),
                            ([("a", 1)], "transfers[0]: each transfer goes to a different"),
                            ([("b", 0)], "transfers[0]: amount must be positive")):
        [out] = _linked(led, f"bad-{detail}", "a", *members)
        assert out["reason"] == "invalid" and out["detail"].startswith(detail), out


# -- property test ---------------------------------------------------------------------------
NAMES = ["a", "b", "c"]
actions = st.lists(st.tuples(
    st.sampled_from(["hold", "hold", "post", "post", "void", "expire", "transfer", "withdraw",
                     "linked", "deliver", "deliver", "redeliver", "resend", "tick"]),
    st.sampled_from(NAMES), st.sampled_from(NAMES + ["ghost"]),
    st.one_of(st.integers(1, 400), st.integers(-3, 3), st.none()),
    st.integers(0, 10**6)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(steps=actions)
def test_any_mix_of_holds_keeps_the_hold_invariants(steps):
    led = _opened(("a", 500), ("b", 500), ("c", 500))
    sent: list[dict] = []
    for n, (action, sender, to, amount, pick) in enumerate(steps):
        holds = sorted(led.holds)
        key = holds[pick % len(holds)] if holds and pick % 7 else None
        hold_id = key.split("/", 1)[1] if key else "no-such-hold"
        owner = led.holds[key].sender if key and pick % 5 else sender
        body = {"request_id": f"r{n}"}
        if action == "hold":
            body |= {"type": "hold", "from": sender, "to": to, "amount": amount,
                     "timeout_s": 1 + pick % 120}
        elif action == "post":
            body |= {"type": "post", "hold_id": hold_id, "from": owner}
            if amount is not None:
                body["amount"] = amount
        elif action == "void":
            body |= {"type": action, "hold_id": hold_id, "from": owner}
        elif action == "expire":
            led.expire_due()
            body = None
        elif action == "linked":
            receivers = [n for n in NAMES + ["ghost"] if n != sender][:1 + pick % 3]
            body |= {"type": "linked", "from": sender, "transfers": [
                {"to": r, "amount": amount if amount is not None else 1 + k}
                for k, r in enumerate(receivers)]}
        elif action in ("transfer", "withdraw"):
            body |= {"type": action, "from": sender, "to": to, "amount": amount} \
                if action == "transfer" else {"type": action, "account": sender, "amount": amount}
        elif action == "deliver" and led.pending:
            led.deliver(pick)
            body = None
        elif action == "redeliver" and led.delivered:
            led.deliver(pick, again=True)
            body = None
        elif action == "resend" and sent:
            body = sent[pick % len(sent)]
        elif action == "tick":
            led.ts += pick * 100
            body = None
        else:
            body = None
        if body is not None:
            sent.append(body)
            led.send(body)
        for name, acct in led.accounts.items():
            assert acct.held >= 0 and acct.available >= 0 and acct.pending_in >= 0, name
    led.deliver_all()
    report = led.verify()
    assert report.ok, report.render()
    # the engine's state agrees with the holds it keeps
    assert all(h.state != PENDING for h in led.holds.values() if h.members is not None), \
        "every linked transfer decided once all its messages are delivered"
    for name, acct in led.accounts.items():
        pending = [h for h in led.holds.values() if h.state == PENDING]
        assert acct.held == sum(h.amount for h in pending if h.sender == name)
        assert acct.pending_in == sum(
            h.amount for i, h in led.holds.items() if h.state == PENDING and h.receiver == name
            and incoming_marker(h.sender, i.split("/", 1)[1]) in led.applied)
    assert report.holds["made"] == len(led.holds)
    settled = {k: report.holds[k] for k in ("posted", "hold_released", "expired", "pending")}
    assert sum(settled.values()) == len(led.holds)
