"""The HTTP edge of a views worker: every request passes observe_middleware (latency
metrics, JSON errors, the Host check, the API key check of kbank.streams.views.access, the
security headers). The routes themselves are kbank.streams.views.routes, one room per
resource. Errors are JSON: {"error": code, "reason": text}.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from aiohttp import web as aioweb

from kbank.streams.config import Settings
from kbank.streams.views.access import API_KEY, authorize
from kbank.streams.views.http import HTTPError, error_response
from kbank.streams.views.reads import ViewsReads

log = logging.getLogger("bank.web")


# on every response: nothing of ours runs framed, sniffed or with another site's scripts
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# on every answer of a views worker the brokers have not answered for a while: the seconds
BROKERS_UNREACHABLE_HEADER = "Bank-Brokers-Unreachable-Seconds"


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
        silent = worker.engine_watch.unreachable_for_s()
        if silent is not None:   # what it serves may be older than the ledger: it says so
            response.headers[BROKERS_UNREACHABLE_HEADER] = str(int(silent))
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
