"""An account's reads: its view, history, filtered transfers (with the status filter's
fan-out), its balance at a point of the log and statements, and the accounts index by
currency or metadata (every worker's part of it)."""
from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web as aioweb

from kbank.streams.apikeys import AUDITOR, OPERATOR
from kbank.streams.model import event_request_key
from kbank.streams.partitioning import partition_for
from kbank.streams.views import queries
from kbank.streams.views.access import API_KEY
from kbank.streams.views.http import HTTPError, every_peer, get_page, json_response
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.fold import AccountView
from kbank.streams.views.routes.common import (MAX_HISTORY_PAGE, STATUS_CHUNK, Router,
                                               keyed_page, query, query_int, query_timeout,
                                               transfer_filter)


class AccountReads:
    """The handlers of an account's routes: each keyed one runs on the views worker that owns
    the account (register routes it there)."""

    def __init__(self, worker: ViewsReads) -> None:
        self.worker, self.settings = worker, worker.settings

    async def view(self, request: aioweb.Request, account: str) -> AccountView:
        """The account's view, waiting for min_seq (read-your-writes) if asked."""
        min_seq = query_int(request, "min_seq", 0, 0, 2**62)
        deadline = time.monotonic() + query_timeout(request, self.settings.web_wait_timeout_s)
        while True:
            view = self.worker.account_view(account)
            if view is not None and (view.seq >= min_seq
                                     or self.settings.unsafe_views_serve_isolated):
                return view
            if time.monotonic() >= deadline:
                if view is None and not min_seq:
                    raise HTTPError(404, "not_found", f"no account {account!r}")
                raise HTTPError(503, "behind", f"the view of {account!r} has not reached seq "
                                f"{min_seq} yet (at {view.seq if view else 0})", retry_after=1)
            await asyncio.sleep(0.02)

    def reader(self, account: str):  # noqa: ANN201 - queries.Reader
        return lambda seq: self.worker.history_entry(account, seq)

    def partition(self, account: str) -> int:
        return partition_for(account, self.settings.partitions)

    async def account(self, request: aioweb.Request, account: str) -> aioweb.Response:
        view = await self.view(request, account)
        return json_response(view.public(account))

    async def history(self, request: aioweb.Request, account: str) -> aioweb.Response:
        view = await self.view(request, account)
        limit = query_int(request, "limit", 50, 1, MAX_HISTORY_PAGE)
        before = query_int(request, "before_seq", view.seq + 1, 1, 2**62)
        page = self.worker.history_page(account, min(before, view.seq + 1), limit)
        entries = [entry for entry, _ in page]
        last = entries[-1]["seq"] if entries else None
        return json_response({
            "account": account, "seq": view.seq, "entries": entries,
            "positions": [{"partition": self.partition(account), "offset": offset}
                          for _, offset in page],
            "next_before_seq": last if last is not None and last > 1 else None})

    async def transfers(self, request: aioweb.Request, account: str) -> aioweb.Response:
        """Filtered events, a page at a time, with an opaque cursor (queries.py)."""
        view = await self.view(request, account)
        order = request.query.get("order", "newest")
        if order not in ("newest", "oldest"):
            raise HTTPError(400, "invalid", "order must be newest or oldest")
        keep = transfer_filter(request)
        limit = query_int(request, "limit", 50, 1, queries.MAX_PAGE)
        statuses = frozenset(v for v in request.query.get("status", "").split(",") if v)
        if statuses:
            page = await self.with_statuses(request, account, view.seq, keep,
                                            order == "newest", limit, statuses)
        else:
            page = query(lambda: queries.transfers_page(
                self.reader(account), view.seq, keep, order == "newest", limit,
                request.query.get("cursor"), self.settings.web_query_budget))
        return json_response({
            "account": account, "seq": view.seq,
            "entries": [event for event, _ in page.entries],
            "positions": [{"partition": self.partition(account), "offset": offset}
                          for _, offset in page.entries],
            "next_cursor": page.next_cursor, "scanned": page.scanned})

    async def with_statuses(self, request: aioweb.Request, account: str, last_seq: int,
                            keep: queries.TransferFilter, newest_first: bool, limit: int,
                            statuses: frozenset[str]) -> queries.Page:
        """A filtered page whose events' requests have one of `statuses`. Statuses live on
        the owners of their request keys' outcome partitions, so candidates are taken a
        chunk at a time and their statuses asked of every views worker at once."""
        key = request.get(API_KEY)
        if key is not None and key.role not in (OPERATOR, AUDITOR):
            raise HTTPError(403, "forbidden", "the status filter reads requests across accounts: "
                            "operator and auditor keys only")
        budget = self.settings.web_query_budget
        found: list[queries.Entry] = []
        cursor, scanned = request.query.get("cursor"), 0
        while len(found) < limit and scanned < budget:
            chunk = query(lambda: queries.transfers_page(
                self.reader(account), last_seq, keep, newest_first,
                min(limit - len(found), STATUS_CHUNK), cursor, budget - scanned))
            scanned += chunk.scanned
            wanted = [event_request_key(event) for event, _ in chunk.entries]
            known = await self.statuses_of(request, wanted)
            found += [entry for entry, k in zip(chunk.entries, wanted) if known.get(k) in statuses]
            cursor = chunk.next_cursor
            if cursor is None:
                break
        return queries.Page(found, cursor, scanned)

    async def statuses_of(self, request: aioweb.Request, keys: list[str]) -> dict[str, str]:
        """The status of each request key, from whichever views worker holds it."""
        known = {k: s["status"] for k in keys if (s := self.worker.request_status(k)) is not None}
        missing = [k for k in keys if k not in known]
        if missing:
            for rows in await every_peer(self.worker, "/internal/statuses", request,
                                         {"keys": orjson.dumps(missing).decode()}):
                known.update(rows)
        return known

    async def internal_statuses(self, request: aioweb.Request) -> aioweb.Response:
        """The statuses this worker holds of the request keys asked (a JSON list)."""
        try:
            keys = orjson.loads(request.query.get("keys", "[]"))
        except orjson.JSONDecodeError:
            raise HTTPError(400, "invalid", "keys must be a JSON list") from None
        if not isinstance(keys, list) or len(keys) > STATUS_CHUNK \
                or not all(isinstance(k, str) for k in keys):
            raise HTTPError(400, "invalid", f"keys: a list of at most {STATUS_CHUNK} keys")
        return json_response({k: s["status"] for k in keys
                              if (s := self.worker.request_status(k)) is not None})

    async def balance(self, request: aioweb.Request, account: str) -> aioweb.Response:
        """The balance after the last event at or before `as_of` (a time) or before
        `as_of_offset` (a position in the account's ledger partition)."""
        view = await self.view(request, account)
        at_time, at_offset = request.query.get("as_of"), request.query.get("as_of_offset")
        if (at_time is None) == (at_offset is None):
            raise HTTPError(400, "invalid", "give as_of (a time) or as_of_offset")
        found = query(lambda: queries.balance_at(
            self.reader(account), view.seq,
            ts=queries.parse_time(at_time) if at_time is not None else None,
            offset=query_int(request, "as_of_offset", 0, 0, 2**62)
            if at_offset is not None else None))
        return json_response({"account": account, "currency": view.currency,
                              "partition": self.partition(account), **found})

    async def statement(self, request: aioweb.Request, account: str) -> aioweb.Response:
        view = await self.view(request, account)
        if "from" not in request.query:
            raise HTTPError(400, "invalid", "from is required (ISO-8601 or ms); to "
                            "defaults to now")
        to = request.query.get("to")   # a statement without `to` runs to now
        found = query(lambda: queries.statement(
            self.reader(account), lambda seq: self.worker.totals_after(account, seq), view.seq,
            queries.parse_time(request.query["from"]),
            queries.parse_time(to) if to is not None else int(time.time() * 1000),
            request.query.get("daily") in ("1", "true"), self.partition(account)))
        return json_response({"account": account, "currency": view.currency, **found})


