"""`bank replay views`: rebuild every view from the logs into fresh stores, compare with the live ones.

The rebuild is the live views' own fold (kbank.streams.views.processor) over ledger.events
and transfers.outcomes read from the beginning, into fresh RocksDB stores of the live layout
(kbank.streams.views.layout). The comparison asks the live web endpoint for every account
(balance, seq, limits, full history), every request status, and the global figures, and
prints each difference.
"""
from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from kbank.streams.progress import progress_bar
from kbank.replay.parallel import in_processes, partition_shares
from kbank.streams import topics
from kbank.streams.apikeys import bearer
from kbank.streams.client import read_topic
from kbank.streams.config import Settings
from urllib.parse import quote

from kbank.streams.model import STATUS_RANK, split_request_key
from kbank.streams.views.fold import AccountView, PartitionTotals, global_figures, status_expired
from kbank.streams.views.layout import ViewKeys, split_history_value
from kbank.streams.views.partition_stores import LocalStores
from kbank.streams.views.processor import ViewsProcessor

_BATCH = 20_000    # records folded between two flushes (the live worker's: every 20 ms)


@dataclass
class RebuiltViews:
    """The views as the log says they must be, read back from the rebuilt stores (one
    directory per process that rebuilt them; `where` says which holds an account's)."""

    stores: list[LocalStores]
    accounts: dict[str, AccountView] = field(default_factory=dict)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> (store, partition)
    totals: dict[int, PartitionTotals] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    seconds: float = 0.0
    processes: int = 1

    def read_back(self) -> None:
        """Every account, status and partition's totals the stores hold."""
        for i, stores in enumerate(self.stores):
            for partition in stores.partitions():
                for key, value in stores.scan_items(partition, ViewKeys.ACCOUNT, b"", 2**62):
                    name = key[len(ViewKeys.ACCOUNT):].decode("utf-8", "surrogatepass")
                    assert name not in self.accounts, name   # an account is one partition's
                    self.accounts[name] = AccountView.from_bytes(value)
                    self.where[name] = (i, partition)
                for key, value in stores.scan_items(partition, ViewKeys.STATUS, b"", 2**62):
                    self.status[key[len(ViewKeys.STATUS):].decode("utf-8", "surrogatepass")] = \
                        orjson.loads(value)
                totals = stores.read(partition, ViewKeys.totals(partition))
                if totals is not None:
                    self.totals[partition] = PartitionTotals.from_bytes(totals)
        self.events = sum(totals.events for totals in self.totals.values())

    def history(self, account: str) -> list[dict[str, Any]]:
        """The account's events, newest first (like GET /accounts/{id}/history)."""
        view, (i, partition) = self.accounts[account], self.where[account]
        stores, entries = self.stores[i], []
        for seq in range(view.seq, 0, -1):
            stored = stores.read(partition, ViewKeys.history(account, seq))
            assert stored is not None, (account, seq)   # the fold writes each seq it applies
            entries.append(orjson.loads(split_history_value(stored)[1]))
        return entries

    def figures(self, partitions: int) -> dict[str, int]:
        return global_figures([self.totals.get(p, PartitionTotals()) for p in range(partitions)])


def rebuild_part(settings: Settings, store_dir: str, partitions: list[int] | None,
                 show_progress: bool) -> int:
    """Fold some ledger and outcome partitions (None: all) into fresh stores in `store_dir`
    with the live views' processor; returns the latest outcome timestamp they hold. The
    topics are co-partitioned, so partition p of both is one process's share."""
    stores = LocalStores(store_dir)
    processor = ViewsProcessor(lambda: stores, settings.topic(topics.REQUESTS),
                               settings.id_window_ms, cached_accounts=None)
    gc.disable()  # many live objects: generational GC would rescan them all (measured: ~2x slower)
    try:
        for label, topic, fold in (
                ("ledger.events", topics.LEDGER, processor.fold_ledger),
                ("transfers.outcomes", topics.OUTCOMES, processor.fold_outcome)):
            progress = progress_bar(f"rebuild views: {label}", "records", enabled=show_progress)
            folded = 0
            for msg in read_topic(settings, settings.topic(topic), partitions=partitions):
                progress.update()
                fold(msg.partition(), msg.offset(), msg.value())
                folded += 1
                if folded % _BATCH == 0:
                    processor.after_batch()
            processor.after_batch()
            progress.close()
    finally:
        gc.enable()
        stores.close()
    return max(processor.status_clock.values(), default=0)


def rebuild(settings: Settings, store_dir: str, show_progress: bool = True,
            processes: int = 1) -> RebuiltViews:
    """Fold the ledger and the outcomes from the beginning into fresh stores: in one
    process, or in `processes`, each folding its share of the partitions into stores of its
    own (every view is of one partition, so the shares never meet)."""
    started = time.monotonic()
    if processes <= 1:
        dirs, clocks = [store_dir], [rebuild_part(settings, store_dir, None, show_progress)]
    else:
        shares = partition_shares(settings, settings.topic(topics.LEDGER), processes)
        dirs = [os.path.join(store_dir, f"part-{i}") for i in range(len(shares))]
        clocks = in_processes(rebuild_part, [(settings, d, share, False)
                                             for d, share in zip(dirs, shares)])
    views = RebuiltViews([LocalStores(d) for d in dirs], processes=len(dirs))
    views.read_back()
    # statuses past the id window, as the live views forget them: their clocks are at most
    # this one, so they keep a superset of these (the comparison asks them only for these)
    clock = max(clocks)
    views.status = {key: status for key, status in views.status.items()
                    if not status_expired(status, clock, settings.id_window_ms)}
    views.seconds = time.monotonic() - started
    return views


