"""The one path from an input record to a decision and back into the state.

The rules (kbank.streams.decisions) are pure; this is their adapter: read what a decision needs
from a partition's state (the account, the id's marker, the hold, the partition's money
supply), decide, encode the outputs within their bounds, then write the decision into the
state. The engine's processor runs it over its RocksDB store; `bank replay recompute` and
the rules' in-memory tests run it over MemoryState, so a recompute with unchanged rules
takes exactly the engine's code path.

Applied ids are remembered for a window (Rules.id_window_ms, BANK_ID_RETENTION_S): each
marker's value carries the timestamp of the input that applied it, and `live_marker` is the
one rule that says whether it still counts. It is a pure function of the state, so the
engine, which deletes markers once they can never count again (PartitionStore.expire), and
recompute, whose MemoryState keeps them all, decide the same:

  - the rule's time `now` is the input's timestamp, but never more than the margin
    (a seventh of the window: a day of the default week) behind the partition's clock, the
    latest input timestamp it has applied. So once a marker is older than the clock minus
    margin minus window it counts for no input to come, and the engine may delete it;
  - a marker counts while its timestamp + window > now; a request id whose marker stopped
    counting is a new request (documented: a retry after the window is a new request);
  - a request's marker keeps counting while the hold it made is pending (its retry must not
    make a second hold over the first), and a hold notice's marker (i:) always counts: it
    says the receiver holds the amount as pending-in, for as long as the hold lives;
  - a settled hold is forgotten a window after it settled (`live_hold`): a post or void
    of it after that is told unknown_hold rather than hold_closed;
  - a transfers.credits message stamped a window or more before `now` is dead-lettered,
    never applied: its marker may be gone, so a copy of a credit could not be told from
    the credit (money would be minted). The engine reads a partition's credits with its
    requests, so a message waits that long only if its topic was out of reach for a
    window; the money is then in flight for verify to show, and the dead letter says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from kbank.streams.storekeys import INCOMING_MARKER
from kbank.streams.decisions import (EXPIRE, BadMessage, Decision, FirstDecision, Rules, credit_marker,
                                     decide_credit, decide_request, external_ref_marker,
                                     incoming_marker, message_scope, parse_request,
                                     request_marker)
from kbank.streams.model import (GENESIS_HASH, LINK_ABORT, LINK_ACK, LINK_COMMIT, PENDING, Account, Hold,
                                 Position, chain_event, id_margin_ms, link_hold_key, outcome_key,
                                 request_key)

MAX_OUTPUT_BYTES = 262_144     # no record the engine writes is larger (the broker's limit is 1 MB)


class PartitionState(Protocol):
    """One partition's state as the rules see it (kbank.streams.engine.state.PartitionStore)."""

    def account(self, name: str) -> Account | None: ...
    def applied(self, marker: str) -> str | None: ...
    def hold(self, key: str) -> Hold | None: ...
    def supply(self) -> int: ...
    def chain_head(self) -> str: ...
    def clock(self) -> int: ...
    def put_account(self, name: str, acct: Account) -> None: ...
    def mark_applied(self, marker: str, value: str) -> None: ...
    def put_hold(self, key: str, hold: Hold) -> None: ...
    def add_supply(self, amount: int) -> None: ...
    def set_chain_head(self, head: str) -> None: ...
    def advance_clock(self, ts: int) -> None: ...


NEVER_EXPIRES = INCOMING_MARKER   # a hold notice's marker: the receiver's pending-in, as long as the hold


def stamp(value: str, ts: int) -> str:
    """A marker's stored value: the timestamp of the input that applied it, then its value."""
    return f"{ts}|{value}"


_UNSTAMPED = 2**63 - 1   # a marker written before the id window existed: never expires


def unstamp(stored: str) -> tuple[int, str]:
    """(timestamp, value) of a stored marker value (stamp)."""
    ts, bar, value = stored.partition("|")
    if not (bar and ts.isdigit()):
        return _UNSTAMPED, stored
    return int(ts), value


