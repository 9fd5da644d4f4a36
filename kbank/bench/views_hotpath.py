"""`bank bench --views-hot-path N`: the views' CPU per transfer without Kafka.

What the views do for N transfers, each its two ledger events (the debit and the credit)
and its three outcomes (accepted, debited, completed), in batches of 2,000 records, through
the views' one fold (ViewsProcessor) into real RocksDB stores (LocalStores): parsing,
the account views, history, rankings, totals, statuses and the writes. CPU time, so the
broker's and the machine's noise stays out; the engine's counterpart is --hot-path.
"""
from __future__ import annotations

import random
import tempfile
import time

import orjson

from kbank.streams.model import (ACCEPTED, COMPLETED, CREDITED, DEBITED, DEBITED_STATUS,
                                 DEPOSITED, OPENED, Position, dumps, ledger_event)
from kbank.streams.views.partition_stores import LocalStores
from kbank.streams.views.processor import ViewsProcessor

PARTITIONS = 4
BATCH = 2_000            # as the live reader's (kbank.streams.views.sources.BATCH)
REQUESTS = "bank.transfers.requests"
Record = tuple[bool, int, int, bytes]     # (from the ledger, partition, offset, value)


def transfer_records(transfers: int, accounts: int, seed: int, partitions: int = PARTITIONS,
                     step_ms: int = 1) -> tuple[list[Record], list[Record]]:
    """A valid ledger and its outcomes: the accounts' set-up (opened, funded), then the
    transfers' records (each a debit, a credit and three outcomes, `step_ms` apart), in the
    order a views worker may read them, both sources interleaved. The fold's tests use it
    too."""
    rng = random.Random(seed)
    names = [f"acct-{i:07d}" for i in range(accounts)]
    where = {name: i % partitions for i, name in enumerate(names)}
    balance, seq = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    offsets = {(source, p): 0 for source in (True, False) for p in range(partitions)}
    ts = 1_700_000_000_000
    out: list[Record] = []

    def emit(ledger: bool, account: str, value: bytes) -> None:
        key = (ledger, where[account])
        out.append((ledger, where[account], offsets[key], value))
        offsets[key] += 1

    def event(account: str, rid: str, kind: str, amount: int, other: str | None) -> None:
        seq[account] += 1
        emit(True, account, dumps(ledger_event(account, seq[account], rid, kind, amount, other,
                                               balance[account], ts,
                                               Position(REQUESTS, where[account], 0))))

    def outcome(account: str, rid: str, status: str) -> None:
        emit(False, account, orjson.dumps({"request_id": rid, "account": account,
                                           "status": status, "ts": ts}))

    for name in names:
        event(name, f"open-{name}", OPENED, 0, None)
        balance[name] = 10**9
        event(name, f"dep-{name}", DEPOSITED, 10**9, None)
    setup, out = out, []
    for i in range(transfers):
        ts += step_ms
        a, b = rng.sample(names, 2)
        rid, amount = f"t-{i}", rng.randint(1, 1_000)
        outcome(a, rid, ACCEPTED)
        balance[a] -= amount
        event(a, rid, DEBITED, amount, b)
        outcome(a, rid, DEBITED_STATUS)
        balance[b] += amount
        event(b, rid, CREDITED, amount, a)
        outcome(a, rid, COMPLETED)
    return setup, out


def _fold(processor: ViewsProcessor, records: list[Record]) -> None:
    for start in range(0, len(records), BATCH):
        for ledger, partition, offset, value in records[start:start + BATCH]:
            if ledger:
                processor.fold_ledger(partition, offset, value)
            else:
                processor.fold_outcome(partition, offset, value)
        processor.after_batch()


def views_hot_path_speed(transfers: int, accounts: int = 10_000,
                         seed: int = 1) -> dict[str, float]:
    """CPU microseconds per transfer folded, over `transfers` after the accounts' set-up."""
    setup, records = transfer_records(transfers, accounts, seed)
    with tempfile.TemporaryDirectory(prefix="bank-bench-views-hotpath-") as path:
        stores = LocalStores(path)
        processor = ViewsProcessor(lambda: stores, REQUESTS, 24 * 3_600_000)
        _fold(processor, setup)
        t0 = time.process_time()
        _fold(processor, records)
        cpu = time.process_time() - t0
        stores.close()
    return {"transfers": transfers, "records": len(records),
            "cpu_us_per_transfer": round(cpu / transfers * 1e6, 1),
            "cpu_us_per_record": round(cpu / len(records) * 1e6, 2)}
