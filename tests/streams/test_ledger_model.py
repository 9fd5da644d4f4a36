"""The ledger model's rules, pure: currencies, overdraft and max_balance, limits changed
later, closing, freezing, metadata and external_ref, and the hash chain. Each example runs
the engine's own adapter (tests.rules_ledger) and ends with the checks of `bank replay
verify`."""
from __future__ import annotations

import orjson
import pytest

from kbank.replay.ledger import LedgerFold
from kbank.streams.model import (ACCOUNT_CLOSED, ACCOUNT_FROZEN, ACCOUNT_NOT_EMPTY,
                                 CURRENCY_MISMATCH, DUPLICATE_EXTERNAL_REF,
                                 INSUFFICIENT_FUNDS, INVALID, LIMIT_EXCEEDED,
                                 MAX_BALANCE_EXCEEDED, OVERFLOW, chain_event)
from kbank.streams.decisions import Rules
from tests.rules_ledger import Ledger


def _open(led: Ledger, name: str, deposit: int = 0, **rules) -> None:  # noqa: ANN003
    [out] = led.send({"type": "open_account", "request_id": f"open-{name}", "account": name,
                      **rules})
    assert out["status"] == "completed", out
    if deposit:
        [out] = led.send({"type": "deposit", "request_id": f"dep-{name}", "account": name,
                          "amount": deposit})
        assert out["status"] == "completed", out


def _send(led: Ledger, body: dict) -> dict:
    """The request's own first outcome."""
    return led.send(body)[0]


def _transfer(led: Ledger, rid: str, src: str, dst: str, amount: int, **extra) -> dict:  # noqa: ANN003
    return _send(led, {"type": "transfer", "request_id": rid, "from": src, "to": dst,
                       "amount": amount, **extra})


def _events(led: Ledger, account: str) -> list[dict]:
    return [e for e in map(orjson.loads, led.events) if e["account"] == account]


def _verified(led: Ledger) -> None:
    led.deliver_all()
    report = led.verify()
    assert report.ok, report.render()


def test_accounts_keep_their_currency_and_a_transfer_between_currencies_goes_back():
    led = Ledger()
    _open(led, "usd", 1_000)
    _open(led, "eur", 0, currency="EUR")
    _open(led, "eur2", 0, currency="EUR")
    assert led.accounts["usd"].currency == "USD" and led.accounts["eur"].currency == "EUR"
    assert _transfer(led, "t1", "usd", "eur", 300)["status"] == "debited"
    led.deliver_all()
    assert (led.accounts["usd"].balance, led.accounts["eur"].balance) == (1_000, 0)
    assert led.outcomes[-1]["reason"] == CURRENCY_MISMATCH
    # a request may state its currency: a wrong one is refused on the sender's side
    out = _transfer(led, "t2", "usd", "eur2", 1, currency="EUR")
    assert out["reason"] == CURRENCY_MISMATCH
    out = _send(led, {"type": "deposit", "request_id": "d2", "account": "eur", "amount": 5,
                      "currency": "USD"})
    assert out["reason"] == CURRENCY_MISMATCH
    _verified(led)
    assert set(led.verify().currencies) == {"USD", "EUR"}


def exchange(rid: str, usd: int, eur: int, frozen_desk: bool = False) -> dict:
    """alice buys `eur` EUR for `usd` USD, in one linked transfer: her USD account pays the
    desk's USD account, and the desk's EUR account pays her EUR account (a member's `from`)."""
    return {"type": "linked", "request_id": rid, "from": "alice-usd",
            "transfers": [{"to": "fx-usd", "amount": usd},
                          {"from": "fx-eur", "to": "alice-eur", "amount": eur}],
            "metadata": {"fx": "USDEUR", "rate": "0.9"}}


def _exchange_ledger() -> Ledger:
    led = Ledger()
    _open(led, "alice-usd", 500)
    _open(led, "alice-eur", 0, currency="EUR")
    _open(led, "fx-usd", 0)
    _open(led, "fx-eur", 10_000, currency="EUR")
    return led


