"""Every principal's needs, proven on the secured broker with its authorizer log (issue 40).

One deployment drives every request type (over HTTP, as the intake principal, and through
`bank send`, as the operator principal), requests on partitions their keys do not map to
(librdkafka's default partitioner and hand-picked partitions), a Kafka client of its own
made by `bank kafka-config client` whose requests the gateway relays, a webhook
delivered by the webhooks principal, `bank keys` as the super user and `bank replay verify |
views | recompute | as-of` as the tools principal. The broker logs every operation it
denies (StandardAuthorizer's `kafka.authorizer.logger`, INFO): none may name this
deployment's principals but the one refusal the test makes on purpose, which also shows
the log is read (a negative control: the check fails when a denial happens).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from kbank.streams import kafka, topics
from kbank.streams.partitioning import partition_for
from kbank.streams.gateway.admin import user_of
from kbank.streams.gateway.grants import requests_topic, role_of
from tests.http import current_key, get_json, request
from tests.workload import Workload, denied_operations, wait_until


def _bank(settings, *args: str, stdin: bytes | None = None, key: str | None = None) -> str:
    env = {**os.environ, **settings.env(), **({"BANK_API_KEY": key} if key else {})}
    done = subprocess.run([sys.executable, "-m", "kbank.streams.cli", *args], env=env,
                          input=stdin, capture_output=True, timeout=300)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout.decode()


RULES = Path(__file__).resolve().parents[2] / "docs" / "samples" / "rules.json"


class _Hooks(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        _Hooks.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_every_principal_does_its_work_without_one_denied_operation(
        test_cluster, settings, pool_factory, views_factory, tmp_path):
    if test_cluster.cluster is None:
        pytest.skip("needs the embedded broker's authorizer log")
    log_path = test_cluster.cluster.nodes[0].log_path
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    settings = replace(settings, webhook_allowed_hosts=f"127.0.0.1:{receiver.server_port}")
    started_ms = int(time.time() * 1000)
    engine = pool_factory(settings, 2)
    url = views_factory(settings, 1).url("0")
    pool_factory(settings, 1, "webhooks")
    pool_factory(settings, 1, "gateway")
    wl = Workload(settings)
    try:
        hook = request("POST", f"{url}/webhooks", orjson.dumps(
            {"url": f"http://127.0.0.1:{receiver.server_port}/h", "events": ["*"]}))
        assert hook.status == 201, hook.body
        # every request type, over HTTP as the intake principal
        def post(body: dict) -> dict:
            answer = request("POST", f"{url}/requests?wait=completed&timeout=10",
                             orjson.dumps(body))
            assert answer.status == 200, (body, answer.status, answer.body)
            return answer.json()
        for name in ("a", "b", "c"):
            post({"type": "open_account", "request_id": f"o-{name}", "account": name})
        post({"type": "deposit", "request_id": "d", "account": "a", "amount": 1_000})
        post({"type": "withdraw", "request_id": "w", "account": "a", "amount": 10})
        post({"type": "transfer", "request_id": "t", "from": "a", "to": "b", "amount": 20})
        post({"type": "hold", "request_id": "h1", "from": "a", "to": "b", "amount": 5,
              "timeout_s": 600})
        post({"type": "post", "request_id": "p1", "from": "a", "hold_id": "h1"})
        post({"type": "hold", "request_id": "h2", "from": "a", "to": "b", "amount": 5,
              "timeout_s": 600})
        post({"type": "void", "request_id": "v2", "from": "a", "hold_id": "h2"})
        post({"type": "hold", "request_id": "h3", "from": "a", "to": "c", "amount": 5,
              "timeout_s": 1})   # left to expire: the engine's own expiry
        post({"type": "linked", "request_id": "l", "from": "a",
              "transfers": [{"to": "b", "amount": 1}, {"to": "c", "amount": 1}]})
        post({"type": "set_limits", "request_id": "s", "account": "a", "daily_limit": 500_000})
        post({"type": "freeze", "request_id": "f", "account": "c"})
        post({"type": "unfreeze", "request_id": "u", "account": "c"})
        wait_until(lambda: get_json(f"{url}/holds/h3?account=a").get("state") == "expired", 60,
                   "the hold to expire")
        post({"type": "open_account", "request_id": "o-z", "account": "z"})
        post({"type": "close_account", "request_id": "x", "account": "z"})
        # `bank send`, as the operator principal
        lines = b"".join(orjson.dumps(r) + b"\n" for r in (
            {"type": "open_account", "request_id": "o-s", "account": "s"},
            {"type": "transfer", "request_id": "ts", "from": "b", "to": "s", "amount": 3}))
        assert _bank(settings, "send", stdin=lines).count('"offset"') == 2
        # misrouted: librdkafka's default partitioner, and hand-picked wrong partitions
        plain = Producer(kafka.client_config(settings, kafka.OPERATOR))
        for i in range(20):
            body = {"type": "transfer", "request_id": f"m{i}", "from": "b", "to": "a", "amount": 1}
            extra = {"partition": (partition_for("b", settings.partitions) + 1 + i % 3)
                     % settings.partitions} if i % 2 else {}
            plain.produce(settings.topic(topics.REQUESTS), key=b"b", value=orjson.dumps(body),
                          **extra)
            wl.request_ids.append(f"1:b/m{i}")
        plain.flush(30)
        assert wl.wait(60), "the misrouted requests were decided"
        # a payments service's own principal, through the gateway
        printed = _bank(settings, "kafka-config", "client", "shop", "--accounts", "b")
        assert f"sasl.username={user_of(settings, 'shop')}" in printed
        shop = Producer(kafka.client_config(settings, role_of("shop")))
        shop.produce(settings.topic(requests_topic("shop")), value=orjson.dumps(
            {"type": "transfer", "request_id": "k1", "from": "b", "to": "a", "amount": 2}))
        shop.flush(30)
        wl.request_ids.append("1:b/k1")
        assert wl.wait(60), "the Kafka client's transfer was decided"
        assert '"name":"shop"' in _bank(settings, "kafka-config", "clients")
        # bank keys, as the super user
        made = _bank(settings, "keys", "create", "--role", "auditor", "--label", "needs")
        key_id = next(line for line in _bank(settings, "keys", "list").splitlines()
                      if '"needs"' in line)
        _bank(settings, "keys", "revoke", orjson.loads(key_id)["id"])
        assert made
        wait_until(lambda: len(_Hooks.received) >= 10, 60, "webhook deliveries")
    finally:
        wl.close()
        receiver.shutdown()
    # the tools principal: verify, views, recompute, as-of
    wait_until(lambda: engine.restart_dead() is not None and
               get_json(f"{url}/accounts/s")["balance"] == 3, 60, "the last transfer")
    _bank(settings, "replay", "verify")
    _bank(settings, "replay", "views", "--url", url, key=current_key())
    _bank(settings, "replay", "recompute", "--generation", "needs")
    _bank(settings, "replay", "as-of", "--account", "a", "--time", str(int(time.time() * 1000)))
    # closing the books (the tools) and reconciling an account: the operator imports, the
    # reconciler (books) reads and writes, the views serve both
    _bank(replace(settings, close_settle_margin_ms=0), "close", "--at", str(started_ms))
    wait_until(lambda: get_json(f"{url}/closes")["closes"] != [], 30, "the views to read the close")
    statement = tmp_path / "a.csv"
    statement.write_text("date,amount,currency,reference\n"
                         f"{time.strftime('%Y-%m-%d', time.gmtime())},10.00,USD,d\n")
    _bank(settings, "reconcile", "rules", "--account", "a", "--set", str(RULES))
    _bank(settings, "reconcile", "import", "--account", "a", str(statement))
    pool_factory(settings, 1, "reconciler")
    pool_factory(settings, 1, "break-webhooks")     # reads the breaks and its delivery log
    wait_until(lambda: get_json(f"{url}/reconciliation")["accounts"].get("a", {}).get("matched"),
               60, "the reconciler's results")
    assert "1 matched" in _bank(settings, "reconcile", "report", "--account", "a")
    # one refusal on purpose: a Kafka client may not write the bank's own request topic
    refused: list[object] = []
    forger = Producer({**kafka.client_config(settings, role_of("shop")), "message.timeout.ms": 10_000})
    forger.produce(settings.topic(topics.REQUESTS), key=b"a", value=b"{}",
                   on_delivery=lambda err, _m: refused.append(err))
    forger.flush(20)
    assert refused and refused[0] is not None
    client = f"User:{user_of(settings, 'shop')}"
    wait_until(lambda: any(client in line for line in denied_operations(log_path, settings)), 30,
               "the broker to log the refusal made on purpose")
    unexpected = [line for line in denied_operations(log_path, settings)
                  if not (client in line and settings.topic(topics.REQUESTS) in line)]
    assert unexpected == [], unexpected[:5]
