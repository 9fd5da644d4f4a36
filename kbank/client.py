"""A small typed client of the bank's HTTP API, blocking (`Bank`) or asyncio (`AsyncBank`).

    from kbank.client import Bank, InsufficientFunds

    bank = Bank("http://127.0.0.1:8080", api_key="bk_...")
    bank.open_account("alice", currency="EUR", metadata={"kyc": "ok"})
    try:
        done = bank.transfer("alice", "bob", 1250, external_ref="inv-7")
    except InsufficientFunds as refused:
        print(refused.detail)
    for event in bank.history("alice"):
        print(event["seq"], event["kind"], event["amount"])

Every money request gets a request id made here (or yours) before it is sent, and a call
that fails for want of an answer (a connection error, a 503, a timeout) is sent again with
the same id and body: the bank answers a re-sent request with its first decision, so a
retry never moves money twice. A refusal raises the exception of its reason (`Refused`
and its subclasses); a status still in progress after `wait_s` raises `StillPending`.
"""
from __future__ import annotations

import asyncio
import http.client
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote, urlsplit

import orjson

FINAL = frozenset({"completed", "rejected", "posted", "voided", "expired"})
DECIDED = FINAL | {"held"}            # where a request's own decision is known
PAGE = 100


class BankError(Exception):
    """An answer the client cannot turn into a result: `status` is the HTTP status."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{status} {error}: {reason}")
        self.status, self.error, self.reason = status, error, reason


class Unauthorized(BankError):
    """401: no key, or a key that is unknown, expired or revoked."""


class Forbidden(BankError):
    """403: the key's role or accounts do not cover this."""


class NotFound(BankError):
    """404: no such account or request."""


class BadRequest(BankError):
    """400: the request is malformed (the reason says how)."""


class RateLimited(BankError):
    """429: over the key's rate; `retry_after` seconds."""

    retry_after: float = 1.0


class Unavailable(BankError):
    """503 after every retry: starting, rebalancing or overloaded."""


class IdempotencyConflict(BankError):
    """409: this request id was used by another request (another body) of this account."""


class StillPending(BankError):
    """The request was accepted but not decided within the wait."""


@dataclass
class Outcome:
    """A request's decision (or its status so far)."""

    request_id: str
    account: str
    status: str
    reason: str | None = None
    detail: str | None = None
    retry: bool = False        # the answer to a re-sent request: its first decision
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, body: dict[str, Any]) -> "Outcome":
        return cls(body["request_id"], body.get("account") or "", body["status"],
                   body.get("reason"), body.get("detail"), bool(body.get("retry")), body)


class Refused(BankError):
    """The bank decided against the request: `reason` is one of the rejection reasons."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(200, outcome.reason or "rejected", outcome.detail or "")
        self.outcome, self.detail = outcome, outcome.detail


class InsufficientFunds(Refused): ...
class LimitExceeded(Refused): ...
class UnknownAccount(Refused): ...
class Invalid(Refused): ...
class AccountExists(Refused): ...
class UnknownHold(Refused): ...
class HoldClosed(Refused): ...
class HoldExceeded(Refused): ...
class Overflow(Refused): ...
class CurrencyMismatch(Refused): ...
class MaxBalanceExceeded(Refused): ...
class AccountClosed(Refused): ...
class AccountFrozen(Refused): ...
class AccountNotEmpty(Refused): ...
class DuplicateExternalRef(Refused): ...


REFUSALS: dict[str, type[Refused]] = {
    "insufficient_funds": InsufficientFunds, "limit_exceeded": LimitExceeded,
    "unknown_account": UnknownAccount, "invalid": Invalid, "account_exists": AccountExists,
    "unknown_hold": UnknownHold, "hold_closed": HoldClosed, "hold_exceeded": HoldExceeded,
    "overflow": Overflow, "currency_mismatch": CurrencyMismatch,
    "max_balance_exceeded": MaxBalanceExceeded, "account_closed": AccountClosed,
    "account_frozen": AccountFrozen, "account_not_empty": AccountNotEmpty,
    "duplicate_external_ref": DuplicateExternalRef,
}
_ERRORS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409:
           IdempotencyConflict, 429: RateLimited, 503: Unavailable}
_RETRIED = (503, 429)


def request_body(kind: str, **fields: Any) -> dict[str, Any]:
    """A request's JSON body: its type, a fresh request id unless given, the fields set."""
    body = {"type": kind, "request_id": fields.pop("request_id", None) or uuid.uuid4().hex}
    body.update({k.rstrip("_"): v for k, v in fields.items() if v is not None})
    return body


def _error(status: int, body: bytes, headers: dict[str, str]) -> BankError:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    err = _ERRORS.get(status, BankError)(status, str(doc.get("error", status)),
                                         str(doc.get("reason", body[:200])))
    if isinstance(err, RateLimited):
        err.retry_after = float(headers.get("retry-after", 1))
    return err