def _balances(led: Ledger) -> dict[str, tuple[int, int]]:
    return {n: (a.balance, a.held) for n, a in led.accounts.items()}


def test_an_exchange_is_a_linked_transfer_through_two_exchange_accounts():
    led = _exchange_ledger()
    assert led.send(exchange("x1", 100, 90)) == []    # decided once every member answered
    led.deliver_all()
    assert _balances(led) == {"alice-usd": (400, 0), "alice-eur": (90, 0),
                              "fx-usd": (100, 0), "fx-eur": (9_910, 0)}
    assert [o["status"] for o in led.outcomes if o["request_id"] == "x1"] == \
        ["debited", "completed", "completed"]
    eur_credit = _events(led, "alice-eur")[-1]
    assert (eur_credit["kind"], eur_credit["counterparty"], eur_credit["link"]) == \
        ("credited", "fx-eur", "alice-usd")
    assert eur_credit["metadata"] == {"fx": "USDEUR", "rate": "0.9"}
    report = led.verify()
    assert report.ok and {c: m.balance for c, m in report.currencies.items()} == \
        {"USD": 500, "EUR": 10_000}, report.render()


@pytest.mark.parametrize("why", ["desk_frozen", "desk_short", "wrong_currency", "alice_short"])
def test_an_exchange_moves_all_or_nothing(why):
    led = _exchange_ledger()
    usd, eur, reason = 100, 90, None
    if why == "desk_frozen":
        _send(led, {"type": "freeze", "request_id": "f", "account": "fx-eur"})
        reason = ACCOUNT_FROZEN
    elif why == "desk_short":
        eur, reason = 10_001, INSUFFICIENT_FUNDS
    elif why == "alice_short":
        usd, reason = 501, INSUFFICIENT_FUNDS
    before = _balances(led)
    body = exchange("x1", usd, eur)
    if why == "wrong_currency":   # the desk's EUR paid into a USD account
        body["transfers"][1]["to"], reason = "fx-usd", CURRENCY_MISMATCH
        body["transfers"][0]["to"] = "alice-eur"
    outs = led.send(body)
    led.deliver_all()
    outs += [o for o in led.outcomes if o["request_id"] == "x1"]
    assert _balances(led) == before
    assert [o["reason"] for o in outs if o["status"] == "rejected"][:1] == [reason], outs
    _verified(led)


def test_an_overdraft_lets_the_balance_go_below_zero_down_to_its_limit():
    led = Ledger()
    _open(led, "a", 100, overdraft_limit=50)
    _open(led, "b")
    assert _transfer(led, "t1", "a", "b", 150)["status"] == "debited"
    assert led.accounts["a"].balance == -50 and led.accounts["a"].available == 0
    out = _transfer(led, "t2", "a", "b", 1)
    assert out["reason"] == INSUFFICIENT_FUNDS and "below -50" in out["detail"]
    _verified(led)
    report = led.verify()
    assert report.currencies["USD"].balance == 100


def test_max_balance_caps_what_an_account_takes_in_and_refusals_name_the_rule():
    led = Ledger()
    _open(led, "settle", 0, overdraft_limit=1_000, max_balance=0)   # a settlement account
    _open(led, "shop", 0, max_balance=500)
    assert _transfer(led, "t1", "settle", "shop", 400)["status"] == "debited"
    assert _transfer(led, "t2", "settle", "shop", 200)["status"] == "debited"
    led.deliver_all()
    assert led.accounts["shop"].balance == 400 and led.accounts["settle"].balance == -400
    assert led.outcomes[-1]["reason"] == MAX_BALANCE_EXCEEDED
    out = _send(led, {"type": "deposit", "request_id": "d", "account": "shop", "amount": 101})
    assert out["reason"] == MAX_BALANCE_EXCEEDED and "above 500" in out["detail"]
    _verified(led)


