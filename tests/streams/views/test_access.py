"""Who may use the HTTP API: API keys, roles, account scopes, revocation and rate limits,
against real views workers (and their KeyRing on a real broker) over real HTTP."""
from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from kbank.streams import topics
from kbank.streams.apikeys import (AUDITOR, CLIENT, OPERATOR, ApiKey, InvalidKey, new_key,
                             parse_token, submit_refusal)
from kbank.streams.client import read_topic
from kbank.streams.keystore import create_key, list_keys, revoke_key
from kbank.streams.views.access import ROUTES
from kbank.streams.views.rate import RateLimiter
from tests.http import current_key, get_json, request
from tests.workload import ledger, wait_until

OPENAPI = yaml.safe_load((Path(__file__).parents[3] / "kbank" / "streams" / "views" / "openapi.yaml")
                         .read_text())


def test_every_route_of_the_api_has_a_rule_and_only_documented_ones_are_public():
    operations = [op for ops in OPENAPI["paths"].values() for op in ops.values()]
    assert all(op.get("operationId") and op.get("tags") for op in operations)
    assert len({op["operationId"] for op in operations}) == len(operations)
    documented = {(m.upper(), p) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert documented == set(ROUTES)     # every route the server answers, and only those
    examples = {n: s for n, s in OPENAPI["components"]["schemas"].items() if "example" in s}
    assert {"TransferRequest", "Status", "Account", "Error"} <= set(examples)
    for schema in examples.values():     # each example is what its schema says
        jsonschema.validate(schema["example"], {**schema, "components": OPENAPI["components"]})
    public = {r for r, rule in ROUTES.items() if rule.roles is None}
    assert public == {("GET", "/health"), ("GET", "/live"), ("GET", "/"),
                      ("GET", "/console/{name}"), ("GET", "/favicon.ico")}


def test_keys_are_stored_hashed_and_checked_in_full():
    made = new_key(CLIENT, 1_000, "tests", accounts=("alice",), account_prefix="shop-")
    key_id, secret = parse_token(made.token)
    stored = made.record.to_bytes()
    assert secret.encode() not in stored and made.token.encode() not in stored
    record = ApiKey.from_bytes(stored)
    assert record == made.record and record.matches(secret)
    assert not record.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert record.covers("alice") and record.covers("shop-7") and not record.covers("bob")
    assert parse_token(made.token + "x") is None and parse_token("Bearer " + made.token) is None
    for bad in (b"", b"[]", b'{"v":2}', stored.replace(b'"client"', b'"root"'),
                stored.replace(b'"accounts":["alice"]', b'"accounts":"alice"')):
        with pytest.raises(InvalidKey):
            ApiKey.from_bytes(bad)
    with pytest.raises(InvalidKey):
        new_key(CLIENT, 1_000, "tests")                        # a client key needs a scope
    with pytest.raises(InvalidKey):
        new_key(OPERATOR, 1_000, "tests", accounts=("alice",))
    with pytest.raises(InvalidKey):
        new_key(AUDITOR, 1_000, "tests", expires_ms=999)       # already expired


def test_what_each_role_may_send():
    client = new_key(CLIENT, 0, "t", accounts=("alice",)).record
    auditor = new_key(AUDITOR, 0, "t").record
    operator = new_key(OPERATOR, 0, "t").record
    transfer = {"type": "transfer", "from": "alice", "to": "anyone", "amount": 1}
    assert submit_refusal(client, transfer, "alice") is None        # may credit anyone
    assert "does not cover" in submit_refusal(client, {**transfer, "from": "bob"}, "bob")
    assert "operators only" in submit_refusal(
        client, {"type": "deposit", "account": "alice", "amount": 1}, "alice")
    assert "never writes" in submit_refusal(auditor, transfer, "alice")
    assert submit_refusal(operator, {"type": "deposit", "account": "x", "amount": 1}, "x") is None
    # an account's rules are the operator's; a client opens its accounts without an overdraft
    for body in ({"type": "set_limits", "account": "alice", "overdraft_limit": 10**6},
                 {"type": "freeze", "account": "alice"}, {"type": "unfreeze", "account": "alice"},
                 {"type": "open_account", "account": "alice", "overdraft_limit": 1}):
        assert "operators only" in submit_refusal(client, body, "alice"), body
        assert submit_refusal(operator, body, "alice") is None
    assert submit_refusal(client, {"type": "open_account", "account": "alice",
                                   "max_balance": 0}, "alice") is None
    assert submit_refusal(client, {"type": "close_account", "account": "alice"}, "alice") is None
    # a linked transfer's other payers must be covered too
    linked = {"type": "linked", "from": "alice", "transfers": [
        {"to": "x", "amount": 1}, {"from": "fx-eur", "to": "y", "amount": 1}]}
    assert "'fx-eur'" in submit_refusal(client, linked, "alice")
    assert submit_refusal(operator, linked, "alice") is None


def test_rate_limiter_refills_at_its_rate():
    limiter = RateLimiter(rate=10, burst=3)
    assert [limiter.wait_s("k", 0.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.wait_s("k", 0.0) == pytest.approx(0.1)
    assert limiter.wait_s("other", 0.0) == 0                    # one key never starves another
    assert limiter.wait_s("k", 0.1) == 0


def test_what_a_key_used_elsewhere_is_charged_here_and_records_are_checked():
    from kbank.streams.views.rate import MAX_KEYS_PER_RECORD, read_usage, usage_records

    limiter = RateLimiter(rate=1, burst=5)
    assert limiter.wait_s("k", 0.0) == 0
    assert limiter.take_used() == {"k": 1} and limiter.take_used() == {}
    limiter.charge("k", 4, 0.0)                                  # used at another worker
    assert limiter.wait_s("k", 0.0) > 0 and limiter.take_used() == {}
    limiter.charge("k", 10**6, 0.0)                              # debt bounded by one burst
    assert limiter.wait_s("k", 6.0) == 0
    records = usage_records("w1", {f"k{i}": 1 for i in range(MAX_KEYS_PER_RECORD + 1)}, 7)
    assert len(records) == 2 and read_usage(records[0])[:2] == ("w1", 7)
    for bad in (b"", b"[]", b'{"w":"x","t":1,"used":{"k":0}}', b'{"w":"x","t":1,"used":{"k":true}}',
                b'{"w":1,"t":1,"used":{}}', b'{"w":"x","t":1,"used":{},"extra":1}'):
        assert read_usage(bad) is None, bad


def test_a_keys_rate_holds_across_views_workers(settings, views_factory):
    """Issue 41: each views worker had its own bucket, so a key spread over N workers got N
    times its rate. One worker takes the burst; the other then refuses within a share
    interval, long before its own bucket (a full burst) would run out."""
    settings = replace(settings, web_rate_limit_per_s=1.0, web_rate_burst=20)
    views = views_factory(settings, 2)
    first, second = (views.url(w) for w in views.procs)
    key = create_key(settings, CLIENT, accounts=("a",)).token
    for u in (first, second):
        wait_until(lambda u=u: request("GET", f"{u}/openapi.yaml", key=key).status != 401, 10,
                   "the key read by both workers")
    statuses = []
    while not statuses or statuses[-1] != 429:                   # the burst, at the first
        statuses.append(request("GET", f"{first}/openapi.yaml", key=key).status)
        assert len(statuses) <= 100, statuses
    let_through = 0
    deadline = time.monotonic() + 10
    while request("GET", f"{second}/openapi.yaml", key=key).status != 429:
        let_through += 1
        assert time.monotonic() < deadline, "the second worker never refused"
        time.sleep(0.05)
    assert let_through < 10, f"the second worker let {let_through} through of its own burst"


def _post(url: str, body: dict, key: str | None) -> tuple[int, dict]:
    resp = request("POST", f"{url}/requests?wait=completed&timeout=10", orjson.dumps(body), key=key)
    return resp.status, resp.json()


def test_keys_roles_scopes_revocation_and_rate_limits(settings, pool_factory, views_factory):
    # a burst big enough for the checks below to stay inside it, which the rate-limit check
    # then exceeds with a key of its own (its tokens untouched by the checks' timing)
    settings = replace(settings, web_rate_limit_per_s=20.0, web_rate_burst=40)
    pool_factory(settings, 1)
    views = views_factory(settings, 2)                       # makes the tests' operator key
    urls = [views.url(w) for w in views.procs]
    url = urls[0]
    names = [f"c-{i}" for i in range(6)] + ["outsider"]
    for name in names:
        for body in ({"type": "open_account", "request_id": f"open-{name}", "account": name},
                     {"type": "deposit", "request_id": f"dep-{name}", "account": name,
                      "amount": 100}):
            status, out = _post(url, body, current_key())
            assert status == 200 and out["status"] == "completed", out

    # anonymous, malformed and unknown keys: 401 everywhere but /health
    for method, path in (("GET", "/accounts/c-0"), ("GET", "/stats"), ("GET", "/metrics"),
                         ("GET", "/internal/totals"), ("GET", "/overview"),
                         ("GET", "/transfers/open-c-0?account=c-0"), ("POST", "/transfers")):
        resp = request(method, url + path, b"{}" if method == "POST" else None, key=None)
        assert resp.status == 401 and resp.json()["error"] == "unauthenticated", (path, resp.body)
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert request("GET", f"{url}/health", key=None).status == 200
    assert request("GET", f"{url}/live", key=None).status == 200
    for path in ("/router", "/table/views/"):     # Faust's own pages are not served
        assert request("GET", url + path).status == 404, path
    fake = new_key(OPERATOR, int(time.time() * 1000), "nobody").token   # never stored
    for token in ("not-a-key", fake):
        resp = request("GET", f"{url}/accounts/c-0", key=token)
        assert resp.status == 401, resp.body

    client = create_key(settings, CLIENT, account_prefix="c-", label="a shop")
    auditor = create_key(settings, AUDITOR)
    ck, ak = client.token, auditor.token
    for u in urls:      # a new key reaches every worker within a fetch of auth.keys
        for token in (ck, ak):
            wait_until(lambda u=u, t=token: request("GET", f"{u}/accounts/c-0", key=t).status
                       != 401, 10, "the new keys to arrive")
    # the client: its own accounts on every worker (forwarded with its key), nothing else
    for name in names[:-1]:
        for u in urls:
            assert get_json(f"{u}/accounts/{name}", key=ck)["balance"] == 100
    for path in ("/accounts/outsider", "/accounts/outsider/history", "/stats",
                 "/transfers/open-outsider?account=outsider", "/internal/totals", "/overview",
                 "/aggregates/largest-balances", "/aggregates/most-active",
                 "/internal/top?ranking=balance&group=USD"):
        resp = request("GET", url + path, key=ck)
        assert resp.status == 403 and resp.json()["error"] == "forbidden", (path, resp.body)
    status, out = _post(url, {"type": "transfer", "request_id": "t1", "from": "c-0",
                              "to": "outsider", "amount": 30}, ck)     # may credit anyone
    assert status == 200 and out["status"] == "completed", out
    for body in ({"type": "transfer", "request_id": "t2", "from": "outsider", "to": "c-0",
                  "amount": 1},
                 {"type": "deposit", "request_id": "d2", "account": "c-1", "amount": 1},
                 {"type": "withdraw", "request_id": "w2", "account": "c-1", "amount": 1},
                 {"type": "set_limits", "request_id": "l2", "account": "c-1",
                  "overdraft_limit": 10**6},
                 {"type": "linked", "request_id": "x2", "from": "c-0", "transfers": [
                     {"to": "c-1", "amount": 1}, {"from": "outsider", "to": "c-1x", "amount": 1}]}):
        status, out = _post(url, body, ck)
        assert status == 403 and out["error"] == "forbidden", out
    status, out = _post(url, {"type": "transfer", "request_id": "t3", "from": "c-0",
                              "to": "c-1", "amount": 1, "requested_by": "key:someone"}, ck)
    assert status == 400 and "requested_by" in out["reason"], out
    # the auditor reads everything and writes nothing
    assert get_json(f"{url}/stats", key=ak)["total_balance"] == 700
    assert get_json(f"{url}/accounts/outsider", key=ak)["balance"] == 130
    status, out = _post(url, {"type": "transfer", "request_id": "t4", "from": "c-0",
                              "to": "c-1", "amount": 1}, ak)
    assert status == 403, out

    # who did it: the key's id in the status and in both sides' ledger events
    by = f"key:{client.record.id}"
    assert get_json(f"{url}/transfers/t1?account=c-0", key=ck)["requested_by"] == by
    wait_until(lambda: ledger(settings).accounts.get("outsider") is not None
               and ledger(settings).accounts["outsider"].balance == 130, 30, "the credit")
    events = [orjson.loads(m.value()) for m in read_topic(settings, settings.topic(topics.LEDGER))]
    t1 = {(e["account"], e["kind"]): e.get("requested_by") for e in events
          if e["request_id"] == "t1"}
    assert t1 == {("c-0", "debited"): by, ("outsider", "credited"): by}, t1

    # rate limits: a burst past the key's rate gets 429 + Retry-After; other keys go on
    bursting = create_key(settings, CLIENT, account_prefix="c-", label="a burst").token
    wait_until(lambda: request("GET", f"{url}/accounts/c-0", key=bursting).status != 401, 10,
               "the bursting key to arrive")
    answers = [request("GET", f"{url}/accounts/c-0", key=bursting) for _ in range(100)]
    limited = [r for r in answers if r.status == 429]
    assert limited and int(limited[0].headers["retry-after"]) >= 1, [r.status for r in answers]
    assert request("GET", f"{url}/accounts/c-0", key=ak).status == 200

    # revocation reaches every worker within seconds; the audit log has both records
    revoked_at = time.monotonic()
    revoke_key(settings, client.record.id)
    for u in urls:
        wait_until(lambda u=u: request("GET", f"{u}/accounts/c-1", key=ck).status == 401, 10,
                   f"the revocation at {u}", poll_s=0.1)
    assert time.monotonic() - revoked_at < 10
    assert "revoked" in request("GET", f"{url}/accounts/c-1", key=ck).json()["reason"]
    assert request("GET", f"{url}/accounts/c-1", key=ak).status == 200
    audit = [orjson.loads(m.value()) for m in read_topic(settings, settings.topic(topics.KEYS_AUDIT))]
    mine = [(a["action"], a["key"]["role"]) for a in audit if a["key"]["id"] == client.record.id]
    assert mine == [("key_created", CLIENT), ("key_revoked", CLIENT)], audit
    assert all("secret_sha256" not in a["key"] for a in audit)
    listed = {k.id: k for k in list_keys(settings)}
    assert listed[client.record.id].revoked_ms is not None
    assert listed[auditor.record.id].revoked_ms is None

    # a key past its expiry stops working without anyone revoking it
    soon = create_key(settings, AUDITOR, expires_ms=int(time.time() * 1000) + 3000)
    wait_until(lambda: request("GET", f"{url}/stats", key=soon.token).status == 200, 10,
               "the new key to arrive")
    wait_until(lambda: request("GET", f"{url}/stats", key=soon.token).status == 401, 10,
               "the key to expire")


def test_without_api_keys_anyone_moves_money(settings, pool_factory, views_factory):
    """The negative control: with BANK_UNSAFE_WEB_NO_AUTH an anonymous caller mints money."""
    settings = replace(settings, unsafe_web_no_auth=True)
    pool_factory(settings, 1)
    url = views_factory(settings, 1).url("0")
    body = {"type": "open_account", "request_id": "o", "account": "mallory"}
    assert _post(url, body, None)[0] == 200
    status, out = _post(url, {"type": "deposit", "request_id": "d", "account": "mallory",
                              "amount": 10**9}, None)
    assert status == 200 and out["status"] == "completed", out


def test_security_md_lists_every_route_rule():
    text = (Path(__file__).parents[3] / "SECURITY.md").read_text()
    rows = {tuple(cell.strip(" `") for cell in line.strip("|").split("|")[:3])
            for line in text.splitlines() if re.match(r"^\| (GET|POST|DELETE) ", line)}
    want = {(m, r, "anyone" if rule.roles is None else
             ", ".join(x for x in (OPERATOR, CLIENT, AUDITOR) if x in rule.roles))
            for (m, r), rule in ROUTES.items()}
    assert rows == want
