"""`bank replay verify`: check the system's invariants over its logs.

Reads ledger.events, transfers.requests and transfers.outcomes and checks:
  - per-account sequences are gap-free, re-deliveries identical;
  - each balance follows from the previous one; no withdrawal or debit takes it below its
    floor (-overdraft_limit), no deposit or credit above its max_balance, and a closed
    account moves no more (but for a refund of what it sent before closing);
  - every ledger partition's hash chain is whole (a rewritten, removed or inserted
    event is named); `--anchor` prints each chain's head, `--against FILE` checks that
    the chains still pass through the heads printed earlier;
  - each request is applied at most once (one deciding event, at most one
    credit or refund per transfer, never both) within the id window
    (BANK_ID_RETENTION_S): an id used again after it is a new request, applied anew;
  - every debit has exactly one credit or refund, or is still in flight;
  - money is conserved in each currency: sum of balances + in flight = deposits -
    withdrawals;
  - nothing is lost: every request with a request_id has an outcome
    (with --complete: a final one);
  - holds: each is settled (posted, voided or expired) at most once, and then
    posted + released equals what it reserved; every account's held amount
    follows from its events and stays within its balance (available >= 0).
"""
from __future__ import annotations

import gc
import sys
from collections import Counter
from dataclasses import dataclass, field, replace

import orjson

from typing import Any

from kbank.replay.checkpoint import Checkpoint, matches_log
from kbank.replay.ledger import AccountFold, ChainHead, LedgerFold
from kbank.replay.parallel import in_processes, partition_shares
from kbank.streams.progress import progress_bar
from confluent_kafka import TopicPartition

from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.decisions import deciding_account, parse_json
from kbank.streams.config import Settings
from kbank.streams.model import (COMPLETED, CREDITED, DEBITED, DEPOSITED, EXPIRED, HELD, HOLD_RELEASED,
                           HOLD_SETTLING, OPENED, POSTED, REFUNDED, REJECTED_STATUS, WITHDRAWN,
                           event_request_key, is_final, is_name, outcome_key, request_key,
                           status_moves)

_DECIDING = {OPENED, DEPOSITED, WITHDRAWN, DEBITED, HELD, POSTED, HOLD_RELEASED, EXPIRED}


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


# How each piece of LedgerChecks' state is merged across partitions (merge_folds) and what
# a checkpoint does with it (snapshot / restored): the one list of it, so a new piece cannot
# be forgotten in one of the places (a test checks every field is here).
#   add: Counters summed; disjoint: maps whose keys live on one partition; extend: lists;
#   money: per-currency figures summed
STATE: dict[str, tuple[str, str]] = {
    "deciding": ("add", "dropped: counted again from the checkpoint on"),
    "life": ("disjoint", "dropped: an id's use began before the checkpoint counts as new "
                         "after it (the window is shorter than a checkpoint's reach)"),
    "twice": ("extend", "dropped: a violation fails the verify, which writes no checkpoint"),
    "returned": ("add", "carried for open transfers (open_transfers)"),
    "refunds": ("add", "carried for open transfers (open_transfers)"),
    "debits": ("add", "carried for open transfers (open_transfers)"),
    "money": ("money", "carried: deposits and withdrawals per currency (money)"),
    "reserved": ("disjoint", "carried for holds not settled (open_holds)"),
    "settled": ("disjoint", "summed into holds_done"),
    "held": ("add", "carried (held)"),
    "violations": ("extend", "dropped: a violation fails the verify"),
    "holds_done": ("add", "carried (holds_done)"),
}


