"""Folding ledger.events into per-account state, the way every consumer must.

An event is applied only if its seq is the next one for its account. An event
with a seq already applied is a duplicate (a broker that shows aborted
records delivers them) and must be byte-identical to the applied one;
anything else (a gap, a different duplicate) is a violation.

Given each record's partition, the fold also checks every partition's hash chain
(model.chain_event): each applied event's `hash` must be SHA-256 of the previous
applied event's hash and the event's own encoding without it. A rewritten event fails
its own link; a removed or inserted one fails the next link. `heads` is where each
partition's chain ends: the anchor an operator keeps elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from kbank.streams.model import (BALANCE_SIGN, CLOSED_STATE, CREDITED, DEBITED,
                                 DEFAULT_CURRENCY, DEPOSITED, GENESIS_HASH, INCOMING_RELEASED,
                                 LIMITS_SET, OPEN,
                                 OPENED, REFUNDED, REJECTED, STATE_AFTER, WITHDRAWN, chain_link,
                                 chained_parts)

_OUTFLOWS = (WITHDRAWN, DEBITED)        # decided against the overdraft floor when made
_INFLOWS = (DEPOSITED, CREDITED)        # decided against max_balance when made
# what a closed account may still get: refunds, refusals, and the release of others' holds
# for it that were pending when it closed (posted: refunded to the payer; voided, expired)
_MOVES_CLOSED = frozenset({REFUNDED, REJECTED, INCOMING_RELEASED})


@dataclass
class AccountFold:
    balance: int = 0
    seq: int = 0
    events: list[bytes] = field(default_factory=list)  # raw event i has seq base + i + 1
    currency: str = DEFAULT_CURRENCY
    overdraft_limit: int = 0
    max_balance: int | None = None
    state: str = OPEN
    base: int = 0       # seqs up to here were folded before a checkpoint; their raw events are not kept

    def without_events(self) -> "AccountFold":
        """This account as a checkpoint keeps it: everything but its raw events."""
        return replace(self, events=[], base=self.seq)

    def raw(self, seq: int) -> bytes | None:
        """The applied event of this seq, if this fold kept it."""
        return self.events[seq - self.base - 1] if seq > self.base else None


@dataclass
class ChainHead:
    """Where a partition's hash chain ends: the last applied event's offset and hash."""

    offset: int = -1
    hash: str = GENESIS_HASH
    events: int = 0


@dataclass
class LedgerFold:
    """Per-account balances and histories from ledger.events, with violations."""

    accounts: dict[str, AccountFold] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    heads: dict[int, ChainHead] = field(default_factory=dict)   # ledger partition -> its head
    ends: dict[int, int] = field(default_factory=dict)   # ledger partition -> next offset to read
    starts: dict[int, int] = field(default_factory=dict)  # ledger partition -> first offset this fold read
    first_ts: int | None = None        # the earliest and latest ts of the events this fold read
    last_ts: int | None = None
    # anchored chain heads the partitions must still pass through: partition -> {hash: offset}
    expect: dict[int, dict[str, int]] = field(default_factory=dict)

    def apply(self, raw: bytes, where: object = "", partition: int | None = None,
              offset: int = -1) -> dict[str, Any] | None:
        """Apply one raw event; return it if it was new, None for a duplicate or a violation.

        `where` names the record in violations (formatted only when there is one);
        `partition` (and `offset`), when known, let the fold check the partition's chain.
        """
        try:
            event = orjson.loads(raw)
            name, seq, kind, amount = event["account"], event["seq"], event["kind"], event["amount"]
            BALANCE_SIGN[kind]   # a kind no consumer knows: KeyError, refused below
            if type(name) is not str or type(seq) is not int or type(amount) is not int \
                    or type(event["balance"]) is not int:   # bool is not int here
                raise TypeError("account must be a string; seq, amount and balance integers")
            if seq < 1:
                raise TypeError(f"seq {seq} is not positive")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.violations.append(f"{where}: malformed ledger event ({exc})")
            return None
        acct = self.accounts.get(name)
        if acct is None:
            acct = self.accounts[name] = AccountFold()
        if seq <= acct.seq:
            self.duplicates += 1
            kept = acct.raw(seq)
            if kept is not None and kept != raw:
                self.violations.append(
                    f"{where}: account {name} seq {seq} re-delivered with different content")
            return None
        if partition is not None:
            self._link(raw, event, where, partition, offset)
        if seq != acct.seq + 1:
            self.violations.append(f"{where}: account {name} seq gap: expected {acct.seq + 1}, got {seq}")
            return None
        self._check_rules(acct, event, where)
        acct.balance, acct.seq = event["balance"], seq
        acct.events.append(raw)
        self.applied += 1
        return event

    def _check_rules(self, acct: AccountFold, event: dict[str, Any], where: object) -> None:
        """The balance follows from the previous one and stays within the account's rules
        as they were when the event was decided."""
        name, seq, kind, amount = event["account"], event["seq"], event["kind"], event["amount"]
        expected = acct.balance + BALANCE_SIGN[kind] * amount
        if event["balance"] != expected:
            self.violations.append(f"{where}: account {name} seq {seq} balance {event['balance']} "
                                   f"!= previous {acct.balance} {kind} {amount}")
        if kind == OPENED:
            acct.currency = event.get("currency", DEFAULT_CURRENCY)
        if kind in (OPENED, LIMITS_SET):
            acct.overdraft_limit = event.get("overdraft_limit", 0)
            acct.max_balance = event.get("max_balance")
        if acct.state == CLOSED_STATE and kind not in _MOVES_CLOSED:
            self.violations.append(f"{where}: account {name} seq {seq}: {kind} on a closed account")
        acct.state = STATE_AFTER.get(kind, acct.state)
        if kind in _OUTFLOWS and event["balance"] < -acct.overdraft_limit:
            self.violations.append(f"{where}: account {name} seq {seq} balance {event['balance']} "
                                   f"below its floor -{acct.overdraft_limit}")
        if kind in _INFLOWS and acct.max_balance is not None \
                and event["balance"] > acct.max_balance:
            self.violations.append(f"{where}: account {name} seq {seq} balance {event['balance']} "
                                   f"above its max_balance {acct.max_balance}")

    def _link(self, raw: bytes, event: dict[str, Any], where: object, partition: int,
              offset: int) -> None:
        """Check the event's link in its partition's hash chain, then move the head to it.
        The hash is checked over the stored bytes when they are in chain_event's form (no
        re-encoding), else over the event re-encoded without its `hash`."""
        head = self.heads.get(partition)
        if head is None:
            head = self.heads[partition] = ChainHead()
        parts = chained_parts(raw)
        if parts is not None:
            stated: str | None = parts[0]
            expected = chain_link(head.hash, parts[1])
        else:
            stated = event.pop("hash", None)
            expected = chain_link(head.hash, orjson.dumps(event))
            if stated is not None:
                event["hash"] = stated
        if stated != expected:
            what = "has no hash" if stated is None else "breaks the hash chain (it, or " \
                "the event before it in the partition, was rewritten, removed or inserted)"
            self.violations.append(f"{where}: account {event['account']} seq {event['seq']} {what}")
        if stated is not None:
            self.expect.get(partition, {}).pop(stated, None)
        head.offset, head.hash, head.events = offset, stated or expected, head.events + 1
