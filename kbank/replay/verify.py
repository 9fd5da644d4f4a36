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
from kbank.replay.checks import LedgerChecks
from kbank.replay.report import VerifyReport
from kbank.replay.ledger import LedgerFold
from kbank.replay.parallel import in_processes, partition_shares
from kbank.streams.progress import progress_bar
from confluent_kafka import TopicPartition

from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.decisions import deciding_account, parse_json
from kbank.streams.config import Settings
from kbank.streams.model import (COMPLETED, REJECTED_STATUS, is_final, is_name, outcome_key, request_key,
                           status_moves)

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
    fold, checks = LedgerFold(), LedgerChecks(parts[0][1].applied.window_ms)
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
    checks.finish(fold, report)
    requests = fold_requests(settings, report, since)
    check_requests(requests.keys, requests.status, report, require_final)
    for name in ("requests", "requests_with_outcome", "requests_final", "completed", "rejected"):
        setattr(report, name, getattr(report, name) + requests.carried[name])
    report.checkpoint = snapshot(topic, fold, checks, requests)
    return report


def snapshot(topic: str, fold: LedgerFold, checks: LedgerChecks,
             requests: RequestFold) -> Checkpoint:
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
    return Checkpoint(
        ledger_topic=topic, ledger_next=dict(fold.ends),
        heads={p: replace(h) for p, h in fold.heads.items()},
        accounts={n: a.without_events() for n, a in fold.accounts.items()},
        applied=fold.applied, duplicates=fold.duplicates, **checks.save(),
        requests_next=dict(requests.requests_next),
        outcomes_next=dict(requests.outcomes_next), open_requests=open_requests,
        request_counts=final_counts)


def restored(cp: Checkpoint, window_ms: int) -> tuple[LedgerFold, LedgerChecks]:
    """A fold and its checks as the checkpoint left them."""
    fold = LedgerFold(accounts={n: a.without_events() for n, a in cp.accounts.items()},
                      applied=cp.applied, duplicates=cp.duplicates,
                      heads={p: replace(h) for p, h in cp.heads.items()},
                      ends=dict(cp.ledger_next))
    checks = LedgerChecks.restored(cp, window_ms)
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
