"""The operator's console: a page at `/` and the one endpoint it needs beyond the public API.

The page (kbank/streams/views/static/) is plain HTML with a little JavaScript and reads
only the HTTP API: /overview, /accounts/{id}, /accounts/{id}/history,
/transfers/{id} and POST /transfers. /overview gathers what no single worker
knows: the global figures (as /stats), the conservation check, request
latencies merged over every views worker's histograms, and the lag of the
engine's and the views' consumers per partition; and the last close of the books
and the reconciliation's breaks. Any worker serves it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any

from aiohttp import web as aioweb
from confluent_kafka import KafkaException

from kbank.streams.views.fold import global_figures
from kbank.streams.views.http import (HTTPError, ask_peers, caller_headers, gather_totals, get_page,
                                      json_response)
from kbank.streams.views.metrics import LATENCY_BUCKETS, LagUnavailable, ViewsMetrics
from kbank.streams.views.reads import ViewsReads


def conservation(stats: dict[str, Any]) -> dict[str, Any]:
    """Money conserved in each currency on its own: balances + in flight = deposits -
    withdrawals (the overview's card, per currency)."""
    per = {cur: {"deposits_minus_withdrawals": m["deposits"] - m["withdrawals"],
                 "balances_plus_in_flight": m["total_balance"] + m["money_in_flight"],
                 "decimals": m["decimals"]}
           for cur, m in stats["currencies"].items()}
    return {"ok": all(c["deposits_minus_withdrawals"] == c["balances_plus_in_flight"]
                      for c in per.values()), "currencies": per}


STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"console.js": "application/javascript", "console.css": "text/css"}
PEER_TIMEOUT_S = 3.0
MAX_BREAK_ACCOUNTS = 20      # the accounts with the most breaks the overview names


def histogram_quantile(q: float, cumulative: list[float], bounds: tuple[float, ...] = LATENCY_BUCKETS
                       ) -> float | None:
    """The q-quantile of a histogram given as cumulative counts per bucket (the last is +Inf),
    interpolated linearly within its bucket as Prometheus' histogram_quantile does; None if
    empty. A quantile in the +Inf bucket is reported as the largest finite bound."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for i, count in enumerate(cumulative):
        if count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            upper = bounds[i]
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower = bounds[i] if i < len(bounds) else lower
        below = count
    return bounds[-1]


def merge_cumulative(histograms: list[list[float]]) -> list[float]:
    """Bucket-wise sum of histograms with the same buckets."""
    width = len(LATENCY_BUCKETS) + 1
    return [sum(h[i] for h in histograms if len(h) == width) for i in range(width)]


def latency_summary(cumulative: list[float]) -> dict[str, Any]:
    def ms(q: float) -> float | None:
        value = histogram_quantile(q, cumulative)
        return None if value is None else round(value * 1000, 1)
    return {"p50_ms": ms(0.5), "p99_ms": ms(0.99), "count": int(cumulative[-1]) if cumulative else 0}


def local_overview(worker: ViewsReads) -> dict[str, Any]:
    """What this worker alone knows: its latency histograms and its consumers' lag."""
    try:
        lag: list[Any] | None = [list(row) for row in worker.lag()]
        reason = None
    except LagUnavailable as exc:
        lag, reason = None, str(exc)
    metrics = worker.metrics
    return {"worker": worker.worker_id, "url": str(worker.app.conf.canonical_url),
            "initiation": ViewsMetrics.cumulative_buckets(metrics.initiation),
            "completion": ViewsMetrics.cumulative_buckets(metrics.completion),
            "lag": lag, **({"reason": reason} if reason else {})}


async def gather_overviews(worker: ViewsReads, headers: dict[str, str]) -> list[dict[str, Any]]:
    """local_overview of every views worker the table's router knows (this one included); a
    worker that does not answer is listed with `"ok": false` and the reason."""
    found = [{**local_overview(worker), "ok": True}]
    for url, status, body in await ask_peers(worker, "/internal/overview", headers, PEER_TIMEOUT_S):
        if status == 200:
            found.append({**body, "ok": True})
        else:
            reason = f"did not answer: {body}" if status is None else \
                f"answered {status}: {body.get('reason') if isinstance(body, dict) else body}"
            found.append({"url": url, "ok": False, "reason": reason})
    return found


