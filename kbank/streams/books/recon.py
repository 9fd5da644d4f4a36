"""The reconciliation's results as the views read them: recon.results keyed by account and
item (a line of a statement, `line:<id>`, or a ledger event, `event:<seq>`), the latest value
per key (a tombstone: the item has no result any more), tailed from the topic's start."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
from confluent_kafka import Message

from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.tail import TopicTail

STATUSES = ("matched", "mismatched", "unmatched")


def result_key(account: str, item: str) -> bytes:
    return f"{account}\x00{item}".encode("utf-8", "surrogatepass")


def split_result_key(key: bytes) -> tuple[str, str]:
    account, _, item = key.decode("utf-8", "surrogatepass").partition("\x00")
    return account, item


class ReconShelf:
    """account -> item -> its latest result, kept as recon.results has it now."""

    def __init__(self, settings: Settings, role: str = kafka.VIEWS,
                 group: str = "bank-views-recon") -> None:
        self.results: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self._tail = TopicTail(settings, role, group, settings.topic(topics.RECON_RESULTS),
                               self._fold, "recon-shelf")
        self.ready = self._tail.ready

    def _fold(self, msg: Message) -> None:
        account, item = split_result_key(msg.key() or b"")
        if msg.value() is None:
            self.results.get(account, {}).pop(item, None)
            return
        try:
            result = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            return
        if isinstance(result, dict) and result.get("status") in STATUSES:
            self.results[account][item] = result

    def summary(self) -> dict[str, dict[str, int]]:
        """Each account's count of results per status."""
        counts: dict[str, dict[str, int]] = {}
        for account, results in sorted(self.results.items()):
            mine = counts[account] = dict.fromkeys(STATUSES, 0)
            for result in list(results.values()):
                mine[result["status"]] += 1
        return counts

    def stop(self) -> None:
        self._tail.close()