async def compare(views: RebuiltViews, url: str, partitions: int, api_key: str,
                  concurrency: int = 32, show_progress: bool = True) -> list[str]:
    """Every difference between the rebuilt views and what the live endpoint serves (asked
    with an operator's or auditor's API key)."""
    import aiohttp

    diffs: list[str] = []
    progress = progress_bar("compare with live views", "queries", enabled=show_progress)
    gate = asyncio.Semaphore(concurrency)

    async def get(session: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        async with gate:
            for _ in range(50):  # 503: rebalancing or behind; 429: over the key's rate
                async with session.get(url + path) as resp:
                    body = await resp.read()
                    if resp.status in (401, 403):
                        raise PermissionError(f"the live views answered {resp.status}: "
                                              f"{body.decode(errors='replace')[:200]}")
                    if resp.status not in (429, 503):
                        progress.update()
                        return resp.status, orjson.loads(body) if body else None
                    wait = float(resp.headers.get("Retry-After", "0.2")) \
                        if resp.status == 429 else 0.2
                await asyncio.sleep(wait)
            return 503, None

    async def account(session: aiohttp.ClientSession, name: str, view: AccountView) -> None:
        status, live = await get(session, f"/accounts/{name}?min_seq={view.seq}")
        if status != 200 or live != view.public(name):
            diffs.append(f"account {name}: rebuilt {view.public(name)} != live ({status}) {live}")
            return
        entries, before = [], None
        while True:
            status, page = await get(session, f"/accounts/{name}/history?limit=1000"
                                     + (f"&before_seq={before}" if before else ""))
            if status != 200:
                diffs.append(f"account {name}: history answered {status}")
                return
            entries += page["entries"]
            before = page["next_before_seq"]
            if before is None:
                break
        rebuilt = views.history(name)
        if entries != rebuilt:
            first = next((i for i, (a, b) in enumerate(zip(rebuilt, entries)) if a != b),
                         min(len(rebuilt), len(entries)))
            diffs.append(f"account {name}: history differs from entry {first} (newest first): "
                         f"rebuilt {len(rebuilt)} entries, live {len(entries)}")

    async def request_status(session: aiohttp.ClientSession, key: str, want: dict[str, Any]) -> None:
        # like min_seq for accounts: a live status that is only behind gets time to catch up
        account, rid = split_request_key(key)
        if not account:   # a request naming no account has a status no route can ask for
            return
        for _ in range(50):
            status, live = await get(session, f"/transfers/{quote(rid, safe='')}"
                                              f"?account={quote(account, safe='')}")
            behind = status == 404 or (status == 200 and STATUS_RANK.get(live.get("status"), 0)
                                       < STATUS_RANK[want["status"]])
            if not behind:
                break
            await asyncio.sleep(0.2)
        if status != 200 or live != want:
            diffs.append(f"request {rid}: rebuilt {want} != live ({status}) {live}")

    async with aiohttp.ClientSession(headers=bearer(api_key)) as session:
        jobs = [account(session, n, v) for n, v in views.accounts.items()]
        jobs += [request_status(session, rid, st) for rid, st in views.status.items()]
        for start in range(0, len(jobs), 2000):
            await asyncio.gather(*jobs[start:start + 2000])
        want = views.figures(partitions)
        for _ in range(50):  # the totals may still be catching up
            status, live = await get(session, "/stats")
            if live == want:
                break
            await asyncio.sleep(0.2)
        if status != 200 or live != want:
            diffs.append(f"stats: rebuilt {want} != live ({status}) {live}")
    progress.close()
    return diffs


def main(settings: Settings, url: str | None, store_dir: str | None, processes: int = 1) -> int:
    store_dir = store_dir or tempfile.mkdtemp(prefix="bank-replay-views-")
    views = rebuild(settings, store_dir, processes=processes)
    print(f"rebuilt {len(views.accounts)} accounts, {views.events} ledger events, "
          f"{len(views.status)} request statuses in {views.seconds:.1f} s into {store_dir} "
          f"({views.processes} process{'es' if views.processes > 1 else ''})")
    if url is None:
        return 0
    import aiohttp

    try:
        diffs = asyncio.run(compare(views, url.rstrip("/"), settings.partitions,
                                    settings.api_key.get_secret_value()))
    except aiohttp.ClientConnectionError as exc:
        print(f"error: no views worker answers at {url} ({exc}): pass --url, or --url none "
              f"to only rebuild", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"error: {exc}; set BANK_API_KEY to an operator's or auditor's key (bank up "
              f"prints one)", file=sys.stderr)
        return 1
    for line in diffs[:100]:
        print(f"  - {line}")
    if len(diffs) > 100:
        print(f"  ... and {len(diffs) - 100} more")
    print(f"compared with {url}: {len(diffs)} difference(s)")
    print("replay views: OK" if not diffs else "replay views: DIFFERENCES")
    sys.stdout.flush()
    return 0 if not diffs else 1
