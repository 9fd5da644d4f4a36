"""Webhooks, pure: what a registration may say, which ledger events it wants, how a delivery
is signed, and how a delivery's state moves after each attempt. No I/O: the views' routes,
the webhook worker and the tests share these.

A delivery is one (webhook, ledger event) pair. Its id is the event's (`event_id`: the same
for every copy and every retry of one account's seq), so a receiver deduplicates by it. It
is `pending` until a 2xx answer makes it `delivered`, or `max_attempts` failures (or a
backlog past its bound) make it `failed` (parked, until redriven).
"""
from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import orjson

from kbank.streams.apikeys import ApiKey
from kbank.streams.model import BALANCE_SIGN, MAX_AMOUNT, int_in, is_name

# a reconciliation's break (kbank.books: a statement line or a ledger event mismatched or
# unmatched), sent only to webhooks that name it (not to '*', which means every ledger event)
BREAK = "reconciliation_break"
EVENT_TYPES = frozenset(BALANCE_SIGN) | {BREAK}   # every ledger event kind, and breaks
ANY = "*"
MAX_ACCOUNTS = 100
MAX_URL = 2048
SIGNATURE_HEADER = "Bank-Signature"
EVENT_ID_HEADER = "Bank-Event-Id"
WEBHOOK_ID_HEADER = "Bank-Webhook-Id"
REDRIVE_MARK = b"redrive\x00"   # key prefix of "redrive n of a webhook applied here" records
ACTIVE, PAUSED = "active", "paused"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_SECRET = re.compile(r"[A-Za-z0-9_\-]{16,128}")


class InvalidWebhook(ValueError):
    """A registration that cannot be kept, with the reason."""


@dataclass(frozen=True)
class Webhook:
    """A registration, as webhooks.registrations keeps it (record key = id). `accounts` None
    means every account (operator keys only); `redrive` counts the redrives asked for."""

    id: str
    url: str
    events: tuple[str, ...]
    accounts: tuple[str, ...] | None
    secret: str
    owner: str                # the API key id that registered it
    state: str = ACTIVE
    redrive: int = 0
    created_ms: int = 0

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Webhook":
        """A stored registration; raises InvalidWebhook for anything another writer could
        have put there (the topic is the intake principal's, but trust nothing read)."""
        try:
            data = orjson.loads(raw)
            hook = cls(**{**data, "events": tuple(data["events"]),
                          "accounts": None if data["accounts"] is None else tuple(data["accounts"])})
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise InvalidWebhook(f"unreadable registration: {exc}") from None
        if not is_name(hook.id) or not is_name(hook.owner) or hook.state not in (ACTIVE, PAUSED) \
                or not isinstance(hook.redrive, int) or not _SECRET.fullmatch(str(hook.secret)):
            raise InvalidWebhook("registration fields out of range")
        check_events(list(hook.events))
        if hook.accounts is not None:
            check_accounts(list(hook.accounts))
        if not isinstance(hook.url, str) or len(hook.url) > MAX_URL:
            raise InvalidWebhook("url")
        return hook

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the secret."""
        out = asdict(self)
        del out["secret"]
        out["events"], out["accounts"] = list(self.events), \
            None if self.accounts is None else list(self.accounts)
        return out

    def wants(self, event: dict[str, Any]) -> bool:
        named = event["kind"] in self.events or (ANY in self.events and event["kind"] != BREAK)
        return named and (self.accounts is None or event["account"] in self.accounts)


NO_KEY_OWNER = "anonymous"   # registered with the checks off (BANK_UNSAFE_WEB_NO_AUTH, tests only)


def suspension(hook: Webhook, owner_key: ApiKey | None, now_ms: int) -> str | None:
    """Why a webhook's deliveries wait although it is active: the API key that registered
    it was revoked or expired (or is unknown), so the URL it chose gets nothing more until
    an operator resumes the webhook (taking it over) or deletes it."""
    if hook.owner == NO_KEY_OWNER:
        return None
    if owner_key is None:
        return f"its API key {hook.owner} is unknown"
    refusal = owner_key.refusal(now_ms)
    return None if refusal is None else f"{refusal}: an operator may resume or delete it"


def check_url(url: Any, allowed_hosts: frozenset[str]) -> str:
    """The URL if a webhook may call it: http(s), no credentials in it, and a host (or
    host:port) on the operator's list, so no registration can aim the worker at the
    operator's own network (SSRF). An empty list allows nothing."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise InvalidWebhook(f"url must be a string of 1 to {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhook(f"url is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhook("url must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook("url must not carry credentials (the signature authenticates us)")
    host = parts.hostname.lower()
    if host not in allowed_hosts and f"{host}:{port}" not in allowed_hosts:
        raise InvalidWebhook(f"host {host!r} is not on the allowed list "
                             "(BANK_WEBHOOK_ALLOWED_HOSTS)")
    return url


