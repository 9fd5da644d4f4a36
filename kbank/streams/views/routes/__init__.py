"""The routes of a views worker (openapi.yaml), one room per resource:

    requests    the write path (POST /transfers, /requests) and request and hold statuses
    accounts    an account's reads, statements and the accounts index
    aggregates  the rankings and /stats, merged from every worker
    operations  /health, /live, /metrics, /openapi.yaml
    (webhooks and the console: kbank.streams.views.webhooks and .console)

Each registers its pages on the worker's Faust app; common.Router sends a keyed query to the
worker that owns its key.
"""
from __future__ import annotations

from kbank.streams.views.console import register_console
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes import accounts, aggregates, operations, requests
from kbank.streams.views.routes.common import Router
from kbank.streams.views.webhooks import register_webhook_routes


def register_routes(worker: ViewsReads) -> None:
    router = Router(worker)
    write_path = requests.WritePath(worker)
    requests.register(worker, router, write_path)
    accounts.register(worker, router)
    aggregates.register(worker, router)
    operations.register(worker, write_path)
    register_webhook_routes(worker, write_path.send)
    register_console(worker)
