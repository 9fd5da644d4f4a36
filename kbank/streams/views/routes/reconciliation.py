"""The reconciliation's results (bank reconcile, the reconciler): each account's counts, and
an account's results filtered by status and value date, a page at a time. Any views worker
answers: each reads recon.results whole."""
from __future__ import annotations

from aiohttp import web as aioweb

from kbank.streams.books.recon import STATUSES, ReconShelf
from kbank.streams.model import is_name
from kbank.streams.views.http import HTTPError, get_page, json_response
from kbank.streams.views.queries import QueryError, parse_day
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes.common import query_int, read_to_end

MAX_PAGE = 1_000


class Reconciliation:
    def __init__(self, shelf: ReconShelf) -> None:
        self.shelf = shelf

    def _ready(self) -> None:
        read_to_end(self.shelf.ready, "the reconciliation's results")

    async def summary(self, request: aioweb.Request) -> aioweb.Response:
        """The reconciled accounts' counts of results per status, by name after `after`,
        `limit` at most, and the breaks of every account in all."""
        self._ready()
        after = request.query.get("after", "")
        limit = query_int(request, "limit", 1000, 1, MAX_PAGE)
        assert limit is not None
        counts = self.shelf.summary()
        names = [a for a in counts if a > after]
        page = names[:limit]
        return json_response({"accounts": {a: counts[a] for a in page},
                              "next": page[-1] if len(names) > limit else None,
                              "breaks": sum(c["mismatched"] + c["unmatched"]
                                            for c in counts.values())})

    async def account(self, request: aioweb.Request, account: str) -> aioweb.Response:
        """An account's results by item, filtered by `status` and value date (`from`, `to`,
        YYYY-MM-DD), after the item `after`, `limit` at most."""
        self._ready()
        if not is_name(account):
            raise HTTPError(400, "invalid", "not an account name")
        status = request.query.get("status")
        if status is not None and status not in STATUSES:
            raise HTTPError(400, "invalid", f"status is one of {', '.join(STATUSES)}")
        days = {}
        for name in ("from", "to"):
            if name in request.query:
                try:
                    parse_day(request.query[name])
                except QueryError as exc:
                    raise HTTPError(400, "invalid", str(exc)) from None
                days[name] = request.query[name]
        after = request.query.get("after", "")
        limit = query_int(request, "limit", 100, 1, MAX_PAGE)
        assert limit is not None
        results = dict(self.shelf.results.get(account, {}))
        rows = [{"item": item, **result} for item, result in sorted(results.items())
                if item > after and (status is None or result["status"] == status)
                and days.get("from", "") <= result["value_date"] <= days.get("to", "9999")]
        page = rows[:limit]
        return json_response({"account": account, "results": page,
                              "next": page[-1]["item"] if len(rows) > limit else None})


def register(worker: ViewsReads) -> None:
    app, routes = worker.app, Reconciliation(worker.recon)
    get_page(app, "/reconciliation", "Reconciliation", routes.summary)
    get_page(app, "/reconciliation/{account}", "AccountReconciliation", routes.account)
