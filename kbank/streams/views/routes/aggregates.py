"""Bank-wide figures: the rankings (largest balances, most active accounts) and /stats,
each merged from every views worker's own part (the /internal/* fan-out, with the caller's
key)."""
from __future__ import annotations

import time

from aiohttp import web as aioweb

from kbank.streams.model import DAY_MS, DEFAULT_CURRENCY, is_currency
from kbank.streams.views import queries
from kbank.streams.views.fold import BY_ACTIVITY, BY_BALANCE, global_figures
from kbank.streams.views.http import (HTTPError, caller_headers, every_peer, gather_totals,
                                      get_page, json_response)
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes.common import Router, query_int


def ranking_query(request: aioweb.Request, ranking: str) -> tuple[str, str, int]:
    """(ranking, group, limit) of a ranking's route and its fan-out."""
    limit = query_int(request, "limit", 10, 1, queries.MAX_TOP)
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


class Aggregates:
    """The rankings and /stats: this worker's part, and every worker's merged."""

    def __init__(self, worker: ViewsReads, router: Router) -> None:
        self.worker, self.router, self.settings = worker, router, worker.settings

    async def ranking(self, request: aioweb.Request, ranking: str) -> aioweb.Response:
        """A ranking's top accounts: each views worker's own, merged (each account is ranked
        by the one worker owning its partition)."""
        self.router.ready()
        name, group, limit = ranking_query(request, ranking)
        rows, complete = self.worker.top_accounts(name, group, limit,
                                                  self.settings.web_query_budget)
        for body in await every_peer(self.worker, "/internal/top", request,
                                     {"ranking": name, "group": group, "limit": str(limit)}):
            rows += [tuple(row) for row in body["rows"]]
            complete &= body["complete"]
        rows = queries.highest(rows, limit)
        figure = "balance" if ranking == BY_BALANCE else "events"
        scope = {"currency": group} if ranking == BY_BALANCE else \
            {"day": queries.format_day(int(group) * DAY_MS)}
        return json_response({**scope, "complete": complete,
                              "accounts": [{"account": a, figure: f} for f, a in rows]})

    async def largest_balances(self, request: aioweb.Request) -> aioweb.Response:
        return await self.ranking(request, BY_BALANCE)

    async def most_active(self, request: aioweb.Request) -> aioweb.Response:
        return await self.ranking(request, BY_ACTIVITY)

    async def top_here(self, request: aioweb.Request) -> aioweb.Response:
        name = request.query.get("ranking")
        group = request.query.get("group", "")
        if name not in (BY_BALANCE, BY_ACTIVITY) or not group or len(group) > 20:
            raise HTTPError(400, "invalid", "ranking and group")
        limit = query_int(request, "limit", 10, 1, queries.MAX_TOP)
        assert limit is not None
        rows, complete = self.worker.top_accounts(name, group, limit,
                                                  self.settings.web_query_budget)
        return json_response({"rows": rows, "complete": complete})

    async def stats(self, request: aioweb.Request) -> aioweb.Response:
        self.router.ready()
        parts = await gather_totals(self.worker, caller_headers(request))
        if len(parts) != self.settings.partitions:
            raise HTTPError(503, "rebalancing", f"{len(parts)} of {self.settings.partitions} "
                            "partitions answered; retry", retry_after=1)
        return json_response(global_figures(parts))

    async def totals_here(self, request: aioweb.Request) -> aioweb.Response:
        return json_response([[p, t.to_json()]
                              for p, t in self.worker.local_totals_by_partition()])


def register(worker: ViewsReads, router: Router) -> None:
    app, figures = worker.app, Aggregates(worker, router)
    get_page(app, "/aggregates/largest-balances", "LargestBalances", figures.largest_balances)
    get_page(app, "/aggregates/most-active", "MostActive", figures.most_active)
    get_page(app, "/internal/top", "InternalTop", figures.top_here)
    get_page(app, "/stats", "Stats", figures.stats)
    get_page(app, "/internal/totals", "InternalTotals", figures.totals_here)
