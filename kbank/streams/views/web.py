"""The HTTP endpoint of a views worker (the routes of openapi.yaml).

A query about an account or a request is answered by the worker that owns
the key's partition: any other worker forwards it there (once; a forwarded
request that lands on a non-owner, during a rebalance, gets 503 +
Retry-After rather than a possibly stale answer). Errors are JSON:
{"error": code, "reason": text}.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web as aioweb
from faust.web import View

from kbank.streams.apikeys import AUDITOR, OPERATOR, submit_refusal
from kbank.streams.config import Settings
from kbank.streams.decisions import (MAX_NAME, Rules, Undecodable, deciding_account,
                                     parse_request)
from kbank.streams.partitioning import partition_for
from kbank.streams.views.console import register_console
from kbank.streams.views.webhooks import register_webhook_routes
from kbank.streams.views.http import (HTTPError, caller_headers, error_response, every_peer,
                                      gather_totals, json_object, json_response)
from kbank.streams.views.reads import ViewsReads
from kbank.streams.model import (DAY_MS, DECIDED_STATUSES, DEFAULT_CURRENCY, event_request_key,
                                 is_currency, request_key)
from kbank.streams.views import queries
from kbank.streams.views.access import API_KEY, authorize
from kbank.streams.views.fold import BY_ACTIVITY, BY_BALANCE, global_figures, hold_view
from kbank.streams.views.intake import OutcomeWaiter, Overloaded, RequestProducer, is_conflict
from kbank.streams.health import read_crashes
from kbank.streams.views.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, LagUnavailable

log = logging.getLogger("bank.web")

ROUTED_HEADER = "X-Bank-Routed-By"
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
MAX_HISTORY_PAGE = 1000
STATUS_CHUNK = 20    # request keys asked of the other workers at once (they go in a URL)


def _query_int(request: aioweb.Request, name: str, default: int | None, low: int,
               high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, "invalid", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HTTPError(400, "invalid", f"{name} must be between {low} and {high}")
    return value


def _query_timeout(request: aioweb.Request, cap: float) -> float:
    raw = request.query.get("timeout", str(cap))
    try:
        value = float(raw)
    except ValueError:
        raise HTTPError(400, "invalid", "timeout must be a number of seconds") from None
    if not 0 <= value <= cap:
        raise HTTPError(400, "invalid", f"timeout must be between 0 and {cap} seconds")
    return value


def query(run):  # noqa: ANN001, ANN201
    """Run a history query; one it refuses is a 400 with its reason."""
    try:
        return run()
    except queries.QueryError as exc:
        raise HTTPError(400, "invalid", str(exc)) from None


def _transfer_filter(request: aioweb.Request) -> queries.TransferFilter:
    """GET /accounts/{id}/transfers' filters: from, to (times), kind (a comma list),
    counterparty, min_amount, max_amount, and metadata.<key>=<value>."""
    q = request.query

    def listed(name: str) -> frozenset[str]:
        return frozenset(v for v in q.get(name, "").split(",") if v)
    return queries.TransferFilter(
        since_ts=query(lambda: queries.parse_time(q["from"])) if "from" in q else None,
        until_ts=query(lambda: queries.parse_time(q["to"])) if "to" in q else None,
        kinds=listed("kind"), counterparty=q.get("counterparty"),
        min_amount=_query_int(request, "min_amount", None, 0, 2**63 - 1),
        max_amount=_query_int(request, "max_amount", None, 0, 2**63 - 1),
        metadata={k[len("metadata."):]: v for k, v in q.items() if k.startswith("metadata.")})


# on every response: nothing of ours runs framed, sniffed or with another site's scripts
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Host names a request may be addressed to (None: any)."""
    if settings.web_allowed_hosts.strip() == "*":
        return None
    named = [h.strip().lower() for h in settings.web_allowed_hosts.split(",") if h.strip()]
    return frozenset(named or [settings.web_host.lower(), "127.0.0.1", "localhost", "[::1]"])


def _host_refused(request: aioweb.Request, hosts: frozenset[str] | None) -> bool:
    if hosts is None:
        return False
    host = (request.host or "").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name not in hosts


