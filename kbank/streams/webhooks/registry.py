"""What the webhook and views workers read back of the webhook topics: the registrations
(a tail of webhooks.registrations) and delivery records, each checked before it is
believed."""
from __future__ import annotations

import logging

from confluent_kafka import Message

from kbank.streams import topics
from kbank.streams.config import Settings
from kbank.streams.tail import TopicTail
from kbank.streams.webhooks.rules import Delivery, InvalidWebhook, Webhook

log = logging.getLogger("bank.webhooks")


def allowed_hosts(settings: Settings) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in settings.webhook_allowed_hosts.split(",")
                     if h.strip())


class Registrations:
    """Every webhook registration, as webhooks.registrations has it now (tailed)."""

    def __init__(self, settings: Settings, role: str, group: str) -> None:
        self.hooks: dict[str, Webhook] = {}
        self._tail = TopicTail(settings, role, group, settings.topic(topics.WEBHOOKS),
                               self._fold, "webhook-registrations")
        self.ready = self._tail.ready

    def _fold(self, msg: Message) -> None:
        hook_id = (msg.key() or b"").decode("utf-8", "replace")
        if msg.value() is None:
            self.hooks.pop(hook_id, None)
            return
        try:
            hook = Webhook.from_bytes(msg.value())
        except InvalidWebhook as exc:
            log.error("skipping webhook registration at offset %d: %s", msg.offset(), exc)
            return
        if hook.id != hook_id:
            log.error("skipping webhook registration at offset %d: key is not its id", msg.offset())
            return
        self.hooks[hook.id] = hook


def read_delivery(msg: Message) -> Delivery | None:
    """A webhooks.deliveries record, or None (logged) if no webhook worker wrote it so."""
    try:
        return Delivery.from_bytes(msg.value())
    except InvalidWebhook as exc:
        log.error("skipping delivery record at %d@%d: %s", msg.partition(), msg.offset(), exc)
        return None