class LedgerChecks:
    """The cross-account checks, accumulated one applied (de-duplicated) event at a time."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms     # the engine's id window: an id re-used after it is new
        self.deciding: Counter[tuple[str, str, str]] = Counter()   # (request, kind, account)
        self.life: dict[tuple[str, str, str], int] = {}   # when its id's current use began
        self.twice: list[tuple[str, int]] = []   # (request, applications) of earlier uses
        # per (request, currency): a linked exchange moves two currencies under one request
        self.returned: Counter[tuple[str, str]] = Counter()   # amount credited + refunded
        self.refunds: Counter[tuple[str, str]] = Counter()
        self.debits: Counter[tuple[str, str]] = Counter()
        self.money: dict[str, Money] = {}
        self.reserved: dict[str, int] = {}                       # hold_id -> amount held
        self.settled: dict[str, list[tuple[str, int]]] = {}      # hold_id -> [(kind, posted+released)]
        self.held: Counter[str] = Counter()                      # account -> held, from its events
        self.violations: list[str] = []                         # of the holds' rules
        self.holds_done: Counter[str] = Counter()   # holds made and settled before a checkpoint
        assert set(vars(self)) - {"window_ms"} == set(STATE), "LedgerChecks.STATE is the list"

    def merge(self, other: "LedgerChecks") -> None:
        """Another partitions' checks into these, as STATE says."""
        for name, (how, _) in STATE.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if how == "add":
                mine.update(theirs)
            elif how == "disjoint":
                assert not mine.keys() & theirs.keys(), name
                mine.update(theirs)
            elif how == "extend":
                mine += theirs
            else:
                assert how == "money", how
                for cur, money in theirs.items():
                    total = mine.setdefault(cur, Money())
                    total.deposits += money.deposits
                    total.withdrawals += money.withdrawals

    def add(self, ev: dict, acct: AccountFold) -> None:
        """One applied event of `acct` (its currency and rules as of the event)."""
        kind = ev["kind"]
        if kind in _DECIDING:
            rid = event_request_key(ev)
            key = (rid, kind, ev["account"])    # a linked transfer: held, then posted
            began = self.life.get(key)
            if began is None or ev["ts"] - began >= self.window_ms:
                if self.deciding[key] > 1:
                    self.twice.append((rid, self.deciding[key]))
                self.life[key] = ev["ts"]
                self.deciding[key] = 0
            self.deciding[key] += 1
            money = self.money.get(acct.currency)
            if money is None:
                money = self.money[acct.currency] = Money()
            if kind == DEPOSITED:
                money.deposits += ev["amount"]
            elif kind == WITHDRAWN:
                money.withdrawals += ev["amount"]
            elif kind in (DEBITED, POSTED):
                self.debits[(rid, acct.currency)] += ev["amount"]
            if kind == HELD or kind in HOLD_SETTLING:
                self._hold_step(ev, acct)
        elif kind == CREDITED:
            self.returned[(event_request_key(ev), acct.currency)] += ev["amount"]
        elif kind == REFUNDED:
            self.returned[(event_request_key(ev), acct.currency)] += ev["amount"]
            self.refunds[(event_request_key(ev), acct.currency)] += 1

    def _hold_step(self, ev: dict, acct: AccountFold) -> None:
        """A sender's hold event: the hold's life, and the account's held amount."""
        kind, name, amount = ev["kind"], ev["account"], ev["amount"]
        hold_id = request_key(name, ev["hold_id"]) + (f"@{ev['link']}" if "link" in ev else "")
        if kind == HELD:
            if hold_id in self.reserved:
                self._retire_hold(hold_id)
            self.reserved[hold_id] = amount
            self.held[name] += amount
        else:
            settled = amount + ev.get("released", 0) if kind == POSTED else amount
            self.settled.setdefault(hold_id, []).append((kind, settled))
            self.held[name] -= settled
        if ev.get("held", 0) != self.held[name]:
            self.violations.append(f"account {name} seq {ev['seq']}: held {ev.get('held', 0)}, "
                                   f"its hold events give {self.held[name]}")
        floor = ev["balance"] + acct.overdraft_limit
        if self.held[name] < 0 or (kind == HELD and self.held[name] > floor):
            self.violations.append(f"account {name} seq {ev['seq']}: held {self.held[name]} "
                                   f"outside 0..balance + overdraft {floor} (available < 0)")

    def _retire_hold(self, hold_id: str) -> None:
        """A hold id made again (its request id re-used after the window): the earlier hold
        must be settled, exactly once and in full; it is counted as done."""
        steps = self.settled.pop(hold_id, [])
        if len(steps) != 1:
            self.violations.append(f"hold {hold_id} made again after {len(steps)} settlements")
        elif steps[0][1] != self.reserved[hold_id]:
            self.violations.append(f"hold {hold_id}: posted + released {steps[0][1]} != "
                                   f"reserved {self.reserved[hold_id]}")
        else:
            self.holds_done["made"] += 1
            self.holds_done[steps[0][0]] += 1

    def _finish_holds(self, report: VerifyReport) -> None:
        before = len(report.violations)
        report.violations += self.violations
        report.holds.update(self.holds_done)
        report.holds["made"] += len(self.reserved)
        for hold_id, steps in self.settled.items():
            if hold_id not in self.reserved:
                report.violations.append(f"hold {hold_id} settled but never made")
                continue
            if len(steps) > 1:
                report.applied_twice += 1
                report.violations.append(f"hold {hold_id} settled {len(steps)} times: "
                                         f"{[k for k, _ in steps]}")
            kind, amount = steps[0]
            report.holds[kind] += 1
            if amount != self.reserved[hold_id]:
                report.violations.append(f"hold {hold_id}: posted + released {amount} != "
                                         f"reserved {self.reserved[hold_id]}")
        for hold_id, amount in self.reserved.items():
            if hold_id not in self.settled:
                report.holds["pending"] += 1
                report.holds["pending_amount"] += amount
        report.holds["violations"] = len(report.violations) - before

    def finish(self, fold: LedgerFold, report: VerifyReport) -> None:
        report.currencies = self.money
        for acct in fold.accounts.values():
            self.money.setdefault(acct.currency, Money()).balance += acct.balance
        self._finish_holds(report)
        for rid, n in self.twice + [(rid, n) for (rid, _, _), n in self.deciding.items()]:
            if n > 1:
                report.applied_twice += 1
                report.violations.append(f"request {rid} applied {n} times")
        for (rid, cur), amount in self.returned.items():
            if (rid, cur) not in self.debits:
                report.violations.append(f"request {rid} credited/refunded {cur} without a debit")
            elif amount > self.debits[(rid, cur)]:
                report.applied_twice += 1
                report.violations.append(f"request {rid}: {amount} credited or refunded "
                                         f"({self.refunds[(rid, cur)]} refunds) of "
                                         f"{self.debits[(rid, cur)]} debited")
        for (rid, cur), amount in self.debits.items():
            if self.returned[(rid, cur)] < amount:   # a linked transfer's members land one by one
                self.money[cur].in_flight += amount - self.returned[(rid, cur)]
                report.in_flight_transfers += 1
        report.violations += fold.violations
        report.events = fold.applied
        report.duplicates_dropped = fold.duplicates
        report.accounts = len(fold.accounts)
        report.total_balance = sum(a.balance for a in fold.accounts.values())
        report.deposits = sum(m.deposits for m in self.money.values())
        report.withdrawals = sum(m.withdrawals for m in self.money.values())
        report.in_flight = sum(m.in_flight for m in self.money.values())
        report.heads = fold.heads
        report.read_from = dict(fold.starts)
        report.read_to = {p: end for p, end in fold.ends.items() if p in fold.starts}
        report.first_ts, report.last_ts = fold.first_ts, fold.last_ts


