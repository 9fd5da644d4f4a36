"""`bank replay views` reproduces the live views after a workload with crashes."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from kbank.replay.views import compare, rebuild
from kbank.streams.supervisor import wait_for_views
from tests.http import current_key
from tests.workload import Workload, assert_invariants, wait_until


def test_rebuilt_views_equal_the_live_ones_after_crashes(settings, pool_factory, views_factory, tmp_path):
    # every 8th engine batch the worker SIGKILLs itself mid-changelog; restarted below
    engine = pool_factory(replace(settings, fault_crash_every=8, fault_commit_delay_ms=20), 2)
    views = views_factory(settings, 2)
    urls = [views.url(w) for w in views.procs]
    names = [f"acct-{i}" for i in range(30)]
    wl = Workload(settings)
    try:
        for name in names:
            wl.send({"type": "open_account", "request_id": f"open-{name}", "account": name})
            wl.send({"type": "deposit", "request_id": f"dep-{name}", "account": name, "amount": 5_000})
            wl.deposits += 5_000
        sender = threading.Thread(target=wl.random_transfers, args=(names, 1_000, "t", 2_500),
                                  kwargs={"duplicate_every": 20, "rate_per_s": 200})
        holder = threading.Thread(target=wl.random_holds, args=(names, 150, "h", 1_000),
                                  kwargs={"rate_per_s": 30})
        sender.start()
        holder.start()
        crashes = 0

        def first_transfers_finished() -> bool:
            nonlocal crashes
            crashes += len(engine.restart_dead())   # the workers kill themselves every 8th batch
            return wl.watcher.finished(list(wl.request_ids)) >= 2 * len(names) + 100

        wait_until(first_transfers_finished, 120, "the first transfers to finish")
        views.kill("1")  # and a views worker dies mid-stream too
        views.start("1")
        deadline = time.monotonic() + 240
        while wl.watcher.finished(wl.request_ids) < len(wl.request_ids) or sender.is_alive() \
                or holder.is_alive():
            crashes += len(engine.restart_dead())
            assert time.monotonic() < deadline, \
                f"workload did not finish: {wl.watcher.finished(wl.request_ids)} of " \
                f"{len(wl.request_ids)} requests final after {crashes} engine crashes"
            time.sleep(0.3)
        sender.join()
        holder.join()
        assert wait_for_views(urls, settings.partitions)
    finally:
        wl.close()
    assert crashes > 0, "the engine workers should have crashed themselves"
    print(f"{crashes} engine crashes")
    report = assert_invariants(settings, wl, drained_by=engine)
    assert min(report.holds[k] for k in ("posted", "hold_released", "expired")) > 0, report.render()
    views_rebuilt = rebuild(settings, str(tmp_path / "rebuilt"), show_progress=False)
    assert views_rebuilt.events == report.events
    for url in urls:
        assert asyncio.run(compare(views_rebuilt, url, settings.partitions, current_key(),
                                   show_progress=False)) == []
    # rebuilt in two processes, each folding half the partitions into a store of its own: the same
    in_two = rebuild(settings, str(tmp_path / "rebuilt-2"), show_progress=False, processes=2)
    assert in_two.processes == 2 and in_two.events == report.events
    assert (in_two.accounts, in_two.status, in_two.totals) == \
        (views_rebuilt.accounts, views_rebuilt.status, views_rebuilt.totals)
    assert all(in_two.history(name) == views_rebuilt.history(name) for name in in_two.accounts)
    # the comparison can fail: a rebuilt view that disagrees is named
    victim = names[3]
    views_rebuilt.accounts[victim].balance += 1
    diffs = asyncio.run(compare(views_rebuilt, urls[0], settings.partitions, current_key(),
                                   show_progress=False))
    assert len(diffs) == 1 and diffs[0].startswith(f"account {victim}:"), diffs
