"""What a worker holds for one owned partition: its store, its buffered input and the index
of its pending holds' deadlines (Kafka Streams' StreamTask, without the processing)."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from confluent_kafka import Message

from kbank.streams.engine.state import PartitionStore
from kbank.streams.model import PENDING, Hold


@dataclass
class PartitionTask:
    """Everything a worker holds for one owned partition."""

    partition: int
    store: PartitionStore
    next_credit: int | None = None     # next transfers.credits offset (None: from the start)
    next_request: int | None = None    # next transfers.requests offset
    credits: list[Message] = field(default_factory=list)
    requests: list[Message] = field(default_factory=list)
    changelog_next: int = 0            # next changelog offset after this batch's records
    deadlines: list[tuple[int, str]] = field(default_factory=list)  # heap of pending holds
    expiring: list[tuple[int, str]] = field(default_factory=list)   # requested in the open batch

    def track_holds(self) -> None:
        """Index the committed pending holds by deadline (after a restore)."""
        self.deadlines = list(self.store.pending_holds())
        heapq.heapify(self.deadlines)
        self.expiring = []

    def due_holds(self, now_ms: int) -> list[tuple[str, Hold]]:
        """The pending holds (by hold key) whose deadline has passed, taken off the index for
        this batch."""
        due = []
        while self.deadlines and self.deadlines[0][0] <= now_ms:
            deadline, key = heapq.heappop(self.deadlines)
            hold = self.store.hold(key)
            if hold is not None and hold.state == PENDING:
                self.expiring.append((deadline, key))
                due.append((key, hold))
        return due

    def batch_committed(self, holds: dict[str, Hold]) -> None:
        """Index the holds the committed batch made; its expiry requests are in the log."""
        for hold_id, hold in holds.items():
            if hold.state == PENDING and hold.members is None:   # linked ones never expire
                heapq.heappush(self.deadlines, (hold.deadline, hold_id))
        self.expiring = []

    def take(self, limit: int) -> tuple[list[Message], list[Message]]:
        """Up to `limit` buffered records, credits first (money in flight lands first)."""
        credits = self.credits[:limit]
        requests = self.requests[:max(0, limit - len(credits))]
        del self.credits[:len(credits)]
        del self.requests[:len(requests)]
        return credits, requests

    def clear(self) -> None:
        """The open batch aborted: forget its input, state and expiry requests."""
        self.credits.clear()
        self.requests.clear()
        self.store.discard()
        for item in self.expiring:
            heapq.heappush(self.deadlines, item)
        self.expiring = []
