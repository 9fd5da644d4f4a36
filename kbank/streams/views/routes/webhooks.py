"""The webhook routes of a views worker: register, list, pause, resume, redrive, delete, and
each webhook's deliveries.

Registrations are records of webhooks.registrations (written here as the intake principal,
read back by a tail, so every views worker answers the same); deliveries are read from
webhooks.deliveries, which the webhook workers write. A client key sees and changes only
the webhooks it registered, over accounts it covers; an operator's may watch every account;
an auditor's reads. Someone else's webhook is a 404, as if it did not exist.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Awaitable, Callable

from aiohttp import web as aioweb
from confluent_kafka import Message

from kbank.streams import kafka, topics
from kbank.streams.apikeys import AUDITOR, OPERATOR, ApiKey
from kbank.streams.config import Settings
from kbank.streams.tail import TopicTail
from kbank.streams.views.access import API_KEY
from kbank.streams.views.http import HTTPError, get_page, json_object, json_response, page
from kbank.streams.views.reads import ViewsReads
from kbank.streams.webhooks.rules import (ACTIVE, DELIVERED, FAILED, NO_KEY_OWNER, PAUSED,
                                          PENDING, REDRIVE_MARK, InvalidWebhook, Webhook,
                                          new_webhook, suspension)
from kbank.streams.webhooks.registry import Registrations, allowed_hosts, read_delivery

KEPT_PER_WEBHOOK = 10_000     # the newest deliveries a views worker keeps of each webhook
Send = Callable[[bytes, "bytes | None", str], Awaitable[Any]]


class DeliveryLog:
    """The newest KEPT_PER_WEBHOOK deliveries of each webhook (their latest states), tailed
    from webhooks.deliveries and webhooks.break-deliveries."""

    def __init__(self, settings: Settings) -> None:
        self.by_hook: dict[str, OrderedDict[str, dict[str, Any]]] = {}
        self._tails = [TopicTail(settings, kafka.VIEWS, "bank-views-deliveries",
                                 settings.topic(topic), self._fold, f"webhook-{topic}")
                       for topic in (topics.DELIVERIES, topics.BREAK_DELIVERIES)]

    def _fold(self, msg: Message) -> None:
        if msg.value() is None or (msg.key() or b"").startswith(REDRIVE_MARK):
            return
        delivery = read_delivery(msg)
        if delivery is None:
            return
        kept = self.by_hook.setdefault(delivery.webhook_id, OrderedDict())
        kept.pop(delivery.event_id, None)
        kept[delivery.event_id] = delivery.public()
        if len(kept) > KEPT_PER_WEBHOOK:
            kept.popitem(last=False)


class WebhookRoutes:
    """The handlers of the webhook routes; `send()` gives the intake's producer once it has
    started, `start()` reads the registrations and deliveries (a task of the app)."""

    def __init__(self, worker: ViewsReads, send: Callable[[], Send]) -> None:
        self.worker, self.settings, self.send = worker, worker.settings, send
        self.hosts = allowed_hosts(worker.settings)
        self.hooks: Registrations | None = None
        self.deliveries: DeliveryLog | None = None
        self.redriven_at: dict[str, float] = {}   # webhook id -> when this worker last redrove it

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.hooks = await loop.run_in_executor(
            None, Registrations, self.settings, kafka.VIEWS, "bank-views-webhooks")
        self.deliveries = await loop.run_in_executor(None, DeliveryLog, self.settings)

    def registry(self) -> Registrations:
        if self.hooks is None or not self.hooks.ready.is_set():
            raise HTTPError(503, "starting", "webhook registrations are still being read",
                            retry_after=1)
        return self.hooks

    async def read_registrations(self) -> None:
        """Wait (a few seconds at most) for the registrations to be read once, after a start."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (self.hooks and self.hooks.ready.is_set()):
            await asyncio.sleep(0.02)
        self.registry()

    def visible(self, hook_id: str, key: ApiKey | None) -> Webhook:
        hook = self.registry().hooks.get(hook_id)
        if hook is None or not (key is None or key.role in (OPERATOR, AUDITOR)
                                or hook.owner == key.id):
            raise HTTPError(404, "not_found", f"no webhook {hook_id!r}")
        return hook

    def shown(self, hook: Webhook) -> dict[str, Any]:
        """What the API shows of a webhook, with why its deliveries wait if its key stopped
        working (revoked or expired)."""
        out = hook.public()
        if self.worker.keys is not None:
            why = suspension(hook, self.worker.keys.get(hook.owner), int(time.time() * 1000))
            if why is not None:
                out["suspended"] = why
        return out

    def changeable(self, request: aioweb.Request, hook_id: str) -> Webhook:
        key = request[API_KEY]
        hook = self.visible(hook_id, key)
        if key is not None and key.role == AUDITOR:
            raise HTTPError(403, "forbidden", "an auditor key may not change webhooks")
        return hook

    async def store(self, hook_id: str, record: Webhook | None) -> None:
        """Write a registration (None: delete it) and wait until this worker reads it back,
        so the caller's next request sees it."""
        await self.send()(hook_id.encode(), None if record is None else record.to_bytes(),
                          self.settings.topic(topics.WEBHOOKS))
        deadline = time.monotonic() + 10
        while self.registry().hooks.get(hook_id) != record:
            if time.monotonic() > deadline:
                raise HTTPError(503, "unavailable", "the change was written but not read back "
                                "within 10 s", retry_after=1)
            await asyncio.sleep(0.01)

    async def update(self, request: aioweb.Request, hook_id: str,
                     **changes: Any) -> aioweb.Response:
        await self.read_registrations()
        hook = replace(self.changeable(request, hook_id), **changes)
        await self.store(hook_id, hook)
        return json_response(self.shown(hook))

    async def create(self, request: aioweb.Request) -> aioweb.Response:
        """Register a URL for some ledger event kinds of some accounts; the signing secret
        is shown in this answer only."""
        await self.read_registrations()
        body = await json_object(request)
        key: ApiKey | None = request[API_KEY]
        try:
            hook = new_webhook(body, owner=key.id if key else NO_KEY_OWNER,
                               may_watch_all=key is None or key.role == OPERATOR,
                               allowed_hosts=self.hosts, now_ms=int(time.time() * 1000))
        except InvalidWebhook as exc:
            raise HTTPError(400, "invalid", str(exc)) from None
        outside = [a for a in hook.accounts or () if key is not None and not key.covers(a)]
        if outside:
            raise HTTPError(403, "forbidden", f"API key {key.id} does not cover "  # type: ignore[union-attr]
                            f"account {outside[0]!r}")
        owned = sum(1 for h in self.registry().hooks.values() if h.owner == hook.owner)
        if owned >= self.settings.webhooks_per_key:   # (as far as this worker has read them)
            raise HTTPError(409, "webhook_limit", f"this key has {owned} webhooks, the most "
                            f"one key may have (BANK_WEBHOOKS_PER_KEY); delete some first")
        await self.store(hook.id, hook)
        return json_response({**hook.public(), "secret": hook.secret}, status=201)

    async def list_all(self, request: aioweb.Request) -> aioweb.Response:
        await self.read_registrations()
        key = request[API_KEY]
        hooks = sorted(self.registry().hooks.values(), key=lambda h: (h.created_ms, h.id))
        return json_response({"webhooks": [self.shown(h) for h in hooks
                                           if key is None or key.role in (OPERATOR, AUDITOR)
                                           or h.owner == key.id]})

    async def show(self, request: aioweb.Request, webhook_id: str) -> aioweb.Response:
        await self.read_registrations()
        return json_response(self.shown(self.visible(webhook_id, request[API_KEY])))

    async def delete(self, request: aioweb.Request, webhook_id: str) -> aioweb.Response:
        await self.read_registrations()
        self.changeable(request, webhook_id)
        await self.store(webhook_id, None)
        return json_response({"id": webhook_id, "deleted": True})

    async def pause(self, request: aioweb.Request, webhook_id: str) -> aioweb.Response:
        """Deliveries wait (nothing is dropped) until it is resumed."""
        return await self.update(request, webhook_id, state=PAUSED)

    async def resume(self, request: aioweb.Request, webhook_id: str) -> aioweb.Response:
        """Deliveries go on. A webhook suspended because its key stopped working is resumed
        only by an operator, who takes it over (its owner becomes the operator's key), so the
        URL the revoked key chose gets nothing unless an operator says so."""
        await self.read_registrations()
        key: ApiKey | None = request[API_KEY]
        hook = self.changeable(request, webhook_id)
        suspended = self.shown(hook).get("suspended")
        if suspended is not None:
            if key is None or key.role != OPERATOR:
                raise HTTPError(403, "forbidden", suspended)
            return await self.update(request, webhook_id, state=ACTIVE, owner=key.id)
        return await self.update(request, webhook_id, state=ACTIVE)

    async def redrive(self, request: aioweb.Request, webhook_id: str) -> aioweb.Response:
        """Every failed delivery of the webhook is tried again from its first attempt; at
        most once per BANK_WEBHOOK_REDRIVE_INTERVAL_S per webhook (per views worker): a
        client hammering its own webhook's redrive made the webhook workers re-read its
        registration thousands of times and delayed everyone's deliveries."""
        await self.read_registrations()
        hook = self.changeable(request, webhook_id)
        now, interval = time.monotonic(), self.settings.webhook_redrive_interval_s
        wait = self.redriven_at.get(hook.id, -1e9) + interval - now
        if wait > 0:
            raise HTTPError(429, "rate_limited", f"webhook {hook.id} was redriven less than "
                            f"{interval:g} s ago", retry_after=max(1, int(wait + 0.999)))
        self.redriven_at[hook.id] = now
        return await self.update(request, webhook_id, redrive=hook.redrive + 1)

    async def delivery_list(self, request: aioweb.Request, webhook_id: str) -> aioweb.Response:
        """The newest deliveries first (of the last KEPT_PER_WEBHOOK), by status or event id,
        with the counts of each status among them."""
        await self.read_registrations()
        self.visible(webhook_id, request[API_KEY])
        status = request.query.get("status")
        if status not in (None, PENDING, DELIVERED, FAILED):
            raise HTTPError(400, "invalid", "status must be pending, delivered or failed")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise HTTPError(400, "invalid", "limit must be an integer") from None
        if not 1 <= limit <= 1000:
            raise HTTPError(400, "invalid", "limit must be between 1 and 1000")
        log = self.deliveries
        kept = list((log.by_hook.get(webhook_id) or {}).values()) if log else []
        wanted = request.query.get("event_id")
        rows = [d for d in reversed(kept) if (status is None or d["status"] == status)
                and (wanted is None or d["event_id"] == wanted)]
        counts = {s: sum(1 for d in kept if d["status"] == s) for s in (PENDING, DELIVERED, FAILED)}
        return json_response({"webhook_id": webhook_id, "counts": counts,
                              "deliveries": rows[:limit]})


def register(worker: ViewsReads, send: Callable[[], Send]) -> None:
    app, routes = worker.app, WebhookRoutes(worker, send)

    @app.task
    async def start_webhook_tails() -> None:
        await routes.start()

    page(app, "/webhooks", "Webhooks", post=routes.create, get=routes.list_all)
    page(app, "/webhooks/{webhook_id}", "OneWebhook", get=routes.show, delete=routes.delete)
    page(app, "/webhooks/{webhook_id}/pause", "PauseWebhook", post=routes.pause)
    page(app, "/webhooks/{webhook_id}/resume", "ResumeWebhook", post=routes.resume)
    page(app, "/webhooks/{webhook_id}/redrive", "RedriveWebhook", post=routes.redrive)
    get_page(app, "/webhooks/{webhook_id}/deliveries", "Deliveries", routes.delivery_list)
