"""Bank-wide figures: the rankings (largest balances, most active accounts) and /stats,
each merged from every views worker's own part (the /internal/* fan-out, with the caller's
key)."""
from __future__ import annotations

import time

from aiohttp import web as aioweb
from faust.web import View

from kbank.streams.model import DAY_MS, DEFAULT_CURRENCY, is_currency
from kbank.streams.views import queries
from kbank.streams.views.fold import BY_ACTIVITY, BY_BALANCE, global_figures
from kbank.streams.views.http import (HTTPError, caller_headers, every_peer, gather_totals,
                                      json_response)
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes.common import Router, query_int


def register(worker: ViewsReads, router: Router) -> None:
    app, settings = worker.app, worker.settings

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

    async def ranking(request: aioweb.Request, ranking: str) -> aioweb.Response:
        """A ranking's top accounts: each views worker's own, merged (each account is ranked
        by the one worker owning its partition)."""
        router.ready()
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
            limit = query_int(request, "limit", 10, 1, queries.MAX_TOP)
            assert limit is not None
            rows, complete = worker.top_accounts(name, group, limit, settings.web_query_budget)
            return json_response({"rows": rows, "complete": complete})

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: aioweb.Request) -> aioweb.Response:
            router.ready()
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
