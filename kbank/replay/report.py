"""What `bank replay verify` found: the report it prints and the checks fill in."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbank.replay.ledger import ChainHead
from kbank.streams.model import EXPIRED, HOLD_RELEASED, POSTED

if TYPE_CHECKING:
    from kbank.replay.checkpoint import Checkpoint


@dataclass
class Money:
    """One currency's figures: money is conserved in each currency on its own."""

    balance: int = 0
    in_flight: int = 0
    deposits: int = 0
    withdrawals: int = 0

    @property
    def conserved(self) -> bool:
        return self.balance + self.in_flight == self.deposits - self.withdrawals


@dataclass
class VerifyReport:
    events: int = 0
    duplicates_dropped: int = 0
    accounts: int = 0
    total_balance: int = 0
    deposits: int = 0
    withdrawals: int = 0
    in_flight: int = 0
    in_flight_transfers: int = 0
    requests: int = 0
    requests_with_outcome: int = 0
    requests_final: int = 0
    completed: int = 0
    rejected: int = 0
    applied_twice: int = 0
    lost: int = 0
    holds: Counter[str] = field(default_factory=Counter)   # made, posted, voided, expired, pending
    violations: list[str] = field(default_factory=list)
    currencies: dict[str, Money] = field(default_factory=dict)
    heads: dict[int, ChainHead] = field(default_factory=dict)  # ledger partition -> chain head
    checkpoint: "Checkpoint | None" = None   # where this verify ended (see --checkpoint)
    read_from: dict[int, int] = field(default_factory=dict)   # ledger partition -> first offset read
    read_to: dict[int, int] = field(default_factory=dict)     # ledger partition -> next offset
    first_ts: int | None = None      # the earliest and latest event time read (ms)
    last_ts: int | None = None

    @property
    def money_conserved(self) -> bool:
        return all(m.conserved for m in self.currencies.values())

    def anchor(self) -> list[dict[str, Any]]:
        """Each partition's chain head, to keep elsewhere (`--anchor`, `--against`)."""
        return [{"partition": p, "offset": h.offset, "hash": h.hash, "events": h.events}
                for p, h in sorted(self.heads.items())]

    def describe_range(self) -> str:
        """The ledger offsets read per partition and the time they span."""
        if not self.read_to:
            return "nothing new"
        parts = ", ".join(f"p{p} {self.read_from.get(p, end)}..{end - 1}"
                          for p, end in sorted(self.read_to.items()))
        when = "" if self.first_ts is None else \
            f"; events of {_iso(self.first_ts)} to {_iso(self.last_ts or self.first_ts)}"
        return parts + when

    @property
    def ok(self) -> bool:
        return not self.violations and self.money_conserved

    def render(self) -> str:
        lines = [
            f"ledger events        {self.events} applied, {self.duplicates_dropped} duplicate copies dropped",
            f"accounts             {self.accounts}",
            f"requests             {self.requests} sent, {self.requests_with_outcome} with an outcome, "
            f"{self.requests_final} final ({self.completed} completed, {self.rejected} rejected)",
            f"lost                 {self.lost}",
            f"applied twice        {self.applied_twice}",
            f"holds                {self.holds['made']} made: {self.holds[POSTED]} posted, "
            f"{self.holds[HOLD_RELEASED]} voided, {self.holds[EXPIRED]} expired, "
            f"{self.holds['pending']} pending ({self.holds['pending_amount']} reserved)",
        ]
        for cur, m in sorted(self.currencies.items()):
            lines.append(f"money {cur:<14} balances {m.balance} + in flight {m.in_flight} vs "
                         f"deposits {m.deposits} - withdrawals {m.withdrawals}: "
                         f"{'conserved' if m.conserved else 'NOT CONSERVED'}")
        lines += [f"in flight            {self.in_flight_transfers} transfers",
                  f"hash chains          {len(self.heads)} partitions, "
                  f"{sum(h.events for h in self.heads.values())} links checked",
                  f"range read           {self.describe_range()}",
                  f"violations           {len(self.violations)}"]
        lines += [f"  - {v}" for v in self.violations[:50]]
        if len(self.violations) > 50:
            lines.append(f"  ... and {len(self.violations) - 50} more")
        lines.append("verify: OK" if self.ok else "verify: FAILED")
        return "\n".join(lines)


def _iso(ts_ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).isoformat(timespec="seconds")
