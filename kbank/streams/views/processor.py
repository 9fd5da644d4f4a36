"""The views' processor: folds source records into the views' stores.

The one fold of the views (issue 42). The live worker (kbank.streams.views.app) gives it the
records its SourceReader reads; `bank replay views` the logs' records from their start, into
stores of its own; the tests, records made by hand, on real RocksDB stores without a broker.
So a rebuilt view and the live one are made by the same code. It knows no Kafka: a gap in
an account's events is healed through `read_ledger`, which the live worker gives it.

What it writes is the layout of kbank.streams.views.layout; how each record changes a view
is the pure rules of kbank.streams.views.fold. What it keeps decoded between batches: the
account views and request statuses it has read or moved, and each partition's totals (which
say how far its ledger partition is folded). Each is encoded and written once per flush, not
once per event (`_write_decoded`), in the same RocksDB write batch as everything the flush
covers (kbank.streams.views.writes).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol

import orjson

from kbank.streams.model import OPENED, is_final, outcome_key, parse_ledger_event
from kbank.streams.views.fold import (AccountView, Applied, PartitionTotals, Ranked,
                                      apply_to_account, classify, index_entries, merge_status,
                                      parse_outcome, ranking_entries, ranking_moves, standing,
                                      status_expired, status_expiry)
from kbank.streams.views.layout import ViewKeys, history_value
from kbank.streams.views.partition_stores import PartitionReads
from kbank.streams.views.queries import rank_value
from kbank.streams.views.writes import TableWrites

log = logging.getLogger("bank.views")

SWEEP_EXTRA = 8                  # statuses a sweep looks at beyond two per outcome folded
CACHED_ACCOUNTS = 200_000        # decoded account views kept between flushes, at most
CACHED_STATUSES = 100_000        # decoded request statuses kept between flushes, at most

# partition, start offset, end offset -> the committed ledger records in [start, end)
ReadLedger = Callable[[int, int, int], Iterable[tuple[int, bytes | None]]]


class FoldMetrics(Protocol):
    """What the fold counts (the live worker's Prometheus metrics; nothing in a rebuild)."""

    def count_ledger_event(self, result: str) -> None: ...

    def count_outcome(self, status: str, reason: str) -> None: ...

    def status_moved(self, took_s: float, first: bool, final: bool) -> None: ...


class Uncounted:
    """FoldMetrics that count nothing (a rebuild, a test)."""

    def count_ledger_event(self, result: str) -> None:
        pass

    def count_outcome(self, status: str, reason: str) -> None:
        pass

    def status_moved(self, took_s: float, first: bool, final: bool) -> None:
        pass


class ViewsProcessor:
    """Folds ledger events and outcomes, partition by partition, into the views' stores."""

    def __init__(self, stores: Callable[[], PartitionReads], requests_topic: str,
                 window_ms: int, metrics: FoldMetrics | None = None,
                 read_ledger: ReadLedger | None = None,
                 cached_accounts: int | None = CACHED_ACCOUNTS) -> None:
        self.requests_topic = requests_topic   # a rejected transfer's sender side comes from it
        self.window_ms = window_ms             # the engine's id window: statuses kept as long
        self.metrics: FoldMetrics = metrics or Uncounted()
        self._read_ledger = read_ledger        # None: a gap is counted and skipped
        self._cached_accounts = cached_accounts   # None: every account stays decoded
        self.writes = TableWrites(stores, before_flush=self._write_decoded)
        self._accounts: dict[tuple[int, str], AccountView] = {}
        self._accounts_moved: set[tuple[int, str]] = set()
        self._totals: dict[int, PartitionTotals] = {}
        self._totals_moved: set[int] = set()
        self._statuses: dict[tuple[int, bytes], dict] = {}   # by (partition, ViewKeys.status)
        self._statuses_moved: set[tuple[int, bytes]] = set()
        self._outcomes_reached: dict[int, int] = {}   # outcomes partition -> next offset
        # statuses kept for the id window: per outcomes partition, the latest outcome ts
        # folded, the outcomes folded since the last sweep, and where the sweep goes on
        self.status_clock: dict[int, int] = {}
        self._outcomes_folded: dict[int, int] = {}
        self._sweep_after: dict[int, bytes] = {}
        # per partition: a clock before which no status there can expire (the earliest expiry
        # of a whole sweep, and of every status made since), and the earliest expiry the
        # sweep's current pass has seen: until then, there is nothing to sweep
        self._quiet_until: dict[int, int] = {}
        self._pass_earliest: dict[int, int] = {}

    # -- where to resume --

    def forget_decoded(self) -> None:
        """Drop what is kept decoded: the partitions may have moved (another worker folded
        them since). Flush first: what is not in the store is lost."""
        assert self.unwritten == 0, "forget_decoded before a flush"
        self._accounts.clear()
        self._totals.clear()
        self._statuses.clear()
        self._outcomes_folded.clear()
        self._quiet_until.clear()
        self._pass_earliest.clear()

    def ledger_position(self, partition: int) -> int:
        """The next ledger offset of `partition` to fold: just past what the store holds."""
        return self.partition_totals(partition).offset + 1

    def outcomes_position(self, partition: int) -> int:
        """The next outcomes offset of `partition` to fold."""
        if partition in self._outcomes_reached:
            return self._outcomes_reached[partition]
        stored = self.writes.get(partition, ViewKeys.outcomes_position(partition))
        return int(stored) if stored is not None else 0

    # -- the ledger --

    def fold_ledger(self, partition: int, offset: int, raw: bytes | None,
                    heal: bool = True) -> None:
        """Fold one ledger record; the totals, written with the flush, record the position.

        A gap (the account's view is behind the event's seq) means the store lost events
        that the ledger has: they are read back from the ledger, from just after the
        account's last applied event up to this one, and folded first (`_heal_gap`)."""
        event = parse_ledger_event(raw)
        if event is None:
            log.error("malformed ledger event at %s@%d: counted and skipped", partition, offset)
            self.metrics.count_ledger_event("malformed")
            return
        assert raw is not None
        account, seq = event["account"], event["seq"]
        view = self._account(partition, account)
        verdict = classify(view, seq, offset)
        self.metrics.count_ledger_event(verdict.value)
        if verdict is Applied.DUPLICATE:
            return
        if verdict is Applied.GAP and heal and view is not None and self._read_ledger:
            # an account the views know: read back from its last applied event (bounded by
            # this partition's range); an unknown account's gap is never read from offset 0
            log.warning("ledger gap for %s: have seq %s, got %s at %d@%d; reading %d@%d.. back",
                        account, view.seq, seq, partition, offset, partition, view.offset + 1)
            self._heal_gap(partition, view.offset + 1, offset)
            self.metrics.count_ledger_event("healed")
            view = self._account(partition, account)
            verdict = classify(view, seq, offset)
        if verdict is Applied.GAP:
            log.error("ledger gap for %s: have seq %s, got %s at %d@%d",
                      account, view.seq if view else 0, seq, partition, offset)
            return
        writes = self.writes
        if verdict is Applied.NEW:
            before = standing(view)
            view = self._accounts[(partition, account)] = apply_to_account(view, event, offset)
            self._accounts_moved.add((partition, account))
            writes.put(partition, ViewKeys.history(account, seq),
                       history_value(offset, view.totals, raw))
            self._move_in_rankings(partition, account, *ranking_moves(before, view))
        else:   # the record applied last, again: its writes may not have been made
            assert verdict is Applied.REDELIVERED and view is not None
            writes.put(partition, ViewKeys.history(account, seq),
                       history_value(offset, view.totals, raw))
            self._move_in_rankings(partition, account, [], ranking_entries(view))
        if event["kind"] == OPENED:   # the accounts' indexes: by currency, by metadata pair
            for name, value in index_entries(event):
                writes.put(partition, ViewKeys.index(name, value, account),
                           account.encode("utf-8", "surrogatepass"))
        if self.partition_totals(partition).count(event, offset, self.requests_topic,
                                                  view.currency):
            self._totals_moved.add(partition)

    def _account(self, partition: int, account: str) -> AccountView | None:
        """The account's view as the fold left it (decoded once, then kept)."""
        view = self._accounts.get((partition, account))
        if view is None:
            stored = self.writes.get(partition, ViewKeys.account(account))
            if stored is None:
                return None
            view = self._accounts[(partition, account)] = AccountView.from_bytes(stored)
        return view

    def partition_totals(self, partition: int) -> PartitionTotals:
        """The partition's totals as the fold left them (decoded once, then kept: the fold
        is the only writer while it reads the partition)."""
        totals = self._totals.get(partition)
        if totals is None:
            stored = self.writes.get(partition, ViewKeys.totals(partition))
            totals = self._totals[partition] = PartitionTotals.from_bytes(stored) \
                if stored is not None else PartitionTotals()
        return totals

    def _move_in_rankings(self, partition: int, account: str, deleted: list[Ranked],
                          written: list[tuple[Ranked, int]]) -> None:
        for ranking, group, bucket in deleted:
            self.writes.delete(partition, ViewKeys.rank(ranking, group, bucket, account))
        for (ranking, group, bucket), figure in written:
            self.writes.put(partition, ViewKeys.rank(ranking, group, bucket, account),
                            rank_value(bucket, figure, account))

    def _heal_gap(self, partition: int, start: int, end: int) -> None:
        """Fold the ledger records [start, end) of a partition again: the fold skips what it
        has and applies what it lacks."""
        assert self._read_ledger is not None
        for offset, raw in self._read_ledger(partition, start, end):
            self.fold_ledger(partition, offset, raw, heal=False)

    # -- the outcomes --

    def fold_outcome(self, partition: int, offset: int, raw: bytes | None,
                     appended_s: float | None = None) -> None:
        """Fold one outcome into its request's status; then record the position. A status
        that moves is timed (request timestamp to the outcome's append time, when known)."""
        out = parse_outcome(raw)
        if out is None:
            self.metrics.count_outcome("malformed", "")
            log.error("malformed outcome at %s@%d: skipped", partition, offset)
            return
        self.metrics.count_outcome(out["status"], out.get("reason") or "")
        self._outcomes_folded[partition] = self._outcomes_folded.get(partition, 0) + 1
        if isinstance(out.get("ts"), int) and out["ts"] > self.status_clock.get(partition, 0):
            self.status_clock[partition] = out["ts"]
        slot = (partition, ViewKeys.status(outcome_key(out)))
        current = self._status(slot)
        new = merge_status(current, out, self.window_ms)
        if new is None:
            return
        self._statuses[slot] = new
        self._statuses_moved.add(slot)
        if current is None or new["since"] != current.get("since"):   # made, or made anew
            self._may_expire(partition, status_expiry(new, self.window_ms))
        self._outcomes_reached[partition] = offset + 1   # written with the status, at the flush
        if appended_s is not None and isinstance(out.get("ts"), int):
            self.metrics.status_moved(max(0.0, appended_s - out["ts"] / 1000),
                                      current is None, is_final(new["status"]))

    def _status(self, slot: tuple[int, bytes]) -> dict | None:
        """A request's status as the fold left it (decoded once, then kept)."""
        status = self._statuses.get(slot)
        if status is None:
            stored = self.writes.get(*slot)
            if stored is None:
                return None
            status = self._statuses[slot] = orjson.loads(stored)
        return status

    def _may_expire(self, partition: int, expiry: int | None) -> None:
        """A status of the partition may be forgotten from `expiry` on."""
        if expiry is not None:
            if expiry < self._quiet_until.get(partition, expiry):   # unknown: swept anyway
                self._quiet_until[partition] = expiry
            if expiry < self._pass_earliest.get(partition, expiry + 1):
                self._pass_earliest[partition] = expiry

    def _expire_statuses(self) -> None:
        """Look at two statuses (and a few more) per outcome folded since the last sweep, on
        each partition that had outcomes, from where its sweep left off, and delete those
        past the id window (fold.status_expired). A partition's statuses are each visited
        once per (their number / 2) outcomes, and a request makes one status and at least
        one outcome, so a partition keeps at most twice the statuses made in a window and
        a seventh. The clock is this worker's, from its outcomes: it starts low after a
        restart, which only deletes later. A partition is not looked at while its clock is
        before the earliest expiry of its last whole pass and of the statuses made since
        (with a window of hours, that is most of the time)."""
        stores = self.writes.stores()
        for partition, folded in self._outcomes_folded.items():
            clock = self.status_clock.get(partition, 0)
            if clock < self._quiet_until.get(partition, 0):
                continue
            limit = 2 * folded + SWEEP_EXTRA
            after = self._sweep_after.get(partition, b"")
            found = stores.scan_items(partition, ViewKeys.STATUS, after, limit)
            for key, stored in found:
                slot = (partition, key)
                current = self._statuses.get(slot)   # the fold's, if it has it decoded
                if current is None:
                    value = self.writes.get_or(partition, key, stored)   # the batch's, if any
                    current = orjson.loads(value) if value is not None else None
                if current is None:
                    continue
                if status_expired(current, clock, self.window_ms):
                    self.writes.delete(partition, key)
                    self._statuses.pop(slot, None)
                    self._statuses_moved.discard(slot)
                else:
                    self._may_expire(partition, status_expiry(current, self.window_ms))
            if len(found) == limit:
                self._sweep_after[partition] = found[-1][0][len(ViewKeys.STATUS):]
            else:   # a whole pass: nothing expires before the earliest it saw, or made since
                self._sweep_after[partition] = b""
                self._quiet_until[partition] = self._pass_earliest.pop(partition, 2**63)
        self._outcomes_folded.clear()

    # -- writing --

    def after_batch(self) -> None:
        """A batch of sources folded: forget statuses past the id window, then write."""
        self._expire_statuses()
        self.flush()

    def flush(self) -> None:
        """Everything folded so far into the stores, in one write batch per partition; then
        keep at most `cached_accounts` views decoded."""
        self.writes.flush()
        if self._cached_accounts is not None and len(self._accounts) > self._cached_accounts:
            self._accounts.clear()    # all written: read back from the store when next met
        if len(self._statuses) > CACHED_STATUSES:
            self._statuses.clear()

    @property
    def unwritten(self) -> int:
        """What the fold has made that is not in the stores yet (0: all of it is)."""
        return self.writes.unacknowledged + len(self._accounts_moved) + \
            len(self._totals_moved) + len(self._statuses_moved) + len(self._outcomes_reached)

    def _write_decoded(self) -> None:
        """The views, totals and statuses the fold moved since the last flush, each encoded
        once, and the outcomes positions they reach, into the flush (with the history they
        cover)."""
        for partition, account in self._accounts_moved:
            self.writes.put_no_flush(partition, ViewKeys.account(account),
                                     self._accounts[(partition, account)].to_bytes())
        self._accounts_moved.clear()
        for partition in self._totals_moved:
            self.writes.put_no_flush(partition, ViewKeys.totals(partition),
                                     self._totals[partition].to_bytes())
        self._totals_moved.clear()
        for partition, key in self._statuses_moved:
            self.writes.put_no_flush(partition, key, orjson.dumps(self._statuses[(partition, key)]))
        self._statuses_moved.clear()
        for partition, reached in self._outcomes_reached.items():
            self.writes.put_no_flush(partition, ViewKeys.outcomes_position(partition),
                                     b"%d" % reached)
        self._outcomes_reached.clear()
