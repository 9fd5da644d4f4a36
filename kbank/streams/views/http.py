"""HTTP plumbing shared by the web endpoint and the console: JSON errors, the caller's
credentials, and asking the other views workers (the peer fan-out of /stats and /overview)."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web as aioweb
from faust.web import View

from kbank.streams.decisions import parse_json
from kbank.streams.views.fold import PartitionTotals
from kbank.streams.views.reads import ViewsReads

FORWARDED_HEADERS = ("Authorization",)   # a peer asked on a caller's behalf sees the caller's key


class HTTPError(Exception):
    """Ends a request with a JSON error body (and Retry-After, or other headers, if given)."""

    def __init__(self, status: int, error: str, reason: str, retry_after: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason
        self.headers = {**(headers or {}),
                        **({"Retry-After": str(retry_after)} if retry_after is not None else {})}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> aioweb.Response:
    return aioweb.Response(body=orjson.dumps(body), status=status, headers=headers,
                           content_type="application/json")


def error_response(exc: HTTPError) -> aioweb.Response:
    return json_response({"error": exc.error, "reason": exc.reason}, exc.status,
                         exc.headers or None)


async def json_object(request: aioweb.Request) -> dict[str, Any]:
    """A POST's body: a JSON object sent as application/json (a cross-site form can post
    text/plain or form data, never application/json), else 415 or 400 with the reason."""
    if request.content_type != "application/json":
        raise HTTPError(415, "unsupported_media_type",
                        "the body must be sent as Content-Type: application/json")
    raw = await request.read()
    if not raw:
        raise HTTPError(400, "invalid", "empty body: expected a JSON object")
    try:
        body = parse_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, "invalid", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "invalid", "body must be a JSON object")
    return body


def caller_headers(request: aioweb.Request) -> dict[str, str]:
    """The caller's credentials, for a request made to a peer on its behalf."""
    return {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}


async def ask_peers(reads: ViewsReads, path: str, headers: dict[str, str],
                    timeout_s: float, query: dict[str, str] | None = None
                    ) -> list[tuple[str, int | None, Any]]:
    """GET `path` (?`query`) of every other views worker the table's router knows, all at once:
    (url, status, JSON body) each; a worker that did not answer has status None and the
    error's text as its body."""
    app = reads.app
    own = app.conf.canonical_url

    async def ask(url: str) -> tuple[str, int | None, Any]:
        target = aiohttp.client.URL(url)
        try:
            async with app.http_client.get(target.with_path(path).with_query(query or {}),
                                           headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return url, resp.status, await resp.json(loads=orjson.loads)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return url, None, f"{type(exc).__name__} {exc}".strip()

    def is_peer(url: str) -> bool:
        target = aiohttp.client.URL(url)
        return (target.host, target.port) != (own.host, own.port)

    peers = [url for url in sorted(set(app.router.table_metadata(reads.table_name))) if is_peer(url)]
    return list(await asyncio.gather(*(ask(url) for url in peers)))


async def every_peer(reads: ViewsReads, path: str, request: aioweb.Request,
                     query: dict[str, str] | None = None) -> list[Any]:
    """The JSON bodies of every other views worker's answer to `path`, asked with the
    caller's key; one that does not answer 200 makes the whole query a 503 (a partial
    answer would be a wrong one)."""
    bodies = []
    for url, status, body in await ask_peers(reads, path, caller_headers(request), 5.0, query):
        if status != 200:
            raise HTTPError(503, "unavailable", f"views worker {url} did not answer "
                            f"({status}); retry", retry_after=1)
        bodies.append(body)
    return bodies


async def gather_totals(worker: ViewsReads, headers: dict[str, str]) -> list[PartitionTotals]:
    """Totals of every ledger partition, asked of the worker that owns each (with the
    caller's credentials, `headers`)."""
    found: dict[int, PartitionTotals] = dict(worker.local_totals_by_partition())
    for _, status, rows in await ask_peers(worker, "/internal/totals", headers, 5.0):
        for partition, raw in rows if status == 200 else []:
            found[partition] = PartitionTotals(*raw)
    return list(found.values())


Handler = Callable[..., Awaitable[aioweb.Response]]


def page(app, path: str, name: str, **handlers: Handler) -> None:  # noqa: ANN001 - faust.App
    """A route whose handlers, by HTTP method, are plain coroutines of (request, **the path's
    parts): the route rooms keep their handlers as named methods, not classes in a closure."""
    def method(handler: Handler):  # noqa: ANN202
        async def call(view, request: aioweb.Request, **parts: str) -> aioweb.Response:  # noqa: ANN001
            return await handler(request, **parts)
        call.__doc__ = handler.__doc__
        return call
    app.page(path, name=name)(type(name, (View,), {m: method(h) for m, h in handlers.items()}))


def get_page(app, path: str, name: str, handler: Handler) -> None:  # noqa: ANN001 - faust.App
    page(app, path, name, get=handler)
