"""A record the engine keeps failing on cannot halt its partitions (issue 41).

A planted bug (BANK_FAULT_BUG_ON, test mode) makes the engine raise deciding one record.
Each failure ends the worker loudly, as a bug must; the restarted worker reads the same
record again. Before, that was a crash loop for good (16 crashes in 84 s, every later
request of those partitions pending). Now a request is refused with `engine_error` and
dead-lettered after BANK_ENGINE_FAILURE_LIMIT failures, and everything after it is decided;
money in flight is never skipped: the worker halts with its reason until the bug is fixed,
then the credit lands.
"""
from __future__ import annotations

from dataclasses import replace

import orjson

from kbank.streams import topics
from kbank.streams.client import read_topic
from kbank.streams.health import read_crashes
from kbank.streams.model import request_key
from tests.workload import Workload, assert_invariants, wait_until


def _final_outcome(settings, key: str) -> dict | None:
    found = None
    for msg in read_topic(settings, settings.topic(topics.OUTCOMES)):
        if msg.key() == key.encode():
            out = orjson.loads(msg.value())
            if out["status"] in ("completed", "rejected"):
                found = out
    return found


def test_a_request_the_engine_keeps_failing_on_is_refused_and_the_rest_decided(
        settings, pool_factory):
    settings = replace(settings, fault_bug_on="requests:boom", engine_failure_limit=2)
    pool = pool_factory(settings, 1)
    wl = Workload(settings)
    names = [f"k-{i}" for i in range(4)]
    try:
        wl.open_accounts(names, 1_000)
        wl.random_transfers(names, 20, "a", 10)
        wl.send({"type": "transfer", "request_id": "boom-1", "from": "k-0", "to": "k-1",
                 "amount": 5})
        wl.random_transfers(names, 20, "b", 10)
        wl.sender.flush()
        wait_until(lambda: pool.restart_dead() is not None and wl.wait(1), 120,
                   "every request decided, the failing one too")
    finally:
        wl.close()
    assert pool.crashes["0"] == 2, "each failure ended the worker, loudly, until the limit"
    out = _final_outcome(settings, request_key("k-0", "boom-1"))
    assert out["status"] == "rejected" and out["reason"] == "engine_error", out
    assert "planted bug" in out["detail"]
    letters = [orjson.loads(m.value()) for m in read_topic(settings, settings.topic(topics.DEADLETTER))]
    assert [d["error"].split(":")[0] for d in letters] == ["engine_error after 2 failures"]
    assert_invariants(settings, wl, drained_by=pool)


def test_money_in_flight_that_keeps_failing_halts_the_worker_until_the_fix(
        settings, pool_factory):
    broken = replace(settings, fault_bug_on="credits:cboom", engine_failure_limit=2)
    pool = pool_factory(broken, 1)
    wl = Workload(settings)
    try:
        wl.open_accounts(["m-0", "m-1"], 1_000)
        wl.send({"type": "transfer", "request_id": "cboom-1", "from": "m-0", "to": "m-1",
                 "amount": 7})
        wl.sender.flush()
        def halted() -> str:
            pool.restart_dead()
            return read_crashes(settings.state_dir).get("worker", {}).get("0", {}).get("halt", "")
        wait_until(lambda: "money in flight" in halted(), 120, "the worker to halt on the credit")
        halt = halted()
        assert "money in flight is never skipped" in halt and "planted bug" in halt, halt
        assert wl.status("cboom-1") == "debited"      # in flight, not lost, not skipped
        pool.settings = settings                        # the fix is deployed
        wait_until(lambda: pool.restart_dead() is not None and wl.wait(1), 120,
                   "the credit to land once fixed")
    finally:
        wl.close()
    assert wl.status("cboom-1") == "completed"
    assert_invariants(settings, wl, drained_by=pool)