def index_query(request: aioweb.Request) -> tuple[str, str, str, int]:
    """(name, value, after, limit) of GET /accounts and its fan-out."""
    asked = [(k, v) for k, v in request.query.items()
             if k == "currency" or k.startswith("metadata.")]
    if len(asked) != 1:
        raise HTTPError(400, "invalid", "give one of currency=CODE or metadata.KEY=VALUE")
    after = request.query.get("after", "")
    return (*asked[0], after, query_int(request, "limit", 100, 1, queries.MAX_PAGE))


class AccountsIndex:
    """Accounts by currency or by a metadata pair, in name order, from every views worker's
    index (folded when each account was opened: no scan of the accounts)."""

    def __init__(self, worker: ViewsReads, router: Router) -> None:
        self.worker, self.router = worker, router

    async def everywhere(self, request: aioweb.Request) -> aioweb.Response:
        self.router.ready()
        name, value, after, limit = index_query(request)
        found = set(self.worker.indexed_accounts(name, value, after, limit))
        for rows in await every_peer(self.worker, "/internal/accounts", request,
                                     dict(request.query)):
            found.update(rows)
        page = sorted(found)[:limit]
        return json_response({"accounts": page, "next_after": page[-1]
                              if len(page) == limit else None})

    async def here(self, request: aioweb.Request) -> aioweb.Response:
        return json_response(self.worker.indexed_accounts(*index_query(request)))


def register(worker: ViewsReads, router: Router) -> None:
    app, reads, index = worker.app, AccountReads(worker), AccountsIndex(worker, router)
    for path, name, handler in (
            ("/accounts/{account}", "Account", reads.account),
            ("/accounts/{account}/history", "History", reads.history),
            ("/accounts/{account}/transfers", "AccountTransfers", reads.transfers),
            ("/accounts/{account}/balance", "Balance", reads.balance),
            ("/accounts/{account}/statement", "Statement", reads.statement)):
        keyed_page(app, router, path, name, handler)
    get_page(app, "/internal/statuses", "InternalStatuses", reads.internal_statuses)
    get_page(app, "/accounts", "AccountsIndex", index.everywhere)
    get_page(app, "/internal/accounts", "InternalAccounts", index.here)
