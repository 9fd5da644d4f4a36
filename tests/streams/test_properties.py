"""Property tests of the decision logic: for any sequence of requests and any delivery order of
credits, the invariants hold (TigerBeetle-style: state them, then let the generator hunt)."""
from __future__ import annotations

import json
from collections import defaultdict

import orjson
from hypothesis import given, settings, strategies as st

from kbank.replay.ledger import LedgerFold
from kbank.streams.model import DEBITED, DEPOSITED, OPENED, WITHDRAWN, Position
from tests.rules_ledger import Ledger

NAMES = ["a", "b", "c", "d"]
POS = Position("transfers.requests", 0, 0)

# mostly valid amounts, so that most transfers go through; some hostile ones
amounts = st.one_of(st.integers(1, 500), st.integers(1, 500), st.integers(1, 500), st.integers(-5, 2_000),
                    st.sampled_from([0, 2**63 - 1, 2**63, 2**70]), st.just("10"), st.none())
request = st.one_of(
    st.builds(lambda a, l: {"type": "open_account", "account": a, "daily_limit": l},
              st.sampled_from(NAMES), st.one_of(st.none(), st.integers(0, 3_000))),
    st.builds(lambda k, a, n: {"type": k, "account": a, "amount": n},
              st.sampled_from(["deposit", "deposit", "withdraw"]), st.sampled_from(NAMES + ["zz"]), amounts),
    st.builds(lambda f, t, n: {"type": "transfer", "from": f, "to": t, "amount": n},
              st.sampled_from(NAMES + ["zz"]), st.sampled_from(NAMES + ["ghost"]), amounts),
)
# each step: send a new request (or re-send an earlier one), or deliver a pending credit message
# (resend: the client sends a request again; redeliver: the broker delivers a credit twice)
steps = st.lists(st.tuples(st.sampled_from(["send", "send", "resend", "deliver", "redeliver"]), request,
                           st.integers(0, 10**6)), max_size=60)


# the placeholders above stand for account names drawn per example from any Unicode text
# (1 to 128 characters, quotes, controls and astral characters included): hostile names
PLACEHOLDERS = NAMES + ["zz", "ghost"]
hostile_names = st.lists(st.text(min_size=1, max_size=128), min_size=len(PLACEHOLDERS),
                         max_size=len(PLACEHOLDERS), unique=True)


def _named(body: dict, names: dict[str, str]) -> dict:
    return {k: names.get(v, v) if k in ("account", "from", "to") else v for k, v in body.items()}


@settings(max_examples=400, deadline=None)
@given(steps=steps, ts_step=st.sampled_from([1, 3_600_000, 50_000_000]), drawn=hostile_names)
def test_any_interleaving_keeps_every_invariant(steps, ts_step, drawn):
    names = dict(zip(PLACEHOLDERS, drawn))
    led = Ledger()
    sent: list[tuple[bytes, bytes]] = []
    prologue = [("send", {"type": "open_account", "account": n, "daily_limit": None}, 0) for n in NAMES[:3]]
    prologue += [("send", {"type": "deposit", "account": n, "amount": 1_000}, 0) for n in NAMES[:3]]
    for n, (action, body, pick) in enumerate(prologue + steps):
        led.deliver_older_than(led.rules.id_window_ms // 2)   # as the engine reads credits
        led.ts += ts_step
        if action == "deliver" and led.pending:
            led.deliver(pick)
        elif action == "redeliver" and led.delivered:
            led.deliver(pick, again=True)
        elif action == "resend" and sent:
            led.send_raw(*sent[pick % len(sent)])
        else:
            body = _named({**body, "request_id": f"r{n}"}, names)
            key = (body.get("from") if body["type"] == "transfer" else body.get("account")).encode()
            value = orjson.dumps(body) if not _too_big(body) else json.dumps(body).encode()
            sent.append((key, value))
            led.send_raw(key, value)
    led.deliver_all()

    fold = LedgerFold()
    for raw in led.events:
        assert fold.apply(raw) is not None, "every event is new: seqs gap-free, no copies"
    assert fold.violations == []
    accounts = led.accounts
    assert {n: a.balance for n, a in fold.accounts.items()} == {n: a.balance for n, a in accounts.items()}
    assert all(a.balance >= 0 for a in accounts.values())
    decided: dict[tuple[str, str], list[int]] = defaultdict(list)
    flows = {DEPOSITED: 0, WITHDRAWN: 0, DEBITED: 0, "returned": 0}
    for raw in led.events:
        e = orjson.loads(raw)
        if e["kind"] in (OPENED, DEPOSITED, WITHDRAWN, DEBITED):
            decided[(e["account"], e["request_id"])].append(e["ts"])
        if e["kind"] in flows:
            flows[e["kind"]] += e["amount"]
        if e["kind"] in ("credited", "refunded"):
            flows["returned"] += e["amount"]
    # once per id window: a re-use after it is a new request (Rules.id_window_ms)
    assert all(b - a >= led.rules.id_window_ms for times in decided.values()
               for a, b in zip(times, times[1:])), "a request applied twice"
    # all messages delivered: nothing in flight, money conserved
    assert flows[DEBITED] == flows["returned"]
    assert sum(a.balance for a in accounts.values()) == flows[DEPOSITED] - flows[WITHDRAWN]


def _too_big(body: dict) -> bool:
    return any(isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63 for v in body.values())
