"""The ledger model through the real engine, broker, views and HTTP: a closing with a credit
in flight, a cross-currency linked exchange, an overdraft, a limit change, metadata on the
history page and the status route; then verify, a byte-for-byte recompute, and a copy of the
ledger with one event rewritten, which verify names."""
from __future__ import annotations

import orjson

from kbank.replay.ledger import LedgerFold
from kbank.replay.recompute import simulate
from kbank.replay.verify import verify
from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.decisions import Rules
from kbank.streams.partitioning import partition_for
from tests.http import get_json, request
from tests.workload import Workload, ledger, status_path, wait_until
import json
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic
from jsonschema import Draft202012Validator

import kbank

from kbank.streams.model import GENESIS_HASH, chain_event, request_key


def _same_partition_pair(partitions: int) -> tuple[str, str]:
    names = [f"pair-{i}" for i in range(200)]
    first = names[0]
    return first, next(n for n in names[1:] if partition_for(n, partitions) ==
                        partition_for(first, partitions))


def _status(url: str, key: str) -> str | None:
    """A request's status as the views have it, None while they have none (404) or are
    busy (503)."""
    resp = request("GET", url + status_path(key))
    assert resp.status in (200, 404, 503), (key, resp.status, resp.body[:300])
    return resp.json()["status"] if resp.status == 200 else None


def _post(url: str, body: dict) -> dict:
    """POST a request and wait for its decision (asking its status while it is pending)."""
    resp = request("POST", f"{url}/requests?wait=completed&timeout=10", orjson.dumps(body))
    assert resp.status in (200, 202), (body, resp.status, resp.body[:300])
    out = resp.json()
    key = request_key(out["account"], out["request_id"])
    wait_until(lambda: out["status"] not in ("accepted", "pending", "debited") or
               _status(url, key) not in (None, "accepted", "debited"), 60,
               f"a decision on {body}")
    return out if resp.status == 200 else get_json(url + status_path(key))


