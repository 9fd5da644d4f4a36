"""Hostile input through the real engine on the real broker (issue 21): ids reused across
senders, amounts at the 64-bit edge, engine-only requests, oversized records. No worker may
restart and `bank replay verify` must pass."""
from __future__ import annotations

import time
from dataclasses import replace

import orjson

from kbank.streams import topics
from kbank.streams.client import read_json, read_topic
from kbank.streams.engine.changelog import BATCH_PREFIX
from kbank.streams.model import MAX_AMOUNT, request_key
from tests.workload import Workload, assert_invariants, wait_until

DAY_MS = 86_400_000


def _pids(pool) -> dict[str, int]:  # noqa: ANN001 - a WorkerPool
    return {wid: proc.pid for wid, proc in pool.procs.items()}


def test_hostile_requests_change_nothing_they_should_not(settings, pool_factory):
    engine = pool_factory(settings, 1)
    pids = _pids(engine)
    wl = Workload(settings)
    try:
        wl.open_accounts(["alice", "bob", "carol", "dave"], 1_000)
        # a hold with a short deadline, and a deposit named after its old expiry id
        wl.send({"type": "hold", "request_id": "h", "from": "dave", "to": "carol",
                 "amount": 100, "timeout_s": 1})
        # two honest clients, one request id: two requests, both applied
        wl.send({"type": "transfer", "request_id": "t1", "from": "alice", "to": "carol", "amount": 500})
        wl.send({"type": "transfer", "request_id": "t1", "from": "bob", "to": "carol", "amount": 500})
        # amounts at the edge: the partition's share of the 64-bit supply refuses them
        for i, name in enumerate(["alice", "bob", "dave"]):
            wl.send({"type": "deposit", "request_id": f"huge-{i}", "account": name,
                     "amount": MAX_AMOUNT})
        # engine-only requests and ids
        wl.sender.send_raw(b"alice", orjson.dumps(
            {"type": "expire", "request_id": "x", "hold_id": "h", "from": "alice"}))
        wl.request_ids.append(request_key("", "x"))   # no account decides it: no scope
        wl.send({"type": "deposit", "request_id": "expire:h", "account": "dave", "amount": 1})
        # a retry and a conflicting reuse
        wl.send({"type": "deposit", "request_id": "dep-dave", "account": "dave", "amount": 1_000})
        wl.send({"type": "deposit", "request_id": "dep-dave", "account": "dave", "amount": 999})
        # oversized: rejected with a reason, not copied
        big = orjson.dumps({"type": "deposit", "request_id": "big", "account": "dave",
                            "amount": 1, "pad": "x" * 40_000})
        wl.sender.send_raw(b"dave", big)
        wl.request_ids.append(request_key("dave", "big"))
        wl.sender.flush()
        assert wl.wait(120), "every request gets an outcome"
        status = wl.watcher.status
        assert status[request_key("alice", "t1")] == status[request_key("bob", "t1")] == "completed"
        assert {status[request_key(n, f"huge-{i}")] for i, n in enumerate(["alice", "bob", "dave"])} \
            == {"rejected"}
        assert status[request_key("", "x")] == "rejected"
        assert status[request_key("dave", "expire:h")] == "completed"
        assert status[request_key("dave", "big")] == "rejected"
        wl.deposits += 1   # the expire:h deposit
        # the engine's own expiry still happens: the hold's funds are not frozen
        assert status[request_key("dave", "h")] == "expired"
    finally:
        wl.close()
    report = assert_invariants(settings, wl, drained_by=engine)
    assert report.total_balance == 4 * 1_000 + 1
    assert report.holds["expired"] == 1, report.render()
    assert _pids(engine) == pids and all(p.poll() is None for p in engine.procs.values()), \
        "no worker died or was restarted"


def test_a_producers_timestamp_does_not_reset_a_daily_limit(settings, pool_factory):
    """Withdrawals stamped alternately yesterday and today (CreateTime, the producer's
    choice): the broker's clock decides, so a limit of 100 lets one withdrawal of 100 through."""
    engine = pool_factory(settings, 1)
    wl = Workload(settings)
    try:
        wl.send({"type": "open_account", "request_id": "open", "account": "erin",
                 "daily_limit": 100})
        wl.send({"type": "deposit", "request_id": "dep", "account": "erin", "amount": 1_000})
        wl.deposits += 1_000
        now = int(time.time() * 1000)
        topic = settings.topic(topics.REQUESTS)
        for i in range(10):
            body = {"type": "withdraw", "request_id": f"w{i}", "account": "erin", "amount": 100}
            wl.sender.producer.produce(topic, key=b"erin", value=orjson.dumps(body),
                                       timestamp=now - DAY_MS * (i % 2))
            wl.request_ids.append(request_key("erin", f"w{i}"))
        wl.sender.flush()
        assert wl.wait(120)
        statuses = [wl.watcher.status_of("erin", f"w{i}") for i in range(10)]
    finally:
        wl.close()
    # one completes unless the clock turns midnight between them: then two may
    assert 1 <= statuses.count("completed") <= 2, statuses
    report = assert_invariants(settings, wl, drained_by=engine)
    assert report.total_balance == 1_000 - 100 * statuses.count("completed")


def test_a_batch_of_the_largest_ids_is_written_in_parts(settings, pool_factory):
    """5,000 requests with 128-character ids of 4-byte characters make a batch's applied ids
    about 2.5 MB, over the broker's 1 MB message limit: the engine writes the batch record in
    parts, every request is answered, and a new owner restored from those parts still knows
    every id (the same requests again are answered as retries)."""
    settings = replace(settings, batch_max_records=5_000, batch_max_ms=2_000)
    wl = Workload(settings)
    ids = [f"{i:06d}" + "\U0001F4B0" * 122 for i in range(5_000)]
    bodies = [orjson.dumps({"type": "deposit", "request_id": rid, "account": "nobody",
                            "amount": 1}) for rid in ids]
    try:
        for body in bodies:   # queued before the engine starts, so its batches are full
            wl.sender.send_raw(b"nobody", body)
        wl.request_ids += [request_key("nobody", rid) for rid in ids]
        wl.sender.flush()
        engine = pool_factory(settings, 1)
        assert wl.wait(180), "every request is answered"
        assert {wl.watcher.status[key] for key in wl.request_ids} == {"rejected"}
        parts = [msg.key() for msg in read_topic(settings, settings.topic(topics.CHANGELOG))
                 if msg.key().startswith(BATCH_PREFIX) and msg.key().count(b":") == 3]
        assert parts, "the batch records were split"
        # a new owner restores the ids from the parts: the same requests are retries
        for wid in list(engine.procs):
            engine.kill(wid)
        engine = pool_factory(settings, 1)
        for body in bodies[:50]:
            wl.sender.send_raw(b"nobody", body)
        wl.sender.flush()
        resent = set(ids[:50])

        def all_retries() -> bool:
            answered = {out["request_id"] for out in read_json(settings, topics.OUTCOMES)
                        if out.get("retry") and out["request_id"] in resent}
            return answered == resent
        wait_until(all_retries, 120, "the re-sent requests to be answered as retries", poll_s=1)
    finally:
        wl.close()

