"""The views' one fold (ViewsProcessor) on real RocksDB stores, without a broker: the live
worker's and `bank replay views`' code (issue 42, item 2).

The records are a small valid ledger and its outcomes, made here. A fold interrupted at
any point without its last flush (what a SIGKILL leaves) and resumed from its store's own
positions ends with exactly the stores of a fold that never stopped; resumed from where it
had read instead (not what it had written), it loses what was not flushed; and keeping
fewer decoded views, or healing a gap from the log, changes nothing.
"""
from __future__ import annotations

import random
from typing import Iterator

import orjson

from kbank.bench.views_hotpath import Record, transfer_records
from kbank.streams.views.fold import PartitionTotals, status_expired
from kbank.streams.views.layout import ViewKeys
from kbank.streams.views.partition_stores import LocalStores
from kbank.streams.views.processor import ViewsProcessor

REQUESTS = "bank.transfers.requests"
PARTITIONS = 2
WINDOW_MS = 10 * 60_000
def _records(transfers: int, seed: int = 3) -> list[Record]:
    """Eight accounts' set-up and `transfers` transfers among them, a second apart."""
    setup, records = transfer_records(transfers, accounts=8, seed=seed,
                                      partitions=PARTITIONS, step_ms=1_000)
    return setup + records


def _processor(stores: LocalStores, cached_accounts: int | None = None) -> ViewsProcessor:
    return ViewsProcessor(lambda: stores, REQUESTS, WINDOW_MS, cached_accounts=cached_accounts)


def _fold(processor: ViewsProcessor, records: list[Record], batch: int) -> None:
    for i, (is_ledger, partition, offset, value) in enumerate(records, 1):
        fold = processor.fold_ledger if is_ledger else processor.fold_outcome
        fold(partition, offset, value)
        if i % batch == 0:
            processor.after_batch()
    processor.after_batch()


def _contents(stores: LocalStores) -> dict[int, dict[bytes, bytes]]:
    """Every key and value of the stores. A ranking entry's value keeps the figure it was
    written with (readers take the account's live one: fold.ranked_figure), and a record
    folded again writes its account's entries anew: only its bucket and account are
    compared."""
    contents = {p: dict(stores.scan_items(p, b"", b"", 2**62)) for p in range(PARTITIONS)}
    for values in contents.values():
        for key, value in values.items():
            if key.startswith(ViewKeys.RANK):
                bucket, _, account = value.split(b" ", 2)
                values[key] = bucket + b" " + account
    return contents


def _folded_at_once(tmp_path, records: list[Record]) -> dict[int, dict[bytes, bytes]]:
    stores = LocalStores(str(tmp_path / "at-once"))
    _fold(_processor(stores), records, batch=len(records))
    contents = _contents(stores)
    stores.close()
    return contents


def _resumed(processor: ViewsProcessor, records: list[Record],
             positions: dict[tuple[bool, int], int]) -> Iterator[Record]:
    """The records a worker reads once it resumes at `positions`."""
    return (r for r in records if r[2] >= positions[(r[0], r[1])])


def test_a_fold_killed_between_flushes_resumes_from_its_store_to_the_same_views(tmp_path):
    records = _records(300)
    want = _folded_at_once(tmp_path, records)
    assert want[0] and want[1]
    rng = random.Random(11)
    stores = LocalStores(str(tmp_path / "killed"))
    remaining = records
    for _ in range(6):    # killed six times, each after some flushed and some unflushed work
        processor = _processor(stores, cached_accounts=rng.choice([None, 1, 4]))
        positions = {(True, p): processor.ledger_position(p) for p in range(PARTITIONS)} | \
            {(False, p): processor.outcomes_position(p) for p in range(PARTITIONS)}
        remaining = list(_resumed(processor, records, positions))
        flushed, unflushed = rng.randint(0, 60), rng.randint(1, 40)
        _fold(processor, remaining[:flushed], batch=7)
        for is_ledger, partition, offset, value in remaining[flushed:flushed + unflushed]:
            (processor.fold_ledger if is_ledger else processor.fold_outcome)(
                partition, offset, value)
        # SIGKILL: what was folded since the last flush never reaches the store
    processor = _processor(stores)
    positions = {(True, p): processor.ledger_position(p) for p in range(PARTITIONS)} | \
        {(False, p): processor.outcomes_position(p) for p in range(PARTITIONS)}
    _fold(processor, list(_resumed(processor, records, positions)), batch=50)
    assert _contents(stores) == want


def test_negative_control_resuming_where_it_had_read_loses_what_it_had_not_flushed(tmp_path):
    records = _records(100)
    want = _folded_at_once(tmp_path, records)
    stores = LocalStores(str(tmp_path / "killed"))
    processor = _processor(stores)
    _fold(processor, records[:200], batch=50)
    for is_ledger, partition, offset, value in records[200:230]:   # read, not flushed: killed
        (processor.fold_ledger if is_ledger else processor.fold_outcome)(
            partition, offset, value)
    _fold(_processor(stores), records[230:], batch=50)    # resumed where it had read
    assert _contents(stores) != want