def check_events(events: Any) -> tuple[str, ...]:
    if not isinstance(events, list) or not events or len(events) > len(EVENT_TYPES) + 1 \
            or not all(e == ANY or e in EVENT_TYPES for e in events):
        raise InvalidWebhook(f"events must be a list of ledger event kinds or {BREAK} "
                             f"({', '.join(sorted(EVENT_TYPES))}) or ['*'] (every ledger event)")
    return tuple(sorted(set(events)))


def check_accounts(accounts: Any) -> tuple[str, ...]:
    if not isinstance(accounts, list) or not accounts or len(accounts) > MAX_ACCOUNTS \
            or not all(is_name(a) for a in accounts):
        raise InvalidWebhook(f"accounts must be a list of 1 to {MAX_ACCOUNTS} account names")
    return tuple(sorted(set(accounts)))


def new_webhook(body: Any, owner: str, may_watch_all: bool, allowed_hosts: frozenset[str],
                now_ms: int) -> Webhook:
    """A registration from a POST /webhooks body; raises InvalidWebhook with the reason."""
    if not isinstance(body, dict):
        raise InvalidWebhook("body must be a JSON object")
    unknown = set(body) - {"url", "events", "accounts", "secret"}
    if unknown:
        raise InvalidWebhook(f"unknown fields: {', '.join(sorted(unknown))}")
    accounts = body.get("accounts")
    if accounts is None and not may_watch_all:
        raise InvalidWebhook("accounts must name the accounts to watch (this key may not watch "
                             "every account)")
    secret = body.get("secret") or secrets.token_urlsafe(32)
    if not isinstance(secret, str) or not _SECRET.fullmatch(secret):
        raise InvalidWebhook("secret must be 16 to 128 letters, digits, '-' or '_'")
    return Webhook(id="wh_" + secrets.token_hex(8),
                   url=check_url(body.get("url"), allowed_hosts),
                   events=check_events(body.get("events", [ANY])),
                   accounts=None if accounts is None else check_accounts(accounts),
                   secret=secret, owner=owner, created_ms=now_ms)


def event_id(account: str, seq: int) -> str:
    """The stable id of one account's ledger event: every copy and retry carries it."""
    digest = hashlib.sha256(f"{account}\x00{seq}".encode("utf-8", "surrogatepass")).hexdigest()
    return "ev_" + digest[:32]


def payload(hook_id: str, event: dict[str, Any], partition: int, offset: int) -> bytes:
    """The body a receiver gets: the ledger event with its id, type and position."""
    return orjson.dumps({"id": event_id(event["account"], event["seq"]), "type": event["kind"],
                         "webhook_id": hook_id, "account": event["account"], "seq": event["seq"],
                         "created": event["ts"], "position": {"partition": partition,
                                                              "offset": offset},
                         "data": event})


def break_event(account: str, item: str, result: Any) -> dict[str, Any] | None:
    """A reconciliation result (recon.results) as an event, if it is a break: mismatched or
    unmatched. Its id names the result, so a result that changes is a new event."""
    if not isinstance(result, dict) or result.get("status") not in ("mismatched", "unmatched") \
            or not is_name(account):
        return None
    digest = hashlib.sha256(orjson.dumps([account, item, result], option=orjson.OPT_SORT_KEYS)
                            ).hexdigest()
    return {"kind": BREAK, "account": account, "item": item, "id": "rb_" + digest[:32],
            "result": result}


