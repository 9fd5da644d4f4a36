"""Who may use which HTTP route: the one table of route rules, API-key checks, rate limits.

Every request but the public ones (ROUTES marks them) needs `Authorization: Bearer <key>`:
401 when it is missing, malformed, unknown, expired or revoked; 403 when the key's role or
account scope does not cover the route; 429 + Retry-After past the key's rate (each an
HTTPError, the web layer's one error). The body of
a POST is checked against the key in the handler (apikeys.submit_refusal), once it is
parsed. A route missing from ROUTES is the operator's alone, so a new route is never open
by accident (a test checks that every route has a rule).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from aiohttp import web as aioweb

from kbank.streams.apikeys import AUDITOR, CLIENT, KEY_ROLES, OPERATOR, ApiKey
from kbank.streams.keystore import KeyRing
from kbank.streams.views.http import HTTPError
from kbank.streams.views.rate import RateLimiter

API_KEY = "api_key"          # where the middleware leaves the caller's key on the request
_READERS = frozenset(KEY_ROLES)
_WRITERS = frozenset({OPERATOR, CLIENT})
_BANK_WIDE = frozenset({OPERATOR, AUDITOR})


@dataclass(frozen=True)
class RouteRule:
    """Who may call a route: nobody need be known (public), or these roles; `account`
    names where the account a client key must cover is ("path" or "query")."""

    roles: frozenset[str] | None       # None: public
    why: str
    account: str | None = None


PUBLIC = None
ROUTES: dict[tuple[str, str], RouteRule] = {
    ("GET", "/health"): RouteRule(PUBLIC, "probed by supervisors and load balancers; names no "
                                          "account or amount"),
    ("GET", "/live"): RouteRule(PUBLIC, "liveness probe: the process answers"),
    ("GET", "/"): RouteRule(PUBLIC, "the console's page: a sign-in form until a key is given"),
    ("GET", "/console/{name}"): RouteRule(PUBLIC, "the console's script and style"),
    ("GET", "/favicon.ico"): RouteRule(PUBLIC, "browsers ask for it"),
    ("POST", "/transfers"): RouteRule(_WRITERS, "moves money: the body is checked against the "
                                                "key's accounts"),
    ("POST", "/requests"): RouteRule(_WRITERS, "every request type: deposits and withdrawals "
                                               "are the operator's"),
    ("GET", "/transfers/{request_id}"): RouteRule(_READERS, "a request's status", "query"),
    ("GET", "/holds/{hold_id}"): RouteRule(_READERS, "a hold's state", "query"),
    ("GET", "/accounts/{account}"): RouteRule(_READERS, "an account's balance", "path"),
    ("GET", "/accounts/{account}/history"): RouteRule(_READERS, "an account's ledger", "path"),
    ("GET", "/accounts/{account}/transfers"): RouteRule(_READERS, "an account's ledger, filtered",
                                                        "path"),
    ("GET", "/accounts/{account}/balance"): RouteRule(_READERS, "an account's balance at a "
                                                      "point of the log", "path"),
    ("GET", "/accounts/{account}/statement"): RouteRule(_READERS, "an account's statement",
                                                        "path"),
    ("GET", "/stats"): RouteRule(_BANK_WIDE, "bank-wide figures"),
    ("GET", "/accounts"): RouteRule(_BANK_WIDE, "accounts by currency or metadata, bank-wide"),
    ("GET", "/internal/accounts"): RouteRule(_BANK_WIDE, "peers' fan-out for /accounts, with the "
                                                         "caller's key"),
    ("GET", "/internal/statuses"): RouteRule(_BANK_WIDE, "peers' fan-out for the status filter "
                                                         "of /accounts/{account}/transfers"),
    ("GET", "/aggregates/largest-balances"): RouteRule(_BANK_WIDE, "the largest balances, "
                                                                   "bank-wide"),
    ("GET", "/aggregates/most-active"): RouteRule(_BANK_WIDE, "the most active accounts of a "
                                                              "day, bank-wide"),
    ("GET", "/internal/top"): RouteRule(_BANK_WIDE, "peers' fan-out for the rankings, with the "
                                                    "caller's key"),
    ("POST", "/webhooks"): RouteRule(_WRITERS, "registers a URL for some accounts' events: a "
                                               "client key's must all be its own"),
    ("GET", "/webhooks"): RouteRule(_READERS, "webhooks: a client key sees its own"),
    ("GET", "/webhooks/{webhook_id}"): RouteRule(_READERS, "a webhook (another key's: 404)"),
    ("DELETE", "/webhooks/{webhook_id}"): RouteRule(_WRITERS, "deletes a webhook its key made "
                                                              "(operator: any)"),
    ("POST", "/webhooks/{webhook_id}/pause"): RouteRule(_WRITERS, "holds a webhook's deliveries"),
    ("POST", "/webhooks/{webhook_id}/resume"): RouteRule(_WRITERS, "resumes them"),
    ("POST", "/webhooks/{webhook_id}/redrive"): RouteRule(_WRITERS, "tries its failed "
                                                                    "deliveries again"),
    ("GET", "/webhooks/{webhook_id}/deliveries"): RouteRule(_READERS, "a webhook's deliveries "
                                                                      "(another key's: 404)"),
    ("GET", "/overview"): RouteRule(_BANK_WIDE, "the console's overview"),
    ("GET", "/metrics"): RouteRule(_BANK_WIDE, "Prometheus metrics (scrape with a bearer token)"),
    ("GET", "/internal/totals"): RouteRule(_BANK_WIDE, "peers' fan-out for /stats, with the "
                                                       "caller's key"),
    ("GET", "/internal/overview"): RouteRule(_BANK_WIDE, "peers' fan-out for /overview, with "
                                                         "the caller's key"),
    ("GET", "/openapi.yaml"): RouteRule(_READERS, "the API's description"),
    ("GET", "/closes"): RouteRule(_BANK_WIDE, "the closes of the books, bank-wide"),
    ("GET", "/closes/{close_id}"): RouteRule(_BANK_WIDE, "a close's figures, bank-wide"),
    ("GET", "/closes/{close_id}/accounts"): RouteRule(_BANK_WIDE, "every account at a close"),
    ("GET", "/closes/{close_id}/trial-balance"): RouteRule(_BANK_WIDE, "a close's trial balance"),
    ("GET", "/reconciliation"): RouteRule(_BANK_WIDE, "each reconciled account's breaks"),
    ("GET", "/reconciliation/{account}"): RouteRule(_BANK_WIDE, "an account's reconciliation "
                                                                "results"),
}
_UNLISTED = RouteRule(frozenset({OPERATOR}), "a route without a rule: the operator's only")
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def rule_for(request: aioweb.Request) -> RouteRule:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    method = "GET" if request.method == "HEAD" else request.method
    return ROUTES.get((method, route or ""), _UNLISTED)


def authorize(request: aioweb.Request, ring: KeyRing, limiter: RateLimiter) -> ApiKey | None:
    """The caller's key, if the route needs one and the key may use it; raises HTTPError."""
    rule = rule_for(request)
    if rule.roles is PUBLIC:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPError(401, "unauthenticated", "this route needs Authorization: Bearer <API key> "
                        "(bank keys create)", headers={"WWW-Authenticate": 'Bearer realm="bank"'})
    if not ring.ready.is_set():
        raise HTTPError(503, "starting", "API keys are still being read; retry", retry_after=1)
    key, why = ring.find(token.strip())
    if key is not None:
        why = key.refusal(int(time.time() * 1000)) or ""
    if key is None or why:
        raise HTTPError(401, "unauthenticated", why, headers=_INVALID_TOKEN)
    wait = limiter.wait_s(key.id, time.monotonic())
    if wait > 0:
        raise HTTPError(429, "rate_limited", f"API key {key.id} is over its rate of "
                        f"{limiter.rate:g} requests/s; retry later",
                        retry_after=max(1, math.ceil(wait)))
    if key.role not in rule.roles:
        article = "an" if key.role[0] in "aeiou" else "a"
        raise HTTPError(403, "forbidden", f"{article} {key.role} key may not use {request.method} "
                        f"{request.path}")
    account = request.match_info.get("account") if rule.account == "path" else \
        request.query.get("account") if rule.account == "query" else None
    if account is not None and not key.covers(account):
        raise HTTPError(403, "forbidden", f"API key {key.id} does not cover account {account!r}")
    return key
