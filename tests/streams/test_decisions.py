"""Unit tests of the transfer rules (kbank.streams.decisions): no broker involved."""
from __future__ import annotations

import json

import orjson
import pytest

from kbank.streams.decisions import (FirstDecision, Undecodable, credit_marker, decide_credit,
                               decide_request, fingerprint, parse_request, request_marker)
from kbank.streams.model import Account, Position, outcome_key

POS = Position("transfers.requests", 0, 1)
TS = 1_764_000_000_000


def req(body: dict, key: str | None = "__auto__"):
    if key == "__auto__":
        key = body.get("from") if body.get("type") == "transfer" else body.get("account")
    # the stdlib encoder, because orjson refuses integers beyond 64 bits
    return parse_request(key.encode() if isinstance(key, str) else None, json.dumps(body).encode())


def transfer(amount, src="alice", dst="bob", rid="t1"):
    return req({"type": "transfer", "request_id": rid, "from": src, "to": dst, "amount": amount})


def test_exact_balance_transfer_is_allowed():
    d = decide_request(transfer(500), Account(balance=500, seq=2), None, TS, POS)
    assert d.state.balance == 0 and d.state.seq == 3
    assert d.event["kind"] == "debited" and d.event["balance"] == 0 and d.event["seq"] == 3
    assert d.messages == [("bob", {"kind": "credit", "request_id": "t1", "account": "bob",
                                   "counterparty": "alice", "amount": 500, "currency": "USD"})]
    assert d.outcomes[0]["status"] == "debited"


def test_overdraft_is_rejected_and_changes_no_balance():
    alice = Account(balance=499, seq=2)
    d = decide_request(transfer(500), alice, None, TS, POS)
    assert alice.balance == 499 and alice.seq == 2          # input state untouched
    assert d.state.balance == 499                           # the rejected event keeps the balance
    assert d.event["kind"] == "rejected" and d.event["reason"] == "insufficient_funds"
    assert d.outcomes[0]["status"] == "rejected"
    # nothing reaches the receiver: its history is not the sender's to fill (issue 41)
    assert d.messages == []
    # a notice written before that change, still in flight, is applied as it was
    notice = {"kind": "reject_notice", "request_id": "t1", "account": "bob",
              "counterparty": "alice", "amount": 500, "reason": "insufficient_funds"}
    bob = Account(balance=10, seq=1)
    n = decide_credit(notice, bob, False, TS, Position("transfers.credits", 0, 0))
    assert n.state.balance == 10 and n.event["kind"] == "rejected"


def test_refusals_from_an_unopened_account_leave_no_trace_in_the_receivers_history():
    """Issue 41: 10,050 refused transfers from a never-opened account, addressed to a
    victim, each put an entry in the victim's history."""
    d = decide_request(transfer(1), None, None, TS, POS)
    assert d.messages == [] and d.event is None and d.state is None
    assert d.outcomes[0]["reason"] == "unknown_account"


def test_transfer_from_unknown_account_is_rejected():
    d = decide_request(transfer(1), None, None, TS, POS)
    assert d.state is None and d.event is None
    assert d.outcomes[0]["reason"] == "unknown_account"


def test_transfer_from_empty_account_is_rejected():
    d = decide_request(transfer(1), Account(balance=0, seq=1), None, TS, POS)
    assert d.outcomes[0]["reason"] == "insufficient_funds"


@pytest.mark.parametrize("amount", [0, -5, 1.5, "100", True, None, 2**63, 2**70])
def test_bad_amounts_are_invalid(amount):
    d = decide_request(transfer(amount), Account(balance=10**6, seq=1), None, TS, POS)
    assert d.outcomes[0]["status"] == "rejected" and d.outcomes[0]["reason"] == "invalid"
    assert d.state.balance == 10**6


def test_transfer_to_self_is_invalid():
    d = decide_request(transfer(5, "alice", "alice"), Account(balance=100, seq=1), None, TS, POS)
    assert d.outcomes[0]["reason"] == "invalid" and d.state.balance == 100