def decided(status: int, body: bytes, headers: dict[str, str]) -> Outcome:
    """What a POST's answer means: a decision, raised as its refusal if it is one."""
    if status not in (200, 202):
        raise _error(status, body, headers)
    return final(Outcome.of(orjson.loads(body)))


def final(outcome: Outcome) -> Outcome:
    """The outcome, or its refusal raised."""
    if outcome.status == "rejected":
        raise REFUSALS.get(outcome.reason or "", Refused)(outcome)
    return outcome


def _polled(outcome: Outcome, deadline: float) -> Outcome | None:
    """One step of waiting for a decision: the decision, None to ask again, or StillPending."""
    if outcome.status in DECIDED:
        return final(outcome)
    if time.monotonic() > deadline:
        raise StillPending(202, outcome.status, f"{outcome.request_id} is {outcome.status}")
    return None


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


class _Requests:
    """The requests both clients send: each method builds (path, body) once."""

    def _send(self, body: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _money(self, kind: str, **fields: Any) -> Any:
        return self._send(request_body(kind, **fields))

    def open_account(self, account: str, *, currency: str | None = None,
                     daily_limit: int | None = None, overdraft_limit: int | None = None,
                     max_balance: int | None = None, metadata: dict[str, str] | None = None,
                     request_id: str | None = None) -> Any:
        return self._money("open_account", account=account, currency=currency,
                           daily_limit=daily_limit, overdraft_limit=overdraft_limit,
                           max_balance=max_balance, metadata=metadata, request_id=request_id)

    def deposit(self, account: str, amount: int, *, metadata: dict[str, str] | None = None,
                request_id: str | None = None) -> Any:
        return self._money("deposit", account=account, amount=amount, metadata=metadata,
                           request_id=request_id)

    def withdraw(self, account: str, amount: int, *, metadata: dict[str, str] | None = None,
                 request_id: str | None = None) -> Any:
        return self._money("withdraw", account=account, amount=amount, metadata=metadata,
                           request_id=request_id)

    def transfer(self, from_: str, to: str, amount: int, *, metadata: dict[str, str] | None = None,
                 external_ref: str | None = None, request_id: str | None = None) -> Any:
        return self._money("transfer", from_=from_, to=to, amount=amount, metadata=metadata,
                           external_ref=external_ref, request_id=request_id)

    def hold(self, from_: str, to: str, amount: int, timeout_s: int, *,
             metadata: dict[str, str] | None = None, external_ref: str | None = None,
             request_id: str | None = None) -> Any:
        return self._money("hold", from_=from_, to=to, amount=amount, timeout_s=timeout_s,
                           metadata=metadata, external_ref=external_ref, request_id=request_id)

    def post(self, from_: str, hold_id: str, amount: int | None = None, *,
             request_id: str | None = None) -> Any:
        return self._money("post", from_=from_, hold_id=hold_id, amount=amount,
                           request_id=request_id)

    def void(self, from_: str, hold_id: str, *, request_id: str | None = None) -> Any:
        return self._money("void", from_=from_, hold_id=hold_id, request_id=request_id)

    def set_limits(self, account: str, *, request_id: str | None = None,
                   **limits: int | None) -> Any:
        """daily_limit, overdraft_limit and/or max_balance (operator keys only)."""
        body = request_body("set_limits", account=account, request_id=request_id)
        body.update(limits)    # a None daily_limit or max_balance lifts it
        return self._send(body)

    def freeze(self, account: str, *, request_id: str | None = None) -> Any:
        return self._money("freeze", account=account, request_id=request_id)

    def unfreeze(self, account: str, *, request_id: str | None = None) -> Any:
        return self._money("unfreeze", account=account, request_id=request_id)

    def close_account(self, account: str, *, request_id: str | None = None) -> Any:
        return self._money("close_account", account=account, request_id=request_id)

    def linked(self, from_: str, transfers: list[dict[str, Any]], *,
               metadata: dict[str, str] | None = None, external_ref: str | None = None,
               request_id: str | None = None) -> Any:
        """All of `transfers` ({to, amount[, from]}) or none."""
        return self._money("linked", from_=from_, transfers=transfers, metadata=metadata,
                           external_ref=external_ref, request_id=request_id)


class Bank(_Requests):
    """The blocking client. `wait_s`: how long a money call waits for its decision."""

    def __init__(self, url: str, api_key: str, *, wait_s: float = 10.0, timeout_s: float = 30.0,
                 retries: int = 5) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.wait_s, self.timeout_s, self.retries = wait_s, timeout_s, retries

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None
              ) -> tuple[int, bytes, dict[str, str]]:
        """One request, sent again (same body) after a connection error, 503 or 429."""
        data = orjson.dumps(body) if body is not None else None
        for attempt in range(self.retries + 1):
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            try:
                conn.request(method, path, data, self._headers)
                resp = conn.getresponse()
                status, raw = resp.status, resp.read()
                headers = {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException):
                if attempt == self.retries:
                    raise
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
                continue
            finally:
                conn.close()
            if status not in _RETRIED or attempt == self.retries:
                return status, raw, headers
            time.sleep(float(headers.get("retry-after", 0.1 * 2 ** attempt)))
        raise AssertionError("unreachable")

    def _get(self, path: str) -> Any:
        status, raw, headers = self._call("GET", path)
        if status != 200:
            raise _error(status, raw, headers)
        return orjson.loads(raw)

    def _send(self, body: dict[str, Any]) -> Outcome:
        outcome = decided(*self._call("POST", f"/requests?wait=completed&timeout={self.wait_s:g}",
                                      body))
        return outcome if outcome.status in DECIDED else self.wait(outcome.account,
                                                                   outcome.request_id)

    def status(self, account: str, request_id: str) -> Outcome:
        """A request's status as the views have it now."""
        return Outcome.of(self._get(f"{_path('transfers', request_id)}?account={quote(account)}"))

    def wait(self, account: str, request_id: str, wait_s: float | None = None) -> Outcome:
        """Poll a request's status until decided; a refusal raises."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            try:
                done = _polled(self.status(account, request_id), deadline)
            except NotFound:     # not folded yet
                done = _polled(Outcome(request_id, account, "accepted"), deadline)
            if done is not None:
                return done
            time.sleep(0.05)

    def balance(self, account: str) -> dict[str, Any]:
        """GET /accounts/{id}: balance, available, limits, currency, state, metadata."""
        return self._get(_path("accounts", account))

    def history(self, account: str, page_size: int = PAGE) -> Iterator[dict[str, Any]]:
        """Every ledger event of the account, newest first, page by page."""
        before: int | None = None
        while True:
            query = f"?limit={page_size}" + (f"&before_seq={before}" if before else "")
            page = self._get(_path("accounts", account, "history") + query)
            yield from page["entries"]
            before = page["next_before_seq"]
            if before is None:
                return


class AsyncBank(_Requests):
    """The asyncio client (aiohttp); use `async with AsyncBank(...) as bank:`."""

    def __init__(self, url: str, api_key: str, *, wait_s: float = 10.0, timeout_s: float = 30.0,
                 retries: int = 5) -> None:
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.wait_s, self.timeout_s, self.retries = wait_s, timeout_s, retries
        self._session: Any = None

    async def __aenter__(self) -> "AsyncBank":
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None
                    ) -> tuple[int, bytes, dict[str, str]]:
        import aiohttp

        data = orjson.dumps(body) if body is not None else None
        for attempt in range(self.retries + 1):
            try:
                async with self._session.request(method, self._url + path, data=data,
                                                 headers=self._headers) as resp:
                    status, raw = resp.status, await resp.read()
                    headers = {k.lower(): v for k, v in resp.headers.items()}
            except (aiohttp.ClientError, asyncio.TimeoutError):
                if attempt == self.retries:
                    raise
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
                continue
            if status not in _RETRIED or attempt == self.retries:
                return status, raw, headers
            await asyncio.sleep(float(headers.get("retry-after", 0.1 * 2 ** attempt)))
        raise AssertionError("unreachable")

    async def _get(self, path: str) -> Any:
        status, raw, headers = await self._call("GET", path)
        if status != 200:
            raise _error(status, raw, headers)
        return orjson.loads(raw)

    async def _send(self, body: dict[str, Any]) -> Outcome:
        outcome = decided(*await self._call(
            "POST", f"/requests?wait=completed&timeout={self.wait_s:g}", body))
        return outcome if outcome.status in DECIDED else await self.wait(outcome.account,
                                                                         outcome.request_id)

    async def status(self, account: str, request_id: str) -> Outcome:
        return Outcome.of(await self._get(
            f"{_path('transfers', request_id)}?account={quote(account)}"))

    async def wait(self, account: str, request_id: str, wait_s: float | None = None) -> Outcome:
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            try:
                done = _polled(await self.status(account, request_id), deadline)
            except NotFound:
                done = _polled(Outcome(request_id, account, "accepted"), deadline)
            if done is not None:
                return done
            await asyncio.sleep(0.05)

    async def balance(self, account: str) -> dict[str, Any]:
        return await self._get(_path("accounts", account))

    async def history(self, account: str, page_size: int = PAGE) -> AsyncIterator[dict[str, Any]]:
        before: int | None = None
        while True:
            query = f"?limit={page_size}" + (f"&before_seq={before}" if before else "")
            page = await self._get(_path("accounts", account, "history") + query)
            for entry in page["entries"]:
                yield entry
            before = page["next_before_seq"]
            if before is None:
                return


def verify_webhook(secret: str, headers: Any, body: bytes, tolerance_s: int = 300) -> bool:
    """In a webhook receiver: the call came from this bank with this body, signed within
    `tolerance_s` (an older signature is a replayed call). `headers` is any mapping of the
    request's headers; deduplicate accepted calls by their Bank-Event-Id."""
    from kbank.streams.webhooks.rules import SIGNATURE_HEADER, verify_signature

    found = {k.lower(): v for k, v in dict(headers).items()}.get(SIGNATURE_HEADER.lower())
    return found is not None and verify_signature(secret, found, body, int(time.time()),
                                                  tolerance_s)