def books_overview(worker: ViewsReads) -> dict[str, Any]:
    """The last close of the books and the reconciliation's breaks (None: not read yet)."""
    closes = worker.closes.manifests() if worker.closes.ready.is_set() else None
    counts = worker.recon.summary() if worker.recon.ready.is_set() else None
    breaks = None if counts is None else \
        {a: c["mismatched"] + c["unmatched"] for a, c in counts.items()
         if c["mismatched"] + c["unmatched"]}
    most = None if breaks is None else \
        dict(sorted(breaks.items(), key=lambda item: (-item[1], item[0]))[:MAX_BREAK_ACCOUNTS])
    return {"closes": None if closes is None else len(closes),
            "last_close": closes[-1] if closes else None,
            "breaks": None if breaks is None else sum(breaks.values()),
            "accounts_with_breaks": most}


class ConsoleRoutes:
    """The console's page and files, and the overview it reads."""

    def __init__(self, worker: ViewsReads) -> None:
        self.worker = worker

    async def page(self, request: aioweb.Request) -> aioweb.Response:
        return aioweb.Response(body=(STATIC_DIR / "console.html").read_bytes(),
                               content_type="text/html", charset="utf-8")

    async def favicon(self, request: aioweb.Request) -> aioweb.Response:
        return aioweb.Response(status=204)

    async def static(self, request: aioweb.Request, name: str) -> aioweb.Response:
        if name not in STATIC_FILES:
            raise HTTPError(404, "not_found", f"no console file {name!r}")
        return aioweb.Response(body=(STATIC_DIR / name).read_bytes(),
                               content_type=STATIC_FILES[name], charset="utf-8")

    async def overview_here(self, request: aioweb.Request) -> aioweb.Response:
        return json_response(local_overview(self.worker))

    async def overview(self, request: aioweb.Request) -> aioweb.Response:
        worker, partitions = self.worker, self.worker.settings.partitions
        headers = caller_headers(request)
        parts, workers = await asyncio.gather(gather_totals(worker, headers),
                                              gather_overviews(worker, headers))
        stats = global_figures(parts) if len(parts) == partitions else None
        try:
            engine = await asyncio.get_running_loop().run_in_executor(
                None, worker.engine_watch.lag.read)
            engine_reason = None
        except (KafkaException, concurrent.futures.TimeoutError) as exc:   # shown on the page
            engine, engine_reason = None, f"{type(exc).__name__}: {exc}"
        answered = [w for w in workers if w["ok"]]
        return json_response({
            "ts": int(time.time() * 1000),
            "stats": stats,
            "partitions_answered": len(parts), "partitions": partitions,
            "books": books_overview(worker),
            "conservation": None if stats is None else conservation(stats),
            "latency": {kind: latency_summary(merge_cumulative([w[kind] for w in answered]))
                        for kind in ("initiation", "completion")},
            "engine_lag": engine, **({"engine_lag_reason": engine_reason} if engine_reason else {}),
            "engine_progress": worker.engine_watch.state(),
            "views_lag": [{"worker": w["worker"], "topic": t, "partition": p, "lag": n}
                          for w in answered for t, p, n in (w.get("lag") or [])],
            "workers": [{k: w[k] for k in ("worker", "url", "ok", "reason") if k in w}
                        for w in workers],
        })


def register_console(worker: ViewsReads) -> None:
    app, console = worker.app, ConsoleRoutes(worker)
    get_page(app, "/", "Console", console.page)
    get_page(app, "/favicon.ico", "Favicon", console.favicon)
    get_page(app, "/console/{name}", "Static", console.static)
    get_page(app, "/internal/overview", "InternalOverview", console.overview_here)
    get_page(app, "/overview", "Overview", console.overview)