def _iso(ts_ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).isoformat(timespec="seconds")


class _Where:
    """A record's position, formatted only if a violation names it."""

    __slots__ = ("msg",)

    def __init__(self, msg) -> None:  # noqa: ANN001 - confluent_kafka.Message
        self.msg = msg

    def __format__(self, spec: str) -> str:
        return f"{self.msg.topic()}[{self.msg.partition()}]@{self.msg.offset()}"


def check_requests(request_ids: list[str], outcomes: dict[str, str], report: VerifyReport,
                   require_final: bool) -> None:
    report.requests = len(request_ids)
    for rid in request_ids:
        status = outcomes.get(rid)
        if status is None:
            report.lost += 1
            report.violations.append(f"request {rid} has no outcome (lost)")
            continue
        report.requests_with_outcome += 1
        if is_final(status):
            report.requests_final += 1
            report.completed += status == COMPLETED
            report.rejected += status == REJECTED_STATUS
        elif require_final:
            report.violations.append(f"request {rid} is still {status}")


def fold_outcomes(values: list[dict], status: dict[str, str] | None = None) -> dict[str, str]:
    """request key -> status, the furthest along (model.status_moves); `status`: go on from
    these (updated in place)."""
    status = {} if status is None else status
    for out in values:
        if not isinstance(out.get("request_id"), str):
            continue
        key = outcome_key(out)
        if status_moves(status.get(key), out):
            status[key] = out["status"]
    return status