def test_set_limits_changes_limits_later_and_a_lower_limit_undoes_nothing():
    led = Ledger()
    _open(led, "a", 1_000, daily_limit=500, overdraft_limit=300)
    _open(led, "b")
    assert _transfer(led, "t1", "a", "b", 400)["status"] == "debited"
    out = _send(led, {"type": "set_limits", "request_id": "l1", "account": "a",
                      "daily_limit": 100})
    assert out["status"] == "completed"
    assert _transfer(led, "t2", "a", "b", 101)["reason"] == LIMIT_EXCEEDED
    _send(led, {"type": "set_limits", "request_id": "l2", "account": "a", "daily_limit": None})
    assert _transfer(led, "t3", "a", "b", 800)["status"] == "debited"
    assert led.accounts["a"].balance == -200
    # lowering the overdraft below what is used leaves the balance as it is
    assert _send(led, {"type": "set_limits", "request_id": "l3", "account": "a",
                       "overdraft_limit": 0})["status"] == "completed"
    assert led.accounts["a"].balance == -200
    assert _transfer(led, "t4", "a", "b", 1)["reason"] == INSUFFICIENT_FUNDS
    kinds = [e["kind"] for e in _events(led, "a")]
    assert kinds.count("limits_set") == 3
    last = [e for e in _events(led, "a") if e["kind"] == "limits_set"][-1]
    assert (last["daily_limit"], last["overdraft_limit"], last["max_balance"]) == (None, 0, None)
    assert _send(led, {"type": "set_limits", "request_id": "l4", "account": "a"})["reason"] == INVALID
    _verified(led)


def test_an_overdraft_counts_toward_the_partitions_share_of_the_64_bit_range():
    led = Ledger(Rules(supply_cap=1_000))
    _open(led, "a", 600)
    out = _send(led, {"type": "open_account", "request_id": "o", "account": "b",
                      "overdraft_limit": 401})
    assert out["reason"] == OVERFLOW
    _open(led, "c", 0, overdraft_limit=400)
    out = _send(led, {"type": "set_limits", "request_id": "l", "account": "c",
                      "overdraft_limit": 401})
    assert out["reason"] == OVERFLOW
    _verified(led)


def test_close_needs_an_empty_account_and_then_nothing_moves_but_refunds():
    led = Ledger()
    _open(led, "a", 100)
    _open(led, "b", 10)
    out = _send(led, {"type": "close_account", "request_id": "c1", "account": "b"})
    assert out["reason"] == ACCOUNT_NOT_EMPTY and "balance 10" in out["detail"]
    _send(led, {"type": "withdraw", "request_id": "w", "account": "b", "amount": 10})
    # a transfer to b is in flight (debited on a, credit not yet delivered) when b closes
    assert _transfer(led, "t1", "a", "b", 30)["status"] == "debited"
    assert _send(led, {"type": "close_account", "request_id": "c2", "account": "b"})["status"] \
        == "completed"
    led.deliver_all()
    assert led.accounts["a"].balance == 100 and led.accounts["b"].balance == 0
    assert led.outcomes[-1]["reason"] == ACCOUNT_CLOSED
    for body in ({"type": "deposit", "request_id": "d", "account": "b", "amount": 1},
                 {"type": "transfer", "request_id": "t2", "from": "b", "to": "a", "amount": 1},
                 {"type": "freeze", "request_id": "f", "account": "b"},
                 {"type": "set_limits", "request_id": "l", "account": "b", "daily_limit": 1},
                 {"type": "close_account", "request_id": "c3", "account": "b"}):
        assert _send(led, body)["reason"] == ACCOUNT_CLOSED, body
    assert _send(led, {"type": "open_account", "request_id": "o", "account": "b"})["reason"] \
        == "account_exists"
    _verified(led)
    kinds = [e["kind"] for e in _events(led, "b")]   # still readable, refusals recorded
    assert set(kinds[kinds.index("closed") + 1:]) == {"rejected"}, kinds