def test_the_ledger_model_through_the_engine(settings, pool_factory, views_factory):
    payer, closer = _same_partition_pair(settings.partitions)
    # before any engine runs: the transfer to `closer` and its closing wait in one partition of
    # transfers.requests, so the engine decides the close before the credit can arrive
    wl = Workload(settings)
    try:
        for body in ({"type": "open_account", "request_id": "o1", "account": payer},
                     {"type": "open_account", "request_id": "o2", "account": closer},
                     {"type": "deposit", "request_id": "d1", "account": payer, "amount": 100},
                     {"type": "transfer", "request_id": "t-in-flight", "from": payer,
                      "to": closer, "amount": 30},
                     {"type": "close_account", "request_id": "c1", "account": closer}):
            wl.send(body)
        wl.sender.flush()
        pool_factory(settings, 1)
        url = views_factory(settings, 1).url("0")
        assert wl.wait(120)
    finally:
        wl.close()
    wait_until(lambda: _status(url, request_key(payer, "t-in-flight")) == "rejected", 60,
               "the credit to the closed account to come back")
    status = get_json(url + status_path(request_key(payer, "t-in-flight")))
    assert status["reason"] == "account_closed", status
    assert get_json(f"{url}/accounts/{payer}?min_seq=4")["balance"] == 100
    closed = get_json(f"{url}/accounts/{closer}")
    assert (closed["state"], closed["balance"]) == ("closed", 0)

    # a cross-currency exchange: one linked transfer, two payers, all or nothing
    for name, currency, deposit in (("alice-usd", "USD", 500), ("alice-eur", "EUR", 0),
                                    ("fx-usd", "USD", 0), ("fx-eur", "EUR", 10_000)):
        _post(url, {"type": "open_account", "account": name, "currency": currency,
                    "metadata": {"owner": name.split("-")[0]}})
        if deposit:
            _post(url, {"type": "deposit", "account": name, "amount": deposit})
    legs = [{"to": "fx-usd", "amount": 100}, {"from": "fx-eur", "to": "alice-eur", "amount": 90}]
    done = _post(url, {"type": "linked", "request_id": "x1", "from": "alice-usd",
                       "transfers": legs, "metadata": {"fx": "USDEUR", "rate": "0.9"}})
    assert done["status"] == "completed", done
    eur = get_json(f"{url}/accounts/alice-eur?min_seq=2")
    assert (eur["balance"], eur["currency"], eur["metadata"]) == (90, "EUR", {"owner": "alice"})
    refused = _post(url, {"type": "linked", "request_id": "x2", "from": "alice-usd",
                          "transfers": [{"to": "fx-usd", "amount": 100},
                                        {"from": "fx-eur", "to": "alice-eur", "amount": 10**6}]})
    assert (refused["status"], refused["reason"]) == ("rejected", "insufficient_funds"), refused
    wait_until(lambda: get_json(f"{url}/accounts/fx-eur")["pending_out"] == 0, 30,
               "the refused exchange's reservation to be released")
    assert get_json(f"{url}/accounts/alice-usd?min_seq=6")["balance"] == 400   # x2 released

    # an overdraft, then a lower daily limit
    _post(url, {"type": "open_account", "account": "dave", "overdraft_limit": 500})
    _post(url, {"type": "open_account", "account": "erin"})
    tags = {"metadata": {"invoice": "INV-7"}, "external_ref": "erp-42"}
    sent = _post(url, {"type": "transfer", "request_id": "t1", "from": "dave", "to": "erin",
                       "amount": 300, **tags})
    assert sent["status"] == "completed", sent
    assert get_json(f"{url}/accounts/dave?min_seq=2")["balance"] == -300
    short = _post(url, {"type": "transfer", "from": "dave", "to": "erin", "amount": 201})
    assert short["reason"] == "insufficient_funds"
    _post(url, {"type": "set_limits", "account": "dave", "daily_limit": 100})
    over = _post(url, {"type": "transfer", "from": "dave", "to": "erin", "amount": 101})
    assert over["reason"] == "limit_exceeded"
    dave = get_json(f"{url}/accounts/dave?min_seq=4")     # opened, t1, refused, limits_set
    assert dave["limits"]["daily_limit"] == 100 and dave["limits"]["overdraft_limit"] == 500
    again = _post(url, {"type": "transfer", "request_id": "t2", "from": "dave", "to": "erin",
                        "amount": 1, "external_ref": "erp-42"})
    assert again["reason"] == "duplicate_external_ref"

    # holds (posted, voided, left to expire), a withdrawal, a freeze and an unfreeze, and a
    # record that is not a request: every kind of record the change feed carries
    _post(url, {"type": "withdraw", "account": "alice-usd", "amount": 1})
    for hold_id, timeout_s in (("h-post", 600), ("h-void", 600), ("h-expire", 1)):
        assert _post(url, {"type": "hold", "request_id": hold_id, "from": "alice-usd",
                           "to": "fx-usd", "amount": 5, "timeout_s": timeout_s})["status"] == "held"
    assert _post(url, {"type": "post", "hold_id": "h-post", "from": "alice-usd",
                       "amount": 3})["status"] == "completed"
    assert _post(url, {"type": "void", "hold_id": "h-void", "from": "alice-usd"})["status"] \
        == "completed"
    wait_until(lambda: _status(url, request_key("alice-usd", "h-expire")) == "expired", 60,
               "the hold to expire")
    _post(url, {"type": "freeze", "account": "erin"})
    _post(url, {"type": "unfreeze", "account": "erin"})
    producer = kafka.producer(settings, kafka.ADMIN)
    producer.produce(settings.topic(topics.REQUESTS), key=b"erin", value=b"not a request")
    producer.flush(30)

    # metadata round-trips to both sides' history and to the status route
    for account in ("dave", "erin"):
        def moved():  # noqa: ANN202 - the entry of t1 once the views folded it
            entries = get_json(f"{url}/accounts/{account}/history")["entries"]
            return next((e for e in entries if e["request_id"] == "t1"), None)
        wait_until(lambda: moved() is not None, 30, f"t1 in {account}'s history")
        moved = moved()
        assert moved["metadata"] == tags["metadata"] and moved["external_ref"] == "erp-42"
    wait_until(lambda: _status(url, request_key("dave", "t1")) == "completed", 30,
               "t1's outcome folded by the views")
    status = get_json(url + status_path(request_key("dave", "t1")))
    assert status["metadata"] == tags["metadata"] and status["external_ref"] == "erp-42"
    def usd_and_eur() -> tuple[int, int]:
        money = get_json(f"{url}/stats")["currencies"]
        return money["USD"]["total_balance"], money["EUR"]["total_balance"]
    wait_until(lambda: usd_and_eur() == (100 + 500 - 1, 10_000), 30,   # less the withdrawal
               "every credit folded into the per-currency figures")

    report = verify(settings, require_final=True)
    assert report.ok, report.render()
    assert {c: m.balance for c, m in report.currencies.items()} == {"USD": 599, "EUR": 10_000}
    _every_record_keeps_the_contract(settings)

    # recompute with the rules unchanged: the live ledger, byte for byte (hashes too)
    same = simulate(settings, Rules.from_settings(settings, settings.partitions),
                    settings.partitions, show_progress=False)
    fold = LedgerFold()
    for _, raw in same.events:
        assert fold.apply(raw) is not None
    live = ledger(settings)
    assert {n: a.events for n, a in fold.accounts.items()} == \
        {n: a.events for n, a in live.accounts.items()}

    # a copy of the ledger with one event's amount changed: verify names that event; a
    # forger who also recomputes the chain from there on passes the chain check, but not
    # the anchor printed before (`--anchor`, then `--against`)
    anchor = report.anchor()
    assert verify(settings, anchor=anchor).ok
    rewritten, target = _copy_ledger(settings, "ledger-copy", rehash=False)
    tampered = verify(settings, ledger_topic=rewritten)
    broken = [v for v in tampered.violations if "hash chain" in v]
    assert len(broken) == 1 and f"{rewritten}[{target[0]}]@" in broken[0] \
        and f"account erin seq {target[1]}" in broken[0], tampered.violations
    rehashed, _ = _copy_ledger(settings, "ledger-rehashed", rehash=True)
    assert not [v for v in verify(settings, ledger_topic=rehashed).violations if "hash chain" in v]
    forged = verify(settings, ledger_topic=rehashed, anchor=anchor)
    assert [v for v in forged.violations if "no longer passes through" in v], forged.violations