def fold_ledger(settings: Settings, topic: str, partitions: list[int] | None,
                anchor: list[dict[str, Any]] | None, show_progress: bool,
                since: tuple[LedgerFold, LedgerChecks] | None = None,
                start: dict[int, int] | None = None) -> tuple[LedgerFold, LedgerChecks]:
    """Fold the ledger (or some of its partitions): every per-account and per-partition
    check, and the running sums the global checks need; `since` and `start`: go on from a
    checkpoint's fold at its offsets."""
    fold, checks = since or (LedgerFold(), LedgerChecks(settings.id_window_ms))
    for head in anchor or []:
        fold.expect.setdefault(int(head["partition"]), {})[str(head["hash"])] = int(head["offset"])
    total = records_to_read(settings, topic, partitions, start) if show_progress else None
    progress = progress_bar("verify: ledger.events", total=total, enabled=show_progress)
    gc.disable()  # the fold keeps many objects alive; generational GC would rescan them all
    try:
        for msg in read_topic(settings, topic, partitions=partitions, start=start):
            progress.update()
            partition, offset = msg.partition(), msg.offset()
            fold.starts.setdefault(partition, offset)
            fold.ends[partition] = offset + 1
            ev = fold.apply(msg.value(), _Where(msg), partition, offset)
            if ev is not None:
                checks.add(ev, fold.accounts[ev["account"]])
                ts = ev["ts"]
                if fold.first_ts is None or ts < fold.first_ts:
                    fold.first_ts = ts
                if fold.last_ts is None or ts > fold.last_ts:
                    fold.last_ts = ts
    finally:
        gc.enable()
    progress.close()
    return fold, checks


def records_to_read(settings: Settings, topic: str, partitions: list[int] | None,
                    start: dict[int, int] | None) -> int:
    """About how many records a read from `start` (or the beginning) to the end holds, for
    a progress bar's total and time left (transaction markers make it a slight overcount)."""
    consumer = kafka.consumer(settings, kafka.TOOLS)
    try:
        parts = partitions if partitions is not None else \
            sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        total = 0
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            total += max(0, high - max(low, (start or {}).get(p, low)))
        return total
    finally:
        consumer.close()


def _fold_part(settings: Settings, topic: str, partitions: list[int],
               anchor: list[dict[str, Any]]) -> tuple[LedgerFold, LedgerChecks]:
    """One process's share of a parallel verify: its partitions folded, returned without the
    raw events (they only serve to compare re-deliveries within a partition)."""
    fold, checks = fold_ledger(settings, topic, partitions,
                               [h for h in anchor if int(h["partition"]) in partitions], False)
    for acct in fold.accounts.values():
        acct.events = []
    return fold, checks


def merge_folds(parts: list[tuple[LedgerFold, LedgerChecks]]) -> tuple[LedgerFold, LedgerChecks]:
    """The partitions' folds as one: every account and hold lives on one partition, so their
    maps are disjoint; the per-request sums (a debit here, its credit there) add up."""
    fold, checks = LedgerFold(), LedgerChecks(parts[0][1].window_ms)
    for part_fold, part_checks in parts:
        assert not fold.accounts.keys() & part_fold.accounts.keys()
        fold.accounts.update(part_fold.accounts)
        fold.violations += part_fold.violations
        fold.applied += part_fold.applied
        fold.duplicates += part_fold.duplicates
        fold.heads.update(part_fold.heads)
        fold.ends.update(part_fold.ends)
        fold.starts.update(part_fold.starts)
        for ts in (part_fold.first_ts, part_fold.last_ts):
            if ts is not None:
                fold.first_ts = ts if fold.first_ts is None else min(fold.first_ts, ts)
                fold.last_ts = ts if fold.last_ts is None else max(fold.last_ts, ts)
        fold.expect.update(part_fold.expect)
        checks.merge(part_checks)
    return fold, checks


def fold_in_parallel(settings: Settings, topic: str, processes: int,
                     anchor: list[dict[str, Any]] | None) -> tuple[LedgerFold, LedgerChecks]:
    """Fold the ledger's partitions in `processes` processes (the ledger is partitioned by
    account, so every per-account check is local), then merge their sums for the global
    checks."""
    shares = partition_shares(settings, topic, processes)
    return merge_folds(in_processes(_fold_part, [(settings, topic, share, anchor or [])
                                                 for share in shares]))