def break_payload(hook_id: str, event: dict[str, Any], partition: int, offset: int) -> bytes:
    """The body a receiver gets for a break: the result, its account and item, its position."""
    return orjson.dumps({"id": event["id"], "type": BREAK, "webhook_id": hook_id,
                         "account": event["account"], "item": event["item"],
                         "position": {"partition": partition, "offset": offset},
                         "data": event["result"]})


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """The Bank-Signature header: t=<unix seconds>,v1=<HMAC-SHA256(secret, "t." + body)>."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp_s + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_s},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now_s: int,
                     tolerance_s: int = 300) -> bool:
    """What a receiver checks: the signature is ours and recent (a replay of an old
    delivery is refused after `tolerance_s`)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        ts = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now_s - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), f"t={ts},v1={fields.get('v1', '')}")


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to one webhook, as webhooks.deliveries keeps it (record key
    `delivery_key`); `next_ms` is when a pending one is tried next."""

    webhook_id: str
    event_id: str
    partition: int              # the ledger position of the event
    offset: int
    body: str                   # the payload (JSON text), sent as it is on every attempt
    status: str = PENDING
    attempts: int = 0
    next_ms: int = 0
    last_error: str | None = None
    updated_ms: int = 0
    history: list[str] = field(default_factory=list)   # the last few attempts' results

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Delivery":
        """A stored delivery; raises InvalidWebhook for a record no webhook worker writes."""
        try:
            delivery = cls(**orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise InvalidWebhook(f"unreadable delivery: {exc}") from None
        if delivery.status not in (PENDING, DELIVERED, FAILED) or not all(
                int_in(v, 0, MAX_AMOUNT) for v in (delivery.partition, delivery.offset,
                                                   delivery.attempts, delivery.next_ms)) \
                or not isinstance(delivery.body, str) or not is_name(delivery.webhook_id) \
                or not is_name(delivery.event_id):
            raise InvalidWebhook("delivery fields out of range")
        return delivery

    @property
    def key(self) -> bytes:
        return delivery_key(self.webhook_id, self.event_id)

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        del out["body"]
        return out


def delivery_key(hook_id: str, ev_id: str) -> bytes:
    return f"{hook_id}\x00{ev_id}".encode()


def backoff_ms(attempts: int, base_ms: int, cap_ms: int, rng: random.Random) -> int:
    """The wait before attempt `attempts + 1`: base * 2^(attempts-1), capped, with jitter
    (a uniform draw from half to all of it, so a receiver's retries do not arrive in step)."""
    assert attempts >= 1
    full = min(cap_ms, base_ms * 2 ** min(attempts - 1, 40))
    return full // 2 + rng.randrange(full // 2 + 1)


def after_attempt(delivery: Delivery, outcome: str | None, now_ms: int, max_attempts: int,
                  base_ms: int, cap_ms: int, rng: random.Random) -> Delivery:
    """The delivery after one attempt: `outcome` None for a 2xx, else what went wrong."""
    attempts = delivery.attempts + 1
    history = (delivery.history + [outcome or "2xx"])[-5:]
    if outcome is None:
        return replace(delivery, status=DELIVERED, attempts=attempts, last_error=None,
                       updated_ms=now_ms, history=history)
    if attempts >= max_attempts:
        return replace(delivery, status=FAILED, attempts=attempts, last_error=outcome,
                       updated_ms=now_ms, history=history)
    return replace(delivery, attempts=attempts, last_error=outcome, updated_ms=now_ms,
                   next_ms=now_ms + backoff_ms(attempts, base_ms, cap_ms, rng), history=history)


def parked(delivery: Delivery, why: str) -> Delivery:
    """A delivery set aside as failed without an attempt (its webhook's backlog is full)."""
    return replace(delivery, status=FAILED, last_error=why)


def redriven(delivery: Delivery, now_ms: int) -> Delivery:
    """A failed delivery queued again, with a fresh set of attempts."""
    assert delivery.status == FAILED
    return replace(delivery, status=PENDING, attempts=0, next_ms=now_ms, updated_ms=now_ms)
