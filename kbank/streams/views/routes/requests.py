"""Requests and their answers: the write path (POST /transfers and /requests: validate,
check the key's rights, produce, wait for the outcome if asked) and GET /transfers/{id} and
/holds/{id}, answered by the worker owning the request key."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web as aioweb

from kbank.streams.apikeys import submit_refusal
from kbank.streams.decisions import Rules, Undecodable, deciding_account, parse_request
from kbank.streams.model import DECIDED_STATUSES, MAX_NAME, request_key
from kbank.streams.views.access import API_KEY
from kbank.streams.views.fold import hold_view
from kbank.streams.views.http import (HTTPError, caller_headers, get_page, json_object,
                                      json_response, page)
from kbank.streams.views.intake import OutcomeWaiter, Overloaded, RequestProducer, is_conflict
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes.common import (Router, query_timeout,
                                               stalled_for)


@dataclass(frozen=True)
class Submission:
    """A request the write path took: its deciding account (the record's key) and id, and
    the bytes the engine will read."""

    account: str
    request_id: str
    key: bytes
    value: bytes


class WritePath:
    """The views worker's side of every request it takes: its producer (as the intake
    principal) and the waiter for outcomes, made once the worker has started (`start`); until
    then a request is answered 503."""

    def __init__(self, worker: ViewsReads) -> None:
        self.worker = worker
        self.hold_rules = Rules.from_settings(worker.settings, worker.settings.partitions)
        self.producer: RequestProducer | None = None
        self.waiter: OutcomeWaiter | None = None

    async def start(self) -> None:
        # daemon threads: every POST awaits its acknowledgement, so nothing is left to flush
        self.waiter = OutcomeWaiter(self.worker.settings)   # it reads only while someone waits
        self._idle_stop = asyncio.ensure_future(self.waiter.stop_when_idle())
        self.producer = RequestProducer(self.worker.settings)

    @property
    def ready(self) -> bool:
        return self.producer is not None

    def started_producer(self) -> RequestProducer:
        if self.producer is None:
            raise HTTPError(503, "starting", "worker is starting", retry_after=1)
        return self.producer

    def started_waiter(self) -> OutcomeWaiter:
        if self.waiter is None:
            raise HTTPError(503, "starting", "worker is starting", retry_after=1)
        return self.waiter

    def send(self) -> Callable[..., Awaitable[Any]]:
        """The producer's send (for the webhook registrations), or 503 while starting."""
        return self.started_producer().send

    async def first_decision(self, account: str, request_id: str, deadline: float,
                             headers: dict[str, str]) -> dict[str, Any] | None:
        """The status of an earlier submission of this id, from the status view (wherever it
        lives), once it is decided."""
        app = self.worker.app
        url = app.conf.canonical_url.with_path(f"/transfers/{request_id}").with_query(
            account=account)
        while True:
            try:
                async with app.http_client.get(url, headers=headers,
                                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 200:
                        found = await resp.json(loads=orjson.loads)
                        if found.get("status") in DECIDED_STATUSES:
                            return found
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def submit_transfer(self, request: aioweb.Request) -> aioweb.Response:
        """POST /transfers: a transfer (the older route; the type may be left out)."""
        return await self.submit(request, transfers_only=True)

    async def submit_request(self, request: aioweb.Request) -> aioweb.Response:
        """POST /requests: a request of any type."""
        return await self.submit(request, transfers_only=False)

    async def submit(self, request: aioweb.Request, transfers_only: bool) -> aioweb.Response:
        """Validate, check the key's rights, produce, and wait for the outcome if asked."""
        submission = await self.validated(request, transfers_only)
        wait = request.query.get("wait")
        if wait not in (None, "completed"):
            raise HTTPError(400, "invalid", "wait must be 'completed'")
        timeout = query_timeout(request, self.worker.settings.web_wait_timeout_s)
        if wait and (stall := stalled_for(self.worker, submission.account)) is not None:
            raise HTTPError(503, "engine_stalled", stall, retry_after=30)
        return await self.deliver(request, submission, bool(wait), timeout)

    async def validated(self, request: aioweb.Request, transfers_only: bool) -> Submission:
        """The request's body as the engine will read it, refused here (400, 403) whenever
        the engine would refuse it as invalid or the caller's key may not send it."""
        body = await json_object(request)
        if transfers_only:
            body.setdefault("type", "transfer")
            if body["type"] != "transfer":
                raise HTTPError(400, "invalid", "POST /transfers takes transfers; use POST /requests")
        body.setdefault("request_id", uuid.uuid4().hex)
        key_name = deciding_account(body)
        if not isinstance(key_name, str) or not key_name:
            raise HTTPError(400, "invalid", "the deciding account (account, or from) must be a string")
        api_key = request[API_KEY]
        if "requested_by" in body:
            raise HTTPError(400, "invalid", "requested_by is set by the server: the API key's id")
        if api_key is not None:
            body["requested_by"] = api_key.principal
        key = key_name.encode("utf-8", "surrogatepass")
        try:
            value = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise HTTPError(400, "invalid", f"cannot encode request: {exc}") from None
        try:
            parsed = parse_request(key, value)
        except Undecodable as exc:
            raise HTTPError(400, "invalid", str(exc)) from None
        if parsed.problem is not None:
            raise HTTPError(400, "invalid", parsed.problem)
        if (problem := self.hold_rules.hold_problem(body)) is not None:   # the engine's rule too
            raise HTTPError(400, "invalid", problem)
        # the key's rights are checked on the validated body (its fields have their types)
        if api_key is not None and (refusal := submit_refusal(api_key, body, key_name)):
            raise HTTPError(403, "forbidden", refusal)
        return Submission(key_name, parsed.request_id, key, value)

    async def deliver(self, request: aioweb.Request, submission: Submission, wait: bool,
                      timeout: float) -> aioweb.Response:
        """Produce the request; answer 202 once the broker has it, or its outcome if the
        caller waits for it (within `timeout`)."""
        deadline = time.monotonic() + timeout
        producer: RequestProducer = self.started_producer()
        waiter: OutcomeWaiter = self.started_waiter()
        status_key = request_key(submission.account, submission.request_id)
        fut = await waiter.register(status_key) if wait else None
        try:
            try:
                partition, offset = await producer.send(submission.key, submission.value)
            except Overloaded:
                raise HTTPError(503, "overloaded", "too many requests waiting for the broker",
                                retry_after=1) from None
            except RuntimeError as exc:
                raise HTTPError(503, "unavailable", f"broker did not accept the request: {exc}",
                                retry_after=1) from None
            accepted = {"request_id": submission.request_id, "account": submission.account,
                        "status": "accepted", "partition": partition, "offset": offset}
            if fut is None:
                return json_response(accepted, 202)
            try:
                out = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                return json_response({**accepted, "status": "pending"}, 202)
        finally:
            if fut is not None:
                waiter.forget(status_key, fut)
        if out.get("retry"):
            return await self.answer_retry(request, submission, out, deadline)
        result = {"request_id": out["request_id"], "account": out["account"],
                  "status": out["status"]}
        for extra in ("reason", "detail", "ts", "requested_by"):
            if out.get(extra) is not None:
                result[extra] = out[extra]
        return json_response(result)

    async def answer_retry(self, request: aioweb.Request, submission: Submission,
                           out: dict[str, Any], deadline: float) -> aioweb.Response:
        """The id was used before: the original decision, as the status view has it now."""
        first = await self.first_decision(submission.account, submission.request_id, deadline,
                                          caller_headers(request))
        original = first or {k: v for k, v in out.items()
                             if k in ("request_id", "account", "status", "reason", "ts")}
        if is_conflict(out):
            return json_response({"error": "idempotency_conflict",
                                  "reason": "this request id was used by another request "
                                            "(another body) of this account",
                                  "original": original}, 409)
        return json_response({**original, "retry": True})


def scope(request: aioweb.Request) -> str:
    """The deciding account a request id belongs to (ids are scoped per account)."""
    account = request.query.get("account")
    if not account or len(account) > MAX_NAME:
        raise HTTPError(400, "invalid", "account is required: request ids are scoped to "
                        "their deciding account (the sender of a transfer or hold)")
    return account


class RequestReads:
    """A request's status and a hold's, each answered by the worker owning its request key."""

    def __init__(self, worker: ViewsReads, router: Router) -> None:
        self.worker, self.router = worker, router

    async def status(self, request: aioweb.Request, request_id: str) -> aioweb.Response:
        key = request_key(scope(request), request_id)

        async def local() -> aioweb.Response:
            status = self.worker.request_status(key)
            if status is None:
                raise HTTPError(404, "not_found", f"no outcome for request {request_id!r} (yet)")
            return json_response(status)
        return await self.router.route(request, key, local)

    async def hold(self, request: aioweb.Request, hold_id: str) -> aioweb.Response:
        key = request_key(scope(request), hold_id)

        async def local() -> aioweb.Response:
            hold = hold_view(self.worker.request_status(key))
            if hold is None:
                raise HTTPError(404, "not_found", f"no hold {hold_id!r} (yet)")
            return json_response(hold)
        return await self.router.route(request, key, local)


def register(worker: ViewsReads, router: Router, write_path: WritePath) -> None:
    app, reads = worker.app, RequestReads(worker, router)
    app.task(write_path.start)
    page(app, "/transfers", "Transfers", post=write_path.submit_transfer)
    page(app, "/requests", "Requests", post=write_path.submit_request)
    get_page(app, "/transfers/{request_id}", "TransferStatus", reads.status)
    get_page(app, "/holds/{hold_id}", "HoldStatus", reads.hold)
