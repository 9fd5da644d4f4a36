"""Webhook rules, pure: who may be called, what is wanted, signatures, retries and parking."""
from __future__ import annotations

import random

import pytest

from kbank.streams.webhooks.rules import (DELIVERED, FAILED, PENDING, Delivery, InvalidWebhook,
                                          Webhook, after_attempt, backoff_ms, check_url, event_id,
                                          new_webhook, redriven, sign, verify_signature)

HOSTS = frozenset({"hooks.example.com", "127.0.0.1:9000"})


@pytest.mark.parametrize("url", ["http://hooks.example.com/in", "https://HOOKS.example.com:8443/x",
                                 "http://127.0.0.1:9000/hook"])
def test_urls_on_the_list_are_accepted(url):
    assert check_url(url, HOSTS) == url


@pytest.mark.parametrize("url, why", [
    ("http://169.254.169.254/latest/meta-data", "not on the allowed list"),   # cloud metadata
    ("http://127.0.0.1:9001/hook", "not on the allowed list"),               # another port
    ("http://localhost:9000/", "not on the allowed list"),
    ("http://hooks.example.com.evil.net/", "not on the allowed list"),
    ("http://user:pw@hooks.example.com/", "credentials"),
    ("ftp://hooks.example.com/", "http"),
    ("file:///etc/passwd", "http"),
    ("http://hooks.example.com:99999/", "not a URL"),
    ("", "1 to"), (None, "1 to"), ("http://" + "a" * 3000, "1 to")])
def test_urls_elsewhere_are_refused_with_the_reason(url, why):
    with pytest.raises(InvalidWebhook, match=why):
        check_url(url, HOSTS)
    with pytest.raises(InvalidWebhook):
        check_url("http://hooks.example.com/", frozenset())   # an empty list allows nothing


def test_registration_rules():
    hook = new_webhook({"url": "http://hooks.example.com/", "events": ["credited", "debited"],
                        "accounts": ["bob", "alice", "bob"]}, "key-1", False, HOSTS, 5)
    assert hook.accounts == ("alice", "bob") and hook.events == ("credited", "debited")
    assert len(hook.secret) >= 32 and "secret" not in hook.public()
    assert Webhook.from_bytes(hook.to_bytes()) == hook
    event = {"kind": "credited", "account": "bob"}
    assert hook.wants(event) and not hook.wants({**event, "kind": "opened"}) \
        and not hook.wants({**event, "account": "carol"})
    every = new_webhook({"url": "http://hooks.example.com/"}, "op", True, HOSTS, 5)
    assert every.wants({"kind": "opened", "account": "anyone"})
    for body, why in (({"url": "http://hooks.example.com/"}, "may not watch every account"),
                      ({"url": "http://hooks.example.com/", "accounts": []}, "accounts"),
                      ({"url": "http://hooks.example.com/", "accounts": ["a"], "events": ["x"]},
                       "events"),
                      ({"url": "http://hooks.example.com/", "accounts": ["a"], "secret": "short"},
                       "secret"),
                      ({"url": "http://hooks.example.com/", "accounts": ["a"], "extra": 1},
                       "unknown fields"),
                      ([], "JSON object")):
        with pytest.raises(InvalidWebhook, match=why):
            new_webhook(body, "key-1", False, HOSTS, 5)
    for forged in (b"{}", b"not json", hook.to_bytes().replace(b'"active"', b'"gone"'),
                   hook.to_bytes().replace(b'"credited"', b'"minted"')):
        with pytest.raises(InvalidWebhook):
            Webhook.from_bytes(forged)


def test_signatures_verify_only_with_the_secret_the_body_and_a_recent_time():
    body = b'{"id":"ev_1"}'
    header = sign("s" * 32, 1_000, body)
    assert verify_signature("s" * 32, header, body, now_s=1_100)
    assert not verify_signature("t" * 32, header, body, now_s=1_100)
    assert not verify_signature("s" * 32, header, body + b" ", now_s=1_100)
    assert not verify_signature("s" * 32, header, body, now_s=1_000 + 301)    # a replay, later
    assert not verify_signature("s" * 32, "v1=00", body, now_s=1_000)
    assert event_id("alice", 7) == event_id("alice", 7) != event_id("alice", 8)


def test_retries_back_off_with_jitter_then_park_and_a_redrive_starts_over():
    rng = random.Random(1)
    waits = [backoff_ms(n, 1_000, 60_000, rng) for n in range(1, 12)]
    for n, wait in enumerate(waits, start=1):
        full = min(60_000, 1_000 * 2 ** (n - 1))
        assert full // 2 <= wait <= full
    d = Delivery("wh", "ev", 0, 5, "{}")
    for attempt in range(1, 4):
        d = after_attempt(d, "HTTP 500", 10_000, 4, 1_000, 60_000, rng)
        assert (d.status, d.attempts) == (PENDING, attempt) and d.next_ms > 10_000
    d = after_attempt(d, "timeout", 20_000, 4, 1_000, 60_000, rng)
    assert (d.status, d.attempts, d.last_error) == (FAILED, 4, "timeout")
    again = redriven(d, 30_000)
    assert (again.status, again.attempts, again.next_ms) == (PENDING, 0, 30_000)
    done = after_attempt(again, None, 31_000, 4, 1_000, 60_000, rng)
    assert (done.status, done.attempts, done.last_error) == (DELIVERED, 1, None)
    assert done.history[-2:] == ["timeout", "2xx"]
    assert Delivery.from_bytes(done.to_bytes()) == done


def test_a_forged_delivery_record_is_refused():
    good = Delivery("wh", "ev", 0, 5, "{}").to_bytes()
    assert Delivery.from_bytes(good).offset == 5
    for forged in (b"[]", b"{", good.replace(b'"pending"', b'"paid"'),
                   good.replace(b'"offset":5', b'"offset":-5'),
                   good.replace(b'"attempts":0', b'"attempts":true'),
                   good.replace(b'"body":"{}"', b'"body":7'),
                   good.replace(b'"webhook_id":"wh"', b'"webhook_id":""'),
                   good[:-1] + b',"extra":1}'):
        with pytest.raises(InvalidWebhook):
            Delivery.from_bytes(forged)