@dataclass
class RequestFold:
    """The requests and their furthest statuses, from transfers.requests and
    transfers.outcomes (or from a checkpoint's open requests on)."""

    keys: list[str] = field(default_factory=list)       # request keys, first sent first
    status: dict[str, str] = field(default_factory=dict)
    carried: Counter[str] = field(default_factory=Counter)   # counts of requests final before
    requests_next: dict[int, int] = field(default_factory=dict)
    outcomes_next: dict[int, int] = field(default_factory=dict)


def fold_requests(settings: Settings, report: VerifyReport,
                  since: Checkpoint | None) -> RequestFold:
    """Every request sent (each request key once) and its furthest status; from a checkpoint
    on, the requests it left open and what came after it."""
    state = RequestFold()
    if since is not None:
        state.keys = list(since.open_requests)
        state.status = {k: v for k, v in since.open_requests.items() if v is not None}
        state.carried.update(since.request_counts)
        state.requests_next, state.outcomes_next = dict(since.requests_next), dict(since.outcomes_next)
    values = []
    for msg in read_topic(settings, settings.topic(topics.OUTCOMES), start=state.outcomes_next):
        state.outcomes_next[msg.partition()] = msg.offset() + 1
        try:
            value = orjson.loads(msg.value())
            if not isinstance(value, dict):
                raise TypeError("not a JSON object")
            values.append(value)
        except (orjson.JSONDecodeError, TypeError) as exc:
            report.violations.append(f"{_Where(msg)}: malformed outcome ({exc})")
    fold_outcomes(values, state.status)
    seen: set[str] = set(state.keys)
    for msg in read_topic(settings, settings.topic(topics.REQUESTS), start=state.requests_next):
        state.requests_next[msg.partition()] = msg.offset() + 1
        try:
            body = parse_json(msg.value())
            rid, scope = body.get("request_id"), deciding_account(body)
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
            continue  # undecodable records are dead-lettered, not lost
        if not is_name(rid):
            continue
        if not (is_name(scope) and msg.key() == scope.encode()):
            scope = ""   # decided in no account's scope (rejected invalid)
        key = request_key(scope, rid)
        if key not in seen:
            seen.add(key)
            state.keys.append(key)
    return state


def verify(settings: Settings, require_final: bool = False, show_progress: bool = False,
           ledger_topic: str | None = None,
           anchor: list[dict[str, Any]] | None = None, processes: int = 1,
           since: Checkpoint | None = None) -> VerifyReport:
    """Read the logs and check every invariant (`ledger_topic`: a copy of ledger.events to
    check in its place, e.g. a backup; `anchor`: heads printed earlier (VerifyReport.anchor)
    that the chains must still pass through, wherever the events now sit; `processes`: fold
    the ledger's partitions in that many processes; `since`: go on from a checkpoint, reading
    only what came after it, once the log is shown to still pass through its chain heads).
    The report's `checkpoint` is where this verify ended (VerifyReport.checkpoint)."""
    report = VerifyReport()
    topic = ledger_topic or settings.topic(topics.LEDGER)
    if since is not None:
        matches_log(settings, topic, since)
        fold, checks = fold_ledger(settings, topic, None, anchor, show_progress,
                                   restored(since, settings.id_window_ms),
                                   dict(since.ledger_next))
    elif processes > 1:
        fold, checks = fold_in_parallel(settings, topic, processes, anchor)
    else:
        fold, checks = fold_ledger(settings, topic, None, anchor, show_progress)
    for partition, missing in sorted(fold.expect.items()):
        for digest, offset in missing.items():
            fold.violations.append(f"anchor: ledger partition {partition} no longer passes "
                                   f"through {digest[:16]}... (offset {offset} when anchored): "
                                   f"the log was cut or rewritten")
    open_transfers = open_items(checks)
    checks.finish(fold, report)
    requests = fold_requests(settings, report, since)
    check_requests(requests.keys, requests.status, report, require_final)
    for name in ("requests", "requests_with_outcome", "requests_final", "completed", "rejected"):
        setattr(report, name, getattr(report, name) + requests.carried[name])
    report.checkpoint = snapshot(topic, fold, checks, open_transfers, requests)
    return report


def open_items(checks: LedgerChecks) -> dict[str, list[int]]:
    """The transfers a checkpoint must carry: debited but not all credited or refunded."""
    return {f"{rid}\x00{cur}": [debited, checks.returned[(rid, cur)], checks.refunds[(rid, cur)]]
            for (rid, cur), debited in checks.debits.items()
            if checks.returned[(rid, cur)] != debited}


