"""Total parsing (issue 41): any JSON value in any field of any request type is decided or
refused, never a crash. A list for `type` crashed parse_request (unhashable) and a null
linked member `from` crashed the rules: each crash-looped every engine worker.

Each example takes a valid request of one type (every field its schema knows), puts
arbitrary JSON (recursive: nulls, booleans, huge and negative integers, floats, strings of
any text, lists and objects of those) in some of its fields, and drives it through what the
engine runs on it: the parser, the rules against a state holding the accounts and a pending
hold it may name, and the encoders (record). Only Undecodable (a record with no usable
request id: dead-lettered) may be raised. The example count is bounded in `make test`;
BANK_TEST_PROPERTY_EXAMPLES raises it for a long run."""
from __future__ import annotations

import json
import os

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from kbank.streams.config import Settings
from kbank.streams.decisions import Rules, Undecodable
from kbank.streams.engine import MemoryState, record, request_decision
from kbank.streams.model import Position

EXAMPLES = int(os.environ.get("BANK_TEST_PROPERTY_EXAMPLES", "300"))
POS = Position("transfers.requests", 0, 1)
TS = 1_764_000_000_000

TEMPLATES = {
    "open_account": {"account": "a", "currency": "USD", "daily_limit": 100, "overdraft_limit": 0,
                     "max_balance": 10_000, "metadata": {"k": "v"}},
    "deposit": {"account": "a", "amount": 5, "currency": "USD", "metadata": {"k": "v"}},
    "withdraw": {"account": "a", "amount": 5, "currency": "USD"},
    "transfer": {"from": "a", "to": "b", "amount": 5, "currency": "USD", "metadata": {"k": "v"},
                 "external_ref": "ref-1"},
    "hold": {"from": "a", "to": "b", "amount": 5, "timeout_s": 60},
    "post": {"from": "a", "hold_id": "h1", "amount": 3},
    "void": {"from": "a", "hold_id": "h1"},
    "linked": {"from": "a", "transfers": [{"to": "b", "amount": 1}, {"to": "c", "amount": 1}]},
    "set_limits": {"account": "a", "daily_limit": 50, "overdraft_limit": 0},
    "close_account": {"account": "a"},
    "freeze": {"account": "a"},
    "unfreeze": {"account": "a"},
}
FIELDS = sorted({f for body in TEMPLATES.values() for f in body}
                | {"type", "request_id", "requested_by", "v"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([0, -1, 2**63 - 1, 2**63])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
    | st.sampled_from(["a", "b", "c", "", "USD", "transfer", "h1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _state() -> MemoryState:
    """Accounts a, b, c funded, and a pending hold h1 of a's to b: every rule has something
    to look at."""
    state = MemoryState()
    rules = Rules.from_settings(Settings(), 8)
    for i, body in enumerate([
            {"type": "open_account", "request_id": "o-a", "account": "a"},
            {"type": "open_account", "request_id": "o-b", "account": "b"},
            {"type": "open_account", "request_id": "o-c", "account": "c"},
            {"type": "deposit", "request_id": "d-a", "account": "a", "amount": 1_000},
            {"type": "hold", "request_id": "h1", "from": "a", "to": "b", "amount": 10,
             "timeout_s": 600}]):
        key = (body.get("from") or body["account"]).encode()
        record(state, request_decision(state, key, orjson.dumps(body), TS + i, POS, rules), TS + i)
    return state


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(sorted(TEMPLATES)),
       replaced=st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=3),
       dropped=st.sets(st.sampled_from(FIELDS), max_size=2),
       key=st.sampled_from([b"a", b"b", b"zz", None]))
def test_any_value_in_any_field_is_decided_or_refused_never_a_crash(kind, replaced, dropped, key):
    body = {"type": kind, "request_id": "r1", **TEMPLATES[kind]}
    for name in dropped:
        body.pop(name, None)
    body.update(replaced)
    value = json.dumps(body).encode()   # the stdlib's: integers past 64 bits, escaped surrogates
    state = _state()
    rules = Rules.from_settings(Settings(), 8)
    try:
        decision = request_decision(state, key, value, TS + 100, POS, rules)
    except Undecodable:
        return   # no usable request id: dead-lettered, with the reason
    out = record(state, decision, TS + 100)   # encoded and bounded, or it raises
    assert out.outcomes or out.messages, "answered, or under way (a linked transfer's checks)"
