"""The web endpoint against its OpenAPI document, its errors, metrics, and fuzzed input."""
from __future__ import annotations

import json
import string
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import jsonschema
import orjson

from kbank.streams.model import request_key
import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from kbank.replay.verify import verify
from kbank.streams.partitioning import partition_for
from kbank.streams.apikeys import parse_token
from tests.http import current_key, get_json, request
from tests.workload import wait_until

OPENAPI = yaml.safe_load((Path(__file__).parents[3] / "kbank" / "streams" / "views" / "openapi.yaml").read_text())


def schema_of(method: str, path: str, status: int) -> dict | None:
    """The JSON schema the document gives for this response (refs resolved against the document)."""
    responses = OPENAPI["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which the document lacks"
    resp = responses[str(status)]
    if "$ref" in resp:
        resp = OPENAPI["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    content = resp.get("content", {})
    if "application/json" not in content:
        return None
    return {**content["application/json"]["schema"], "components": OPENAPI["components"]}


def check(method: str, url: str, path: str, body: bytes | None = None, expect: int | None = None):
    resp = request(method, url + path, body)
    template = next(p for p in OPENAPI["paths"] if _matches(p, path.split("?")[0]))
    schema = schema_of(method, template, resp.status)
    if schema is not None:
        jsonschema.validate(resp.json(), schema)
    if expect is not None:
        assert resp.status == expect, (method, path, resp.status, resp.body[:300])
    return resp


def _matches(template: str, path: str) -> bool:
    t, p = template.strip("/").split("/"), path.strip("/").split("/")
    return len(t) == len(p) and all(a == b or a.startswith("{") for a, b in zip(t, p))


@pytest.fixture
def web(settings, pool_factory, views_factory):
    settings = replace(settings, web_wait_timeout_s=2.0, web_max_body_bytes=4096)
    pool_factory(settings, 1)
    views = views_factory(settings, 1)
    url = views.url("0")
    # the engine answers once it owns its partitions: until then a 2 s wait ends pending
    # (a deposit to no account leaves no ledger event, so no figure the tests read moves)
    deadline = time.monotonic() + 60
    while request("POST", f"{url}/requests?wait=completed",
                  orjson.dumps({"type": "deposit", "account": "nobody", "amount": 1})).status != 200:
        assert time.monotonic() < deadline, "the engine did not decide a request in 60 s"
    return settings, views, url


def test_every_route_answers_as_the_openapi_document_says(web):
    settings, _, url = web
    for name in ("alice", "bob"):
        check("POST", url, "/requests?wait=completed",
              orjson.dumps({"type": "open_account", "account": name, "daily_limit": 10_000}), 200)
        check("POST", url, "/requests?wait=completed",
              orjson.dumps({"type": "deposit", "account": name, "amount": 50_000}), 200)
    done = check("POST", url, "/transfers?wait=completed",
                 orjson.dumps({"request_id": "t1", "from": "alice", "to": "bob", "amount": 700}), 200).json()
    by = f"key:{parse_token(current_key())[0]}"    # who asked: the tests' operator key
    assert done == {"request_id": "t1", "account": "alice", "status": "completed", "ts": done["ts"],
                    "requested_by": by}
    over = check("POST", url, "/transfers?wait=completed",
                 orjson.dumps({"from": "alice", "to": "bob", "amount": 9_999}), 200).json()
    assert (over["status"], over["reason"]) == ("rejected", "limit_exceeded")
    queued = check("POST", url, "/transfers", orjson.dumps({"from": "bob", "to": "alice", "amount": 1}), 202)
    assert queued.json()["status"] == "accepted"
    again = check("POST", url, "/transfers?wait=completed",
                  orjson.dumps({"request_id": "t1", "from": "alice", "to": "bob", "amount": 700}), 200).json()
    assert again["status"] == "completed" and again["retry"] is True   # the original outcome
    # the same id with another body: refused, with the original's status; nothing moves
    conflict = check("POST", url, "/transfers?wait=completed",
                     orjson.dumps({"request_id": "t1", "from": "alice", "to": "bob", "amount": 5}), 409).json()
    assert conflict["error"] == "idempotency_conflict" and conflict["original"]["status"] == "completed"

    # opened, deposited, debited, rejected, credited (bob's 1)
    alice = get_json(f"{url}/accounts/alice?min_seq=5")
    check("GET", url, "/accounts/alice?min_seq=5", expect=200)
    assert alice["balance"] == 50_000 - 700 + 1
    assert alice["limits"] == {"daily_limit": 10_000, "day": alice["limits"]["day"], "outflow": 700,
                               "remaining": 9_300, "overdraft_limit": 0, "max_balance": None}
    assert (alice["currency"], alice["state"], alice["metadata"]) == ("USD", "open", {})
    hist = check("GET", url, "/accounts/alice/history?limit=2", expect=200).json()
    assert [e["kind"] for e in hist["entries"]] == ["credited", "rejected"]
    assert hist["next_before_seq"] == 4
    rest = check("GET", url, "/accounts/alice/history?before_seq=4", expect=200).json()
    assert [e["kind"] for e in rest["entries"]] == ["debited", "deposited", "opened"]
    assert rest["next_before_seq"] is None
    assert hist["positions"] == [{"partition": partition_for("alice", settings.partitions),
                                  "offset": o["offset"]} for o in hist["positions"]]
    assert hist["positions"][0]["offset"] > hist["positions"][1]["offset"]
    # bob's own t1 is another request (ids are scoped per sending account): it is applied
    bobs = check("POST", url, "/transfers?wait=completed",
                 orjson.dumps({"request_id": "t1", "from": "bob", "to": "alice", "amount": 1}), 200).json()
    assert (bobs["account"], bobs["status"]) == ("bob", "completed")
    check("GET", url, "/transfers/t1?account=alice", expect=200)
    check("GET", url, "/transfers/t1", expect=400)   # ids are scoped: the account is required
    check("GET", url, "/stats", expect=200)
    check("GET", url, "/health", expect=200)

    # the console's page and its overview: conservation, latencies of the requests above
    assert check("GET", url, "/", expect=200).body.startswith(b"<!doctype html>")
    wait_until(lambda: get_json(f"{url}/overview")["latency"]["completion"]["count"] >= 6, 30,
               "the six decided requests above to be timed")
    overview = check("GET", url, "/overview", expect=200).json()
    assert overview["conservation"]["ok"] and overview["stats"] == get_json(f"{url}/stats")
    assert [w["ok"] for w in overview["workers"]] == [True]
    assert [r["partition"] for r in overview["engine_lag"]] == list(range(settings.partitions))

    # errors: JSON bodies with a reason
    assert check("GET", url, "/accounts/nobody", expect=404).json()["error"] == "not_found"
    check("GET", url, "/transfers/never-sent?account=alice", expect=404)
    check("GET", url, "/accounts/alice?min_seq=abc", expect=400)
    check("GET", url, "/accounts/alice?min_seq=999&timeout=0.2", expect=503)
    check("GET", url, "/accounts/alice?timeout=99", expect=400)
    check("GET", url, "/accounts/alice/history?limit=0", expect=400)
    for bad in (b"{", b"[1,2]", b"\xff\xfe", b'{"from":"a","to":"a","amount":1}',
                b'{"from":"a","to":"b","amount":-1}', b'{"from":"a","to":"b","amount":1e3}',
                b'{"from":"a","to":"b","amount":99999999999999999999999}',
                b'{"from":"a","to":"b","amount":1,"extra":true}', b'{"to":"b","amount":1}',
                b'{"type":"deposit","account":"a","amount":1}', b"", b"[" * 2000 + b"]" * 2000,
                b'{"from":"a","to":"b","amount":1,"request_id":"\xc3\x28"}'):
        resp = check("POST", url, "/transfers", bad, 400)
        assert resp.json()["reason"], bad
    big = orjson.dumps({"from": "alice", "to": "bob", "amount": 1, "request_id": "x" * 10_000})
    assert check("POST", url, "/transfers", big, 413).json()["error"]
    assert request("DELETE", f"{url}/accounts/alice").status == 405

    metrics = request("GET", f"{url}/metrics").body.decode()
    assert 'bank_views_ledger_events_total{result="new"}' in metrics
    assert "bank_views_consumer_lag{" in metrics
    assert 'bank_http_request_duration_seconds_count{method="POST",route="/transfers",status="400"} 13.0' \
        in metrics


def _encode(body: dict) -> bytes:
    """JSON, integers beyond 64 bits included (orjson refuses those; the stdlib writes them)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


_names = st.text(alphabet=string.ascii_letters + string.digits + "-_.~%é ", min_size=0, max_size=40)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
_bodies = st.one_of(
    st.binary(max_size=300),
    _json_values.map(_encode),
    st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["transfer", "deposit", "withdraw", "open_account", "x"]),
        "request_id": _names, "from": _names | _json_values, "to": _names, "account": _names,
        "amount": st.integers(min_value=-2**70, max_value=2**70) | _json_values,
        "daily_limit": st.integers() | st.none(), "extra": _json_values,
    }).map(_encode),
)
_queries = st.dictionaries(st.sampled_from(["min_seq", "limit", "before_seq", "timeout", "wait", "x"]),
                           st.text(alphabet=string.printable, max_size=6) | st.integers().map(str),
                           max_size=3)


def test_fuzzed_http_input_never_gets_a_5xx_nor_stops_the_worker(web):
    settings, views, url = web
    check("POST", url, "/requests?wait=completed",
          orjson.dumps({"type": "open_account", "request_id": "open-a", "account": "a"}), 200)
    seen: dict[int, int] = {}

    @hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["GET", "GET", "POST", "POST", "POST", "PUT", "DELETE"]),
           route=st.sampled_from(["/transfers", "/requests", "/transfers/{}", "/accounts/{}",
                                  "/accounts/{}/history", "/stats", "/{}"]),
           name=_names, query=_queries, body=_bodies)
    def one_request(method, route, name, query, body):
        path = route.format(quote(name, safe="")) if "{}" in route else route
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
        resp = request(method, f"{url}{path}" + (f"?{qs}" if qs else ""),
                       body if method in ("POST", "PUT") else None)
        seen[resp.status] = seen.get(resp.status, 0) + 1
        if resp.status >= 500:
            # only the documented "come back later" answers, never an error
            assert resp.status == 503 and "retry-after" in resp.headers, (method, path, resp.body)
            assert resp.json()["error"] in ("behind", "rebalancing"), resp.body
        if resp.headers.get("content-type", "").startswith("application/json"):
            resp.json()

    one_request()
    assert all(p.poll() is None for p in views.procs.values()), "a views worker stopped"
    assert seen.get(400, 0) > 20 and seen.get(404, 0) > 10, seen
    # the system still works, and the log is clean
    done = check("POST", url, "/requests?wait=completed",
                 orjson.dumps({"type": "deposit", "account": "a", "amount": 5}), 200).json()
    assert done["status"] == "completed"
    report = verify(settings)
    assert report.violations == [] and report.money_conserved, report.render()


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_full_producer_queue_answers_503_with_retry_after_and_loses_nothing(settings, pool_factory,
                                                                              views_factory):
    from concurrent.futures import ThreadPoolExecutor

    from kbank.streams.client import OutcomeWatcher

    settings = replace(settings, web_max_queued_requests=2)
    pool_factory(settings, 1)
    views = views_factory(settings, 1)
    url = views.url("0")
    for name in ("a", "b"):
        check("POST", url, "/requests?wait=completed",
              orjson.dumps({"type": "open_account", "account": name}), 200)
        check("POST", url, "/requests?wait=completed",
              orjson.dumps({"type": "deposit", "account": name, "amount": 10**9}), 200)
    pid = views.procs["0"].pid
    rss_before = _rss_mb(pid)

    def post(i: int):  # noqa: ANN202
        return request("POST", f"{url}/transfers",
                       orjson.dumps({"request_id": f"o-{i}", "from": "ab"[i % 2], "to": "ba"[i % 2],
                                     "amount": 1}))

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(post, range(3_000)))
    statuses = [a.status for a in answers]
    assert set(statuses) <= {202, 503}, set(statuses)
    busy = [a for a in answers if a.status == 503]
    assert busy, "a queue of 2 under 64 concurrent clients should overflow"
    assert all(a.headers.get("retry-after") == "1" and a.json()["error"] == "overloaded" for a in busy)
    assert views.procs["0"].poll() is None
    assert _rss_mb(pid) - rss_before < 100, "memory should stay bounded under overload"
    accepted = [request_key("ab"[i % 2], f"o-{i}") for i, a in enumerate(answers) if a.status == 202]
    watcher = OutcomeWatcher(settings, from_beginning=True)
    try:
        assert watcher.wait(accepted, 120), "an accepted request was lost"
    finally:
        watcher.close()
    report = verify(settings)
    assert report.violations == [] and report.money_conserved and report.lost == 0, report.render()


def test_a_cross_site_page_can_neither_post_nor_frame_nor_rebind(web):
    """CSRF: a form can post text/plain or form data, never application/json, so only JSON
    bodies are taken (415 otherwise, and nothing moves). Every answer forbids framing,
    sniffing and other sites' scripts; a Host the server does not answer for (a DNS-rebinding
    page's own name) is refused 421."""
    _, _, url = web
    check("POST", url, "/requests?wait=completed",
          orjson.dumps({"type": "open_account", "request_id": "o", "account": "victim"}), 200)
    check("POST", url, "/requests?wait=completed",
          orjson.dumps({"type": "deposit", "request_id": "d", "account": "victim", "amount": 100}), 200)
    steal = orjson.dumps({"request_id": "csrf", "from": "victim", "to": "thief", "amount": 100})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        refused = request("POST", f"{url}/transfers?wait=completed", steal,
                          headers={"Content-Type": kind})
        assert refused.status == 415 and refused.json()["error"] == "unsupported_media_type"
    assert get_json(f"{url}/accounts/victim?min_seq=2")["balance"] == 100
    assert request("GET", f"{url}/transfers/csrf?account=victim").status == 404
    for path in ("/health", "/", "/accounts/victim", "/no-such-route"):
        headers = request("GET", url + path).headers
        assert headers["x-frame-options"] == "DENY", path
        assert headers["x-content-type-options"] == "nosniff", path
        assert "default-src 'self'" in headers["content-security-policy"], path
    rebound = request("GET", f"{url}/accounts/victim", headers={"Host": "attacker.example"})
    assert rebound.status == 421 and rebound.json()["error"] == "misdirected"
    assert request("GET", f"{url}/health", headers={"Host": "localhost"}).status == 200


def test_the_inputs_that_answered_500_answer_400_with_a_reason(web):
    """Issue 41's seven: a list for the type, null or malformed linked members, and times no
    query can use; each answered 500 with a traceback in the log."""
    settings, views, url = web
    check("POST", url, "/requests?wait=completed", orjson.dumps(
        {"type": "open_account", "request_id": "o-e", "account": "e"}), expect=200)
    for body in ({"type": ["transfer"], "from": "e", "to": "f", "amount": 1},
                 {"type": "linked", "from": "e", "transfers": None},
                 {"type": "linked", "from": "e",
                  "transfers": [{"to": "f", "amount": 1}, {"to": "g", "amount": 1, "from": None}]},
                 {"type": "linked", "from": "e", "transfers": ["from"]}):
        resp = check("POST", url, "/requests", orjson.dumps(body), expect=400)
        assert resp.json()["reason"], resp.body
    for path in (f"/accounts/e/statement?from=0&to={2**64}", "/accounts/e/balance?as_of=²",
                 f"/accounts/e/transfers?from={'1' * 5000}"):
        resp = request("GET", url + quote(path, safe="/?=&"))
        assert resp.status == 400 and resp.json()["reason"], (path[:60], resp.status, resp.body[:200])


def test_faust_takes_no_setting_from_the_environment(settings, views_factory, monkeypatch):
    """Issue 41: with WEB_PORT exported, Faust took it over the port each views worker is
    given, and all but one crash-looped on "address already in use"."""
    for name, value in (("WEB_PORT", "1"), ("WEB_BIND", "203.0.113.1"),
                        ("WEB_HOST", "elsewhere.invalid"), ("BROKER_URL", "kafka://127.0.0.1:9"),
                        ("F_WEB_BIND", "203.0.113.1")):
        monkeypatch.setenv(name, value)
    views = views_factory(settings, 2)      # each ready on its own port, or this fails
    for wid in views.procs:
        assert get_json(f"{views.url(wid)}/health")["worker"] == wid