def margin_ms(rules: Rules) -> int:
    """How far behind the partition's clock an input's timestamp may be for the window rule."""
    return id_margin_ms(rules.id_window_ms)


def rule_time(state: "PartitionState", ts: int, rules: Rules) -> int:
    """The time the window rule uses for an input stamped ts."""
    clamp = state.clock() - margin_ms(rules)
    return ts if ts > clamp else clamp


def expiry_horizon(clock: int, rules: Rules) -> int:
    """A marker stamped at or before this counts for no input to come, whatever its
    timestamp (rule_time never goes below clock - margin, and the clock never goes back)."""
    return clock - margin_ms(rules) - rules.id_window_ms


def live_marker(state: "PartitionState", marker: str, now: int, rules: Rules) -> str | None:
    """The value of an applied-id marker if it still counts at `now` (rule_time), else None."""
    stored = state.applied(marker)
    if stored is None:
        return None
    ts, value = unstamp(stored)
    return value if _counts(ts, now, rules) or marker.startswith(NEVER_EXPIRES) else None


def _counts(stamped: int, now: int, rules: Rules) -> bool:
    """Whether an id applied at `stamped` still counts at `now`."""
    return stamped + rules.id_window_ms > now


def live_hold(state: "PartitionState", key: str, now: int, rules: Rules) -> Hold | None:
    """A hold as the rules see it at `now` (rule_time): one settled a window or more before
    is forgotten, as its id is (PartitionStore.expire deletes it)."""
    hold = state.hold(key)
    if hold is not None and hold.settled_at and hold.settled_at + rules.id_window_ms <= now:
        return None
    return hold


def holds_open(hold: Hold | None) -> bool:
    """A pending hold keeps its request's marker counting (PartitionStore.expire too)."""
    return hold is not None and hold.state == PENDING


@dataclass
class MemoryState:
    """A partition's state in dicts: recompute's generations and the rules' tests."""

    accounts: dict[str, Account] = field(default_factory=dict)
    markers: dict[str, str] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)     # by request key
    money: int = 0
    head: str = GENESIS_HASH
    time: int = 0                                            # the partition's clock

    def account(self, name: str) -> Account | None:
        return self.accounts.get(name)

    def applied(self, marker: str) -> str | None:
        return self.markers.get(marker)

    def hold(self, key: str) -> Hold | None:
        return self.holds.get(key)

    def supply(self) -> int:
        return self.money

    def put_account(self, name: str, acct: Account) -> None:
        self.accounts[name] = acct

    def mark_applied(self, marker: str, value: str) -> None:
        self.markers[marker] = value

    def put_hold(self, key: str, hold: Hold) -> None:
        self.holds[key] = hold

    def add_supply(self, amount: int) -> None:
        self.money += amount

    def chain_head(self) -> str:
        return self.head

    def set_chain_head(self, head: str) -> None:
        self.head = head

    def clock(self) -> int:
        return self.time

    def advance_clock(self, ts: int) -> None:
        self.time = max(self.time, ts)


def request_decision(state: PartitionState, key: bytes | None, value: bytes | None, ts: int,
                     pos: Position, rules: Rules, dedupe: bool = True) -> Decision:
    """Decide one transfers.requests record (raises Undecodable: dead-letter it)."""
    req = parse_request(key, value)
    acct = state.account(req.account) if req.account is not None else None
    now = rule_time(state, ts, rules)
    first = None
    if dedupe and req.account is not None:
        stored = state.applied(request_marker(req.account, req.request_id))
        if stored is not None:
            stamped, value = unstamp(stored)
            if _counts(stamped, now, rules) \
                    or holds_open(state.hold(request_key(req.account, req.request_id))):
                first = FirstDecision.decode(value)
    hold_id = req.body.get("hold_id")
    hold = live_hold(state, request_key(req.account, hold_id), now, rules) \
        if isinstance(hold_id, str) and req.account is not None else None
    ref, ref_owner = req.body.get("external_ref"), None
    if isinstance(ref, str) and req.account is not None:
        ref_owner = live_marker(state, external_ref_marker(req.account, ref), now, rules)
    return decide_request(req, acct, first, ts, pos, rules, hold, state.supply(), ref_owner)