def snapshot(topic: str, fold: LedgerFold, checks: LedgerChecks,
             open_transfers: dict[str, list[int]], requests: RequestFold) -> Checkpoint:
    """Where this verify ended, as a checkpoint (written only if it passed)."""
    final_counts = {"requests": 0, "requests_with_outcome": 0, "requests_final": 0,
                    "completed": 0, "rejected": 0}
    open_requests: dict[str, str | None] = {}
    for key in requests.keys:
        status = requests.status.get(key)
        if status is not None and is_final(status):
            final_counts["requests"] += 1
            final_counts["requests_with_outcome"] += 1
            final_counts["requests_final"] += 1
            final_counts["completed"] += status == COMPLETED
            final_counts["rejected"] += status == REJECTED_STATUS
        else:
            open_requests[key] = status
    for name, value in requests.carried.items():
        final_counts[name] += value
    settled = {h for h in checks.settled if h in checks.reserved}
    holds_done = Counter(checks.holds_done)
    holds_done["made"] += len(settled)
    for hold_id in settled:
        holds_done[checks.settled[hold_id][0][0]] += 1
    return Checkpoint(
        ledger_topic=topic, ledger_next=dict(fold.ends),
        heads={p: replace(h) for p, h in fold.heads.items()},
        accounts={n: a.without_events() for n, a in fold.accounts.items()},
        applied=fold.applied, duplicates=fold.duplicates,
        money={cur: [m.deposits, m.withdrawals] for cur, m in checks.money.items()},
        open_transfers=open_transfers,
        open_holds={h: a for h, a in checks.reserved.items() if h not in checks.settled},
        held={n: v for n, v in checks.held.items() if v},
        holds_done=dict(holds_done), requests_next=dict(requests.requests_next),
        outcomes_next=dict(requests.outcomes_next), open_requests=open_requests,
        request_counts=final_counts)


def restored(cp: Checkpoint, window_ms: int) -> tuple[LedgerFold, LedgerChecks]:
    """A fold and its checks as the checkpoint left them."""
    fold = LedgerFold(accounts={n: a.without_events() for n, a in cp.accounts.items()},
                      applied=cp.applied, duplicates=cp.duplicates,
                      heads={p: replace(h) for p, h in cp.heads.items()},
                      ends=dict(cp.ledger_next))
    checks = LedgerChecks(window_ms)
    for cur, (deposits, withdrawals) in cp.money.items():
        checks.money[cur] = Money(deposits=deposits, withdrawals=withdrawals)
    for key, (debited, returned, refunds) in cp.open_transfers.items():
        rid, _, cur = key.partition("\x00")
        checks.debits[(rid, cur)] = debited
        checks.returned[(rid, cur)] = returned
        checks.refunds[(rid, cur)] = refunds
    checks.reserved.update(cp.open_holds)
    checks.held.update(cp.held)
    checks.holds_done.update(cp.holds_done)
    return fold, checks


def load_anchor(path: str) -> list[dict[str, Any]]:
    """The heads `bank replay verify --anchor` printed (JSON lines)."""
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def main(settings: Settings, require_final: bool, anchor: bool = False,
         against: str | None = None, ledger_topic: str | None = None, processes: int = 1,
         since_checkpoint: bool = False, checkpoint: bool = False) -> int:
    from kbank.replay import checkpoint as checkpoints

    try:
        since = checkpoints.read(settings) if since_checkpoint else None
        report = verify(settings, require_final, show_progress=True, ledger_topic=ledger_topic,
                        anchor=load_anchor(against) if against else None, processes=processes,
                        since=since)
    except checkpoints.CheckpointError as exc:
        print(f"verify: refused: {exc}", file=sys.stderr)
        return 2
    if anchor:
        for head in report.anchor():
            print(orjson.dumps(head).decode())
    else:
        if since is not None:
            print(f"from checkpoint made {since.made_ms} by {since.signed_off_by} "
                  f"({sum(since.ledger_next.values()):,} ledger offsets already verified)")
        print(report.render())
    if checkpoint and report.ok and report.checkpoint is not None:
        made = checkpoints.write(settings, report.checkpoint)
        print(f"checkpoint {made[:16]}... signed off: the next --since-checkpoint starts here")
    elif checkpoint:
        print("no checkpoint written: this verify did not pass")
    sys.stdout.flush()
    return 0 if report.ok else 1