def test_folding_records_again_changes_nothing(tmp_path):
    """At-least-once reading: a whole batch delivered twice (as after a revocation) and
    every record twice in a row fold to the same views; the totals count each event once."""
    records = _records(120)
    want = _folded_at_once(tmp_path, records)
    stores = LocalStores(str(tmp_path / "twice"))
    processor = _processor(stores, cached_accounts=2)
    _fold(processor, records[:150], batch=40)
    _fold(processor, records[:150] + [r for r in records[150:] for _ in range(2)], batch=40)
    assert _contents(stores) == want
    events = sum(PartitionTotals.from_bytes(want[p][ViewKeys.totals(p)]).events
                 for p in range(PARTITIONS))
    assert events == sum(1 for r in records if r[0])


def test_a_gap_is_healed_from_the_log(tmp_path):
    """A ledger event the fold never got (its seq skipped) is read back through
    read_ledger when its account's next event comes, and the views end as if it had been
    folded in order. (The missing event is followed by its account's next one: the
    partition's totals count an event only beyond the last offset they counted.)"""
    records = _records(60)
    want = _folded_at_once(tmp_path, records)
    ledger = [r for r in records if r[0]]
    account = {r: orjson.loads(r[3])["account"] for r in ledger}
    in_partition = [r for r in ledger if r[1] == 0]
    missing = next(r for r, after in zip(in_partition[16:], in_partition[17:])
                   if account[r] == account[after])
    asked: list[tuple[int, int, int]] = []

    def read_ledger(partition: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        asked.append((partition, start, end))
        return ((o, v) for _, p, o, v in ledger if p == partition and start <= o < end)

    stores = LocalStores(str(tmp_path / "gap"))
    processor = ViewsProcessor(lambda: stores, REQUESTS, WINDOW_MS, read_ledger=read_ledger)
    _fold(processor, [r for r in records if r != missing], batch=25)
    assert asked, "the gap was seen"
    assert _contents(stores) == want


def test_statuses_past_the_id_window_are_swept_as_the_fold_goes(tmp_path):
    """The sweep deletes statuses past the window, whether the fold has them decoded or
    not, and keeps every status still inside it as a fold that never swept would have it."""
    window_ms = 20_000      # the records span 300 s: most statuses expire during the fold
    records = _records(300)
    stores = LocalStores(str(tmp_path / "swept"))
    processor = ViewsProcessor(lambda: stores, REQUESTS, window_ms, cached_accounts=3)
    _fold(processor, records, batch=30)
    unswept = LocalStores(str(tmp_path / "unswept"))
    reference = ViewsProcessor(lambda: unswept, REQUESTS, 10**12)   # nothing ever expires
    _fold(reference, records, batch=len(records))

    def statuses(of: LocalStores) -> dict[bytes, dict]:
        return {key: orjson.loads(value) for p in range(PARTITIONS)
                for key, value in of.scan_items(p, ViewKeys.STATUS, b"", 2**62)}

    clock = max(processor.status_clock.values())
    swept, every = statuses(stores), statuses(unswept)
    live = {key: status for key, status in every.items()
            if not status_expired(status, clock, window_ms)}
    assert len(every) == 300 and 0 < len(live) < 100
    assert {key: swept[key] for key in live} == live     # inside the window: all kept, equal
    assert len(swept) < 2 * len(live) + 2 * 30, (len(swept), len(live))   # past it: most deleted


def test_the_sweep_rests_while_no_status_can_have_expired(tmp_path):
    """After one whole pass, a partition's statuses are not looked at again before the
    earliest of them can expire; then the sweep goes on and deletes what expired."""
    records = _records(300)
    stores = LocalStores(str(tmp_path / "resting"))
    scans: list[int] = []
    scan_items = stores.scan_items

    def counted(partition: int, prefix: bytes, after: bytes, limit: int) -> list:
        scans.append(partition)
        return scan_items(partition, prefix, after, limit)

    stores.scan_items = counted   # type: ignore[method-assign]
    window_ms = 200_000      # the records span 300 s: nothing expires in the first 228 s
    processor = ViewsProcessor(lambda: stores, REQUESTS, window_ms)
    half = len(records) // 2     # ~150 s of records
    _fold(processor, records[:half], batch=10)
    resting = len(scans)
    assert resting < 20, resting     # a pass or two per partition, not one per batch (45)
    _fold(processor, records[half:], batch=10)
    assert len(scans) > resting + 10     # past the earliest expiry: sweeping again
    statuses = sum(len(stores.scan(p, ViewKeys.STATUS, b"", 2**62)) for p in range(PARTITIONS))
    assert statuses < 300     # and deleting


def test_negative_control_totals_that_forget_their_offset_count_a_refold_twice(tmp_path,
                                                                                 monkeypatch):
    """What the totals' stored offset is for: an account's last event, folded again after a
    restart (the REDELIVERED case: its side effects are redone), would count twice."""
    records = _records(60)
    stores = LocalStores(str(tmp_path / "forgetful"))
    original = PartitionTotals.count

    def forgetful(self: PartitionTotals, event: dict, offset: int, requests_topic: str,
                  currency: str) -> bool:
        self.offset = -1       # as if it had not recorded how far it counted
        return original(self, event, offset, requests_topic, currency)

    monkeypatch.setattr(PartitionTotals, "count", forgetful)
    processor = _processor(stores)
    _fold(processor, records, batch=40)
    _fold(_processor(stores), records, batch=40)     # a restart that reads the sources again
    events = sum(PartitionTotals.from_bytes(stores.read(p, ViewKeys.totals(p))).events
                 for p in range(PARTITIONS))
    assert events > sum(1 for r in records if r[0])
