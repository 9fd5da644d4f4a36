"""`bank replay views`: rebuild every view from the logs into fresh stores, compare with the live ones.

The rebuild uses the very fold the views workers use (kbank.streams.views.fold),
over ledger.events and transfers.outcomes read from the beginning, into a
new RocksDB store. The comparison asks the live web endpoint for every
account (balance, seq, limits, full history), every request status, and the
global figures, and prints each difference.
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
from rocksdict import Rdict, WriteBatch

from kbank.streams.progress import progress_bar
from kbank.replay.parallel import in_processes, partition_shares
from kbank.streams import topics
from kbank.streams.apikeys import bearer
from kbank.streams.client import read_topic
from kbank.streams.config import Settings
from urllib.parse import quote

from kbank.streams.model import STATUS_RANK, outcome_key, parse_ledger_event, split_request_key
from kbank.streams.views.fold import (AccountView, Applied, PartitionTotals, apply_to_account, classify,
                                global_figures, history_key, merge_status, status_expired,
                                parse_outcome)

_FLUSH_EVERY = 20_000


@dataclass
class RebuiltViews:
    """The views as the log says they must be (the history lives in the stores: one per
    process that rebuilt them, `where` says which holds an account's)."""

    stores: list[Rdict]
    accounts: dict[str, AccountView] = field(default_factory=dict)
    where: dict[str, int] = field(default_factory=dict)      # account -> index in stores
    totals: dict[int, PartitionTotals] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    seconds: float = 0.0
    processes: int = 1

    def history(self, account: str) -> list[dict[str, Any]]:
        """The account's events, newest first (like GET /accounts/{id}/history)."""
        view, store = self.accounts[account], self.stores[self.where[account]]
        return [orjson.loads(store[history_key(account, seq)]) for seq in range(view.seq, 0, -1)]

    def figures(self, partitions: int) -> dict[str, int]:
        return global_figures([self.totals.get(p, PartitionTotals()) for p in range(partitions)])


@dataclass
class RebuiltPart:
    """What one process rebuilt from its share of the partitions (its store is on disk)."""

    accounts: dict[str, AccountView] = field(default_factory=dict)
    totals: dict[int, PartitionTotals] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    clock: int = 0           # the latest outcome timestamp its partitions hold


def rebuild_part(settings: Settings, store_dir: str, partitions: list[int] | None,
                 show_progress: bool) -> RebuiltPart:
    """Fold some ledger and outcome partitions (None: all) into a fresh store at `store_dir`.
    The topics are co-partitioned, so partition p of both is one process's share."""
    part = RebuiltPart()
    store = Rdict(store_dir)
    requests_topic = settings.topic(topics.REQUESTS)
    progress = progress_bar("rebuild views: ledger.events", enabled=show_progress)
    batch = WriteBatch()
    gc.disable()  # many live objects: generational GC would rescan them all (measured: ~2x slower)
    try:
        for msg in read_topic(settings, settings.topic(topics.LEDGER), partitions=partitions):
            progress.update()
            raw, offset, partition = msg.value(), msg.offset(), msg.partition()
            event = parse_ledger_event(raw)
            if event is None:
                continue   # the live views count and skip it too
            account, seq = event["account"], event["seq"]
            view = part.accounts.get(account)
            verdict = classify(view, seq, offset)
            if verdict is not Applied.NEW:
                continue
            view = part.accounts[account] = apply_to_account(view, event, offset)
            batch.put(history_key(account, seq), raw)
            totals = part.totals.get(partition)
            if totals is None:
                totals = part.totals[partition] = PartitionTotals()
            totals.count(event, offset, requests_topic, view.currency)
            part.events += 1
            if len(batch) >= _FLUSH_EVERY:
                store.write(batch)
                batch = WriteBatch()
        store.write(batch)
        progress.close()
        outcomes = progress_bar("rebuild views: transfers.outcomes", "records",
                                enabled=show_progress)
        window_ms, clock = settings.id_window_ms, 0   # the latest outcome ts
        for msg in read_topic(settings, settings.topic(topics.OUTCOMES), partitions=partitions):
            outcomes.update()
            out = parse_outcome(msg.value())
            if out is None:
                continue
            if isinstance(out.get("ts"), int):
                clock = max(clock, out["ts"])
            key = outcome_key(out)
            new = merge_status(part.status.get(key), out, window_ms)
            if new is not None:
                part.status[key] = new
        outcomes.close()
        part.clock = clock
    finally:
        gc.enable()
        store.close()
    return part


def rebuild(settings: Settings, store_dir: str, show_progress: bool = True,
            processes: int = 1) -> RebuiltViews:
    """Fold the ledger and the outcomes from the beginning into fresh stores: in one
    process, or in `processes`, each folding its share of the partitions into a store of its
    own (every view is of one partition, so the shares never meet)."""
    started = time.monotonic()
    if processes <= 1:
        dirs, parts = [store_dir], [rebuild_part(settings, store_dir, None, show_progress)]
    else:
        shares = partition_shares(settings, settings.topic(topics.LEDGER), processes)
        dirs = [os.path.join(store_dir, f"part-{i}") for i in range(len(shares))]
        parts = in_processes(rebuild_part, [(settings, d, share, False)
                                            for d, share in zip(dirs, shares)])
    views = RebuiltViews([Rdict(d) for d in dirs], processes=len(dirs))
    for i, part in enumerate(parts):
        assert not views.accounts.keys() & part.accounts.keys()   # an account is one partition's
        views.accounts.update(part.accounts)
        views.where.update(dict.fromkeys(part.accounts, i))
        views.totals.update(part.totals)
        views.status.update(part.status)
        views.events += part.events
    # statuses past the id window, as the live views forget them: their clocks are at most
    # this one, so they keep a superset of these (the comparison asks them only for these)
    clock = max(part.clock for part in parts)
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
