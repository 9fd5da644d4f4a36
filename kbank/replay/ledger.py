"""Folding ledger.events into per-account state, the way every consumer must.

An event is applied only if its seq is the next one for its account. An event
with a seq already applied is a duplicate (a broker that shows aborted
records delivers them) and must be byte-identical to the applied one;
anything else (a gap, a different duplicate) is a violation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from kbank.streams.model import BALANCE_SIGN


@dataclass
class AccountFold:
    balance: int = 0
    seq: int = 0
    events: list[bytes] = field(default_factory=list)  # raw event i has seq i + 1


@dataclass
class LedgerFold:
    """Per-account balances and histories from ledger.events, with violations."""

    accounts: dict[str, AccountFold] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0

    def apply(self, raw: bytes, where: object = "") -> dict[str, Any] | None:
        """Apply one raw event; return it if it was new, None for a duplicate or a violation.

        `where` names the record in violations (formatted only when there is one).
        """
        try:
            event = orjson.loads(raw)
            name, seq, kind, amount = event["account"], event["seq"], event["kind"], event["amount"]
            sign = BALANCE_SIGN[kind]
            if not isinstance(name, str) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in (seq, amount, event["balance"])):
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
            if acct.events[seq - 1] != raw:
                self.violations.append(
                    f"{where}: account {name} seq {seq} re-delivered with different content")
            return None
        if seq != acct.seq + 1:
            self.violations.append(f"{where}: account {name} seq gap: expected {acct.seq + 1}, got {seq}")
            return None
        expected = acct.balance + sign * amount
        if event["balance"] != expected:
            self.violations.append(f"{where}: account {name} seq {seq} balance {event['balance']} "
                                   f"!= previous {acct.balance} {kind} {amount}")
        if event["balance"] < 0:
            self.violations.append(f"{where}: account {name} seq {seq} balance below 0")
        acct.balance, acct.seq = event["balance"], seq
        acct.events.append(raw)
        self.applied += 1
        return event