SCHEMAS = Path(kbank.__file__).parent / "schemas"


def _every_record_keeps_the_contract(settings) -> None:  # noqa: ANN001
    """Every record the engine wrote, and every request sent, validates against its schema in
    kbank/schemas, and the engine's records carry the version header."""
    def validator(name: str) -> Draft202012Validator:
        return Draft202012Validator(json.loads((SCHEMAS / f"{name}.v1.json").read_text()))

    kinds = set()
    for logical, check in ((topics.LEDGER, validator("ledger.events")),
                           (topics.OUTCOMES, validator("transfers.outcomes")),
                           (topics.DEADLETTER, validator("transfers.deadletter"))):
        records = list(read_topic(settings, settings.topic(logical)))
        assert records, logical
        for msg in records:
            value = orjson.loads(msg.value())
            check.validate(value)
            if logical != topics.DEADLETTER:
                assert ("v", b"1") in (msg.headers() or []), (logical, value)
            kinds.add(value.get("kind"))
    assert kinds >= set(json.loads((SCHEMAS / "ledger.events.v1.json").read_text())
                        ["properties"]["kind"]["enum"]), kinds
    requests_ok = validator("transfers.requests")
    refused = {(o["account"], o["request_id"]) for o in map(
        lambda m: orjson.loads(m.value()), read_topic(settings, settings.topic(topics.OUTCOMES)))
        if o.get("reason") == "invalid"}
    for msg in read_topic(settings, settings.topic(topics.REQUESTS)):
        try:
            body = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            continue   # the record that is not a request: dead-lettered
        if body.get("type") != "expire" and (msg.key().decode(), body["request_id"]) not in refused:
            requests_ok.validate(body)


def _copy_ledger(settings, name: str, rehash: bool) -> tuple[str, tuple[int, int]]:  # noqa: ANN001
    """Copy ledger.events with erin's first credit raised by 1,000; with `rehash`, the
    chain of that partition is recomputed from the rewritten event on."""
    copy = settings.topic(name)
    admin = AdminClient(kafka.client_config(settings, kafka.ADMIN))
    admin.create_topics([NewTopic(copy, settings.partitions, 1)])[copy].result(30)
    producer = kafka.producer(settings, kafka.ADMIN)
    target, heads, forging = None, {}, set()
    for msg in read_topic(settings, settings.topic(topics.LEDGER)):
        value, p = msg.value(), msg.partition()
        event = orjson.loads(value)
        if target is None and event["kind"] == "credited" and event["account"] == "erin":
            event["amount"] += 1_000
            event["balance"] += 1_000
            value, target = orjson.dumps(event), (p, event["seq"])
            forging.add(p) if rehash else None
        if p in forging:
            del event["hash"]
            heads[p], value = chain_event(heads.get(p, GENESIS_HASH), orjson.dumps(event))
        else:
            heads[p] = event["hash"]
        kafka.produce_waiting(producer, copy, key=msg.key(), value=value, partition=p)
    producer.flush(30)
    assert target is not None
    return copy, target


def test_refusals_from_an_unopened_account_leave_the_receivers_history_alone(settings,
                                                                             pool_factory):
    """Issue 41: 10,050 refused transfers from a never-opened account, addressed to a
    victim, each put an entry with the attacker's metadata in the victim's history (and
    made the victim's statement over that window too large). Through the engine: the
    refusals are answered, and the victim's ledger holds only its own events."""
    pool_factory(settings, 1)
    wl = Workload(settings)
    try:
        wl.open_accounts(["victim"], 10)
        for i in range(50):
            wl.send({"type": "transfer", "request_id": f"spam-{i}", "from": "ghost",
                     "to": "victim", "amount": 1, "metadata": {"note": "attacker"}})
        wl.sender.flush()
        assert wl.wait(60), "every refusal answered"
        assert {wl.status(f"spam-{i}") for i in range(50)} == {"rejected"}
    finally:
        wl.close()
    fold = ledger(settings)
    assert [orjson.loads(raw)["kind"] for raw in fold.accounts["victim"].events] == \
        ["opened", "deposited"]
    assert "ghost" not in fold.accounts
