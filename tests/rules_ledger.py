"""The engine's rules run in memory: one partition's state, with transfers.credits as a queue.

The unit and property tests of the rules drive this instead of a broker. It applies a
Decision the way the engine's processor does (markers with their values, holds under their
request keys, the partition's money supply), encodes every output as the engine would, and
checks the outputs' bounds, so a rule that makes an unwritable record fails here first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from kbank.replay.ledger import LedgerFold
from kbank.replay.verify import LedgerChecks, VerifyReport
from kbank.streams.decisions import (BadMessage, Decision, Rules, Undecodable, deciding_account,
                               expiry_message, parse_message)
from kbank.streams.engine.apply import MemoryState, credit_decision, record, request_decision
from kbank.streams.model import CREDIT, PENDING, REFUND, Account, Hold, Position, split_request_key

POS = Position("transfers.requests", 0, 0)
CREDITS_POS = Position("transfers.credits", 0, 0)
T0 = 1_764_000_000_000


@dataclass
class Ledger:
    """One partition's worth of engine state (every account lives on it), decided through
    the engine's own adapter (kbank.streams.engine.apply)."""

    rules: Rules = field(default_factory=Rules)
    state: MemoryState = field(default_factory=MemoryState)
    pending: list[dict] = field(default_factory=list)
    delivered: list[dict] = field(default_factory=list)
    # each message's record timestamp: its sending input's, as the engine stamps credits
    pending_ts: list[int] = field(default_factory=list)
    delivered_ts: list[int] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    ts: int = T0

    @property
    def accounts(self) -> dict[str, Account]:
        return self.state.accounts

    @property
    def holds(self) -> dict[str, Hold]:
        return self.state.holds

    @property
    def applied(self) -> dict[str, str]:
        return self.state.markers

    @property
    def supply(self) -> int:
        return self.state.money

    def emit(self, d: Decision, ts: int | None = None) -> None:
        """Encode every output (bounded), then apply the decision, as the processor does: with
        its input's timestamp (a credit's is its sending input's, not the time it arrives),
        which stamps its markers and its messages."""
        ts = self.ts if ts is None else ts
        previous = self.applied.get(d.marker) if d.marker is not None else None
        assert previous is None or (int(previous.split("|")[0]) + self.rules.id_window_ms <= ts
                                    and not d.marker.startswith("i:")), (d.marker, previous)
        out = record(self.state, d, ts)
        assert self.supply <= self.rules.supply_cap
        if out.event is not None:
            self.events.append(out.event)
        self.outcomes += d.outcomes
        self.pending += [m for _, m in d.messages]
        self.pending_ts += [ts] * len(d.messages)

    def send_raw(self, key: bytes | None, value: bytes) -> list[dict]:
        """Decide one transfers.requests record; returns its outcomes."""
        before = len(self.outcomes)
        try:
            decision = request_decision(self.state, key, value, self.ts, POS, self.rules)
        except Undecodable as exc:
            self.dead_letters.append(str(exc))
            return []
        self.emit(decision)
        return self.outcomes[before:]

    def send(self, body: dict) -> list[dict]:
        key = deciding_account(body)
        return self.send_raw(key.encode("utf-8", "surrogatepass") if isinstance(key, str) else None,
                             orjson.dumps(body))

    def deliver_message(self, msg: dict, ts: int | None = None) -> None:
        """Decide one transfers.credits message stamped ts (default: now), as it arrives on
        the wire."""
        try:
            msg = parse_message(msg["account"].encode("utf-8", "surrogatepass"), orjson.dumps(msg))
            decision = credit_decision(self.state, msg, self.ts if ts is None else ts,
                                       CREDITS_POS, self.rules)
        except BadMessage as exc:
            self.dead_letters.append(str(exc))
            return
        self.emit(decision, ts)

    def deliver(self, i: int = 0, again: bool = False) -> None:
        """Deliver the oldest pending message of some receiver (transfers.credits keeps each
        receiver's messages from one sender in order: a hold's notice precedes its settlement),
        or deliver an earlier message again."""
        if again:
            msg, ts = self.delivered[i % len(self.delivered)], self.delivered_ts[i % len(self.delivered)]
        else:
            heads = list({m["account"]: n for n, m in reversed(list(enumerate(self.pending)))}.values())
            msg, ts = self.pending.pop(heads[i % len(heads)]), self.pending_ts.pop(heads[i % len(heads)])
        self.delivered.append(msg)
        self.delivered_ts.append(ts)
        self.deliver_message(msg, ts)

    def deliver_all(self) -> None:
        while self.pending:
            self.deliver()

    def deliver_older_than(self, age_ms: int) -> None:
        """Deliver every message sent more than age_ms ago: the engine reads a partition's
        credits with its requests, so none waits anywhere near the id window."""
        while self.pending and min(self.pending_ts) < self.ts - age_ms:
            self.deliver(0)

    def expire_due(self) -> None:
        """The engine's timer: an expiry message for every pending hold past its deadline."""
        for key, hold in sorted(self.holds.items()):
            if hold.state == PENDING and hold.members is None and hold.deadline <= self.ts:
                self.deliver_message(expiry_message(split_request_key(key)[1], hold))

    def in_flight(self) -> int:
        """Money debited whose credit or refund has not been delivered yet."""
        return sum(m["amount"] for m in self.pending if m["kind"] in (CREDIT, REFUND))

    def in_flight_by_currency(self) -> dict[str, int]:
        """in_flight, per currency (a refund is in its receiver's, the sender's, currency)."""
        flows: dict[str, int] = {}
        for m in self.pending:
            if m["kind"] in (CREDIT, REFUND):
                cur = m["currency"] if m["kind"] == CREDIT else self.accounts[m["account"]].currency
                flows[cur] = flows.get(cur, 0) + m["amount"]
        return flows

    def deposits_minus_withdrawals_by_currency(self) -> dict[str, int]:
        flows: dict[str, int] = {}
        for raw in self.events:
            ev = orjson.loads(raw)
            sign = {"deposited": 1, "withdrawn": -1}.get(ev["kind"], 0)
            if sign:
                cur = self.accounts[ev["account"]].currency
                flows[cur] = flows.get(cur, 0) + sign * ev["amount"]
        return flows

    def deposits_minus_withdrawals(self) -> int:
        total = 0
        for raw in self.events:
            ev = orjson.loads(raw)
            total += {"deposited": 1, "withdrawn": -1}.get(ev["kind"], 0) * ev["amount"]
        return total

    def verify(self) -> VerifyReport:
        fold, checks, report = LedgerFold(), LedgerChecks(self.rules.id_window_ms), VerifyReport()
        for offset, raw in enumerate(self.events):
            ev = fold.apply(raw, f"event {offset}", 0, offset)   # one partition: one chain
            assert ev is not None, "every event is new: seqs gap-free, no copies"
            checks.add(ev, fold.accounts[ev["account"]])
        checks.finish(fold, report)
        return report


def opened(*funded: tuple[str, int], rules: Rules | None = None) -> Ledger:
    led = Ledger(rules or Rules())
    for name, amount in funded:
        led.send({"type": "open_account", "request_id": f"open-{name}", "account": name})
        if amount:
            led.send({"type": "deposit", "request_id": f"dep-{name}", "account": name, "amount": amount})
    return led