def credit_decision(state: PartitionState, message: dict[str, Any], ts: int, pos: Position,
                    rules: Rules, dedupe: bool = True) -> Decision:
    """Decide one transfers.credits message, validated by parse_message (raises BadMessage:
    dead-letter it)."""
    name = message["account"]
    now = rule_time(state, ts, rules)
    if dedupe and ts + rules.id_window_ms <= now:
        raise BadMessage(f"stamped {ts}, a window (BANK_ID_RETENTION_S) before the partition's "
                         f"time {now}: whether it was applied can no longer be told")
    applied = dedupe and live_marker(state, credit_marker(message), now, rules) is not None
    hold_id = message.get("hold_id")
    recorded = isinstance(hold_id, str) and live_marker(
        state, incoming_marker(message_scope(message), hold_id), now, rules) is not None
    kind = message["kind"]
    linked = live_hold(state, request_key(name, message["request_id"]), now, rules) \
        if kind in (LINK_ACK, EXPIRE) \
        else live_hold(state, link_hold_key(message["index"], message["counterparty"],
                                            message["request_id"]), now, rules) \
        if kind in (LINK_COMMIT, LINK_ABORT) else None
    return decide_credit(message, state.account(name), applied, ts, pos, recorded, linked)


@dataclass
class Outputs:
    """A decision's records, encoded: its ledger event, outcomes and credit messages."""

    event: bytes | None                    # with its hash, chained to the partition's head
    outcomes: list[tuple[bytes, bytes]]    # (request key, outcome)
    messages: list[tuple[bytes, bytes]]    # (receiving account, message)
    head: str | None                       # the event's hash: the partition's new chain head


def encode(decision: Decision, chain_head: str) -> Outputs:
    """Every output of a decision, encoded, its ledger event chained to `chain_head` (the
    hash of the partition's previous event). One that cannot be encoded, or is over the
    size bound, is a bug of the rules (they bound every field they copy): it raises
    before anything is stored or sent."""
    event, head = None, None
    if decision.event is not None:
        head, event = chain_event(chain_head, orjson.dumps(decision.event))
    outcomes = [(outcome_key(o).encode(), orjson.dumps(o)) for o in decision.outcomes]
    messages = [(key.encode(), orjson.dumps(m)) for key, m in decision.messages]
    assert (event is None or len(event) <= MAX_OUTPUT_BYTES) \
        and all(len(v) <= MAX_OUTPUT_BYTES for _, v in outcomes) \
        and all(len(v) <= MAX_OUTPUT_BYTES for _, v in messages), decision
    return Outputs(event, outcomes, messages, head)


def apply_decision(state: PartitionState, decision: Decision, out: Outputs, ts: int) -> None:
    """Write a decision of an input stamped ts into the partition's state (after its outputs
    were encoded); its markers carry ts."""
    if decision.event is not None:
        previous = state.account(decision.account)
        assert decision.state is not None and decision.event["seq"] == (
            previous.seq if previous is not None else 0) + 1, decision.event
    if decision.state is not None:
        state.put_account(decision.account, decision.state)
    if decision.marker is not None:
        state.mark_applied(decision.marker, stamp(decision.marker_value, ts))
    if decision.ref_marker is not None:
        state.mark_applied(decision.ref_marker[0], stamp(decision.ref_marker[1], ts))
    if out.head is not None:
        state.set_chain_head(out.head)
    if decision.hold is not None:
        key, hold = decision.hold
        if hold.state != PENDING and not hold.settled_at:
            hold = replace(hold, settled_at=ts)
        state.put_hold(key, hold)
    if decision.supply:
        state.add_supply(decision.supply)
    state.advance_clock(ts)


def record(state: PartitionState, decision: Decision, ts: int) -> Outputs:
    """Encode a decision of an input stamped ts (its event chained to the partition's head),
    then write it into the state: what the engine sends, recompute writes and the tests
    collect."""
    out = encode(decision, state.chain_head())
    apply_decision(state, decision, out, ts)
    return out
