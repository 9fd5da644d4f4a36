"""`bank bench --hot-path N`: the engine's CPU per transfer without Kafka.

N transfers, in batches of 2,500, through BatchProcessor.run on a real RocksDB store whose
outputs go nowhere: the decision, its JSON and the store, which is what a change to the
rules or the adapter costs, measured in CPU time so that the broker's and the machine's
noise stays out (the closed loop on 2 shared cores swings by tens of percent).
"""
from __future__ import annotations

import random
import tempfile
import time

import orjson
from confluent_kafka import Message

from kbank.streams.config import Settings
from kbank.streams.engine import PartitionStore, PartitionTask
from kbank.streams.engine import BatchProcessor, Topics
from kbank.streams.partitioning import partition_for
from kbank.streams.storage import StoreBudget

PARTITIONS = 8
BATCH = 2_500


class _Nowhere:
    """The transaction's send, counting instead of producing."""

    def __init__(self) -> None:
        self.records = 0

    def send(self, *_: object, **__: object) -> None:
        self.records += 1

    def record_delivery(self, *_: object) -> None:
        pass


def _request(offset: int, body: dict, key: str) -> Message:
    return Message(topic="req", partition=0, offset=offset, key=key.encode(),
                   value=orjson.dumps(body), timestamp=(1, 1_700_000_000_000))


def hot_path_speed(transfers: int, accounts: int = 2_000, seed: int = 1) -> dict[str, float]:
    """CPU microseconds per transfer decided, over `transfers` after the accounts' set-up."""
    rng = random.Random(seed)
    names = [f"a{i}" for i in range(accounts * PARTITIONS * 2)]
    mine = [n for n in names if partition_for(n, PARTITIONS) == 0][:accounts]
    with tempfile.TemporaryDirectory(prefix="bank-bench-hotpath-") as path:
        settings = Settings()
        store = PartitionStore(f"{path}/p", StoreBudget(settings.rocksdb_memory_mb))
        task = PartitionTask(0, store)
        out = _Nowhere()
        processor = BatchProcessor(settings, Topics("req", "cred", "ledger", "out", "dead",
                                                      "changelog", "batches"), PARTITIONS, out)
        offset = 0
        setup = []
        for name in mine:
            for body in ({"type": "open_account", "request_id": f"o{name}", "account": name},
                         {"type": "deposit", "request_id": f"d{name}", "account": name,
                          "amount": 10**12}):
                setup.append(_request(offset, body, name))
                offset += 1
        processor.run(task, [], setup)
        store.commit(0, (0, offset))
        batches = []
        for start in range(0, transfers, BATCH):
            batch = []
            for _ in range(min(BATCH, transfers - start)):
                src = rng.choice(mine)
                dst = rng.choice([n for n in rng.sample(names, 2) if n != src])
                batch.append(_request(offset, {"type": "transfer", "request_id": f"t{offset}",
                                               "from": src, "to": dst, "amount": 1}, src))
                offset += 1
            batches.append(batch)
        t0 = time.process_time()
        for batch in batches:
            processor.run(task, [], batch)
            store.commit(0, (0, offset))
        used = time.process_time() - t0
        store.close()
    return {"transfers": transfers, "cpu_us_per_transfer": round(used / transfers * 1e6, 2),
            "records_written": out.records}