def test_a_frozen_account_takes_credits_and_refuses_debits_and_holds():
    led = Ledger()
    _open(led, "a", 100)
    _open(led, "b", 100)
    led.send({"type": "hold", "request_id": "h", "from": "b", "to": "a", "amount": 10,
              "timeout_s": 60})
    assert _send(led, {"type": "freeze", "request_id": "f1", "account": "b"})["status"] == "completed"
    assert _send(led, {"type": "freeze", "request_id": "f2", "account": "b"})["reason"] == ACCOUNT_FROZEN
    assert _transfer(led, "t1", "a", "b", 30)["status"] == "debited"
    for body in ({"type": "transfer", "request_id": "t2", "from": "b", "to": "a", "amount": 1},
                 {"type": "withdraw", "request_id": "w", "account": "b", "amount": 1},
                 {"type": "hold", "request_id": "h2", "from": "b", "to": "a", "amount": 1,
                  "timeout_s": 5},
                 {"type": "post", "request_id": "p", "from": "b", "hold_id": "h"}):
        assert _send(led, body)["reason"] == ACCOUNT_FROZEN, body
    assert _send(led, {"type": "void", "request_id": "v", "from": "b", "hold_id": "h"})["status"] \
        == "completed"   # releasing moves nothing out
    led.deliver_all()
    assert led.accounts["b"].balance == 130
    assert _send(led, {"type": "unfreeze", "request_id": "u", "account": "b"})["status"] == "completed"
    assert _transfer(led, "t3", "b", "a", 1)["status"] == "debited"
    _verified(led)


@pytest.mark.parametrize("metadata, problem", [
    ([], "object"), ({"k": 1}, "strings"), ({"": "v"}, "1 to 64"), ({"k" * 65: "v"}, "1 to 64"),
    ({"k": "v" * 513}, "512"), ({f"k{i}": "v" for i in range(17)}, "17 keys"),
])
def test_metadata_is_bounded(metadata, problem):
    led = Ledger()
    _open(led, "a", 10)
    out = _transfer(led, "t", "a", "b", 1, metadata=metadata)
    assert out["reason"] == INVALID and problem in out["detail"], out


def test_metadata_and_external_ref_travel_to_both_sides_and_the_outcomes():
    led = Ledger()
    _open(led, "a", 100, metadata={"kyc": "ok"})
    _open(led, "b")
    tags = {"metadata": {"invoice": "INV-7", "note": "rent"}, "external_ref": "erp-42"}
    out = _transfer(led, "t1", "a", "b", 40, **tags)
    assert out["metadata"] == tags["metadata"] and out["external_ref"] == "erp-42"
    led.deliver_all()
    debit, credit = _events(led, "a")[-1], _events(led, "b")[-1]
    for event in (debit, credit):
        assert event["metadata"] == tags["metadata"] and event["external_ref"] == "erp-42"
    assert led.outcomes[-1]["status"] == "completed" and led.outcomes[-1]["metadata"] == tags["metadata"]
    assert _events(led, "a")[0]["metadata"] == {"kyc": "ok"}
    # the external_ref is unique per sender, like a request id; another sender may use it
    out = _transfer(led, "t2", "a", "b", 1, external_ref="erp-42")
    assert out["reason"] == DUPLICATE_EXTERNAL_REF and "t1" in out["detail"]
    _open(led, "c", 5)
    assert _transfer(led, "t2", "c", "b", 1, external_ref="erp-42")["status"] == "debited"
    # a retry of t1 is answered with its first decision, not refused for its external_ref
    again = _transfer(led, "t1", "a", "b", 40, **tags)
    assert again["retry"] and again["status"] == "debited"
    _verified(led)


def _one_transfer() -> Ledger:
    led = Ledger()
    _open(led, "a", 100)
    _open(led, "b")
    _transfer(led, "t1", "a", "b", 40)
    led.deliver_all()
    return led


def _folded(events: list[bytes]) -> LedgerFold:
    """The events folded as one partition's, each named by its offset."""
    fold = LedgerFold()
    for offset, raw in enumerate(events):
        fold.apply(raw, f"@{offset}", 0, offset)
    return fold


