"""What every route room shares: reading query parameters, running a history query, and
sending a keyed query to the worker that owns its key (Router)."""
from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web as aioweb

from kbank.streams.partitioning import partition_for
from kbank.streams.views import queries
from kbank.streams.views.http import Handler, HTTPError, caller_headers, get_page
from kbank.streams.views.reads import ViewsReads

ROUTED_HEADER = "X-Bank-Routed-By"
MAX_HISTORY_PAGE = 1000
STATUS_CHUNK = 20    # request keys asked of the other workers at once (they go in a URL)


def query_int(request: aioweb.Request, name: str, default: int | None, low: int,
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


def read_to_end(ready: threading.Event, what: str) -> None:
    """503 (retry in a second) until a tail of a topic has read it to its end once: before
    that an answer could miss a record, and a wrong answer is worse than none."""
    if not ready.is_set():
        raise HTTPError(503, "starting", f"{what} are still being read; retry", retry_after=1)


def query_timeout(request: aioweb.Request, cap: float) -> float:
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


def transfer_filter(request: aioweb.Request) -> queries.TransferFilter:
    """GET /accounts/{id}/transfers' filters: from, to (times), kind (a comma list),
    counterparty, min_amount, max_amount, and metadata.<key>=<value>."""
    q = request.query

    def listed(name: str) -> frozenset[str]:
        return frozenset(v for v in q.get(name, "").split(",") if v)
    return queries.TransferFilter(
        since_ts=query(lambda: queries.parse_time(q["from"])) if "from" in q else None,
        until_ts=query(lambda: queries.parse_time(q["to"])) if "to" in q else None,
        kinds=listed("kind"), counterparty=q.get("counterparty"),
        min_amount=query_int(request, "min_amount", None, 0, 2**63 - 1),
        max_amount=query_int(request, "max_amount", None, 0, 2**63 - 1),
        metadata={k[len("metadata."):]: v for k, v in q.items() if k.startswith("metadata.")})


class Router:
    """Sends a keyed query to the worker owning the key's partition."""

    def __init__(self, worker: ViewsReads) -> None:
        self.worker = worker

    def ready(self) -> None:
        app = self.worker.app
        if app.rebalancing or app.tables.recovery.in_recovery:
            raise HTTPError(503, "rebalancing", "partitions are moving between workers; retry",
                            retry_after=1)

    async def route(self, request: aioweb.Request, key: str,
                    local: Callable[[], Awaitable[aioweb.Response]]) -> aioweb.Response:
        app = self.worker.app
        self.ready()
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


def keyed_page(app, router: "Router", path: str, name: str, handler: Handler) -> None:  # noqa: ANN001
    """A GET route of one account's data, run on the views worker owning the account."""
    async def on_owner(request: aioweb.Request, account: str) -> aioweb.Response:
        return await router.route(request, account, lambda: handler(request, account))
    on_owner.__doc__ = handler.__doc__
    get_page(app, path, name, on_owner)


def stalled_for(worker: ViewsReads, account: str) -> str | None:
    """Why a request of this account would not be decided soon: the engine's partition of
    it is stalled (None: it is not, as far as the views can tell)."""
    state = worker.engine_watch.state()
    if state["engine"] != "stalled":
        return None
    if partition_for(account, worker.settings.partitions) not in state["stall"]["partitions"]:
        return None
    return f"the engine's partition of this account is stalled: {state['stall']['cause']}"
