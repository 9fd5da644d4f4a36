"""The routes of a views worker (openapi.yaml), one room per resource:

    requests    the write path (POST /transfers, /requests) and request and hold statuses
    accounts    an account's reads, statements and the accounts index
    aggregates  the rankings and /stats, merged from every worker
    operations  /health, /live, /metrics, /openapi.yaml
    webhooks    register, list, pause, resume, redrive, delete, and deliveries
    closes      the closes of the books (bank close): list, figures, accounts, trial balance
    reconciliation  the reconciler's results: counts per account, an account's results
    (the console: kbank.streams.views.console)

Each registers its pages on the worker's Faust app; common.Router sends a keyed query to the
worker that owns its key.
"""
from __future__ import annotations

from kbank.streams.views.console import register_console
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes import (accounts, aggregates, closes, operations,
                                       reconciliation, requests, webhooks)
from kbank.streams.views.routes.common import Router


def register_routes(worker: ViewsReads) -> None:
    router = Router(worker)
    write_path = requests.WritePath(worker)
    requests.register(worker, router, write_path)
    accounts.register(worker, router)
    aggregates.register(worker, router)
    operations.register(worker, write_path)
    webhooks.register(worker, write_path.send)
    closes.register(worker)
    reconciliation.register(worker)
    register_console(worker)