def observe_middleware(worker: ViewsReads) -> Callable:
    """Latency metrics, JSON bodies for every error (aiohttp's own included), the Host
    check, the API key check (kbank.streams.views.access) and the security headers."""
    hosts = allowed_hosts(worker.settings)
    keys = worker.keys
    limiter = worker.limiter

    @aioweb.middleware
    async def observe(request: aioweb.Request, handler: Callable[..., Awaitable]) -> aioweb.StreamResponse:
        response = await _observe(request, handler)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _observe(request: aioweb.Request, handler: Callable[..., Awaitable]) -> aioweb.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            if _host_refused(request, hosts):
                raise HTTPError(421, "misdirected", f"this server does not answer for host "
                                f"{request.host!r} (BANK_WEB_ALLOWED_HOSTS)")
            request[API_KEY] = None if keys is None else authorize(request, keys, limiter)
            response = await handler(request)
            status = response.status
            return response
        except HTTPError as exc:
            status = exc.status
            return error_response(exc)
        except aioweb.HTTPException as exc:
            status = exc.status
            if exc.status < 400:
                raise
            return error_response(HTTPError(exc.status, exc.reason.lower().replace(" ", "_"),
                                            exc.text or exc.reason))
        except Exception:  # noqa: BLE001 - a bug must not take the worker down
            log.exception("error serving %s %s", request.method, request.path)
            return error_response(HTTPError(500, "internal", "internal error"))
        finally:
            info = request.match_info
            route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
            worker.metrics.http_latency.labels(request.method, route, str(status)).observe(
                time.perf_counter() - start)

    return observe


class Router:
    """Sends a keyed query to the worker owning the key's partition."""

    def __init__(self, worker: ViewsReads) -> None:
        self.worker = worker

    def _ready(self) -> None:
        app = self.worker.app
        if app.rebalancing or app.tables.recovery.in_recovery:
            raise HTTPError(503, "rebalancing", "partitions are moving between workers; retry",
                            retry_after=1)

    async def route(self, request: aioweb.Request, key: str,
                    local: Callable[[], Awaitable[aioweb.Response]]) -> aioweb.Response:
        app = self.worker.app
        self._ready()
        try:
            owner = app.router.key_store(self.worker.table_name, key)
        except KeyError:
            raise HTTPError(503, "rebalancing", "no worker owns this key yet; retry", retry_after=1) \
                from None
        own = app.conf.canonical_url
        if (owner.host, owner.port) == (own.host, own.port):
            return await local()
        if request.headers.get(ROUTED_HEADER):
            raise HTTPError(503, "rebalancing", "the key's partition is moving; retry", retry_after=1)
        url = request.url.with_host(owner.host).with_port(owner.port)
        try:
            async with app.http_client.request(
                    request.method, url,
                    headers={ROUTED_HEADER: self.worker.worker_id, **caller_headers(request)},
                    timeout=aiohttp.ClientTimeout(total=self.worker.settings.web_wait_timeout_s + 5),
            ) as resp:
                body = await resp.read()
                headers = {"Retry-After": resp.headers["Retry-After"]} \
                    if "Retry-After" in resp.headers else None
                return aioweb.Response(body=body, status=resp.status, headers=headers,
                                       content_type=resp.content_type)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise HTTPError(503, "unavailable", f"owner worker {owner} did not answer: {exc}",
                            retry_after=1) from None


def stalled_for(worker: ViewsReads, account: str) -> str | None:
    """Why a request of this account would not be decided soon: the engine's partition of
    it is stalled (None: it is not, as far as the views can tell)."""
    state = worker.engine_watch.state()
    if state["engine"] != "stalled":
        return None
    if partition_for(account, worker.settings.partitions) not in state["stall"]["partitions"]:
        return None
    return f"the engine's partition of this account is stalled: {state['stall']['cause']}"


