"""The engine's rules run in memory: one partition's state, with transfers.credits as a queue.

The unit and property tests of the rules drive this instead of a broker. It applies a
Decision the way the engine's processor does (markers with their values, holds under their
request keys, the partition's money supply), encodes every output as the engine would, and
checks the outputs' bounds, so a rule that makes an unwritable record fails here first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from replay.ledger import LedgerFold
from replay.verify import LedgerChecks, VerifyReport
from streams.decisions import (EXPIRE, BadMessage, Decision, FirstDecision, Rules, Undecodable,
                               credit_marker, decide_credit, decide_request, deciding_account,
                               expiry_message, incoming_marker, message_scope, parse_message,
                               parse_request, request_marker)
from streams.engine.processor import MAX_OUTPUT_BYTES
from streams.model import (CREDIT, LINK_ACK, PENDING, REFUND, Account, Hold, Position,
                           request_key, split_request_key)

POS = Position("transfers.requests", 0, 0)
CREDITS_POS = Position("transfers.credits", 0, 0)
T0 = 1_764_000_000_000


@dataclass
class Ledger:
    """One partition's worth of engine state (every account lives on it)."""

    rules: Rules = field(default_factory=Rules)
    accounts: dict[str, Account] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)          # by request key
    applied: dict[str, str] = field(default_factory=dict)         # marker -> value
    supply: int = 0
    pending: list[dict] = field(default_factory=list)
    delivered: list[dict] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    ts: int = T0

    def emit(self, d: Decision) -> None:
        """Encode every output (bounded), then apply the decision, as the processor does."""
        encoded = [orjson.dumps(d.event)] if d.event is not None else []
        encoded += [orjson.dumps(o) for o in d.outcomes]
        encoded += [orjson.dumps(m) for _, m in d.messages]
        assert all(len(raw) <= MAX_OUTPUT_BYTES for raw in encoded)
        if d.state is not None:
            previous = self.accounts.get(d.account)
            assert d.event["seq"] == (previous.seq if previous else 0) + 1
            self.accounts[d.account] = d.state
        if d.marker:
            assert d.marker not in self.applied, d.marker
            self.applied[d.marker] = d.marker_value
        if d.hold is not None:
            self.holds[d.hold[0]] = d.hold[1]
        self.supply += d.supply
        assert self.supply <= self.rules.supply_cap
        if d.event is not None:
            self.events.append(encoded[0])
        self.outcomes += d.outcomes
        self.pending += [m for _, m in d.messages]

    def send_raw(self, key: bytes | None, value: bytes) -> list[dict]:
        """Decide one transfers.requests record; returns its outcomes."""
        before = len(self.outcomes)
        try:
            req = parse_request(key, value)
        except Undecodable as exc:
            self.dead_letters.append(str(exc))
            return []
        acct = self.accounts.get(req.account) if req.account else None
        first = None
        if req.account is not None:
            stored = self.applied.get(request_marker(req.account, req.request_id))
            first = FirstDecision.decode(stored) if stored is not None else None
        hold_id = req.body.get("hold_id")
        hold = self.holds.get(request_key(req.account, hold_id)) \
            if isinstance(hold_id, str) and req.account else None
        self.emit(decide_request(req, acct, first, self.ts, POS, self.rules, hold, self.supply))
        return self.outcomes[before:]

    def send(self, body: dict) -> list[dict]:
        key = deciding_account(body)
        return self.send_raw(key.encode("utf-8", "surrogatepass") if isinstance(key, str) else None,
                             orjson.dumps(body))

    def deliver_message(self, msg: dict) -> None:
        """Decide one transfers.credits message, as it arrives on the wire."""
        try:
            msg = parse_message(msg["account"].encode("utf-8", "surrogatepass"), orjson.dumps(msg))
            recorded = "hold_id" in msg and \
                incoming_marker(message_scope(msg), msg["hold_id"]) in self.applied
            own = self.holds.get(request_key(msg["account"], msg["request_id"])) \
                if msg["kind"] in (LINK_ACK, EXPIRE) else None
            decision = decide_credit(msg, self.accounts.get(msg["account"]),
                                     credit_marker(msg) in self.applied, self.ts, CREDITS_POS,
                                     recorded, own)
        except BadMessage as exc:
            self.dead_letters.append(str(exc))
            return
        self.emit(decision)

    def deliver(self, i: int = 0, again: bool = False) -> None:
        """Deliver the oldest pending message of some receiver (transfers.credits keeps each
        receiver's messages from one sender in order: a hold's notice precedes its settlement),
        or deliver an earlier message again."""
        if again:
            msg = self.delivered[i % len(self.delivered)]
        else:
            heads = list({m["account"]: n for n, m in reversed(list(enumerate(self.pending)))}.values())
            msg = self.pending.pop(heads[i % len(heads)])
        self.delivered.append(msg)
        self.deliver_message(msg)

    def deliver_all(self) -> None:
        while self.pending:
            self.deliver()

    def expire_due(self) -> None:
        """The engine's timer: an expiry message for every pending hold past its deadline."""
        for key, hold in sorted(self.holds.items()):
            if hold.state == PENDING and hold.members is None and hold.deadline <= self.ts:
                self.deliver_message(expiry_message(split_request_key(key)[1], hold))

    def in_flight(self) -> int:
        """Money debited whose credit or refund has not been delivered yet."""
        return sum(m["amount"] for m in self.pending if m["kind"] in (CREDIT, REFUND))

    def deposits_minus_withdrawals(self) -> int:
        total = 0
        for raw in self.events:
            ev = orjson.loads(raw)
            total += {"deposited": 1, "withdrawn": -1}.get(ev["kind"], 0) * ev["amount"]
        return total

    def verify(self) -> VerifyReport:
        fold, checks, report = LedgerFold(), LedgerChecks(), VerifyReport()
        for raw in self.events:
            ev = fold.apply(raw)
            assert ev is not None, "every event is new: seqs gap-free, no copies"
            checks.add(ev)
        checks.finish(fold, report)
        return report


def opened(*funded: tuple[str, int], rules: Rules | None = None) -> Ledger:
    led = Ledger(rules or Rules())
    for name, amount in funded:
        led.send({"type": "open_account", "request_id": f"open-{name}", "account": name})
        if amount:
            led.send({"type": "deposit", "request_id": f"dep-{name}", "account": name, "amount": amount})
    return led
