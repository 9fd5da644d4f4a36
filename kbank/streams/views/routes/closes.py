"""The closes of the books (bank close, kbank.streams.books): their list, one close's figures, its accounts page
by page, its trial balance. Any views worker answers: each reads books.closes whole."""
from __future__ import annotations

import asyncio

from aiohttp import web as aioweb

from kbank.streams.books.closes import Close, CloseError, close_id as name_of, split_close_name
from kbank.streams.books.shelf import ClosesShelf
from kbank.streams.books.trial import TooManyGroups, trial_balance
from kbank.streams.model import is_currency, is_name
from kbank.streams.views.http import HTTPError, get_page, json_response
from kbank.streams.views.queries import QueryError, parse_time
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes.common import query_int, read_to_end

MAX_PAGE = 1_000


class Closes:
    def __init__(self, shelf: ClosesShelf) -> None:
        self.shelf = shelf

    def _ready(self) -> None:
        read_to_end(self.shelf.ready, "the closes")

    def _manifest(self, name: str) -> dict:
        self._ready()
        try:
            instant, currency = split_close_name(name)
            wanted = name_of(parse_time(instant), currency)
        except QueryError as exc:
            raise HTTPError(400, "invalid", f"a close is named by its instant: {exc}") from None
        manifest = self.shelf.manifest(wanted)
        if manifest is None:
            raise HTTPError(404, "not_found", f"there is no close {wanted} (bank close --at)")
        return manifest

    async def _close(self, name: str) -> Close:
        manifest = self._manifest(name)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self.shelf.close, manifest["id"])
        except CloseError as exc:
            raise HTTPError(503, "unreadable", str(exc)) from None

    async def list(self, request: aioweb.Request) -> aioweb.Response:
        """Every close, oldest first, after `after` (an instant), `limit` at most."""
        self._ready()
        limit = query_int(request, "limit", 100, 1, MAX_PAGE)
        after = request.query.get("after")
        try:
            after_ms = parse_time(after) if after is not None else -1
        except QueryError as exc:
            raise HTTPError(400, "invalid", str(exc)) from None
        found = [m for m in self.shelf.manifests() if m.get("at_ms", 0) > after_ms]
        return json_response({"closes": found[:limit], "more": len(found) > (limit or 0)})

    async def one(self, request: aioweb.Request, close_id: str) -> aioweb.Response:
        return json_response(self._manifest(close_id))

    async def accounts(self, request: aioweb.Request, close_id: str) -> aioweb.Response:
        """The close's accounts by name, after `after`, `limit` at most, of one `currency`."""
        after = request.query.get("after", "")
        currency = request.query.get("currency")
        if after and not is_name(after):
            raise HTTPError(400, "invalid", "after must be an account name")
        if currency is not None and not is_currency(currency):
            raise HTTPError(400, "invalid", "currency must be 3-12 upper-case letters or digits")
        limit = query_int(request, "limit", 100, 1, MAX_PAGE)
        assert limit is not None
        close = await self._close(close_id)
        rows = [a for a in close.accounts if a.name > after
                and (currency is None or a.currency == currency)]
        page = rows[:limit]
        return json_response({"close": close.id, "accounts": [a.__dict__ for a in page],
                              "next": page[-1].name if len(rows) > limit else None})

    async def trial_balance(self, request: aioweb.Request, close_id: str) -> aioweb.Response:
        """Per currency, grouped by the metadata key `by` (none: one group)."""
        by = request.query.get("by")
        if by is not None and (not by or len(by) > 64):
            raise HTTPError(400, "invalid", "by is a metadata key of 1 to 64 characters")
        close = await self._close(close_id)
        try:
            return json_response(trial_balance(close, by))
        except TooManyGroups as exc:
            raise HTTPError(400, "too_many_groups", str(exc)) from None


def register(worker: ViewsReads) -> None:
    app, closes = worker.app, Closes(worker.closes)
    get_page(app, "/closes", "Closes", closes.list)
    get_page(app, "/closes/{close_id}", "Close", closes.one)
    get_page(app, "/closes/{close_id}/accounts", "CloseAccounts", closes.accounts)
    get_page(app, "/closes/{close_id}/trial-balance", "TrialBalance", closes.trial_balance)