def test_same_request_id_twice_is_applied_once_and_answered_with_the_first_decision():
    r = req({"type": "deposit", "request_id": "d1", "account": "alice", "amount": 70})
    first = decide_request(r, Account(balance=0, seq=1), None, TS, POS)
    assert first.state.balance == 70 and first.marker == "r:d1\x00alice\x002"
    prior = FirstDecision.decode(first.marker_value)
    assert prior == FirstDecision(fingerprint(r.body), "completed")
    again = decide_request(r, first.state, prior, TS, POS)
    assert again.state is None and again.event is None and again.marker is None
    assert again.outcomes == [{"request_id": "d1", "account": "alice", "status": "completed",
                               "detail": "the original decision of this request id",
                               "retry": True, "ts": TS}]
    other = req({"type": "deposit", "request_id": "d1", "account": "alice", "amount": 71})
    conflict = decide_request(other, first.state, prior, TS, POS)
    assert conflict.state is None and conflict.marker is None
    assert conflict.outcomes[0]["reason"] == "idempotency_conflict" and conflict.outcomes[0]["retry"]


def test_credit_applied_once_and_refunded_when_receiver_unknown():
    credit = {"kind": "credit", "request_id": "t1", "account": "bob", "counterparty": "alice",
              "amount": 40, "currency": "USD"}
    pos = Position("transfers.credits", 0, 0)
    d = decide_credit(credit, Account(balance=1, seq=1), False, TS, pos)
    assert d.state.balance == 41 and d.event["kind"] == "credited"
    assert decide_credit(credit, d.state, True, TS, pos).state is None
    refund = decide_credit(credit, None, False, TS, pos)
    (key, msg), = refund.messages
    assert key == "alice" and msg["kind"] == "refund" and msg["reason"] == "unknown_account"
    # the refund lands on the sender's partition, where the request's own id is applied
    assert credit_marker(msg) == "f:t1\x00alice\x002" != request_marker("alice", "t1")
    back = decide_credit(msg, Account(balance=0, seq=4), False, TS, pos)
    assert back.state.balance == 40 and back.event["kind"] == "refunded"
    assert back.outcomes[0] == {"request_id": "t1", "account": "alice", "status": "rejected",
                                "reason": "unknown_account", "ts": TS}


def test_daily_limit():
    r = req({"type": "withdraw", "request_id": "w1", "account": "a", "amount": 60})
    acct = Account(balance=1000, seq=1, daily_limit=100)
    first = decide_request(r, acct, None, TS, POS)
    assert first.state.spent == 60
    r2 = req({"type": "withdraw", "request_id": "w2", "account": "a", "amount": 50})
    assert decide_request(r2, first.state, None, TS, POS).outcomes[0]["reason"] == "limit_exceeded"
    next_day = decide_request(r2, first.state, None, TS + 86_400_000, POS)
    assert next_day.state.balance == 890


def test_decisions_are_deterministic_to_the_byte():
    a = decide_request(transfer(5), Account(balance=9, seq=1), None, TS, POS)
    b = decide_request(transfer(5), Account(balance=9, seq=1), None, TS, POS)
    assert orjson.dumps(a.event) == orjson.dumps(b.event)


def test_key_must_match_the_deciding_account():
    r = req({"type": "deposit", "request_id": "d1", "account": "alice", "amount": 5}, key="bob")
    d = decide_request(r, None, None, TS, POS)
    assert r.account is None and d.event is None and d.outcomes[0]["reason"] == "invalid"


@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe", b"[1,2]", b'{"type":"deposit"}',
                                 b'{"request_id": 5}'])
def test_records_without_request_id_are_undecodable(raw):
    with pytest.raises(Undecodable):
        parse_request(b"k", raw)


def test_unknown_fields_and_types_are_invalid():
    for body in ({"type": "deposit", "request_id": "x", "account": "a", "amount": 1, "memo": "hi"},
                 {"type": "steal", "request_id": "x", "account": "a"}):
        d = decide_request(req(body, key="a"), Account(seq=1), None, TS, POS)
        assert d.outcomes[0]["reason"] == "invalid"


# -- the request parser never raises anything but its own error ---------------------------
from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

import json as _json  # noqa: E402