def test_the_hash_chain_names_a_rewritten_event():
    led = _one_transfer()
    fold = _folded(led.events)
    assert fold.violations == [] and fold.heads[0].offset == len(led.events) - 1
    # the same log with one amount changed (hash left as it was): that event is named
    rewritten = [orjson.loads(raw) for raw in led.events]
    rewritten[2]["amount"] += 1
    rewritten[2]["balance"] += 1
    fold = _folded([orjson.dumps(event) for event in rewritten])
    broken = [v for v in fold.violations if "hash chain" in v]
    assert len(broken) == 1 and broken[0].startswith("@2:"), fold.violations
    # re-hashing the rewritten event moves the break to the next link
    body = {k: v for k, v in rewritten[2].items() if k != "hash"}
    prev = rewritten[1]["hash"]
    rewritten[2]["hash"] = chain_event(prev, orjson.dumps(body))[0]
    fold = _folded([orjson.dumps(event) for event in rewritten])
    broken = [v for v in fold.violations if "hash chain" in v]
    assert len(broken) == 1 and broken[0].startswith("@3:"), fold.violations


def test_the_hash_chain_is_checked_on_the_stored_bytes_or_on_the_re_encoding():
    led = _one_transfer()
    # `hash` moved to the front: not chain_event's form, so it is checked over the event
    # re-encoded without it, and the chain holds
    reordered = []
    for raw in led.events:
        event = orjson.loads(raw)
        reordered.append(orjson.dumps({"hash": event.pop("hash"), **event}))
    fold = _folded(reordered)
    assert fold.violations == [] and fold.applied == len(led.events)
    # a byte changed inside a string of the stored event (its hash kept): that link breaks
    forged = list(led.events)
    forged[1] = forged[1].replace(b'"request_id":"', b'"request_id":"x', 1)
    fold = _folded(forged)
    broken = [v for v in fold.violations if "hash chain" in v]
    assert len(broken) == 1 and broken[0].startswith("@1:"), fold.violations


def test_an_account_held_for_by_others_can_close_and_their_holds_go_back_to_their_payers():
    """Issue 41: a 1-unit hold to another account with a one-year timeout blocked that
    account's close_account for a year."""
    led = Ledger()
    _open(led, "payer", 100)
    _open(led, "victim")
    for rid in ("h1", "h2"):
        out = _send(led, {"type": "hold", "request_id": rid, "from": "payer", "to": "victim",
                          "amount": 1, "timeout_s": 3600})
        assert out["status"] == "held", out
    led.deliver_all()
    assert led.accounts["victim"].pending_in == 2
    closed = _send(led, {"type": "close_account", "request_id": "c", "account": "victim"})
    assert closed["status"] == "completed", closed
    # one posted (its credit finds a closed account: refunded), one voided (released)
    assert _send(led, {"type": "post", "request_id": "p1", "from": "payer", "hold_id": "h1"})[
        "status"] in ("debited", "completed")
    assert _send(led, {"type": "void", "request_id": "v2", "from": "payer", "hold_id": "h2"})[
        "status"] == "completed"
    led.deliver_all()
    assert led.accounts["payer"].balance == 100 and led.accounts["payer"].held == 0
    assert led.accounts["victim"].pending_in == 0 and led.accounts["victim"].balance == 0
    kinds = [e["kind"] for e in _events(led, "victim")]
    assert kinds[kinds.index("closed") + 1:] == ["incoming_released", "incoming_released"], kinds
    # an account still holding money for others may not close
    _send(led, {"type": "hold", "request_id": "h3", "from": "payer", "to": "victim2",
                "amount": 1, "timeout_s": 60})
    _send(led, {"type": "withdraw", "request_id": "w", "account": "payer", "amount": 99})
    out = _send(led, {"type": "close_account", "request_id": "c2", "account": "payer"})
    assert out["reason"] == ACCOUNT_NOT_EMPTY and "held 1" in out["detail"], out
    _verified(led)
