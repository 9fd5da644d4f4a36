"""`bank bench --retention-days D`: does an engine partition's state stop growing after the
id window?

One partition's BatchProcessor (the engine's own) over a real RocksDB store, its outputs
captured: the changelog's records are kept as compaction leaves them (the latest per key,
a tombstone removes its key), so after each simulated day the bench reports what a new
worker would restore (records, bytes, and the time PartitionStore.apply_changelog takes to
write them into a fresh store) and the live store's size on disk. The clock is simulated:
`transfers_per_day` transfers (and one hold in 20, voided in the next batch) stamped
evenly over each day, so days of history take seconds. Run twice: with the window
(BANK_ID_RETENTION_S, 7 days) and with ids kept for good, as before it (the control).
The state after the window is flat in transfers per window: at a real rate it is that
rate x (window + a seventh), which the report says in bytes.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from dataclasses import replace
from typing import Any

import orjson
from confluent_kafka import Message

from kbank.streams.config import Settings
from kbank.streams.engine import PartitionStore, PartitionTask
from kbank.streams.engine import BatchProcessor, Topics
from kbank.streams.partitioning import partition_for
from kbank.streams.progress import progress_bar
from kbank.streams.storage import StoreBudget

DAY_S = 86_400
PARTITIONS = 8
BATCH = 2_500
RESTORE_CHUNK = 10_000
_TOPICS = Topics("req", "cred", "ledger", "out", "dead", "changelog", "batches")


class _Compacted:
    """The transaction's send: the changelog kept as compaction leaves it, the rest dropped."""

    def __init__(self) -> None:
        self.changelog: dict[bytes, bytes] = {}

    def send(self, topic: str, key: bytes | None, value: bytes | None, *_: Any, **__: Any) -> None:
        if topic != _TOPICS.changelog or key is None:
            return
        if value is None:
            self.changelog.pop(key, None)
        else:
            self.changelog[key] = value

    def record_delivery(self, *_: object) -> None:
        pass


def _disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
               for f in files)


def _restore_seconds(records: dict[bytes, bytes], path: str, settings: Settings) -> float:
    """A new worker's restore of the compacted changelog into a fresh store (the broker's
    reading of it is left out: the same for both runs per record)."""
    store = PartitionStore(path, StoreBudget(settings.rocksdb_memory_mb))   # a new worker's own
    items = list(records.items())
    started = time.perf_counter()
    for i in range(0, len(items), RESTORE_CHUNK):
        store.apply_changelog(items[i:i + RESTORE_CHUNK], i + RESTORE_CHUNK)
    took = time.perf_counter() - started
    store.close()
    shutil.rmtree(path, ignore_errors=True)
    return took


def retention_growth(days: int, transfers_per_day: int, window_s: int | None,
                     accounts: int = 2_000, seed: int = 1) -> list[dict[str, Any]]:
    """Per simulated day: what a restore reads and takes, and the store's size."""
    rng = random.Random(seed)
    settings = replace(Settings(), id_retention_s=window_s or 10 * 366 * DAY_S)
    names = [f"a{i}" for i in range(accounts * PARTITIONS * 2)]
    mine = [n for n in names if partition_for(n, PARTITIONS) == 0][:accounts]
    step_ms = DAY_S * 1000 / transfers_per_day
    root = tempfile.mkdtemp(prefix="bank-bench-retention-")
    out = _Compacted()
    store = PartitionStore(os.path.join(root, "live"), StoreBudget(settings.rocksdb_memory_mb))
    task = PartitionTask(0, store)
    processor = BatchProcessor(settings, _TOPICS, PARTITIONS, out)
    offset, t0 = 0, 1_700_000_000_000

    def request(body: dict[str, Any], key: str, ts: float) -> Message:
        nonlocal offset
        offset += 1
        return Message(topic="req", partition=0, offset=offset - 1, key=key.encode(),
                       value=orjson.dumps(body), timestamp=(2, int(ts)))

    def run(batch: list[Message]) -> None:
        processor.run(task, [], batch)
        store.commit(0, (0, offset))

    run([request(body, name, t0) for name in mine for body in (
        {"type": "open_account", "request_id": f"o{name}", "account": name},
        {"type": "deposit", "request_id": f"d{name}", "account": name, "amount": 10**12})])
    rows: list[dict[str, Any]] = []
    voids: list[Message] = []
    label = "with the window" if window_s else "ids kept for good"
    progress = progress_bar(f"retention ({label}): simulated days", "days", total=days)
    n = 0
    for day in range(1, days + 1):
        cpu = time.process_time()
        for _ in range(transfers_per_day // BATCH):
            batch, voids = voids, []
            for _ in range(BATCH - len(batch)):
                ts = t0 + n * step_ms
                src = rng.choice(mine)
                if n % 20 == 0:
                    batch.append(request({"type": "hold", "request_id": f"h{n}", "from": src,
                                          "to": rng.choice(names), "amount": 1,
                                          "timeout_s": 3600}, src, ts))
                    voids.append(request({"type": "void", "request_id": f"v{n}", "from": src,
                                          "hold_id": f"h{n}"}, src, ts))
                else:
                    batch.append(request({"type": "transfer", "request_id": f"t{n}", "from": src,
                                          "to": rng.choice(names), "amount": 1}, src, ts))
                n += 1
            run(batch)
        cpu = time.process_time() - cpu
        store.flush()
        records = out.changelog
        rows.append({"day": day, "transfers": n, "changelog_records": len(records),
                     "changelog_mb": round(sum(len(k) + len(v) for k, v in records.items()) / 2**20, 2),
                     "restore_s": round(_restore_seconds(records, os.path.join(root, f"r{day}"), settings), 3),
                     "store_mb": round(_disk_bytes(store.path) / 2**20, 2),
                     "cpu_us_per_transfer": round(cpu / (transfers_per_day // BATCH * BATCH) * 1e6, 1)})
        progress.update()
    progress.close()
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return rows


def plot_retention(with_window: list[dict[str, Any]], kept: list[dict[str, Any]], window_days: float,
                   path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, field, title in zip(axes, ("changelog_records", "restore_s", "store_mb"),
                                ("changelog records a restore reads", "restore (s)",
                                 "store on disk (MB)")):
        for rows, name in ((with_window, f"ids kept {window_days:g} days"), (kept, "ids kept for good")):
            ax.plot([r["day"] for r in rows], [r[field] for r in rows], marker="o", label=name)
        ax.axvline(window_days * 8 / 7, color="grey", linestyle=":", label="window + a seventh")
        ax.set_xlabel("simulated days of history")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("One engine partition's state over simulated days (bank bench --retention-days)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