# any text, lone surrogates included (JSON can carry them as \ud800 escapes)
hostile_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12)
requests_with_hostile_fields = st.tuples(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["open_account", "deposit", "withdraw", "transfer"]) | hostile_text,
         "request_id": hostile_text},
        optional={"account": hostile_text, "from": hostile_text, "to": hostile_text,
                  "amount": json_values, "daily_limit": json_values}),
    st.dictionaries(hostile_text, json_values, max_size=2),
).map(lambda parts: {**parts[1], **parts[0]})


def _decide_and_encode(key: bytes | None, raw: bytes) -> None:
    try:
        req = parse_request(key, raw)
    except Undecodable:
        return
    decision = decide_request(req, Account(balance=100), None, 1, Position("t", 0, 0))
    # everything the engine would write must encode
    if decision.event is not None:
        orjson.dumps(decision.event)
        (decision.account or "").encode()
    for out in decision.outcomes:
        orjson.dumps(out)
        outcome_key(out).encode()
    for key_name, message in decision.messages:
        key_name.encode()
        orjson.dumps(message)


@hsettings(max_examples=1500, deadline=None)
@given(body=requests_with_hostile_fields, key=st.one_of(st.none(), st.binary(max_size=20), hostile_text))
def test_no_request_makes_the_parser_or_the_outputs_raise(body, key):
    raw = _json.dumps(body, ensure_ascii=True).encode()   # \\ud800 escapes, as any producer may send
    key_bytes = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    _decide_and_encode(key_bytes, raw)
    # the same with the deciding account as key (the path that reaches the state)
    account = body.get("from") if body.get("type") == "transfer" else body.get("account")
    if isinstance(account, str):
        _decide_and_encode(account.encode("utf-8", "surrogatepass"), raw)


@hsettings(max_examples=1500, deadline=None)
@given(raw=st.binary(max_size=200))
def test_no_bytes_make_the_parser_raise_anything_but_undecodable(raw):
    _decide_and_encode(b"k", raw)


@hsettings(max_examples=500, deadline=None)
@given(a=st.tuples(st.text(max_size=8), st.text(max_size=8)),
       b=st.tuples(st.text(max_size=8), st.text(max_size=8)))
def test_no_two_requests_share_a_marker(a, b):
    """Whatever characters scopes and ids hold (NULs and digits included)."""
    assert (request_marker(*a) == request_marker(*b)) == (a == b)


@pytest.mark.parametrize("body", [
    {"type": ["transfer"], "request_id": "pz-1", "from": "a", "to": "b", "amount": 1},
    {"type": {"t": 1}, "request_id": "pz-2", "account": "a"},
    {"type": "linked", "request_id": "pz-3", "from": "a",
     "transfers": [{"to": "b", "amount": 1}, {"to": "c", "amount": 1, "from": None}]},
])
def test_a_field_of_the_wrong_type_is_a_problem_not_a_crash(body):
    """Issue 41: a list for the type crashed parse_request (unhashable), a null member
    `from` crashed the rules; both crash-looped every engine worker."""
    req = parse_request(b"a", orjson.dumps(body))
    assert req.problem is not None and req.request_id == body["request_id"]


def test_a_hold_longer_than_the_rules_allow_is_invalid():
    """Issue 41: a 1-unit hold with a one-year timeout blocked the receiver's close for a
    year; holds last at most BANK_MAX_HOLD_TIMEOUT_S (30 days by default)."""
    from kbank.streams.decisions import Rules

    body = {"type": "hold", "request_id": "h", "from": "alice", "to": "bob", "amount": 1,
            "timeout_s": 31 * 86_400}
    acct = Account(balance=10)
    decided = decide_request(req(body, "alice"), acct, None, TS, POS, Rules())
    assert [(o["status"], o["reason"]) for o in decided.outcomes] == [("rejected", "invalid")]
    assert "BANK_MAX_HOLD_TIMEOUT_S" in decided.outcomes[0]["detail"]
    longer = Rules(max_hold_timeout_s=366 * 86_400)
    assert decide_request(req(body, "alice"), acct, None, TS, POS, longer).outcomes[0]["status"] == "held"