def register_routes(worker: ViewsReads) -> None:
    app = worker.app
    settings = worker.settings
    router = Router(worker)
    cap = settings.web_wait_timeout_s
    hold_rules = Rules.from_settings(settings, settings.partitions)
    intake: dict[str, Any] = {}

    @app.task
    async def start_intake() -> None:
        # daemon threads: every POST awaits its acknowledgement, so nothing is left to flush
        loop = asyncio.get_running_loop()
        intake["waiter"] = await loop.run_in_executor(None, OutcomeWaiter, settings)
        intake["producer"] = RequestProducer(settings)

    async def first_decision(account: str, request_id: str, deadline: float,
                             headers: dict[str, str]) -> dict[str, Any] | None:
        """The status of an earlier submission of this id, from the status view (wherever it
        lives), once it is decided."""
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

    async def submit(request: aioweb.Request, transfers_only: bool) -> aioweb.Response:
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
        if (problem := hold_rules.hold_problem(body)) is not None:   # the engine's rule too
            raise HTTPError(400, "invalid", problem)
        # the key's rights are checked on the validated body (its fields have their types)
        if api_key is not None and (refusal := submit_refusal(api_key, body, key_name)):
            raise HTTPError(403, "forbidden", refusal)
        wait = request.query.get("wait")
        if wait not in (None, "completed"):
            raise HTTPError(400, "invalid", "wait must be 'completed'")
        timeout = _query_timeout(request, cap)
        deadline = time.monotonic() + timeout
        if "producer" not in intake:
            raise HTTPError(503, "starting", "worker is starting", retry_after=1)
        waiter: OutcomeWaiter = intake["waiter"]
        if wait and (stall := stalled_for(worker, key_name)) is not None:
            raise HTTPError(503, "engine_stalled", stall, retry_after=30)
        status_key = request_key(key_name, parsed.request_id)
        fut = waiter.register(status_key) if wait else None
        try:
            try:
                partition, offset = await intake["producer"].send(key, value)
            except Overloaded:
                raise HTTPError(503, "overloaded", "too many requests waiting for the broker",
                                retry_after=1) from None
            except RuntimeError as exc:
                raise HTTPError(503, "unavailable", f"broker did not accept the request: {exc}",
                                retry_after=1) from None
            accepted = {"request_id": parsed.request_id, "account": key_name,
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
            # the id was used before: the original decision, as the status view has it now
            first = await first_decision(key_name, parsed.request_id, deadline,
                                         caller_headers(request))
            original = first or {k: v for k, v in out.items()
                                 if k in ("request_id", "account", "status", "reason", "ts")}
            if is_conflict(out):
                return json_response({"error": "idempotency_conflict",
                                      "reason": "this request id was used by another request "
                                                "(another body) of this account",
                                      "original": original}, 409)
            return json_response({**original, "retry": True})
        result = {"request_id": out["request_id"], "account": out["account"],
                  "status": out["status"]}
        for extra in ("reason", "detail", "ts", "requested_by"):
            if out.get(extra) is not None:
                result[extra] = out[extra]
        return json_response(result)

    @app.page("/transfers")
    class Transfers(View):
        async def post(self, request: aioweb.Request) -> aioweb.Response:
            return await submit(request, transfers_only=True)

    @app.page("/requests")
    class Requests(View):
        async def post(self, request: aioweb.Request) -> aioweb.Response:
            return await submit(request, transfers_only=False)

    def scope(request: aioweb.Request) -> str:
        """The deciding account a request id belongs to (ids are scoped per account)."""
        account = request.query.get("account")
        if not account or len(account) > MAX_NAME:
            raise HTTPError(400, "invalid", "account is required: request ids are scoped to "
                            "their deciding account (the sender of a transfer or hold)")
        return account

    @app.page("/transfers/{request_id}")
    class TransferStatus(View):
        async def get(self, request: aioweb.Request, request_id: str) -> aioweb.Response:
            key = request_key(scope(request), request_id)

            async def local() -> aioweb.Response:
                status = worker.request_status(key)
                if status is None:
                    raise HTTPError(404, "not_found", f"no outcome for request {request_id!r} (yet)")
                return json_response(status)
            return await router.route(request, key, local)

    @app.page("/holds/{hold_id}")
    class HoldStatus(View):
        async def get(self, request: aioweb.Request, hold_id: str) -> aioweb.Response:
            key = request_key(scope(request), hold_id)

            async def local() -> aioweb.Response:
                hold = hold_view(worker.request_status(key))
                if hold is None:
                    raise HTTPError(404, "not_found", f"no hold {hold_id!r} (yet)")
                return json_response(hold)
            return await router.route(request, key, local)

    async def account_view(request: aioweb.Request, account: str):  # noqa: ANN202
        """The account's view, waiting for min_seq (read-your-writes) if asked."""
        min_seq = _query_int(request, "min_seq", 0, 0, 2**62)
        deadline = time.monotonic() + _query_timeout(request, cap)
        while True:
            view = worker.account_view(account)
            if view is not None and view.seq >= min_seq:
                return view
            if time.monotonic() >= deadline:
                if view is None and not min_seq:
                    raise HTTPError(404, "not_found", f"no account {account!r}")
                raise HTTPError(503, "behind", f"the view of {account!r} has not reached seq "
                                f"{min_seq} yet (at {view.seq if view else 0})", retry_after=1)
            await asyncio.sleep(0.02)

    @app.page("/accounts/{account}")
    class Account(View):
        async def get(self, request: aioweb.Request, account: str) -> aioweb.Response:
            async def local() -> aioweb.Response:
                view = await account_view(request, account)
                return json_response(view.public(account))
            return await router.route(request, account, local)

    @app.page("/accounts/{account}/history")
    class History(View):
        async def get(self, request: aioweb.Request, account: str) -> aioweb.Response:
            async def local() -> aioweb.Response:
                view = await account_view(request, account)
                limit = _query_int(request, "limit", 50, 1, MAX_HISTORY_PAGE)
                before = _query_int(request, "before_seq", view.seq + 1, 1, 2**62)
                page = worker.history_page(account, min(before, view.seq + 1), limit)
                entries = [entry for entry, _ in page]
                ledger_partition = partition_for(account, settings.partitions)
                last = entries[-1]["seq"] if entries else None
                return json_response({
                    "account": account, "seq": view.seq, "entries": entries,
                    "positions": [{"partition": ledger_partition, "offset": offset}
                                  for _, offset in page],
                    "next_before_seq": last if last is not None and last > 1 else None})
            return await router.route(request, account, local)

    def account_reader(account: str):  # noqa: ANN202
        return lambda seq: worker.history_entry(account, seq)

    async def with_statuses(request: aioweb.Request, account: str, last_seq: int,
                            keep: queries.TransferFilter, newest_first: bool, limit: int,
                            statuses: frozenset[str]) -> queries.Page:
        """A filtered page whose events' requests have one of `statuses`. Statuses live on
        the owners of their request keys' outcome partitions, so candidates are taken a
        chunk at a time and their statuses asked of every views worker at once."""
        key = request.get(API_KEY)
        if key is not None and key.role not in (OPERATOR, AUDITOR):
            raise HTTPError(403, "forbidden", "the status filter reads requests across accounts: "
                            "operator and auditor keys only")
        found: list[queries.Entry] = []
        cursor, scanned = request.query.get("cursor"), 0
        while len(found) < limit and scanned < settings.web_query_budget:
            chunk = query(lambda: queries.transfers_page(
                account_reader(account), last_seq, keep, newest_first,
                min(limit - len(found), STATUS_CHUNK), cursor,
                settings.web_query_budget - scanned))
            scanned += chunk.scanned
            wanted = [event_request_key(event) for event, _ in chunk.entries]
            known = await statuses_of(request, wanted)
            found += [entry for entry, k in zip(chunk.entries, wanted) if known.get(k) in statuses]
            cursor = chunk.next_cursor
            if cursor is None:
                break
        return queries.Page(found, cursor, scanned)

    async def statuses_of(request: aioweb.Request, keys: list[str]) -> dict[str, str]:
        """The status of each request key, from whichever views worker holds it."""
        known = {k: s["status"] for k in keys if (s := worker.request_status(k)) is not None}
        missing = [k for k in keys if k not in known]
        if missing:
            for rows in await every_peer(worker, "/internal/statuses", request,
                                         {"keys": orjson.dumps(missing).decode()}):
                known.update(rows)
        return known

    @app.page("/internal/statuses")
    class InternalStatuses(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            """The statuses this worker holds of the request keys asked (a JSON list)."""
            try:
                keys = orjson.loads(request.query.get("keys", "[]"))
            except orjson.JSONDecodeError:
                raise HTTPError(400, "invalid", "keys must be a JSON list") from None
            if not isinstance(keys, list) or len(keys) > STATUS_CHUNK \
                    or not all(isinstance(k, str) for k in keys):
                raise HTTPError(400, "invalid", f"keys: a list of at most {STATUS_CHUNK} keys")
            return json_response({k: s["status"] for k in keys
                                  if (s := worker.request_status(k)) is not None})

    @app.page("/accounts/{account}/transfers")
    class AccountTransfers(View):
        async def get(self, request: aioweb.Request, account: str) -> aioweb.Response:
            """Filtered events, a page at a time, with an opaque cursor (queries.py)."""
            async def local() -> aioweb.Response:
                view = await account_view(request, account)
                order = request.query.get("order", "newest")
                if order not in ("newest", "oldest"):
                    raise HTTPError(400, "invalid", "order must be newest or oldest")
                keep = _transfer_filter(request)
                limit = _query_int(request, "limit", 50, 1, queries.MAX_PAGE)
                statuses = frozenset(v for v in request.query.get("status", "").split(",") if v)
                if statuses:
                    page = await with_statuses(request, account, view.seq, keep,
                                               order == "newest", limit, statuses)
                else:
                    page = query(lambda: queries.transfers_page(
                        account_reader(account), view.seq, keep, order == "newest", limit,
                        request.query.get("cursor"), settings.web_query_budget))
                return json_response({
                    "account": account, "seq": view.seq,
                    "entries": [event for event, _ in page.entries],
                    "positions": [{"partition": partition_for(account, settings.partitions),
                                   "offset": offset} for _, offset in page.entries],
                    "next_cursor": page.next_cursor, "scanned": page.scanned})
            return await router.route(request, account, local)

    @app.page("/accounts/{account}/balance")
    class Balance(View):
        async def get(self, request: aioweb.Request, account: str) -> aioweb.Response:
            """The balance after the last event at or before `as_of` (a time) or before
            `as_of_offset` (a position in the account's ledger partition)."""
            async def local() -> aioweb.Response:
                view = await account_view(request, account)
                at_time, at_offset = request.query.get("as_of"), request.query.get("as_of_offset")
                if (at_time is None) == (at_offset is None):
                    raise HTTPError(400, "invalid", "give as_of (a time) or as_of_offset")
                found = query(lambda: queries.balance_at(
                    account_reader(account), view.seq,
                    ts=queries.parse_time(at_time) if at_time is not None else None,
                    offset=_query_int(request, "as_of_offset", 0, 0, 2**62)
                    if at_offset is not None else None))
                return json_response({"account": account, "currency": view.currency,
                                      "partition": partition_for(account, settings.partitions),
                                      **found})
            return await router.route(request, account, local)

    @app.page("/accounts/{account}/statement")
    class Statement(View):
        async def get(self, request: aioweb.Request, account: str) -> aioweb.Response:
            async def local() -> aioweb.Response:
                view = await account_view(request, account)
                if "from" not in request.query:
                    raise HTTPError(400, "invalid", "from is required (ISO-8601 or ms); to "
                                    "defaults to now")
                to = request.query.get("to")   # a statement without `to` runs to now
                found = query(lambda: queries.statement(
                    account_reader(account), lambda seq: worker.totals_after(account, seq),
                    view.seq,
                    queries.parse_time(request.query["from"]),
                    queries.parse_time(to) if to is not None else int(time.time() * 1000),
                    request.query.get("daily") in ("1", "true"),
                    partition_for(account, settings.partitions)))
                return json_response({"account": account, "currency": view.currency, **found})
            return await router.route(request, account, local)

    def index_query(request: aioweb.Request) -> tuple[str, str, str, int]:
        """(name, value, after, limit) of GET /accounts and its fan-out."""
        asked = [(k, v) for k, v in request.query.items()
                 if k == "currency" or k.startswith("metadata.")]
        if len(asked) != 1:
            raise HTTPError(400, "invalid", "give one of currency=CODE or metadata.KEY=VALUE")
        after = request.query.get("after", "")
        return (*asked[0], after, _query_int(request, "limit", 100, 1, queries.MAX_PAGE))

    @app.page("/accounts")
    class AccountsIndex(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            """Accounts by currency or by a metadata pair, in name order, from every views
            worker's index (folded when each account was opened: no scan of the accounts)."""
            router._ready()
            name, value, after, limit = index_query(request)
            found = set(worker.indexed_accounts(name, value, after, limit))
            for rows in await every_peer(worker, "/internal/accounts", request,
                                         dict(request.query)):
                found.update(rows)
            page = sorted(found)[:limit]
            return json_response({"accounts": page, "next_after": page[-1]
                                  if len(page) == limit else None})

    def ranking_query(request: aioweb.Request, ranking: str) -> tuple[str, str, int]:
        """(ranking, group, limit) of a ranking's route and its fan-out."""
        limit = _query_int(request, "limit", 10, 1, queries.MAX_TOP)
        assert limit is not None
        if ranking == BY_BALANCE:
            currency = request.query.get("currency", DEFAULT_CURRENCY)
            if not is_currency(currency):
                raise HTTPError(400, "invalid", "currency must be 3-12 upper-case letters or digits")
            return ranking, currency, limit
        day = request.query.get("day")
        try:
            number = (int(time.time() * 1000) if day is None else queries.parse_day(day)) // DAY_MS
        except queries.QueryError as exc:
            raise HTTPError(400, "invalid", str(exc)) from None
        return ranking, str(number), limit

    async def ranking(request: aioweb.Request, ranking: str) -> aioweb.Response:
        """A ranking's top accounts: each views worker's own, merged (each account is ranked
        by the one worker owning its partition)."""
        router._ready()
        name, group, limit = ranking_query(request, ranking)
        rows, complete = worker.top_accounts(name, group, limit, settings.web_query_budget)
        for body in await every_peer(worker, "/internal/top", request,
                                     {"ranking": name, "group": group, "limit": str(limit)}):
            rows += [tuple(row) for row in body["rows"]]
            complete &= body["complete"]
        rows = queries.highest(rows, limit)
        figure = "balance" if ranking == BY_BALANCE else "events"
        scope = {"currency": group} if ranking == BY_BALANCE else \
            {"day": queries.format_day(int(group) * DAY_MS)}
        return json_response({**scope, "complete": complete,
                              "accounts": [{"account": a, figure: f} for f, a in rows]})

    @app.page("/aggregates/largest-balances")
    class LargestBalances(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            return await ranking(request, BY_BALANCE)

    @app.page("/aggregates/most-active")
    class MostActive(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            return await ranking(request, BY_ACTIVITY)

    @app.page("/internal/top")
    class InternalTop(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            name = request.query.get("ranking")
            group = request.query.get("group", "")
            if name not in (BY_BALANCE, BY_ACTIVITY) or not group or len(group) > 20:
                raise HTTPError(400, "invalid", "ranking and group")
            limit = _query_int(request, "limit", 10, 1, queries.MAX_TOP)
            assert limit is not None
            rows, complete = worker.top_accounts(name, group, limit, settings.web_query_budget)
            return json_response({"rows": rows, "complete": complete})

    @app.page("/internal/accounts")
    class InternalAccounts(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            return json_response(worker.indexed_accounts(*index_query(request)))

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            router._ready()
            parts = await gather_totals(worker, caller_headers(request))
            if len(parts) != settings.partitions:
                raise HTTPError(503, "rebalancing", f"{len(parts)} of {settings.partitions} "
                                "partitions answered; retry", retry_after=1)
            return json_response(global_figures(parts))

    @app.page("/internal/totals")
    class InternalTotals(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            return json_response([[p, t.to_json()]
                                  for p, t in worker.local_totals_by_partition()])

    @app.page("/health")
    class Health(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            """Readiness: 200 only when this worker serves (503 + the reasons otherwise)."""
            reasons = []
            try:
                lag: int | None = sum(row[2] for row in worker.lag())
            except LagUnavailable as exc:   # not 0: a lag that cannot be read is not "no lag"
                lag = None
                reasons.append(f"consumer lag unavailable: {exc}")
            if app.rebalancing:
                reasons.append("partitions are moving between workers")
            accepting = "producer" in intake and (worker.keys is None or worker.keys.ready.is_set())
            if not accepting:
                reasons.append("starting: the request producer or the API keys are not ready")
            ready = not reasons
            engine = worker.engine_watch.state()   # the views serve reads whatever it says
            return json_response({
                "status": ("ok" if engine["engine"] != "stalled" else "degraded") if ready
                else "not_ready",
                **engine,
                **({"reason": "; ".join(reasons)} if reasons else {}),
                "worker": worker.worker_id, "generation": worker.generation,
                "ledger_partitions": worker.ledger_partitions(),
                "rebalancing": bool(app.rebalancing), "accepting_requests": accepting,
                "auth": "off" if worker.keys is None else "api_keys",
                "lag": lag, "changelog_backlog": app.producer.buffer.size + worker.writes.unacknowledged,
                "worker_crashes": read_crashes(worker.settings.state_dir)},
                200 if ready else 503, None if ready else {"Retry-After": "1"})

    @app.page("/live")
    class Live(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            """Liveness: 200 while the process serves HTTP at all."""
            return json_response({"status": "alive", "worker": worker.worker_id})

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            return aioweb.Response(body=worker.metrics.render(),
                                   headers={"Content-Type": METRICS_CONTENT_TYPE})

    def intake_send() -> Any:
        if "producer" not in intake:
            raise HTTPError(503, "starting", "worker is starting", retry_after=1)
        return intake["producer"].send

    register_webhook_routes(worker, intake_send)
    register_console(worker)

    @app.page("/openapi.yaml")
    class OpenAPI(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            return aioweb.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/yaml")
